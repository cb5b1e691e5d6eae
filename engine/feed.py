"""Store: the Parquet feed on disk, written so that no reader ever sees half a file.

Layout (``docs/schema.md`` is the contract)::

    OUT/matches/run_date=YYYY-MM-DD/part-<run_id>-<n>.parquet
    OUT/images/run_date=YYYY-MM-DD/part-<run_id>-<n>.parquet
    OUT/manifest.json        written when a run completes
    OUT/_SUCCESS             written last

Shard I of N of a sharded job (:mod:`engine.shard`) names its parts
``part-<run_id>-sIofN-<n>.parquet`` and publishes ``manifest-shard-I-of-N.json`` then
``_SUCCESS-shard-I-of-N``; when every shard of one run date has, the dataset's ``manifest.json``
(every shard's files) and ``_SUCCESS`` follow. A shard's clean-ups touch only files that carry
its own tag (an unsharded feed: only untagged files), so N shards share one directory safely.

pyarrow has no atomic write, and a writer killed before ``close()`` leaves a file no reader can
open. So each part is written under a temporary name that starts with ``.`` and does not end
in ``.parquet`` (pyarrow skips dot files, and ``**/*.parquet`` globs in DuckDB or Polars do not
match it), fsynced, renamed into place, and the folder fsynced. A part counts only once the
checkpoint database lists it; :meth:`Feed.remove_orphans` deletes whatever a crash left between
the rename and that commit.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import StorageError
from engine.lock import dataset_lock
from engine.shard import UNSHARDED, Shard
from engine.state import PartRecord, utc_now

if TYPE_CHECKING:
    import pyarrow as pa

KINDS = ("matches", "images")
SUCCESS_FILE = "_SUCCESS"
MANIFEST_FILE = "manifest.json"
_TEMP_SUFFIX = ".inprogress"
_PART_NAME = re.compile(
    r"\.?part-(?P<run_id>.+?)(?:-s(?P<index>\d+)of(?P<count>\d+))?-(?P<seq>\d+)\.parquet"
    rf"(?:{re.escape(_TEMP_SUFFIX)})?"
)


@dataclass(frozen=True)
class Feed:
    """The Parquet side of one output directory, as one shard (by default the only one) sees
    it: the files it writes, cleans up and publishes."""

    out: Path
    zstd_level: int = 6
    shard: Shard = UNSHARDED

    def part_path(self, kind: str, run_date: str, name: str) -> Path:
        return self.out / kind / f"run_date={run_date}" / name

    def part_name(self, run_id: str, seq: int) -> str:
        """``part-<run_id>-<seq>.parquet``, with ``-sIofN`` after the run id for a shard."""
        tag = f"-s{self.shard.index}of{self.shard.count}" if self.shard.sharded else ""
        return f"part-{run_id}{tag}-{seq:06d}.parquet"

    def owns(self, file_name: str) -> bool:
        """Whether a file under ``matches/`` or ``images/`` is this shard's to clean up: a part
        (or its temporary) with this shard's tag; for an unsharded feed, any file without one."""
        return _shard_tag(file_name) == (
            (self.shard.index, self.shard.count) if self.shard.sharded else None
        )

    @property
    def success_path(self) -> Path:
        """This shard's completion marker (the dataset's ``_SUCCESS`` when unsharded)."""
        return self.out / self.shard.file_name(SUCCESS_FILE)

    @property
    def manifest_path(self) -> Path:
        return self.out / self.shard.file_name(MANIFEST_FILE)

    def write_part(
        self, kind: str, run_id: str, run_date: str, seq: int, table: pa.Table
    ) -> PartRecord:
        """Write one part durably under its final name; the caller registers it afterwards."""
        import pyarrow.parquet as pq  # here, so that reading markers stays a light import

        name = self.part_name(run_id, seq)
        final = self.part_path(kind, run_date, name)
        temp = final.with_name(f".{name}{_TEMP_SUFFIX}")
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                table,
                temp,
                compression="zstd",
                compression_level=self.zstd_level,
                write_statistics=True,
            )
            _fsync_path(temp)
            os.replace(temp, final)
            _fsync_path(final.parent)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {final}: {exc.strerror or exc}") from None
        return PartRecord(
            name=name, run_id=run_id, kind=kind, run_date=run_date, rows=table.num_rows
        )

    def remove_orphans(self, registered: Iterable[PartRecord]) -> list[Path]:
        """Delete this shard's part files that ``registered`` (its checkpoints) does not list,
        and its temporary files; another shard's files are never touched. Returns them."""
        keep = {self.part_path(p.kind, p.run_date, p.name) for p in registered}
        removed: list[Path] = []
        for path in self._own_files():
            if path not in keep and (path.suffix == ".parquet" or path.name.endswith(_TEMP_SUFFIX)):
                path.unlink()
                removed.append(path)
        return removed

    def delete_parts(self, parts: Iterable[PartRecord]) -> None:
        for part in parts:
            self.part_path(part.kind, part.run_date, part.name).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove this shard's parts and completion markers, and the dataset's ``_SUCCESS``
        (``--fresh``); folders left empty go too. Another shard's files are kept."""
        self.mark_incomplete()
        for path in self._own_files():
            path.unlink()
        for kind in KINDS:
            folder = self.out / kind
            if folder.is_dir():
                for path in sorted(folder.rglob("*"), reverse=True):
                    if path.is_dir() and not any(path.iterdir()):
                        path.rmdir()
                if not any(folder.iterdir()):
                    folder.rmdir()

    def mark_incomplete(self) -> None:
        """The dataset is about to change: readers must stop trusting it until ``_SUCCESS``.
        A shard removes the dataset's ``_SUCCESS`` first, then its own marker."""
        if not self.shard.sharded:
            self.success_path.unlink(missing_ok=True)
            return
        with dataset_lock(self.out):
            (self.out / SUCCESS_FILE).unlink(missing_ok=True)
            self.success_path.unlink(missing_ok=True)

    def mark_complete(self, manifest: dict[str, object]) -> None:
        """Write the manifest, then ``_SUCCESS``: the last two files of a finished run.

        A shard writes its own (``manifest-shard-I-of-N.json``, with a ``shard`` key, then
        ``_SUCCESS-shard-I-of-N``); when every shard's marker is there and their manifests have
        this one's ``run_date``, the dataset's ``manifest.json`` (every shard's files) and
        ``_SUCCESS`` follow. All under :func:`~engine.lock.dataset_lock`, so that of shards
        finishing at once, the last one sees every marker.
        """
        if not self.shard.sharded:
            _write_json(self.manifest_path, manifest)
            _write_atomic(self.success_path, "")
            return
        with dataset_lock(self.out):
            _write_json(self.manifest_path, manifest | {"shard": str(self.shard)})
            _write_atomic(self.success_path, "")
            dataset = self._dataset_manifest(str(manifest["run_date"]))
            if dataset is not None:
                _write_json(self.out / MANIFEST_FILE, dataset)
                _write_atomic(self.out / SUCCESS_FILE, "")

    def read_manifest(self) -> dict[str, object] | None:
        """This shard's manifest (the dataset's when unsharded); ``None`` if absent or broken."""
        return _read_json(self.manifest_path)

    def _dataset_manifest(self, run_date: str) -> dict[str, object] | None:
        """The dataset's manifest if every shard has completed a run of ``run_date``, else
        ``None``: every shard's files (they list all their run dates), and this date's rows."""
        shards: list[tuple[Shard, dict[str, object]]] = []
        for index in range(self.shard.count):
            shard = Shard(index, self.shard.count)
            manifest = _read_json(self.out / shard.file_name(MANIFEST_FILE))
            done = (self.out / shard.file_name(SUCCESS_FILE)).exists()
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

    def _own_files(self) -> list[Path]:
        """Every file under ``matches/`` and ``images/`` that this feed :meth:`owns`."""
        return [
            path
            for kind in KINDS
            if (self.out / kind).is_dir()
            for path in (self.out / kind).rglob("*")
            if path.is_file() and self.owns(path.name)
        ]


def part_seq(name: str) -> int:
    """The sequence number in a part file's name, sharded or not.

    Raises:
        ValueError: not a part name this module writes.
    """
    match = _PART_NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"not a part file name: {name!r}")
    return int(match["seq"])


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


def _write_json(path: Path, data: dict[str, object]) -> None:
    _write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _read_json(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _list_of_dicts(value: object) -> list[dict[str, object]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}{_TEMP_SUFFIX}")
    try:
        with open(temp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        _fsync_path(path.parent)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from None


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
