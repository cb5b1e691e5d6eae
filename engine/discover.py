"""Discover: walk the input folders and yield the image files to search, in a stable order.

Directory listings and ``stat`` calls go through :mod:`aiofiles.os`, i.e. a thread, because
catalogue folders often live on network shares where one listing can block for seconds; the
event loop keeps serving the searches meanwhile. Symlink loops are cut by remembering each
directory's (device, inode); unreadable folders are reported and skipped.

Inputs on object storage (``s3://bucket/prefix``, :mod:`engine.storage`) are walked the same
way, one "folder" (a listing by ``/``) at a time, after the local ones. A listing does not give
an object's ETag, so each matching object costs one HEAD request: at most
:data:`HEAD_CONCURRENCY` at once, in threads. An object's version is its size, modification
time and ETag; the runner reads its bytes when it prepares it.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import os
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles.os

from engine.catalogue_table import CatalogueEntry, is_web_url
from engine.errors import StorageError
from engine.jobfile import Inputs
from engine.storage import S3Store, S3Url, open_store, parse_location, shown_url

log = logging.getLogger(__name__)


HEAD_CONCURRENCY = 8
"""HEAD requests (one per input object, for its ETag) in flight at once."""


@dataclass(frozen=True)
class Candidate:
    """One file to search, with what a quick "unchanged?" check needs: its version."""

    path: Path | str
    """A local file, or an object's URL (``s3://bucket/key``)."""
    size: int
    mtime_ns: int
    etag: str | None = None
    """An object's ETag; ``None`` for a local file."""
    sku: str | None = None
    title: str | None = None
    store: S3Store | None = field(default=None, compare=False, repr=False)
    """The bucket an object is read from (its root is the bucket); ``None`` for a local file."""

    @property
    def key(self) -> str:
        """An object's key in :attr:`store`; a local file's path."""
        return str(self.path).removeprefix(f"{self.store.url}/" if self.store else "")

    @property
    def id(self) -> str:
        """The photo's name in the checkpoints: ``sku:<SKU>`` for a catalogue row (one image
        may stand for several SKUs, each with its own rows), else its path or URL."""
        return f"sku:{self.sku}" if self.sku is not None else str(self.path)

    @property
    def is_url(self) -> bool:
        """A catalogue row's photo on the web, downloaded before it is prepared."""
        return is_web_url(str(self.path))

    @property
    def source(self) -> str | None:
        """Where a catalogue row's photo is, as the feed and the checkpoints name it (its
        ``query_path``); ``None`` otherwise. A web photo's URL loses its ``user:password@``,
        query and fragment: a signed link's credential stays in the catalogue table and in
        memory, never in a file the engine writes."""
        if self.sku is None:
            return None
        return shown_url(str(self.path)) if self.is_url else str(self.path)


@dataclass
class DiscoveryReport:
    """What the walk skipped, for the run's summary."""

    unreadable: list[str] = field(default_factory=list)
    symlink_loops: int = 0
    missing_inputs: list[str] = field(default_factory=list)


async def discover(
    inputs: Inputs, report: DiscoveryReport, catalogue: Sequence[CatalogueEntry] = ()
) -> AsyncIterator[Candidate]:
    """Yield every matching file under ``inputs.paths`` once, sorted within each folder, then
    every row of the ``catalogue`` table in its order.

    Files named explicitly come first, whatever their extension; then the folders are walked.
    Memory stays flat however many files there are: a folder reached twice (nested inputs,
    symlinks) is recognised by its (device, inode) and walked once, and only the explicitly
    named files are remembered, to skip them inside the folders.
    """
    extensions = {"." + e for e in inputs.extensions}
    folders: list[Path] = []
    named: set[Path] = set()
    for root in inputs.paths:
        try:
            st = await aiofiles.os.stat(root)
        except FileNotFoundError:
            report.missing_inputs.append(str(root))
            log.warning("input %s does not exist", root)
            continue
        except OSError as exc:
            report.unreadable.append(f"{root}: {exc.strerror}")
            continue
        if stat.S_ISDIR(st.st_mode):
            folders.append(root)
        elif root not in named:
            named.add(root)
            yield Candidate(root, st.st_size, st.st_mtime_ns)
    seen_dirs: set[tuple[int, int]] = set()
    for root in folders:
        async for candidate in _walk(root, root, inputs, extensions, seen_dirs, report):
            if candidate.path not in named:
                yield candidate
    async for candidate in _discover_objects(inputs, extensions, report):
        yield candidate
    for entry in catalogue:
        yield await _catalogue_row(entry)


