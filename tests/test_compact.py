"""engine.compact: a completed run's parts become the fewest files of the target size, swapped
in by one checkpoint transaction; real Parquet files, real SQLite, real S3 (moto) read back."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.compact import MB, compact_run
from engine.errors import StorageError
from engine.feed import Feed
from engine.outcome import ExitCode
from engine.ratelimit import Rate
from engine.runner import run_job
from engine.sandbox import Sandbox, SandboxConfig
from engine.state import PartRecord, Run, StateStore
from engine.storage import open_store
from tests.job_kit import creds, image_files, make_job, read_table
from tests.s3_kit import S3Bucket

DAY = "2026-12-02"
SCHEMA = pa.schema(
    [pa.field("n", pa.int64(), nullable=False), pa.field("blob", pa.binary())],
    metadata={"img1688.table": "images"},
)


def part_table(start: int, rows: int, blob_bytes: int = 8) -> pa.Table:
    """Rows ``start..start+rows`` with ``blob_bytes`` of random (incompressible) bytes each."""
    return pa.table(
        {"n": range(start, start + rows), "blob": [os.urandom(blob_bytes) for _ in range(rows)]},
        schema=SCHEMA,
    )


def write_run(
    state: StateStore,
    feed: Feed,
    sizes: list[int],
    *,
    blob_bytes: int = 8,
    kinds: tuple[str, ...] = ("images",),
) -> tuple[Run, list[PartRecord]]:
    """A run whose parts (registered, of each of ``kinds``) hold ``sizes`` rows each, numbered
    on from part to part."""
    run = state.start_run("r1", DAY, "{}")
    parts: list[PartRecord] = []
    start = 0
    for seq, rows in enumerate(sizes, 1):
        for kind in kinds:
            parts.append(
                feed.write_part(kind, run.run_id, DAY, seq, part_table(start, rows, blob_bytes))
            )
        start += rows
    state.exported(parts, [])
    return run, parts


def files_of(out: Path, kind: str = "images") -> list[Path]:
    return sorted((out / kind).rglob("*.parquet"))


def numbers(files: list[Path]) -> list[int]:
    """Column ``n`` of ``files``, in file order then row order."""
    return [n for path in files for n in pq.read_table(path).column("n").to_pylist()]


def test_a_run_of_many_small_parts_becomes_one_file_with_every_row_in_order(
    state: StateStore,
) -> None:
    feed = Feed(state.out)
    run, parts = write_run(state, feed, [3, 0, 5, 1, 4], kinds=("matches", "images"))

    done = compact_run(state, feed, run, target_mb=128)

    for kind in ("matches", "images"):
        (compacted,) = files_of(state.out, kind)
        assert numbers([compacted]) == list(range(13))  # nothing lost, doubled or reordered
        assert pq.read_schema(compacted).metadata == SCHEMA.metadata
        (registered,) = [p for p in state.parts() if p.kind == kind]
        assert registered.name == compacted.name and registered.rows == 13
    assert {(c.kind, c.files_before, c.files_after, c.rows) for c in done} == {
        ("matches", 5, 1, 13),
        ("images", 5, 1, 13),
    }
    # The new file's name carries on the run's sequence: a resumed exporter never reuses it.
    assert registered.name == feed.part_name(run.run_id, 6)
    assert not any(Path(feed.part_path(p.kind, p.run_date, p.name)).exists() for p in parts)


def test_a_partition_larger_than_the_target_is_split_into_even_files_by_size(
    state: StateStore,
) -> None:
    feed = Feed(state.out)
    # 40 parts of 100 rows of 1,000 random bytes: about 4 MB of Parquet that zstd cannot shrink.
    run, _ = write_run(state, feed, [100] * 40, blob_bytes=1000)
    total = sum(p.stat().st_size for p in files_of(state.out))

    compact_run(state, feed, run, target_mb=1)

    files = files_of(state.out)
    assert len(files) == -(-total // MB)  # ceil(size / target)
    counts = [pq.ParquetFile(p).metadata.num_rows for p in files]
    assert max(counts) - min(counts) <= 1 and sum(counts) == 4000
    assert numbers(files) == list(range(4000))
    assert all(p.stat().st_size < 1.2 * MB for p in files)


def test_row_groups_bound_what_is_in_memory(state: StateStore) -> None:
    feed = Feed(state.out)
    # 20,000 rows of 1,000 bytes: 20 MB, more than one 16 MB row group.
    run, _ = write_run(state, feed, [2000] * 10, blob_bytes=1000)

    compact_run(state, feed, run, target_mb=128)

    (compacted,) = files_of(state.out)
    metadata = pq.ParquetFile(compacted).metadata
    assert metadata.num_row_groups >= 2
    assert all(
        metadata.row_group(i).total_byte_size < 20 * MB for i in range(metadata.num_row_groups)
    )


def test_a_single_part_or_a_compacted_run_is_left_as_it_is(state: StateStore) -> None:
    feed = Feed(state.out)
    run, (only,) = write_run(state, feed, [7])
    before = files_of(state.out)[0].stat()

    (done,) = compact_run(state, feed, run, target_mb=128)

    assert (done.files_before, done.files_after) == (1, 1)
    after = files_of(state.out)[0].stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert state.parts() == [only]


def test_a_second_compaction_changes_nothing(state: StateStore) -> None:
    feed = Feed(state.out)
    run, _ = write_run(state, feed, [2, 2, 2])
    compact_run(state, feed, run, target_mb=128)
    registered = state.parts()

    compact_run(state, feed, run, target_mb=128)

    assert state.parts() == registered


def test_parts_of_an_older_schema_are_read_with_the_added_column_null(
    state: StateStore,
) -> None:
    feed = Feed(state.out)
    run = state.start_run("r1", DAY, "{}")
    old = feed.write_part("images", run.run_id, DAY, 1, pa.table({"n": [1, 2]}))
    new = feed.write_part("images", run.run_id, DAY, 2, pa.table({"n": [3], "added": ["x"]}))
    state.exported([old, new], [])

    compact_run(state, feed, run, target_mb=128)

    (compacted,) = files_of(state.out)
    assert pq.read_table(compacted).to_pylist() == [
        {"n": 1, "added": None},
        {"n": 2, "added": None},
        {"n": 3, "added": "x"},
    ]


def test_only_the_runs_own_parts_are_compacted(state: StateStore) -> None:
    feed = Feed(state.out)
    earlier = state.start_run("r0", DAY, "{}")
    theirs = [feed.write_part("images", "r0", DAY, n, part_table(n, 1)) for n in (1, 2)]
    state.exported(theirs, [])
    state.complete_run(earlier.run_id)
    run = state.start_run("r1", DAY, "{}")
    mine = [feed.write_part("images", "r1", DAY, n, part_table(n, 1)) for n in (1, 2)]
    state.exported(mine, [])

    compact_run(state, feed, run, target_mb=128)

    assert [p for p in state.parts() if p.run_id == "r0"] == theirs
    assert len([p for p in state.parts() if p.run_id == "r1"]) == 1


def test_a_missing_part_fails_the_compaction_and_registers_nothing(
    state: StateStore,
) -> None:
    feed = Feed(state.out)
    run, parts = write_run(state, feed, [2, 2])
    Path(feed.part_path("images", DAY, parts[1].name)).unlink()

    with pytest.raises(StorageError, match="missing"):
        compact_run(state, feed, run, target_mb=128)

    assert state.parts() == parts


def test_row_counts_that_disagree_with_the_checkpoints_are_never_swapped_in(
    state: StateStore,
) -> None:
    feed = Feed(state.out)
    run, parts = write_run(state, feed, [2, 2])
    # A part rewritten behind the checkpoints' back with one row more than they list.
    pq.write_table(part_table(2, 3), feed.part_path("images", DAY, parts[1].name))

    with pytest.raises(StorageError, match="row counts"):
        compact_run(state, feed, run, target_mb=128)

    assert state.parts() == parts


def test_compaction_on_object_storage(state: StateStore, s3_bucket: S3Bucket) -> None:
    feed = Feed(open_store(f"{s3_bucket.url}/feed", os.environ))
    run, _ = write_run(state, feed, [2, 3, 4])

    compact_run(state, feed, run, target_mb=128)

    (registered,) = state.parts()
    keys = s3_bucket.keys("feed")
    assert keys == [f"feed/images/run_date={DAY}/{registered.name}"]
    table = pq.read_table(s3_bucket.path(keys[0]), filesystem=s3_bucket.filesystem)
    assert table.column("n").to_pylist() == list(range(9))


# -- a whole job ---------------------------------------------------------------------------------


async def test_a_completed_run_has_one_file_per_partition_and_table(
    query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    config = SandboxConfig(rate=Rate(1000, 1.0))
    async with Sandbox(config) as sandbox:
        job = make_job(query_dir, out, sandbox.url, engine={"part_images": 2})
        outcome = await run_job(job, credentials=creds(config))
    assert outcome.exit_code == ExitCode.OK, outcome.message

    photos = [str(p) for p in image_files(query_dir)]
    for kind in ("matches", "images", "changes"):
        partitions = Counter(p.parent.name for p in files_of(out, kind))
        assert partitions and set(partitions.values()) == {1}, (kind, partitions)
    images = read_table(out, "images").to_table().column("query_path").to_pylist()
    assert sorted(images) == sorted(photos)  # every photo once, after compaction too
    matches = read_table(out, "matches").to_table()
    pairs = Counter(
        zip(matches["query_path"].to_pylist(), matches["item_id"].to_pylist(), strict=True)
    )
    assert pairs and set(pairs.values()) == {1}
    manifest = json.loads((out / "manifest.json").read_text())
    listed = {entry["path"] for entry in manifest["files"]}
    on_disk = {
        str(p.relative_to(out)) for k in ("matches", "images", "changes") for p in files_of(out, k)
    }
    assert listed == on_disk
    assert manifest["rows"] == {"matches": matches.num_rows, "images": len(photos)}
