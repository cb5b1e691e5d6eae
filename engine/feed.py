"""Store: the Parquet feed, on local disk or object storage, written so that no reader ever
sees half a file.

Layout (``docs/schema.md`` is the contract), under the feed's root (a local folder or
``s3://bucket/prefix``, a :class:`~engine.storage.Store`)::

    matches/run_date=YYYY-MM-DD/part-<run_id>-<n>.parquet
    images/run_date=YYYY-MM-DD/part-<run_id>-<n>.parquet
    manifest.json        written when a run completes
    _SUCCESS             written last

A feed opened with ``staging=True`` keeps its parts under ``_staging/<kind>/run_date=.../``
instead (a table format publishes them in its own way); ``manifest.json`` and ``_SUCCESS`` stay
at the root and are still written last.

Shard I of N of a sharded job (:mod:`engine.shard`) names its parts
``part-<run_id>-sIofN-<n>.parquet`` and publishes ``manifest-shard-I-of-N.json`` then
``_SUCCESS-shard-I-of-N``; when every shard of one run date has, the dataset's ``manifest.json``
(every shard's files) and ``_SUCCESS`` follow. A shard's clean-ups touch only files that carry
its own tag (an unsharded feed: only untagged files), so N shards share one feed safely.

Each file is written atomically by the store (locally: a temporary name that starts with ``.``
and does not end in ``.parquet``, fsynced, renamed into place, the folder fsynced; on S3: one
upload under the final key). A part counts only once the checkpoint database lists it;
:meth:`Feed.remove_orphans` deletes whatever a crash left between the write and that commit,
and only parts of runs the checkpoints know: a feed whose checkpoints were lost is never
emptied by them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import StorageError
from engine.lock import dataset_lock
from engine.shard import UNSHARDED, Shard
from engine.state import PartRecord, utc_now
from engine.storage import TEMP_SUFFIX, LocalStore, Store, StoredFile, open_store

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from engine.jobfile import Job

KINDS = ("matches", "images")
TABLES = (*KINDS, "changes")
"""Every table folder of the feed: the two each batch writes, and ``changes``
(:mod:`engine.changes`), one part per completed run."""
SUCCESS_FILE = "_SUCCESS"
MANIFEST_FILE = "manifest.json"
STAGING = "_staging"
_PART_NAME = re.compile(
    r"\.?part-(?P<run_id>.+?)(?:-s(?P<index>\d+)of(?P<count>\d+))?-(?P<seq>\d+)\.parquet"
    rf"(?:{re.escape(TEMP_SUFFIX)})?"
)


@dataclass(frozen=True, init=False)
class Feed:
    """The Parquet side of one feed, as one shard (by default the only one) sees it: the files
    it writes, cleans up and publishes.

    Args:
        out: the feed's root: a :class:`~engine.storage.Store`, or a local folder.
        zstd_level: the parts' zstd compression level.
        shard: whose files these are.
        staging: keep parts under ``_staging/`` (see the module's docstring).
        lock_dir: the local folder of :func:`~engine.lock.dataset_lock`, which shards take while
            publishing the dataset's ``_SUCCESS``; by default a local feed's own folder. A
            sharded feed on object storage needs one (the job's state directory).
    """

    store: Store
    zstd_level: int
    shard: Shard
    staging: bool
    lock_dir: Path | None

    def __init__(
        self,
        out: Path | Store,
        zstd_level: int = 6,
        shard: Shard = UNSHARDED,
        *,
        staging: bool = False,
        lock_dir: Path | None = None,
    ) -> None:
        store = LocalStore(out) if isinstance(out, Path) else out
        if lock_dir is None and isinstance(store, LocalStore):
            lock_dir = store.root
        if shard.sharded and lock_dir is None:
            raise ValueError(f"shard {shard} of a feed on {store.url} needs a local lock_dir")
        for name, value in (
            ("store", store),
            ("zstd_level", zstd_level),
            ("shard", shard),
            ("staging", staging),
            ("lock_dir", lock_dir),
        ):
            object.__setattr__(self, name, value)

    def part_key(self, kind: str, run_date: str, name: str) -> str:
        """A part's key in the store: ``[_staging/]<kind>/run_date=<date>/<name>``."""
        return f"{self._parts_root}{kind}/run_date={run_date}/{name}"

    def part_path(self, kind: str, run_date: str, name: str) -> Path | str:
        """Where a part is, for a person: its local path, or its object's URL."""
        return self.store.location(self.part_key(kind, run_date, name))

    def part_name(self, run_id: str, seq: int) -> str:
        """``part-<run_id>-<seq>.parquet``, with ``-sIofN`` after the run id for a shard."""
        tag = f"-s{self.shard.index}of{self.shard.count}" if self.shard.sharded else ""
        return f"part-{run_id}{tag}-{seq:06d}.parquet"

    def owns(self, file_name: str) -> bool:
        """Whether a file under a table folder (:data:`TABLES`) is this shard's to clean up: a part
        (or its temporary) with this shard's tag; for an unsharded feed, any file without one."""
        return _shard_tag(file_name) == (
            (self.shard.index, self.shard.count) if self.shard.sharded else None
        )

    @property
    def manifest_path(self) -> Path | str:
        return self.store.location(self.shard.file_name(MANIFEST_FILE))

    def write_part(
        self, kind: str, run_id: str, run_date: str, seq: int, table: pa.Table
    ) -> PartRecord:
        """Write one part durably under its final name; the caller registers it afterwards."""
        name = self.part_name(run_id, seq)
        self.store.write_parquet(self.part_key(kind, run_date, name), table, **self._options())
        return PartRecord(
            name=name, run_id=run_id, kind=kind, run_date=run_date, rows=table.num_rows
        )

    def write_part_stream(
        self,
        kind: str,
        run_id: str,
        run_date: str,
        seq: int,
        schema: pa.Schema,
        tables: Iterable[pa.Table],
    ) -> PartRecord:
        """Write one part from ``tables`` (each one row group or more, pulled as written: a
        part larger than memory streams), durably under its final name like
        :meth:`write_part`; the caller registers it afterwards."""
        name = self.part_name(run_id, seq)
        rows = self.store.write_parquet_stream(
            self.part_key(kind, run_date, name), schema, tables, **self._options()
        )
        return PartRecord(name=name, run_id=run_id, kind=kind, run_date=run_date, rows=rows)

    def _options(self) -> dict[str, Any]:
        """How every part is written: zstd at the job's level, with column statistics."""
        return {
            "compression": "zstd",
            "compression_level": self.zstd_level,
            "write_statistics": True,
        }

    def open_part(
        self, kind: str, run_date: str, name: str, metadata: pq.FileMetaData | None = None
    ) -> pq.ParquetFile:
        """One part opened for reading (its footer read, unless ``metadata`` from an earlier
        opening is given; its row groups as they are asked for); it owns its file: use it in
        a ``with``.

        Raises:
            StorageError: the part is missing or not a readable Parquet file.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        filesystem, root = self.store.filesystem()
        key = self.part_key(kind, run_date, name)
        try:
            return pq.ParquetFile(f"{root}/{key}", filesystem=filesystem, metadata=metadata)
        except (OSError, pa.ArrowInvalid) as exc:
            raise StorageError(f"cannot read {self.store.location(key)}: {exc}") from None

    def remove_orphans(
        self, registered: Iterable[PartRecord], known_runs: Collection[str] | None = None
    ) -> list[Path | str]:
        """Delete this shard's part files that ``registered`` (its checkpoints) does not list,
        and its temporary files; another shard's files are never touched. With ``known_runs``
        (the run ids the checkpoints hold), a part of any other run is kept: checkpoints that
        were lost or replaced must not empty the feed. Returns where the deleted files were."""
        keep = {self.part_key(p.kind, p.run_date, p.name) for p in registered}
        removed: list[Path | str] = []
        for file in self._own_files():
            name = file.key.rpartition("/")[2]
            if file.key in keep:
                continue
            temporary = name.endswith(TEMP_SUFFIX)
            if not temporary and (
                not name.endswith(".parquet")
                or (known_runs is not None and _run_of(name) not in known_runs)
            ):
                continue
            self.store.delete(file.key)
            removed.append(self.store.location(file.key))
        return removed

    def delete_parts(self, parts: Iterable[PartRecord]) -> None:
        for part in parts:
            self.store.delete(self.part_key(part.kind, part.run_date, part.name))

    def clear(self) -> None:
        """Remove this shard's parts and completion markers, and the dataset's ``_SUCCESS``
        (``--fresh``); folders left empty go too. Another shard's files are kept."""
        self.mark_incomplete()
        for file in self._own_files():
            self.store.delete(file.key)
        for kind in TABLES:
            self.store.remove_empty_folders(self._parts_root + kind)

    def mark_incomplete(self) -> None:
        """The dataset is about to change: readers must stop trusting it until ``_SUCCESS``.
        A shard removes the dataset's ``_SUCCESS`` first, then its own marker."""
        own = self.shard.file_name(SUCCESS_FILE)
        if not self.shard.sharded:
            self.store.delete(own)
            return
        with self._dataset_lock():
            self.store.delete(SUCCESS_FILE)
            self.store.delete(own)

    def mark_complete(self, manifest: dict[str, object]) -> None:
        """Write the manifest, then ``_SUCCESS``: the last two files of a finished run.

        A shard writes its own (``manifest-shard-I-of-N.json``, with a ``shard`` key, then
        ``_SUCCESS-shard-I-of-N``); when every shard's marker is there and their manifests have
        this one's ``run_date``, the dataset's ``manifest.json`` (every shard's files) and
        ``_SUCCESS`` follow. All under :func:`~engine.lock.dataset_lock`, so that of shards
        finishing at once, the last one sees every marker.
        """
        manifest_key = self.shard.file_name(MANIFEST_FILE)
        success_key = self.shard.file_name(SUCCESS_FILE)
        if not self.shard.sharded:
            self._write_json(manifest_key, manifest)
            self.store.write_bytes(success_key, b"")
            return
        with self._dataset_lock():
            self._write_json(manifest_key, manifest | {"shard": str(self.shard)})
            self.store.write_bytes(success_key, b"")
            dataset = self._dataset_manifest(str(manifest["run_date"]))
            if dataset is not None:
                self._write_json(MANIFEST_FILE, dataset)
                self.store.write_bytes(SUCCESS_FILE, b"")

    def read_manifest(self) -> dict[str, object] | None:
        """This shard's manifest (the dataset's when unsharded); ``None`` if absent or broken."""
        return self._read_json(self.shard.file_name(MANIFEST_FILE))

    @property
    def _parts_root(self) -> str:
        return f"{STAGING}/" if self.staging else ""

    def _dataset_lock(self) -> contextlib.AbstractContextManager[None]:
        assert self.lock_dir is not None  # __init__ refuses a sharded feed without one
        return dataset_lock(self.lock_dir)

    def _write_json(self, key: str, data: dict[str, object]) -> None:
        text = json.dumps(data, indent=2, default=str) + "\n"
        self.store.write_bytes(key, text.encode("utf-8"))

    def _read_json(self, key: str) -> dict[str, object] | None:
        text = self.store.read_text(key)
        if text is None:
            return None
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    def _dataset_manifest(self, run_date: str) -> dict[str, object] | None:
        """The dataset's manifest if every shard has completed a run of ``run_date``, else
        ``None``: every shard's files (they list all their run dates), and this date's rows."""
        shards: list[tuple[Shard, dict[str, object]]] = []
        for index in range(self.shard.count):
            shard = Shard(index, self.shard.count)
            manifest = self._read_json(shard.file_name(MANIFEST_FILE))
            done = self.store.exists(shard.file_name(SUCCESS_FILE))
            if not done or manifest is None or manifest.get("run_date") != run_date:
                return None
            shards.append((shard, manifest))
        files: dict[str, object] = {}
        rows = dict.fromkeys(KINDS, 0)
        for _, manifest in shards:
            for entry in _list_of_dicts(manifest.get("files")):
                files[str(entry["path"])] = entry
            counts = manifest.get("rows")
            for kind in KINDS:
                rows[kind] += int(counts.get(kind, 0)) if isinstance(counts, dict) else 0
        return {
            "schema_version": shards[0][1].get("schema_version"),
            "run_date": run_date,
            "completed_at": utc_now().isoformat(),
            "shard_count": self.shard.count,
            "shards": [
                {
                    "shard": str(shard),
                    "run_id": manifest.get("run_id"),
                    "manifest": shard.file_name(MANIFEST_FILE),
                }
                for shard, manifest in shards
            ],
            "files": [files[path] for path in sorted(files)],
            "rows": rows,
        }

    def _own_files(self) -> list[StoredFile]:
        """Every file under the table folders (:data:`TABLES`) that this feed :meth:`owns`."""
        return [
            file
            for kind in TABLES
            for file in self.store.list_files(self._parts_root + kind)
            if self.owns(file.key.rpartition("/")[2])
        ]


def job_feed(job: Job) -> Feed:
    """The feed ``job`` writes: at ``output.dir`` (:attr:`~engine.jobfile.Job.feed_location`),
    with its compression level and shard, its dataset lock in the job's local folder.

    Raises:
        ConfigError: the output is not usable (checked when the job was loaded, again here).
    """
    store = open_store(job.feed_location, os.environ)
    # A table format publishes a completed run itself: until then its parts are staged.
    staging = job.output_format != "parquet"
    return Feed(store, job.zstd_level, job.shard, staging=staging, lock_dir=job.out)


def last_seq(parts: Iterable[PartRecord]) -> int:
    """The highest sequence number of ``parts`` (0 without any): the next part takes one more."""
    return max((part_seq(p.name) for p in parts), default=0)


def part_seq(name: str) -> int:
    """The sequence number in a part file's name, sharded or not.

    Raises:
        ValueError: not a part name this module writes.
    """
    match = _PART_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"not a part file name: {name!r}")
    return int(match["seq"])


def _run_of(file_name: str) -> str | None:
    """The run id in a part (or temporary) name; ``None`` for any other name."""
    match = _PART_NAME.fullmatch(file_name)
    return None if match is None else match["run_id"]


def _shard_tag(file_name: str) -> tuple[int, int] | None:
    """``(I, N)`` of a part (or temporary) name tagged ``-sIofN``; ``None`` for any other."""
    match = _PART_NAME.fullmatch(file_name)
    if match is None or match["index"] is None:
        return None
    return int(match["index"]), int(match["count"])


def manifest_files(parts: Iterable[PartRecord]) -> list[dict[str, object]]:
    """The ``files`` list of ``manifest.json``: every part of the dataset, with its rows."""
    return [
        {
            "path": f"{p.kind}/run_date={p.run_date}/{p.name}",
            "table": p.kind,
            "run_id": p.run_id,
            "rows": p.rows,
        }
        for p in parts
    ]


def _list_of_dicts(value: object) -> list[dict[str, object]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