async def _catalogue_row(entry: CatalogueEntry) -> Candidate:
    """A catalogue row's photo. A web photo's version is learnt when it is downloaded (ETag,
    Last-Modified, its bytes); a local file that cannot be read fails its row when it is
    prepared, with the reason preprocessing gives."""
    size = mtime_ns = 0
    if not entry.is_url:
        try:
            st = await aiofiles.os.stat(entry.image)
        except OSError:
            pass
        else:
            size, mtime_ns = st.st_size, st.st_mtime_ns
    return Candidate(entry.image, size, mtime_ns, sku=entry.sku, title=entry.title)


async def missing_inputs(inputs: Inputs) -> list[str]:
    """The entries of ``inputs.paths`` that do not exist: a local path, or an ``s3://`` URL
    that is neither an object nor a prefix with objects under it.

    Raises:
        StorageError: a bucket cannot be listed (no such bucket, access denied, unreachable).
    """
    missing = [str(p) for p in inputs.paths if not p.exists()]
    for url in inputs.urls:
        store, key = _bucket(url)
        if await asyncio.to_thread(store.kind, key) == "missing":
            missing.append(url)
    return missing


async def _discover_objects(
    inputs: Inputs, extensions: set[str], report: DiscoveryReport
) -> AsyncIterator[Candidate]:
    """The objects of the ``s3://`` inputs: those named first, then the prefixes walked. A
    prefix reached twice (nested inputs) is walked once; a named object is not found again.

    Raises:
        StorageError: an input cannot be looked up (no such bucket, access denied). A folder
            that cannot be listed, or an object whose HEAD fails, is reported unreadable.
    """
    prefixes: list[tuple[S3Store, str]] = []
    named: set[str] = set()
    for url in inputs.urls:
        store, key = _bucket(url)
        kind = await asyncio.to_thread(store.kind, key)
        if kind == "folder":
            prefixes.append((store, key))
        elif kind == "missing":
            report.missing_inputs.append(url)
            log.warning("input %s does not exist", url)
        elif url not in named:
            named.add(url)
            async for candidate in _objects(store, [key], report):
                yield candidate
    seen: set[str] = set()
    for store, root in prefixes:
        async for candidate in _walk_prefix(store, root, root, inputs, extensions, seen, report):
            if candidate.path not in named:
                yield candidate


def _bucket(url: str) -> tuple[S3Store, str]:
    """The store of ``url``'s bucket (its root is the bucket) and the key ``url`` names."""
    where = parse_location(url, "inputs.paths")
    assert isinstance(where, S3Url)  # jobfile put only checked s3:// URLs in Inputs.urls
    store = open_store(f"s3://{where.bucket}", os.environ, setting="inputs.paths")
    assert isinstance(store, S3Store)
    return store, where.prefix


async def _walk_prefix(
    store: S3Store,
    root: str,
    folder: str,
    inputs: Inputs,
    extensions: set[str],
    seen: set[str],
    report: DiscoveryReport,
) -> AsyncIterator[Candidate]:
    if folder in seen:
        return
    seen.add(folder)
    try:
        folders, files = await asyncio.to_thread(store.list_folder, folder)
    except FileNotFoundError:
        return  # emptied since it was found
    except StorageError as exc:
        report.unreadable.append(str(exc))
        log.warning("%s", exc)
        return
    start = len(root) + 1 if root else 0
    keys = [
        f.key
        for f in files
        if Path(f.key).suffix.lower() in extensions and not _excluded(f.key[start:], inputs.exclude)
    ]
    async for candidate in _objects(store, keys, report):
        yield candidate
    if not inputs.recursive:
        return
    for sub in folders:
        if not _excluded(sub[start:], inputs.exclude):
            async for candidate in _walk_prefix(store, root, sub, inputs, extensions, seen, report):
                yield candidate


