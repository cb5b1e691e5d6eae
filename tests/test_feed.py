"""Parquet parts are never seen half-written, and crash leftovers are cleaned up."""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from engine.errors import StorageError
from engine.feed import MANIFEST_FILE, SUCCESS_FILE, Feed, manifest_files, part_seq
from engine.shard import Shard
from engine.state import PartRecord


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


@pytest.mark.parametrize(
    ("code", "says"),
    [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left on device")],
)
def test_an_unwritable_or_full_disk_is_a_storage_error_and_leaves_no_file(
    code: int, says: str, tmp_path: Path, break_part_write: Callable[..., list[Path]]
) -> None:
    feed = Feed(tmp_path)
    kept = feed.write_part("matches", "r", "2026-11-28", 1, table(1))
    asked = break_part_write(code)

    with pytest.raises(StorageError, match=f"cannot write .*part-r-000002.parquet: {says}"):
        feed.write_part("matches", "r", "2026-11-28", 2, table(1))

    assert asked and asked[0].name.endswith(".inprogress")  # it failed writing the temporary
    folder = feed.part_path("matches", "2026-11-28", kept.name).parent
    assert [p.name for p in folder.iterdir()] == [kept.name]  # the half-written file is gone


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


def test_the_configured_zstd_level_and_column_statistics_reach_the_part(tmp_path: Path) -> None:
    compressible = pa.table({"title": [f"offer {i % 97} size {i % 13}" for i in range(20_000)]})
    sizes = {}
    for level in (1, 19):
        feed = Feed(tmp_path / str(level), zstd_level=level)
        part = feed.write_part("matches", "r", "2026-11-28", 1, compressible)
        path = feed.part_path("matches", "2026-11-28", part.name)
        sizes[level] = path.stat().st_size
        # Min/max per column chunk: what lets DuckDB or Polars skip parts on a filter.
        column = pq.ParquetFile(path).metadata.row_group(0).column(0)
        assert column.is_stats_set and column.statistics.has_min_max
    assert sizes[19] < sizes[1]


def test_deleting_parts_already_gone_is_not_an_error(tmp_path: Path) -> None:
    feed = Feed(tmp_path)
    part = feed.write_part("images", "r", "2026-11-28", 1, table(1))
    feed.delete_parts([part])
    feed.delete_parts([part])  # a crash after the unlink, before the checkpoint commit
    assert not feed.part_path("images", "2026-11-28", part.name).exists()


def test_clear_removes_the_folders_it_leaves_empty(tmp_path: Path) -> None:
    feed = Feed(tmp_path)
    for kind in ("matches", "images"):
        for run_date in ("2026-11-27", "2026-11-28"):
            feed.write_part(kind, "r", run_date, 1, table(1))
    feed.mark_complete({"run_id": "r"})

    feed.clear()

    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_FILE]


def test_the_success_markers_are_empty_files(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    Feed(tmp_path / "plain").mark_complete({"run_id": "r"})
    shards = [Feed(tmp_path / "sharded", shard=Shard(i, 2)) for i in range(2)]
    for i, shard in enumerate(shards):
        shard.mark_complete(shard_manifest("2026-12-02", f"r{i}", shard, 1))
    markers = [
        tmp_path / "plain" / SUCCESS_FILE,
        *(tmp_path / "sharded" / s.shard.file_name(SUCCESS_FILE) for s in shards),
        tmp_path / "sharded" / SUCCESS_FILE,
    ]
    assert [m.read_bytes() for m in markers] == [b""] * 4  # what Spark and Hadoop write


def test_a_shard_manifest_without_its_success_marker_does_not_complete_the_dataset(
    tmp_path: Path,
) -> None:
    first, second = Feed(tmp_path, shard=Shard(0, 2)), Feed(tmp_path, shard=Shard(1, 2))
    # Shard 0 was killed between writing its manifest and its _SUCCESS-shard-0-of-2.
    manifest = shard_manifest("2026-12-02", "r0", first, 2) | {"shard": "0/2"}
    first.manifest_path.write_text(json.dumps(manifest), encoding="utf-8")

    second.mark_complete(shard_manifest("2026-12-02", "r1", second, 3))

    assert not (tmp_path / SUCCESS_FILE).exists()
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_the_dataset_manifest_names_its_schema_shards_and_row_counts(tmp_path: Path) -> None:
    feeds = [Feed(tmp_path, shard=Shard(i, 2)) for i in range(2)]
    manifests = [shard_manifest("2026-12-02", f"r{i}", f, 2) for i, f in enumerate(feeds)]
    manifests[0]["rows"] = {"matches": 2}  # no images count: it counts as none
    del manifests[1]["rows"]  # no counts at all: nothing to add
    for feed, manifest in zip(feeds, manifests, strict=True):
        feed.mark_complete(manifest)

    dataset = json.loads((tmp_path / MANIFEST_FILE).read_text(encoding="utf-8"))

    assert dataset["schema_version"] == 1
    assert dataset["shard_count"] == 2
    assert [s["manifest"] for s in dataset["shards"]] == [
        "manifest-shard-0-of-2.json",
        "manifest-shard-1-of-2.json",
    ]
    assert dataset["rows"] == {"matches": 2, "images": 0}
    assert datetime.fromisoformat(dataset["completed_at"]).utcoffset() == timedelta(0)


def test_part_seq_names_what_is_not_a_part_file() -> None:
    with pytest.raises(ValueError, match=r"not a part file name: 'manifest\.json'"):
        part_seq("manifest.json")


def test_the_manifest_lists_each_part_with_its_path_table_run_and_rows() -> None:
    parts = [
        PartRecord("part-r1-000001.parquet", "r1", "matches", "2026-11-28", 7),
        PartRecord("part-r1-000001.parquet", "r1", "images", "2026-11-28", 2),
    ]
    assert manifest_files(parts) == [
        {
            "path": "matches/run_date=2026-11-28/part-r1-000001.parquet",
            "table": "matches",
            "run_id": "r1",
            "rows": 7,
        },
        {
            "path": "images/run_date=2026-11-28/part-r1-000001.parquet",
            "table": "images",
            "run_id": "r1",
            "rows": 2,
        },
    ]


def test_manifest_values_json_cannot_hold_are_written_as_text(tmp_path: Path) -> None:
    feed = Feed(tmp_path)
    when = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    feed.mark_complete({"run_id": "r", "completed_at": when})
    assert feed.read_manifest() == {"run_id": "r", "completed_at": str(when)}


@pytest.mark.parametrize("text", ["[1, 2]", '"done"', "{broken"])
def test_a_manifest_that_is_not_a_json_object_reads_as_absent(tmp_path: Path, text: str) -> None:
    feed = Feed(tmp_path)
    feed.manifest_path.write_text(text, encoding="utf-8")
    assert feed.read_manifest() is None


def test_a_marker_that_cannot_be_written_is_a_storage_error_naming_the_reason(
    tmp_path: Path,
) -> None:
    feed = Feed(tmp_path / "removed")  # the output directory is gone
    with pytest.raises(StorageError) as caught:
        feed.mark_complete({"run_id": "r"})
    assert str(caught.value) == f"cannot write {feed.manifest_path}: No such file or directory"
    assert not tmp_path.joinpath("removed").exists()
