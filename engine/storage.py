"""Where bytes live: a local folder or an S3 bucket (AWS S3, Alibaba Cloud OSS, MinIO).

One job: turn an ``output.dir`` or ``inputs.paths`` entry into a :class:`Store` after checking it
(before any call), and give the feed and the input walk the few operations they need on it, the
same on both: write a whole file atomically, read, list, delete. Keys are ``/``-separated paths
relative to the store's root (``matches/run_date=2026-12-02/part-....parquet``).

* Local folders keep the durable path: a temporary name, fsync, rename, fsync of the folder.
* S3 goes through pyarrow's filesystems (``pyarrow.fs.S3FileSystem``, the AWS SDK inside
  pyarrow: no other package). An S3 PUT of a whole object is atomic (a reader never sees half an
  object under its key) and there is no rename, so an object is uploaded under its final key,
  from a buffer built first: a file that fails to serialise never becomes an object.

Credentials and the endpoint come from the standard AWS variables and files, never from the job
file. A URL of another scheme, or an S3 URL with no credentials configured at all, is a
:class:`~engine.errors.ConfigError` naming the setting, raised before any network call; no
message carries a secret. pyarrow loads on the first use of a store, not on import.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

from engine.errors import ConfigError, StorageError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

T = TypeVar("T")
S3_SCHEME = "s3"
TEMP_SUFFIX = ".inprogress"
"""Local temporary files end so: never ``.parquet``, so ``**/*.parquet`` globs skip them."""
CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 120.0
"""Seconds: an endpoint that stops answering becomes an error instead of a hang."""

_SCHEME = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*):")
_DRIVE = re.compile(r"[A-Za-z]:($|[\\/])")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CREDENTIAL_VARIABLES = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
_CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (with AWS_ENDPOINT_URL for MinIO or"
    " Alibaba Cloud OSS), or AWS_PROFILE naming a profile of ~/.aws/credentials;"
    " credentials never come from the job file"
)


@dataclass(frozen=True)
class S3Url:
    """A checked ``s3://bucket/prefix``: the prefix has no leading, trailing or doubled ``/``."""

    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def parse_location(text: str, setting: str) -> Path | S3Url:
    """A local path (as written: the caller resolves it) or an :class:`S3Url`. Pure.

    Raises:
        ConfigError: naming ``setting``: a URL of another scheme (``gs://``, ``file:``, a
            Windows drive ``C:``), or an S3 URL without a bucket, with credentials, a query or
            ``.``/``..`` segments. A relative name that starts like a scheme (``name:``) is
            refused too: written ``./name:`` it is a local folder.
    """
    if _DRIVE.match(text):
        raise ConfigError(
            f"{setting}: {text!r} is a Windows drive path; img1688 takes a local POSIX path or"
            " s3://bucket/prefix"
        )
    scheme = _SCHEME.match(text)
    if scheme is None:
        return Path(text)
    name = scheme["scheme"].lower()
    if name != S3_SCHEME or not text[scheme.end() :].startswith("//"):
        raise ConfigError(
            f"{setting}: {shown_url(text)!r} has the scheme {name + ':'!r}; img1688 reads and"
            " writes local paths and s3://bucket/prefix only (AWS S3, or MinIO and Alibaba Cloud"
            " OSS through AWS_ENDPOINT_URL). For a local folder whose name has a colon, write"
            f" ./{shown_url(text)}"
        )
    try:
        parts = urlsplit(text)
        bucket = parts.netloc  # not .hostname, which lower-cases: "Feeds" is no bucket
    except ValueError:
        raise ConfigError(f"{setting}: {shown_url(text)!r} is not a valid s3:// URL") from None
    if "@" in parts.netloc:
        raise ConfigError(
            f"{setting}: an s3:// URL must not carry credentials; {_CREDENTIALS_HINT}"
        )
    if parts.query or parts.fragment or ":" in bucket:
        raise ConfigError(
            f"{setting}: {shown_url(text)!r}: write s3://bucket/prefix, with no port, query or"
            " fragment"
            " (the endpoint comes from AWS_ENDPOINT_URL)"
        )
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{setting}: {shown_url(text)!r} names no valid bucket: write s3://bucket/prefix,"
            " the bucket 3 to 63 lower-case letters, digits, dots or hyphens"
        )
    segments = [s for s in parts.path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise ConfigError(
            f"{setting}: {shown_url(text)!r}: '.' and '..' are not allowed in an s3:// prefix"
        )
    return S3Url(bucket, "/".join(segments))


def shown_url(text: str) -> str:
    """``text`` (a URL, or any setting's text) without the user or password, query or fragment
    a URL carries: safe for a message, a file or the feed."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return text
    authority, slash, path = rest.partition("/")
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    authority = re.split(r"[?#]", authority, maxsplit=1)[0]
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def check_credentials(environ: Mapping[str, str], setting: str, url: S3Url) -> None:
    """Refuse, before any call, an S3 URL with no credential source configured: the access key
    variables (both), a profile, a web identity or container credentials variable, or a
    shared credentials or config file. Also checks ``AWS_ENDPOINT_URL``. Never quotes a value
    that could be secret.

    Raises:
        ConfigError: naming ``setting`` and what to set.
    """
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if bool(key) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if key else "AWS_ACCESS_KEY_ID"
        raise ConfigError(
            f"{setting}: {url} is on S3 and {missing} is not set (AWS_ACCESS_KEY_ID and"
            " AWS_SECRET_ACCESS_KEY go together)"
        )
    _endpoint(environ)
    if key or any(environ.get(name) for name in _CREDENTIAL_VARIABLES):
        return
    if any(path is not None and path.is_file() for path in _aws_files(environ)):
        return
    raise ConfigError(
        f"{setting}: {url} is on S3 but no AWS credentials are configured: {_CREDENTIALS_HINT}"
    )


def _aws_files(environ: Mapping[str, str]) -> list[Path | None]:
    """The shared credentials and config files the AWS SDK would read."""
    home = environ.get("HOME")
    aws = Path(home) / ".aws" if home else None
    return [
        Path(environ["AWS_SHARED_CREDENTIALS_FILE"])
        if environ.get("AWS_SHARED_CREDENTIALS_FILE")
        else (aws / "credentials" if aws else None),
        Path(environ["AWS_CONFIG_FILE"])
        if environ.get("AWS_CONFIG_FILE")
        else (aws / "config" if aws else None),
    ]


def _endpoint(environ: Mapping[str, str]) -> str | None:
    """The S3 endpoint (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``), if any.

    Raises:
        ConfigError: it is set but not an http(s) URL with a host.
    """
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        value = environ.get(name)
        if not value:
            continue
        try:
            parts = urlsplit(value)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(
                f"{name}: not an http(s) URL with a host (e.g. http://127.0.0.1:9000 for MinIO)"
            )
        return value.rstrip("/")
    return None


def default_state_dir(url: S3Url, environ: Mapping[str, str]) -> Path:
    """Where the checkpoints of a feed at ``url`` stay by default:
    ``$XDG_STATE_HOME/img1688/s3/<bucket>/<prefix>`` (``~/.local/state`` without it).

    Raises:
        ConfigError: neither ``XDG_STATE_HOME`` nor ``HOME`` is set.
    """
    base = environ.get("XDG_STATE_HOME")
    if not base:
        home = environ.get("HOME")
        if not home:
            raise ConfigError(
                f"output.state_dir: {url} needs a local folder for the job's checkpoints and"
                " neither XDG_STATE_HOME nor HOME is set: set output.state_dir"
            )
        base = str(Path(home) / ".local" / "state")
    return Path(base, "img1688", "s3", url.bucket, *url.prefix.split("/") if url.prefix else ())


@dataclass(frozen=True)
class StoredFile:
    """A file of a listing: its key (relative to the store's root), size and modification."""

    key: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ObjectVersion:
    """What tells one version of an input file from another: size, modification time, and on
    S3 the object's ETag (pyarrow's listings drop it: one HEAD request gives it)."""

    size: int
    mtime_ns: int
    etag: str | None


class Store(ABC):
    """A root (a local folder, or a bucket and prefix) and the operations the engine needs
    under it. Every method raises :class:`~engine.errors.StorageError` when the disk or the
    service fails, with the file's location and the cause, never a secret."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The root as a person names it: an absolute local path, or ``s3://bucket/prefix``."""

    @abstractmethod
    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """pyarrow's filesystem for the store and the root's path in it (for readers such as
        ``pyarrow.dataset`` and writers of other formats)."""

    @abstractmethod
    def storage_options(self) -> dict[str, str]:
        """The settings a deltalake (object_store) reader or writer needs for this root; empty
        for a local folder. Holds credentials when the environment gives them: never log it."""

    @abstractmethod
    def location(self, key: str) -> Path | str:
        """Where ``key`` is, for a person: a local :class:`~pathlib.Path`, or the object's URL."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Put ``data`` under ``key`` atomically and durably: a reader sees the old file or the
        new one, and after a crash the new one or none."""

    @abstractmethod
    def write_parquet(self, key: str, table: pa.Table, **options: Any) -> None:
        """Write ``table`` as Parquet under ``key`` (``options`` go to
        ``pyarrow.parquet.write_table``), atomically like :meth:`write_bytes`."""

    @abstractmethod
    def write_parquet_stream(
        self, key: str, schema: pa.Schema, tables: Iterable[pa.Table], **options: Any
    ) -> int:
        """Write ``tables`` (one row group or more each, pulled one at a time) as one Parquet
        file of ``schema`` under ``key``; returns its rows. Locally atomic like
        :meth:`write_bytes`. On S3 the upload streams to the final key (a file may be far larger
        than memory should hold): a kill leaves no object (an upload completes only when
        closed), and a failure deletes what was written. An exception from ``tables`` is
        raised as it is, after that clean-up."""

    @abstractmethod
    def read_bytes(self, key: str, limit: int | None = None) -> bytes | None:
        """The file's bytes (at most ``limit``), or ``None`` if there is no such file."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing file is no error (a crash may have removed it already)."""

    @abstractmethod
    def list_files(self, prefix: str) -> list[StoredFile]:
        """Every file under the folder ``prefix`` (recursively), sorted by key; empty when
        there is none."""

    @abstractmethod
    def remove_empty_folders(self, prefix: str) -> None:
        """Remove the folders left empty under ``prefix``, and ``prefix`` itself if empty."""

    def read_text(self, key: str) -> str | None:
        """The file as UTF-8 text, or ``None`` if there is no such file."""
        data = self.read_bytes(key)
        return None if data is None else data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class LocalStore(Store):
    """A local folder; writes are temp file, fsync, rename, fsync of the folder."""

    root: Path

    @property
    def url(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        """The local path of ``key``."""
        return self.root / key if key else self.root

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        import pyarrow.fs as pafs

        return pafs.LocalFileSystem(), str(self.root)

    def storage_options(self) -> dict[str, str]:
        return {}

    def location(self, key: str) -> Path:
        return self.path(key)

    def write_bytes(self, key: str, data: bytes) -> None:
        """As :meth:`Store.write_bytes`; creates the folders under the root, never the root
        itself (a root gone missing is an error, not something to recreate silently)."""
        self._atomic(key, lambda temp: temp.write_bytes(data), make_root=False)

    def write_parquet(self, key: str, table: pa.Table, **options: Any) -> None:
        """As :meth:`Store.write_parquet`; creates the folders it needs, the root included
        (an output folder is made by its first part)."""
        import pyarrow.parquet as pq  # looked up at the call: tests swap write_table

        self._atomic(key, lambda temp: pq.write_table(table, temp, **options), make_root=True)

    def write_parquet_stream(
        self, key: str, schema: pa.Schema, tables: Iterable[pa.Table], **options: Any
    ) -> int:
        import pyarrow.parquet as pq

        def write(temp: Path) -> int:
            with pq.ParquetWriter(temp, schema, **options) as writer:
                return _write_tables(writer, tables)

        return self._atomic(key, write, make_root=True)

    def _atomic(self, key: str, write: Callable[[Path], T], *, make_root: bool) -> T:
        """:func:`write_atomic` of ``key``'s file, its folder made first if needed."""
        final = self.path(key)
        if make_root or (final.parent != self.root and self.root.is_dir()):
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot write {final}: {exc.strerror or exc}") from None
        return write_atomic(final, write)

    def read_bytes(self, key: str, limit: int | None = None) -> bytes | None:
        path = self.path(key)
        try:
            with open(path, "rb") as handle:
                return handle.read(-1 if limit is None else limit)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {path}: {exc.strerror or exc}") from None

    def list_files(self, prefix: str) -> list[StoredFile]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        found: list[StoredFile] = []
        for path in folder.rglob("*"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # removed since the listing
            if stat.S_ISREG(st.st_mode):
                found.append(StoredFile(self._key(path), st.st_size, st.st_mtime_ns))
        return sorted(found, key=lambda f: f.key)

    def remove_empty_folders(self, prefix: str) -> None:
        folder = self.path(prefix)
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("*"), reverse=True):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()

    def _key(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


@dataclass(frozen=True)
class S3Store(Store):
    """A bucket and prefix on S3 (or an S3-compatible service at ``AWS_ENDPOINT_URL``)."""

    where: S3Url
    settings: dict[str, str] = field(repr=False, compare=False)
    """The AWS_* settings taken from the environment: they may hold secrets."""
    _filesystem: list[pafs.S3FileSystem] = field(
        default_factory=list, init=False, repr=False, compare=False
    )
    """The filesystem, made on first use (a one-element cache: the dataclass is frozen)."""

    @property
    def url(self) -> str:
        return str(self.where)

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        return self._fs(), self._root()

    def _fs(self) -> pafs.S3FileSystem:
        if not self._filesystem:
            import pyarrow.fs as pafs

            settings = self.settings
            self._filesystem.append(
                pafs.S3FileSystem(
                    access_key=settings.get("AWS_ACCESS_KEY_ID"),
                    secret_key=settings.get("AWS_SECRET_ACCESS_KEY"),
                    session_token=settings.get("AWS_SESSION_TOKEN"),
                    region=settings.get("AWS_REGION"),
                    endpoint_override=settings.get("AWS_ENDPOINT_URL"),
                    connect_timeout=CONNECT_TIMEOUT,
                    request_timeout=REQUEST_TIMEOUT,
                )
            )
        return self._filesystem[0]

    def _root(self) -> str:
        return f"{self.where.bucket}/{self.where.prefix}".rstrip("/")

    def _path(self, key: str) -> str:
        return f"{self._root()}/{key}" if key else self._root()

    def storage_options(self) -> dict[str, str]:
        options = dict(self.settings)
        if options.get("AWS_ENDPOINT_URL", "").startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
        # deltalake's S3 commits need a lock provider or this: safe for one writer per table.
        options["AWS_S3_ALLOW_UNSAFE_RENAME"] = "true"
        return options

    def location(self, key: str) -> str:
        return f"s3://{self._path(key)}"

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            with self._fs().open_output_stream(path) as stream:
                stream.write(data)
        except OSError as exc:
            self._forget(path)
            raise StorageError(f"cannot write {self.location(key)}: {exc}") from None

    def write_parquet(self, key: str, table: pa.Table, **options: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **options)
        self.write_bytes(key, sink.getvalue().to_pybytes())

    def write_parquet_stream(
        self, key: str, schema: pa.Schema, tables: Iterable[pa.Table], **options: Any
    ) -> int:
        import pyarrow.parquet as pq

        path = self._path(key)
        try:
            with (
                self._fs().open_output_stream(path) as stream,
                pq.ParquetWriter(stream, schema, **options) as writer,
            ):
                rows = _write_tables(writer, tables)
        except OSError as exc:
            self._forget(path)
            raise StorageError(f"cannot write {self.location(key)}: {exc}") from None
        except BaseException:
            # Closing the stream on the way out completed the upload with what was written.
            self._forget(path)
            raise
        return rows

    def _forget(self, path: str) -> None:
        """Remove whatever a failed upload may have left under ``path``, if anything."""
        # Nothing was left, or the service is down: an unregistered object is an orphan anyway.
        with suppress(OSError):
            self._fs().delete_file(path)

    def read_bytes(self, key: str, limit: int | None = None) -> bytes | None:
        try:
            with self._fs().open_input_stream(self._path(key)) as stream:
                return bytes(stream.read(limit))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.location(key)}: {exc}") from None

    def exists(self, key: str) -> bool:
        return self.kind(key) != "missing"

    def delete(self, key: str) -> None:
        try:
            self._fs().delete_file(self._path(key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete {self.location(key)}: {exc}") from None

    def list_files(self, prefix: str) -> list[StoredFile]:
        import pyarrow.fs as pafs

        infos = self._list(
            pafs.FileSelector(self._path(prefix), recursive=True, allow_not_found=True)
        )
        return self._stored(infos)

    def list_folder(self, prefix: str) -> tuple[list[str], list[StoredFile]]:
        """One level of the folder ``prefix``: its sub-folders' keys and its files, sorted.

        Raises:
            FileNotFoundError: there is no such folder.
        """
        import pyarrow.fs as pafs

        infos = self._list(pafs.FileSelector(self._path(prefix), recursive=False))
        folders = sorted(self._key(i.path) for i in infos if _kind(i) == "folder")
        return folders, self._stored(infos)

    def version(self, key: str) -> ObjectVersion | None:
        """The object's :class:`ObjectVersion`, from one HEAD request (pyarrow's listings drop
        the ETag; opening the object for reading makes that request and fetches no byte of
        the body); ``None`` if there is no such object."""
        try:
            with self._fs().open_input_stream(self._path(key)) as stream:
                head = stream.metadata()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.location(key)}: {exc}") from None
        etag = _header(head, "ETag").strip('"')
        modified = _header(head, "Last-Modified")
        try:
            mtime_ns = int(datetime.fromisoformat(modified).timestamp()) * 1_000_000_000
        except ValueError:
            mtime_ns = 0
        return ObjectVersion(int(_header(head, "Content-Length") or 0), mtime_ns, etag or None)

    def kind(self, key: str) -> Literal["file", "folder", "missing"]:
        """Whether ``key`` is an object, a "folder" (a prefix with objects under it), or
        neither."""
        return _kind(self._info(key))

    def remove_empty_folders(self, prefix: str) -> None:
        """Object storage has no folders: nothing to remove."""

    def _info(self, key: str) -> pafs.FileInfo:
        try:
            return self._fs().get_file_info(self._path(key))
        except OSError as exc:
            raise StorageError(f"cannot read {self.location(key)}: {exc}") from None

    def _list(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        try:
            return list(self._fs().get_file_info(selector))
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot list s3://{selector.base_dir}: {exc}") from None

    def _key(self, path: str) -> str:
        return path[len(self._root()) + 1 :] if self._root() else path

    def _stored(self, infos: list[pafs.FileInfo]) -> list[StoredFile]:
        files = [
            StoredFile(self._key(i.path), int(i.size or 0), int(i.mtime_ns or 0))
            for i in infos
            if _kind(i) == "file"
        ]
        return sorted(files, key=lambda f: f.key)


def _write_tables(writer: pq.ParquetWriter, tables: Iterable[pa.Table]) -> int:
    rows = 0
    for table in tables:
        writer.write_table(table)
        rows += table.num_rows
    return rows


def _header(head: Mapping[str, bytes], name: str) -> str:
    return bytes(head.get(name, b"")).decode("ascii", "replace")


def _kind(info: pafs.FileInfo) -> Literal["file", "folder", "missing"]:
    import pyarrow.fs as pafs

    if info.type == pafs.FileType.File:
        return "file"
    return "folder" if info.type == pafs.FileType.Directory else "missing"


def open_store(text: str, environ: Mapping[str, str], *, setting: str = "output.dir") -> Store:
    """The store ``text`` names: a local folder (resolved as given: pass an absolute path), or
    ``s3://bucket/prefix``. Makes no network call.

    Raises:
        ConfigError: as :func:`parse_location` and :func:`check_credentials` say.
    """
    where = parse_location(text, setting)
    if isinstance(where, Path):
        return LocalStore(where)
    check_credentials(environ, setting, where)
    return S3Store(where, _s3_settings(environ))


def _s3_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """The AWS_* settings the filesystem and deltalake are given. Profiles and the other
    credential sources are left to the AWS SDK, which reads them itself."""
    settings = {
        name: environ[name]
        for name in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        )
        if environ.get(name)
    }
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    endpoint = _endpoint(environ)
    if endpoint is not None:
        settings["AWS_ENDPOINT_URL"] = endpoint
        # A service of our own naming has no region lookup; S3-compatible ones accept any.
        region = region or "us-east-1"
    if region:
        settings["AWS_REGION"] = region
    return settings


def finalize_s3() -> None:
    """Shut down the AWS SDK inside pyarrow, if this process started it; S3 is unusable after.

    Call it once, as the process ends. Arrow asks applications to (``FinalizeS3`` in its
    ``s3fs.cc``); the ``atexit`` handler pyarrow registers instead runs during interpreter
    shutdown, where it has been reported to deadlock and keep a finished process alive
    (apache/arrow#50188): a nightly job that never exits.
    """
    if "pyarrow.fs" in sys.modules:  # never imported: S3 was never started
        sys.modules["pyarrow.fs"].ensure_s3_finalized()


def write_atomic(final: Path, write: Callable[[Path], T], *, temp: Path | None = None) -> T:
    """``write`` a hidden temporary beside ``final`` (``temp``, by default
    ``.NAME.inprogress``), fsync it, rename it into place, fsync the folder: a failed or
    interrupted write never leaves a partial file under the final name. The temporary is
    removed on any failure, whose ``OSError`` becomes a :class:`~engine.errors.StorageError`
    (other exceptions pass as they are)."""
    temp = temp or final.with_name(f".{final.name}{TEMP_SUFFIX}")
    try:
        result = write(temp)
        _fsync_path(temp)
        os.replace(temp, final)
        _fsync_path(final.parent)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {final}: {exc.strerror or exc}") from None
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return result


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