async def _objects(
    store: S3Store, keys: list[str], report: DiscoveryReport
) -> AsyncIterator[Candidate]:
    """The candidates of ``keys``, in order, their versions fetched :data:`HEAD_CONCURRENCY`
    at a time; an object gone since the listing is left out, one whose HEAD fails is
    reported unreadable and left out (the others go on)."""
    for start in range(0, len(keys), HEAD_CONCURRENCY):
        batch = keys[start : start + HEAD_CONCURRENCY]
        versions = await asyncio.gather(
            *(asyncio.to_thread(store.version, k) for k in batch), return_exceptions=True
        )
        for key, version in zip(batch, versions, strict=True):
            if isinstance(version, StorageError):
                report.unreadable.append(str(version))
                log.warning("%s", version)
            elif isinstance(version, BaseException):
                raise version
            elif version is not None:
                yield Candidate(
                    store.location(key),
                    version.size,
                    version.mtime_ns,
                    version.etag,
                    store=store,
                )


@dataclass(frozen=True)
class _Entry:
    path: Path
    is_dir: bool
    is_link: bool
    size: int
    mtime_ns: int
    error: str | None


def _scan_folder(folder: Path) -> tuple[tuple[int, int], list[_Entry]]:
    """List one folder with each entry's type and stat, all in one trip to a thread."""
    st = os.stat(folder)
    entries: list[_Entry] = []
    with os.scandir(folder) as listing:
        for e in listing:
            path = Path(e.path)
            try:
                is_link = e.is_symlink()
                is_dir = e.is_dir()
                est = e.stat() if not is_dir else None
            except OSError as exc:
                entries.append(_Entry(path, False, False, 0, 0, exc.strerror or str(exc)))
                continue
            size, mtime = (est.st_size, est.st_mtime_ns) if est else (0, 0)
            entries.append(_Entry(path, is_dir, is_link, size, mtime, None))
    entries.sort(key=lambda entry: entry.path.name)
    return (st.st_dev, st.st_ino), entries


_scan_folder_async = aiofiles.os.wrap(_scan_folder)


async def _walk(
    root: Path,
    folder: Path,
    inputs: Inputs,
    extensions: set[str],
    seen_dirs: set[tuple[int, int]],
    report: DiscoveryReport,
) -> AsyncIterator[Candidate]:
    try:
        key, entries = await _scan_folder_async(folder)
    except OSError as exc:
        report.unreadable.append(f"{folder}: {exc.strerror}")
        log.warning("cannot list %s: %s", folder, exc.strerror)
        return
    if key in seen_dirs:
        report.symlink_loops += 1
        log.warning("skipping %s: already visited (symlink loop or duplicate link)", folder)
        return
    seen_dirs.add(key)

    for entry in entries:
        if _excluded(entry.path.relative_to(root).as_posix(), inputs.exclude):
            continue
        if entry.is_link and not inputs.follow_symlinks:
            continue
        if entry.error is not None:
            # A dangling link or a file gone since the listing: say so, go on.
            report.unreadable.append(f"{entry.path}: {entry.error}")
            continue
        if entry.is_dir:
            if inputs.recursive:
                async for candidate in _walk(
                    root, entry.path, inputs, extensions, seen_dirs, report
                ):
                    yield candidate
        elif entry.path.suffix.lower() in extensions:
            yield Candidate(entry.path, entry.size, entry.mtime_ns)


def _excluded(relative: str, patterns: tuple[str, ...]) -> bool:
    # fnmatch's '*' crosses '/', so '**/thumbs/*' and '*.tmp.jpg' both behave as users expect;
    # the leading '/' form lets '**/x' match at the top level too.
    return any(fnmatch.fnmatch(relative, p) or fnmatch.fnmatch("/" + relative, p) for p in patterns)
