"""Discover: walk the input folders and yield the image files to search, in a stable order.

Directory listings and ``stat`` calls go through :mod:`aiofiles.os`, i.e. a thread, because
catalogue folders often live on network shares where one listing can block for seconds; the
event loop keeps serving the searches meanwhile. Symlink loops are cut by remembering each
directory's (device, inode); unreadable folders are reported and skipped.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles.os

from engine.jobfile import Inputs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One file to search, with what a quick "unchanged?" check needs."""

    path: Path
    size: int
    mtime_ns: int


@dataclass
class DiscoveryReport:
    """What the walk skipped, for the run's summary."""

    unreadable: list[str] = field(default_factory=list)
    symlink_loops: int = 0
    missing_inputs: list[str] = field(default_factory=list)


async def discover(inputs: Inputs, report: DiscoveryReport) -> AsyncIterator[Candidate]:
    """Yield every matching file under ``inputs.paths`` once, sorted within each folder.

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
