"""The content-addressed image cache: downloaded images kept on local disk across runs and jobs.

Offer images and catalogue photos given by URL are downloaded once (:mod:`engine.download`) and
kept here under the SHA-256 of their bytes, so that a rerun, another job or ``img1688 reclean``
finds them without a request. Layout::

    ROOT/blobs/ab/<sha256>   the bytes, named by their hash (``ab``: its first two hex digits)
    ROOT/index.sqlite        what each URL held when last downloaded (its hash, ETag,
                             Last-Modified), why a URL last gave no image, and small
                             derived blobs (fingerprints ...)

Several processes may share one cache. A blob is written under a temporary name in its folder,
fsynced, renamed into place and the folder fsynced, so a reader never sees half a blob, and two
writers of the same bytes write the same name. The index is SQLite in WAL mode with a busy
timeout; each thread gets a connection of its own (SQLite connections must not be shared by
threads that may use them at once). A blob is written before any index row names it, so the
index never points at bytes that were not durably there, although a blob may be missing later
(someone emptied ``blobs/``): readers treat that as a miss.

Failures of the disk or of the index are :class:`~engine.errors.StorageError` (the run cannot
go on usefully); a damaged blob (its bytes no longer match its name) is removed when read and
reported as missing, so it is downloaded again.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import StorageError
from engine.state import storage_error
from engine.storage import write_atomic

CACHE_VERSION = 2
"""``PRAGMA user_version`` of the index; bumped on any incompatible change. 2: URLs are indexed
by their SHA-256 (version 1 kept them as given, signed links included: its URL entries are
dropped on open, which costs one download each)."""
SENT_JPEG = "query-jpeg"
"""Derived kind naming the JPEG sent to the gateway for a photo: the photo's SHA-256 -> the
SHA-256 of that JPEG's blob (the JPEG itself is a blob: the index stays small)."""
BUSY_SECONDS = 30.0
"""How long a write waits for another process's write to the index to finish."""
INDEX_NAME = "index.sqlite"
BLOBS_NAME = "blobs"
_TEMP_SUFFIX = ".tmp"
_SHA256 = re.compile(r"[0-9a-f]{64}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS urls (
    url_sha256 TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    etag TEXT,
    last_modified TEXT,
    fetched_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS failures (
    url_sha256 TEXT PRIMARY KEY,
    reason TEXT NOT NULL,
    message TEXT NOT NULL,
    failed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS derived (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (kind, key)
);
"""


@dataclass(frozen=True)
class UrlFailure:
    """Why a URL last gave no image (a reason of :mod:`engine.download`), and when."""

    url: str
    reason: str
    message: str
    failed_at: float
    """Epoch seconds (UTC)."""


@dataclass(frozen=True)
class UrlEntry:
    """What a URL held when it was last downloaded (or last confirmed unchanged)."""

    url: str
    sha256: str
    """The SHA-256 (hex) of the bytes, the name of their blob."""
    etag: str | None
    """The answer's ``ETag``, verbatim (weak validators included), for ``If-None-Match``."""
    last_modified: str | None
    """The answer's ``Last-Modified``, verbatim, for ``If-Modified-Since``."""
    fetched_at: float
    """Epoch seconds (UTC) of that download or confirmation."""


class ImageCache:
    """Content-addressed image store on local disk, shared across runs and jobs.

    Safe for several processes at once, and for several threads of one process: each thread
    uses a SQLite connection of its own, made on its first call. :meth:`close` closes them all,
    and must not run while another thread is inside a call. Use as a context manager or call
    :meth:`close`.

    Raises:
        StorageError: ``root`` cannot be created or used, or its index is not one this version
            reads.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._blobs = root / BLOBS_NAME
        self._index = root / INDEX_NAME
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._closed = False
        try:
            self._blobs.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the image cache {root}: {exc.strerror or exc}"
            ) from None
        try:
            with self._sql(f"cannot open the image cache index {self._index}") as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version == 1:
                    db.execute("PRAGMA secure_delete = ON")  # overwrite the links, not only unlink
                    db.execute("DROP TABLE IF EXISTS urls")
                elif version not in (0, CACHE_VERSION):
                    raise StorageError(
                        f"the image cache {root} was written by another version of img1688"
                        f" (cache version {version}, this one reads {CACHE_VERSION}); use"
                        " another cache folder"
                    )
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version={CACHE_VERSION}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close every thread's index connection. Idempotent; the cache is unusable after."""
        with self._guard:
            self._closed = True
            for db in self._connections:
                db.close()
            self._connections.clear()

    def __enter__(self) -> ImageCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- blobs

    def blob_path(self, sha256: str) -> Path:
        """Where the blob named ``sha256`` lives (present or not).

        Raises:
            ValueError: ``sha256`` is not 64 lower-case hex digits (it would name another file).
        """
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"{sha256!r} is not a SHA-256 in lower-case hex")
        return self._blobs / sha256[:2] / sha256

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its SHA-256 (hex). Idempotent: bytes already stored are
        not written again. Once it returns, the blob is durably on disk under its final name;
        if it fails, no file of it is left, not even a temporary one.

        Raises:
            StorageError: the blob cannot be written (disk full, read-only, ...).
        """
        sha256 = hashlib.sha256(data).hexdigest()
        final = self.blob_path(sha256)
        if final.is_file():
            return sha256
        # A name of its own per writer: two processes storing the same bytes never share a temp.
        temp = final.with_name(f".{sha256}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(final, lambda path: path.write_bytes(data), temp=temp)
        except OSError as exc:
            raise StorageError(
                f"cannot write to the image cache {self.root}: {exc.strerror or exc}"
            ) from None
        except StorageError as exc:
            raise StorageError(f"cannot write to the image cache {self.root}: {exc}") from None
        return sha256

    def path(self, sha256: str) -> Path | None:
        """The file of the blob ``sha256`` if it is present, else ``None``. Its bytes are not
        checked (:meth:`read` does that)."""
        path = self.blob_path(sha256)
        return path if path.is_file() else None

    def read(self, sha256: str) -> bytes | None:
        """The bytes of the blob ``sha256``, whose SHA-256 is checked; ``None`` if it is
        missing, or damaged (its bytes no longer match its name: it is then removed, so that
        the next :meth:`put` of the right bytes restores it).

        Raises:
            StorageError: the blob exists but cannot be read.
        """
        path = self.blob_path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            path.unlink(missing_ok=True)
            return None
        return data

    def keep_sent(self, photo_sha256: str, jpeg: bytes) -> None:
        """Keep ``jpeg``, the JPEG sent to the gateway for the photo whose bytes hash to
        ``photo_sha256`` (what its evidence, a re-clean and its report compare and show)."""
        self.put_derived(SENT_JPEG, photo_sha256, self.put(jpeg).encode("ascii"))

    def photo_path(self, photo_sha256: str) -> Path | None:
        """A searched photo as the cache holds it: the blob of the JPEG sent for it, else of its
        own bytes (a web photo is downloaded into the cache); ``None`` when neither is here. The
        blob's name is the SHA-256 its bytes must have (not checked here: :meth:`read` does)."""
        sent = self.derived(SENT_JPEG, photo_sha256)
        return (self.path(sent.decode("ascii")) if sent else None) or self.path(photo_sha256)

    # -- the index

    def url_entry(self, url: str) -> UrlEntry | None:
        """What ``url`` held when last downloaded, or ``None`` if it never was. Its blob may
        have gone since (check with :meth:`path`)."""
        row = self._url_row("sha256, etag, last_modified, fetched_at", "urls", url)
        return None if row is None else UrlEntry(url, *row)

    def url_failure(self, url: str) -> UrlFailure | None:
        """Why ``url`` last gave no image, if it has failed since it last gave one."""
        row = self._url_row("reason, message, failed_at", "failures", url)
        return None if row is None else UrlFailure(url, *row)

    def _url_row(self, columns: str, table: str, url: str) -> tuple[Any, ...] | None:
        """``columns`` of ``table``'s row for ``url`` (both names are this module's own)."""
        with self._sql("cannot read the image cache index") as db:
            row: tuple[Any, ...] | None = db.execute(
                f"SELECT {columns} FROM {table} WHERE url_sha256 = ?", (_url_key(url),)
            ).fetchone()
        return row

    def remember_failure(self, failure: UrlFailure) -> None:
        """Record why ``failure.url`` gave no image, replacing any earlier failure of it."""
        with self._sql("cannot write to the image cache index") as db:
            db.execute(
                "INSERT OR REPLACE INTO failures (url_sha256, reason, message, failed_at)"
                " VALUES (?, ?, ?, ?)",
                (_url_key(failure.url), failure.reason, failure.message, failure.failed_at),
            )

    def remember_url(self, entry: UrlEntry) -> None:
        """Record ``entry`` as what its URL holds, replacing any earlier entry and forgetting
        any failure of it. Store the blob first (:meth:`put`): the entry names it.

        Raises:
            ValueError: ``entry.sha256`` is not a SHA-256 in lower-case hex.
        """
        self.blob_path(entry.sha256)  # validates it
        key = _url_key(entry.url)
        with self._sql("cannot write to the image cache index") as db:
            db.execute("DELETE FROM failures WHERE url_sha256 = ?", (key,))
            db.execute(
                "INSERT OR REPLACE INTO urls (url_sha256, sha256, etag, last_modified, fetched_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    key,
                    entry.sha256,
                    entry.etag,
                    entry.last_modified,
                    entry.fetched_at,
                ),
            )

    def derived(self, kind: str, key: str) -> bytes | None:
        """The derived blob stored under (``kind``, ``key``), e.g. (``"fingerprint-v1"``, the
        image's SHA-256), or ``None``. Put a version in ``kind``: a changed algorithm then
        misses instead of reading stale data."""
        with self._sql("cannot read the image cache index") as db:
            row = db.execute(
                "SELECT data FROM derived WHERE kind = ? AND key = ?", (kind, key)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def put_derived(self, kind: str, key: str, data: bytes) -> None:
        """Store a small derived blob (kept in the index, so keep it small: kilobytes) under
        (``kind``, ``key``), replacing any earlier one."""
        with self._sql("cannot write to the image cache index") as db:
            db.execute(
                "INSERT OR REPLACE INTO derived (kind, key, data) VALUES (?, ?, ?)",
                (kind, key, data),
            )

    @contextmanager
    def _sql(self, doing: str) -> Iterator[sqlite3.Connection]:
        """This thread's connection; SQLite's disk and locking failures as StorageError."""
        try:
            yield self._connection()
        except sqlite3.Error as exc:
            storage = storage_error(exc, doing)
            if storage is None:
                raise
            raise storage from None

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and not self._closed:
            return db
        with self._guard:
            if self._closed:
                raise RuntimeError(f"the image cache {self.root} is closed")
            # check_same_thread=False only so that close() may close it from its own thread:
            # each connection is used by the thread that made it alone.
            db = sqlite3.connect(
                self._index, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False
            )
            self._connections.append(db)
        self._local.db = db
        db.execute("PRAGMA journal_mode=WAL")
        # A cache: a power cut may lose the last entries (a download made again), never
        # consistency, which WAL keeps with NORMAL.
        db.execute("PRAGMA synchronous=NORMAL")
        return db


def _url_key(url: str) -> str:
    """The index's key of a URL: its SHA-256, so that a signed URL's credential (its query, or a
    ``user:password@``) is never written to disk."""
    return hashlib.sha256(url.encode("utf-8", "surrogateescape")).hexdigest()
