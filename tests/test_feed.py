"""Parquet parts are never seen half-written, and crash leftovers are cleaned up."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from engine.errors import StorageError
from engine.feed import Feed


def table(n: int) -> pa.Table:
    return pa.table({"x": list(range(n))})


def test_a_part_is_written_whole_under_its_final_name(tmp_path: Path) -> None:
    feed = Feed(tmp_path, zstd_level=9)
    part = feed.write_part("matches", "run1", "2026-11-28", 1, table(5))
    path = feed.part_path("matches", "2026-11-28", part.name)
    assert part.rows == 5
    assert pq.read_table(path).num_rows == 5
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert [p.name for p in path.parent.iterdir()] == [part.name]  # no temporary left


def test_orphans_and_temporaries_are_removed_registered_parts_kept(tmp_path: Path) -> None:
    feed = Feed(tmp_path)
    kept = feed.write_part("images", "run1", "2026-11-28", 1, table(2))
    orphan = feed.write_part("images", "run1", "2026-11-28", 2, table(3))
    temp = feed.part_path("images", "2026-11-28", ".part-run1-000003.parquet.inprogress")
    temp.write_bytes(b"PAR1 half a file")

    removed = feed.remove_orphans([kept])

    assert sorted(removed) == sorted([feed.part_path("images", "2026-11-28", orphan.name), temp])
    assert ds.dataset(tmp_path / "images", partitioning="hive").count_rows() == 2


def test_markers_are_written_last_and_removed_first(tmp_path: Path) -> None:
    feed = Feed(tmp_path)
    feed.mark_complete({"run_id": "r"})
    assert (tmp_path / "_SUCCESS").exists()
    assert feed.read_manifest() == {"run_id": "r"}
    feed.mark_incomplete()
    assert not (tmp_path / "_SUCCESS").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only modes")
def test_an_unwritable_directory_is_a_storage_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StorageError, match="cannot write"):
            Feed(tmp_path).write_part("matches", "r", "2026-11-28", 1, table(1))
    finally:
        tmp_path.chmod(0o700)


def test_a_full_disk_is_a_storage_error(tmp_path: Path) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    feed = Feed(tmp_path)
    target = feed.part_path("matches", "2026-11-28", ".part-r-000001.parquet.inprogress")
    target.parent.mkdir(parents=True)
    target.symlink_to("/dev/full")
    with pytest.raises(StorageError, match="cannot write"):
        feed.write_part("matches", "r", "2026-11-28", 1, table(10_000))
