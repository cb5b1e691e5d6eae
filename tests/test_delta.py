"""``output.format = "delta"``: completed runs committed to Delta Lake tables exactly once.

Real Delta tables (deltalake) on disk and on moto's S3 server, read back by DuckDB, Polars and
pandas as docs/schema.md shows; real engine runs, in-process and as subprocesses killed by the
crash kit between a Delta commit and the checkpoints recording it.
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from deltalake import DeltaTable

from engine.cli import main
from engine.delta import DELTA_TABLES, DeltaTables
from engine.errors import ConfigError
from engine.feed import MANIFEST_FILE, STAGING, SUCCESS_FILE
from engine.jobfile import parse_job
from engine.outcome import ExitCode
from engine.runner import run_job
from engine.sandbox import Sandbox
from engine.schema import CHANGES_SCHEMA, IMAGES_SCHEMA, MATCHES_SCHEMA
from engine.shard import Shard
from engine.state import Run, run_index
from engine.storage import LocalStore, open_store
from tests.job_kit import (
    CRASH_EXIT,
    assert_every_photo_once,
    creds,
    image_files,
    invoke,
    make_job,
)
from tests.paths import SAMPLES
from tests.s3_kit import S3Bucket

DAY = "2026-12-02"


def batches(*tables: pa.Table) -> Any:
    return iter([b for t in tables for b in t.to_batches()])


def local(table: Path) -> pafs.FileSystem:
    """The local Delta table's folder as a native Arrow filesystem, for deltalake's readers:
    with none given, they read through a filesystem written in Python, and Arrow threads that
    called into it make the process abort or hang at exit (``DeltaTables.arrow_filesystem``)."""
    return pafs.SubTreeFileSystem(str(table), pafs.LocalFileSystem())


def rows(uri: str, native: pafs.FileSystem | None = None, **options: str) -> list[dict[str, Any]]:
    """Table ``uri``'s rows, its files read through ``native`` (rooted at the table; by
    default the local folder ``uri``)."""
    table = DeltaTable(uri, storage_options=options or None)
    return table.to_pyarrow_table(filesystem=native or local(Path(uri))).to_pylist()


# -- the tables ---------------------------------------------------------------------------------


def test_a_replayed_commit_is_skipped_and_a_later_run_of_the_day_replaces_the_rows(
    tmp_path: Path,
) -> None:
    tables = DeltaTables(LocalStore(tmp_path))
    first, second = Run("r1", DAY, "", "{}", None), Run("r2", DAY, "", "{}", None)
    yesterday = Run("r0", "2026-12-01", "", "{}", None)
    schema = pa.schema([pa.field("run_id", pa.string(), nullable=False), ("n", pa.int64())])

    def part(run: Run, *numbers: int) -> pa.Table:
        return pa.table({"run_id": [run.run_id] * len(numbers), "n": numbers}, schema=schema)

    assert tables.commit(yesterday, "images", schema, batches(part(yesterday, 0)))
    assert tables.commit(first, "images", schema, batches(part(first, 1, 2)))
    # A kill after the commit, before the checkpoints knew: the same commit again.
    assert not tables.commit(first, "images", schema, batches(part(first, 1, 2)))
    assert tables.published(first, "images")[1] == 2
    assert tables.commit(second, "images", schema, batches(part(second, 3)))

    table = DeltaTable(str(tmp_path / "images"))
    assert sorted((r["run_id"], r["n"]) for r in rows(str(tmp_path / "images"))) == [
        ("r0", 0),
        ("r2", 3),
    ]
    assert table.version() == 2  # three commits: the replay made none
    assert table.metadata().partition_columns == ["run_date"]
    assert table.transaction_version(tables.app_id("r1", "images")) == 1
    assert tables.read(second, "images", ["n", "absent"]).to_pylist() == [{"n": 3}]


def test_a_column_added_by_a_later_version_merges_into_the_table(tmp_path: Path) -> None:
    tables = DeltaTables(LocalStore(tmp_path))
    old = pa.schema([("run_id", pa.string()), ("n", pa.int64())])
    new = old.append(pa.field("added", pa.string()))
    tables.commit(Run("r0", "2026-12-01", "", "{}", None), "matches", old, batches(
        pa.table({"run_id": ["r0"], "n": [1]}, schema=old)
    ))  # fmt: skip
    tables.commit(Run("r1", DAY, "", "{}", None), "matches", new, batches(
        pa.table({"run_id": ["r1"], "n": [2], "added": ["x"]}, schema=new)
    ))  # fmt: skip

    got = sorted(rows(str(tmp_path / "matches")), key=lambda r: r["n"])
    assert [(r["n"], r["added"]) for r in got] == [(1, None), (2, "x")]


def test_without_deltalake_the_format_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "deltalake", None)  # as if it were not installed
    data = {
        "inputs": {"paths": [str(tmp_path)]},
        "output": {"dir": str(tmp_path / "out"), "format": "delta"},
        "gateway": {"endpoint": "sandbox"},
    }
    with pytest.raises(ConfigError, match=r'pip install "img1688\[delta\]"'):
        parse_job(data, base=tmp_path)


def test_an_unknown_format_names_the_key(tmp_path: Path) -> None:
    data = {
        "inputs": {"paths": [str(tmp_path)]},
        "output": {"dir": str(tmp_path / "out"), "format": "iceberg"},
        "gateway": {"endpoint": "sandbox"},
    }
    with pytest.raises(ConfigError, match=r"output\.format"):
        parse_job(data, base=tmp_path)


# -- whole jobs ---------------------------------------------------------------------------------


def delta_job(photos: Path, out: Path, url: str, **output: Any) -> Any:
    return make_job(
        photos,
        out,
        url,
        output={"format": "delta", **output},
        engine={"part_images": 3},
    )


def assert_each_photo_once(
    uri: str, run_id: str, photos: Path, bucket: S3Bucket | None = None, **options: str
) -> None:
    """The Delta tables at ``uri`` (in ``bucket``, if given) hold ``run_id``'s rows for today
    only: each photo once in ``images``, each of its offers once in ``matches``."""

    def table(kind: str) -> list[dict[str, Any]]:
        native = None
        if bucket is not None:
            key = f"{uri}/{kind}".removeprefix(f"{bucket.url}/")
            native = pafs.SubTreeFileSystem(bucket.path(key), bucket.filesystem)
        return rows(f"{uri}/{kind}", native, **options)

    images, matches = table("images"), table("matches")
    assert {r["run_id"] for r in images} == {run_id}
    assert_every_photo_once(images, matches, photos)
    assert matches  # offers were kept
    kept = {r["query_path"]: r["offers_kept"] for r in images}
    assert Counter(r["query_path"] for r in matches) == {p: n for p, n in kept.items() if n}
    assert {r["run_date"] for r in images} == {datetime.datetime.now(datetime.UTC).date()}


async def test_a_delta_job_publishes_three_tables_that_duckdb_polars_and_pandas_read(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = delta_job(query_dir, out, sandbox.url)

    outcome = await run_job(job, credentials=creds(sandbox.config))

    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert_each_photo_once(str(out), outcome.run_id or "", query_dir)
    for kind, schema in (
        ("matches", MATCHES_SCHEMA),
        ("images", IMAGES_SCHEMA),
        ("changes", CHANGES_SCHEMA),
    ):
        arrow = DeltaTable(str(out / kind)).to_pyarrow_table(filesystem=local(out / kind))
        assert arrow.column_names == [*schema.names, "run_date"]
        for field in schema:  # the same Arrow schema, as the Parquet layout has it
            assert arrow.schema.field(field.name).type == field.type, (kind, field.name)
    assert not rows(str(out / "changes"))  # a first run
    # Nothing left staged, and no Parquet layout beside the tables.
    assert not image_files(out / STAGING)
    assert not list((out / "matches").glob("run_date=*/part-*-000001.parquet"))
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["format"] == "delta" and manifest["files"] == []
    assert set(manifest["tables"]) == set(DELTA_TABLES)
    images = len(image_files(query_dir))
    assert manifest["rows"]["images"] == images
    assert (out / SUCCESS_FILE).exists()

    # The readers, as docs/schema.md shows them.
    matches = DeltaTable(str(out / "matches"))
    dataset = matches.to_pyarrow_dataset(filesystem=local(out / "matches"))  # noqa: F841 (DuckDB's)
    by_duckdb = duckdb.sql("SELECT count(*), count(DISTINCT query_path) FROM dataset").fetchall()[0]
    with_offers = {r["query_path"] for r in rows(str(out / "images")) if r["offers_kept"]}
    assert by_duckdb == (manifest["rows"]["matches"], len(with_offers))
    by_polars = pl.read_delta(str(out / "images"))
    assert by_polars.height == images and by_polars.schema["run_date"] == pl.Date
    by_pandas = DeltaTable(str(out / "images")).to_pandas(filesystem=local(out / "images"))
    assert isinstance(by_pandas, pd.DataFrame) and len(by_pandas) == images
    assert sorted(by_pandas["query_path"]) == sorted(map(str, image_files(query_dir)))


async def test_a_second_run_of_the_day_replaces_the_first_in_the_tables(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = delta_job(query_dir, out, sandbox.url)
    first = await run_job(job, credentials=creds(sandbox.config))
    assert first.exit_code == ExitCode.OK, first.message

    second = await run_job(job, credentials=creds(sandbox.config))

    assert second.exit_code == ExitCode.OK, second.message
    assert_each_photo_once(str(out), second.run_id or "", query_dir)
    for kind in DELTA_TABLES:
        assert DeltaTable(str(out / kind)).version() == 1  # one commit a run, each table


async def test_export_reads_a_delta_run_back(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    from engine.commands.reclean import reclean
    from engine.feedread import find_run, read_rows

    out = tmp_path / "out"
    outcome = await run_job(
        delta_job(query_dir, out, sandbox.url), credentials=creds(sandbox.config)
    )
    assert outcome.exit_code == ExitCode.OK, outcome.message

    run = find_run(out)
    images = read_rows(run, "images", ["query_path", "status", "absent"])

    assert images.column_names == ["query_path", "status"]
    assert sorted(images.column("query_path").to_pylist()) == sorted(
        map(str, image_files(query_dir))
    )
    assert read_rows(run, "matches", ["item_id"]).num_rows > 0
    with pytest.raises(ConfigError, match="Parquet layout only"):
        reclean(out)


async def test_the_engine_reads_its_tables_through_no_python_filesystem(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # deltalake's readers default to a filesystem written in Python; Arrow's I/O threads that
    # called into it abort ("terminate called without an active exception") or hang the
    # process as it exits, in about 4 runs out of 10 of a script that only reads a table.
    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Delta table was read through a Python filesystem")

    monkeypatch.setattr(pafs, "PyFileSystem", refused)
    out = tmp_path / "out"

    outcome = await run_job(  # completion counts each table's rows of the run
        delta_job(query_dir, out, sandbox.url), credentials=creds(sandbox.config)
    )

    assert outcome.exit_code == ExitCode.OK, outcome.message
    sheet = tmp_path / "sheet.csv"
    assert main(["export", str(out), "--format", "csv", "--out", str(sheet)]) == 0
    with open(sheet, encoding="utf-8-sig", newline="") as handle:
        photos = {row["Photo"] for row in csv.DictReader(handle)}
    assert photos == set(map(str, image_files(query_dir)))


async def test_a_delta_job_on_object_storage(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path, s3_bucket: S3Bucket
) -> None:
    url = f"{s3_bucket.url}/lake"
    job = delta_job(query_dir, tmp_path / "unused", sandbox.url, dir=url)

    outcome = await run_job(job, credentials=creds(sandbox.config))

    assert outcome.exit_code == ExitCode.OK, outcome.message
    options = open_store(url, os.environ).storage_options()
    assert_each_photo_once(url, outcome.run_id or "", query_dir, s3_bucket, **options)
    keys = s3_bucket.keys("lake")
    assert "lake/_SUCCESS" in keys and "lake/images/_delta_log/00000000000000000000.json" in keys
    assert not [k for k in keys if k.startswith(f"lake/{STAGING}/")]


async def test_delta_with_shards_is_refused_before_any_call(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    job = delta_job(query_dir, tmp_path / "out", sandbox.url).with_overrides(shard=Shard(0, 2))

    outcome = await run_job(job, credentials=creds(sandbox.config))

    assert outcome.exit_code == ExitCode.CONFIG
    assert "--shard" in outcome.message and "lock" in outcome.message
    assert sandbox.stats()["total_calls"] == 0


async def test_a_folder_of_one_format_refuses_the_other(
    sandbox: Sandbox, query_dir: Path, tmp_path: Path
) -> None:
    lake, plain = tmp_path / "lake", tmp_path / "plain"
    done = await run_job(delta_job(query_dir, lake, sandbox.url), credentials=creds(sandbox.config))
    assert done.exit_code == ExitCode.OK, done.message
    done = await run_job(make_job(query_dir, plain, sandbox.url), credentials=creds(sandbox.config))
    assert done.exit_code == ExitCode.OK, done.message
    calls = sandbox.stats()["total_calls"]

    as_parquet = await run_job(
        make_job(query_dir, lake, sandbox.url), credentials=creds(sandbox.config)
    )
    as_delta = await run_job(
        delta_job(query_dir, plain, sandbox.url), credentials=creds(sandbox.config)
    )

    assert as_parquet.exit_code == as_delta.exit_code == ExitCode.CONFIG
    assert "holds Delta tables" in as_parquet.message
    assert "holds the Parquet layout" in as_delta.message
    assert sandbox.stats()["total_calls"] == calls
    assert DeltaTable(str(lake / "images")).version() == 0  # untouched


# -- killed between a Delta commit and the checkpoints --------------------------------------------

CRASHES = [
    # (point:nth, tables committed at the crash)
    ("delta-committed-not-recorded:1", 1),
    ("delta-committed-not-recorded:3", 3),
    ("superseded-not-deleted:1", 3),  # the staged parts unregistered, their files still there
]
DELTA_POINTS = {point.partition(":")[0] for point, _ in CRASHES}
"""The crash kit's points this module has a case for (``test_crash_points`` checks that every
point of the kit has one somewhere)."""


@pytest.mark.parametrize(("point", "committed"), CRASHES)
def test_a_second_run_killed_after_a_delta_commit_resumes_without_committing_twice(
    point: str, committed: int, tmp_path: Path, write_job: Callable[..., Path]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("q001.jpg", "q002.jpg", "q003.jpg"):
        shutil.copy2(SAMPLES / "queries" / name, photos / name)
    out = tmp_path / "out"
    job = str(
        write_job(
            inputs={"paths": [photos]},
            output={"dir": out, "format": "delta"},
            gateway={"protocol": "ocean", "endpoint": "sandbox", "rate": "1000/1s"},
            engine={"part_images": 2, "flush_seconds": 600},
        )
    )
    code, stderr = invoke("run", job)
    assert code == ExitCode.OK, stderr[-3000:]

    code, stderr = invoke("run", job, crash_at=point)  # a second run, the same day

    name, _, nth = point.partition(":")
    assert code == CRASH_EXIT and f"CRASH AT {name} (#{nth})" in stderr, stderr[-3000:]
    versions = [DeltaTable(str(out / kind)).version() for kind in DELTA_TABLES]
    assert versions == [1] * committed + [0] * (3 - committed)
    assert not (out / SUCCESS_FILE).exists()

    code, stderr = invoke("run", job)

    assert code == ExitCode.OK, stderr[-3000:]
    index = run_index(out)
    assert index is not None and not index.parts  # nothing staged is still registered
    second = index.runs[-1]
    assert second.completed_at is not None and len(index.runs) == 2
    assert [DeltaTable(str(out / kind)).version() for kind in DELTA_TABLES] == [1, 1, 1]
    assert_each_photo_once(str(out), second.run_id, photos)
    assert not image_files(out / STAGING)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["run_id"] == second.run_id and (out / SUCCESS_FILE).exists()
