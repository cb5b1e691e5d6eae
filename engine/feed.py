"""Store: the Parquet feed on disk, written so that no reader ever sees half a file.

Layout (``docs/schema.md`` is the contract)::

    OUT/matches/run_date=YYYY-MM-DD/part-<run_id>-<n>.parquet
    OUT/images/run_date=YYYY-MM-DD/part-<run_id>-<n>.parquet
    OUT/manifest.json        written when a run completes
    OUT/_SUCCESS             written last

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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import StorageError
from engine.state import PartRecord

KINDS = ("matches", "images")
SUCCESS_FILE = "_SUCCESS"
MANIFEST_FILE = "manifest.json"
_TEMP_SUFFIX = ".inprogress"


@dataclass(frozen=True)
class Feed:
    """The Parquet side of one output directory."""

    out: Path
    zstd_level: int = 6

    def part_path(self, kind: str, run_date: str, name: str) -> Path:
        return self.out / kind / f"run_date={run_date}" / name

    def write_part(
        self, kind: str, run_id: str, run_date: str, seq: int, table: pa.Table
    ) -> PartRecord:
        """Write one part durably under its final name; the caller registers it afterwards."""
        name = f"part-{run_id}-{seq:06d}.parquet"
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
        """Delete part files the checkpoints do not list, and temporary files. Returns them."""
        keep = {self.part_path(p.kind, p.run_date, p.name) for p in registered}
        removed: list[Path] = []
        for kind in KINDS:
            folder = self.out / kind
            if not folder.is_dir():
                continue
            for path in folder.rglob("*"):
                if (
                    path.is_file()
                    and path not in keep
                    and (path.suffix == ".parquet" or path.name.endswith(_TEMP_SUFFIX))
                ):
                    path.unlink()
                    removed.append(path)
        return removed

    def delete_parts(self, parts: Iterable[PartRecord]) -> None:
        for part in parts:
            self.part_path(part.kind, part.run_date, part.name).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every part and the completion markers (``--fresh``)."""
        self.mark_incomplete()
        for kind in KINDS:
            folder = self.out / kind
            if folder.is_dir():
                for path in sorted(folder.rglob("*"), reverse=True):
                    path.rmdir() if path.is_dir() else path.unlink()
                folder.rmdir()

    def mark_incomplete(self) -> None:
        """The dataset is about to change: readers must stop trusting it until ``_SUCCESS``."""
        (self.out / SUCCESS_FILE).unlink(missing_ok=True)

    def mark_complete(self, manifest: dict[str, object]) -> None:
        """Write ``manifest.json``, then ``_SUCCESS``: the last two files of a finished run."""
        _write_atomic(self.out / MANIFEST_FILE, json.dumps(manifest, indent=2, default=str) + "\n")
        _write_atomic(self.out / SUCCESS_FILE, "")

    def read_manifest(self) -> dict[str, object] | None:
        try:
            return json.loads((self.out / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None


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
