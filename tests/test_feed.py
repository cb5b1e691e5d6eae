"""Parquet parts are never seen half-written, and crash leftovers are cleaned up."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from engine.errors import StorageError
from engine.feed import MANIFEST_FILE, SUCCESS_FILE, Feed, part_seq
from engine.shard import Shard


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


def test_a_shards_parts_carry_its_tag_and_unsharded_names_are_unchanged(tmp_path: Path) -> None:
    sharded = Feed(tmp_path, shard=Shard(1, 2)).write_part(
        "images", "r-1", "2026-12-01", 3, table(1)
    )
    plain = Feed(tmp_path).write_part("images", "r-1", "2026-12-01", 4, table(1))
    assert sharded.name == "part-r-1-s1of2-000003.parquet"
    assert plain.name == "part-r-1-000004.parquet"
    assert (part_seq(sharded.name), part_seq(plain.name)) == (3, 4)


def test_one_shards_clean_ups_never_touch_another_shards_files(tmp_path: Path) -> None:
    mine, other = Feed(tmp_path, shard=Shard(0, 2)), Feed(tmp_path, shard=Shard(1, 2))
    kept = mine.write_part("matches", "r0", "2026-12-01", 1, table(1))
    orphan = mine.write_part("matches", "r0", "2026-12-01", 2, table(1))
    theirs = [other.write_part(k, "r1", "2026-12-01", 1, table(2)) for k in ("matches", "images")]
    their_temp = other.part_path("images", "2026-12-01", ".part-r1-s1of2-000002.parquet.inprogress")
    their_temp.write_bytes(b"PAR1 being written by shard 1 right now")

    removed = mine.remove_orphans([kept])
    unsharded_removed = Feed(tmp_path).remove_orphans([])

    assert removed == [mine.part_path("matches", "2026-12-01", orphan.name)]
    assert unsharded_removed == []  # an unsharded feed owns only untagged files
    mine.clear()
    survivors = sorted(p.name for k in ("matches", "images") for p in (tmp_path / k).rglob("*.*"))
    assert survivors == sorted([their_temp.name, *(p.name for p in theirs)])


def shard_manifest(run_date: str, run_id: str, feed: Feed, rows: int) -> dict[str, object]:
    part = feed.write_part("matches", run_id, run_date, 1, table(rows))
    path = f"matches/run_date={run_date}/{part.name}"
    return {
        "schema_version": 1,
        "run_id": run_id,
        "run_date": run_date,
        "files": [{"path": path, "table": "matches", "run_id": run_id, "rows": rows}],
        "rows": {"matches": rows, "images": rows},
    }


def test_the_dataset_success_appears_once_every_shard_of_the_run_date_is_complete(
    tmp_path: Path,
) -> None:
    first, second = Feed(tmp_path, shard=Shard(0, 2)), Feed(tmp_path, shard=Shard(1, 2))
    first.mark_complete(shard_manifest("2026-12-02", "r0", first, 2))
    assert (tmp_path / "_SUCCESS-shard-0-of-2").exists()
    assert first.read_manifest() is not None and first.read_manifest()["shard"] == "0/2"  # type: ignore[index]
    assert not (tmp_path / SUCCESS_FILE).exists()
    second.mark_complete(shard_manifest("2026-12-01", "r-old", second, 5))  # another date
    assert not (tmp_path / SUCCESS_FILE).exists()

    second.mark_complete(shard_manifest("2026-12-02", "r1", second, 3))

    assert (tmp_path / SUCCESS_FILE).exists()
    dataset = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert dataset["run_date"] == "2026-12-02"
    assert [(s["shard"], s["run_id"]) for s in dataset["shards"]] == [("0/2", "r0"), ("1/2", "r1")]
    assert dataset["rows"] == {"matches": 5, "images": 5}
    on_disk = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet"))
    old = [f for f in on_disk if "2026-12-01" in f]  # listed by no manifest of this date
    assert sorted(f["path"] for f in dataset["files"]) == sorted(set(on_disk) - set(old))

    first.mark_incomplete()  # shard 0 starts a new run
    assert not (tmp_path / SUCCESS_FILE).exists()
    assert not (tmp_path / "_SUCCESS-shard-0-of-2").exists()
    assert (tmp_path / "_SUCCESS-shard-1-of-2").exists()


def finish_together(feed: Feed, manifest: dict[str, object], start: threading.Barrier) -> None:
    start.wait()
    feed.mark_complete(manifest)


def test_shards_finishing_at_once_always_publish_the_dataset(tmp_path: Path) -> None:
    count = 6
    for round_ in range(15):
        out = tmp_path / str(round_)
        feeds = [Feed(out, shard=Shard(i, count)) for i in range(count)]
        start = threading.Barrier(count)
        with ThreadPoolExecutor(count) as pool:
            done = [
                pool.submit(finish_together, f, shard_manifest("2026-12-02", f"r{i}", f, 1), start)
                for i, f in enumerate(feeds)
            ]
        for future in done:
            future.result()  # no shard failed to publish (e.g. two writing one temporary file)
        assert (out / SUCCESS_FILE).exists()
        assert len(json.loads((out / MANIFEST_FILE).read_text())["files"]) == count
