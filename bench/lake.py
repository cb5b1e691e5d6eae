"""Lake benchmarks: the files a nightly run leaves, before and after compaction, and what they
cost a reader.

A simulated nightly run: 2,000 photos (the first two folders of ``bench.engine``'s small
corpus), ``ocean`` protocol, against the sandbox on loopback at a compressed rate, its ranking
fixed (the matcher's CPU would only slow the run). A real night at 10 calls a minute (5 photos
a minute: an ``ocean`` search is two calls) with the default ``flush_seconds = 60`` writes a
part of about 5 photos a minute; the run here makes parts the same way (``part_images = 5``),
hundreds of times faster.

Figures printed:

1. files: per table, files per ``run_date`` partition and rows per file, as the run wrote them
   (copied aside just before compaction) and after it;
2. reading: DuckDB reads the whole feed (every column of both tables into Arrow), best of
   :data:`REPEATS`: the plain parts, the compacted files, and the same run as Delta tables
   (``output.format = "delta"``). DuckDB's ``delta`` extension is downloaded by ``INSTALL
   delta``, which needs network access these machines lack, so DuckDB reads the Delta tables
   through ``deltalake`` (``DeltaTable.to_pyarrow_dataset()`` on a native filesystem, as
   docs/schema.md shows: a lazy Arrow dataset DuckDB scans); ``delta_scan`` is tried first and
   used when it loads.

Job outputs go to ``build/bench/lake-runs/``, emptied at each start. Run: ``python -m bench
lake``.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable

import engine.compact
from bench.engine import (
    CACHE,
    QUIET,
    UNLIMITED,
    _credentials,
    _figure,
    _FixedRanking,
    _job,
    _job_data,
    _note,
    _private_token_store,
    ensure_small,
)
from engine.compact import Compaction
from engine.feed import KINDS, Feed
from engine.outcome import ExitCode
from engine.ratelimit import Rate
from engine.runner import run_job
from engine.sandbox import Sandbox, SandboxConfig
from engine.sandbox.catalogue import DEFAULT_CATALOGUE, Catalogue
from engine.state import Run, StateStore

RUNS = CACHE / "lake-runs"
PHOTOS = 2_000
PART_IMAGES = 5
REPEATS = 5


def _inputs() -> list[Path]:
    """The first two folders of the small corpus: 2,000 distinct photos."""
    root = ensure_small()
    return sorted(p for p in root.iterdir() if p.is_dir())[: PHOTOS // 1_000]


async def _run(out: Path, output_format: str, before: Path | None) -> Any:
    """The nightly run into ``out``; with ``before``, the parts as the run wrote them are
    copied there just before compaction."""
    config = SandboxConfig(rate=Rate.parse(UNLIMITED))
    catalogue = _FixedRanking(Catalogue.load(DEFAULT_CATALOGUE))
    async with Sandbox(config, catalogue=catalogue) as sandbox:
        data = _job_data(
            _inputs(),
            out,
            sandbox.url,
            protocol="ocean",
            rate=UNLIMITED,
            part_images=PART_IMAGES,
            flush_seconds=600,
        )
        data["output"]["format"] = output_format
        job = _job(data)
        with _copy_before_compaction(before):
            outcome = await run_job(
                job, credentials=_credentials(config), fresh=True, progress_interval=QUIET
            )
    if outcome.exit_code != ExitCode.OK:
        raise SystemExit(f"the {output_format} run failed: {outcome.message}")
    return outcome


@contextmanager
def _copy_before_compaction(before: Path | None) -> Iterator[None]:
    """While it lasts, the engine's compaction first copies the run's tables to ``before``."""
    original = engine.compact.compact_run

    def copying(state: StateStore, feed: Feed, run: Run, target_mb: int) -> list[Compaction]:
        assert before is not None
        for kind in KINDS:
            shutil.copytree(state.out / kind, before / kind)
        return original(state, feed, run, target_mb)

    if before is not None:
        engine.compact.compact_run = copying
    try:
        yield
    finally:
        engine.compact.compact_run = original


def _files(out: Path, kind: str) -> dict[str, list[tuple[int, int]]]:
    """(rows, bytes) of each Parquet file, by partition folder."""
    found: dict[str, list[tuple[int, int]]] = {}
    for path in sorted((out / kind).rglob("*.parquet")):
        rows = pq.ParquetFile(path).metadata.num_rows
        found.setdefault(path.parent.name, []).append((rows, path.stat().st_size))
    return found


def _describe(files: dict[str, list[tuple[int, int]]]) -> str:
    per_partition = Counter(len(each) for each in files.values())
    rows = [n for each in files.values() for n, _ in each]
    size = sum(b for each in files.values() for _, b in each)
    partitions = ", ".join(f"{n} file(s) x{count}" for n, count in sorted(per_partition.items()))
    return (
        f"{len(files)} partition(s) of {partitions}; rows per file min {min(rows):,} /"
        f" median {statistics.median(rows):,.0f} / max {max(rows):,}; {size / 1e6:.2f} MB"
    )


def _read_seconds(query: Callable[[duckdb.DuckDBPyConnection], Any]) -> tuple[float, int]:
    """Best of :data:`REPEATS` (seconds) for ``query`` on a fresh connection, and its rows."""
    times: list[float] = []
    rows = 0
    for _ in range(REPEATS):
        con = duckdb.connect()
        start = time.perf_counter()
        rows = query(con)
        times.append(time.perf_counter() - start)
        con.close()
    return min(times), rows


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    """Run ``sql`` into an Arrow table (every value read and converted); its rows."""
    table = con.sql(sql).to_arrow_table()
    assert table is not None
    return int(table.num_rows)


def _parquet_reader(out: Path) -> Callable[[duckdb.DuckDBPyConnection], int]:
    def read(con: duckdb.DuckDBPyConnection) -> int:
        total = 0
        for kind in KINDS:
            glob = f"{out / kind}/**/*.parquet"
            sql = f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)"
            total += _count(con, sql)
        return total

    return read


def _delta_reader(out: Path) -> tuple[str, Callable[[duckdb.DuckDBPyConnection], int]]:
    """How DuckDB reads the Delta tables here: ``delta_scan`` if its extension loads, else
    through deltalake's Arrow dataset."""
    try:
        probe = duckdb.connect()
        probe.execute("INSTALL delta; LOAD delta")
        probe.close()
    except duckdb.Error:

        def through_arrow(con: duckdb.DuckDBPyConnection) -> int:
            total = 0
            for kind in KINDS:
                files = pafs.SubTreeFileSystem(str(out / kind), pafs.LocalFileSystem())
                dataset = DeltaTable(str(out / kind)).to_pyarrow_dataset(filesystem=files)
                con.register("delta_table", dataset)
                total += _count(con, "SELECT * FROM delta_table")
                con.unregister("delta_table")
            return total

        return (
            "deltalake -> Arrow dataset -> DuckDB (no delta extension: no network)",
            through_arrow,
        )

    def scan(con: duckdb.DuckDBPyConnection) -> int:
        con.execute("LOAD delta")
        total = 0
        for kind in KINDS:
            sql = f"SELECT * FROM delta_scan('{out / kind}')"
            total += _count(con, sql)
        return total

    return "DuckDB delta_scan", scan


def main() -> None:
    shutil.rmtree(RUNS, ignore_errors=True)
    RUNS.mkdir(parents=True)
    plain, compacted, lake = RUNS / "plain", RUNS / "compacted", RUNS / "delta"
    with _private_token_store():
        _note(f"a nightly run of {PHOTOS:,} photos, parts of {PART_IMAGES} (~1 min)")
        asyncio.run(_run(compacted, "parquet", before=plain))
        _note("the same run as Delta tables (~1 min)")
        asyncio.run(_run(lake, "delta", before=None))

    print(
        f"1. files of a nightly run: {PHOTOS:,} photos, ocean, parts of {PART_IMAGES} photos"
        " (a 10 calls/min night with flush_seconds = 60)"
    )
    for kind in KINDS:
        _figure(f"{kind}, as written", _describe(_files(plain, kind)))
        _figure(f"{kind}, compacted", _describe(_files(compacted, kind)))
    delta_files = {kind: len(DeltaTable(str(lake / kind)).file_uris()) for kind in KINDS}
    _figure("Delta tables, files", ", ".join(f"{k} {n}" for k, n in delta_files.items()))

    label, delta_read = _delta_reader(lake)
    print(f"2. DuckDB reads the whole feed (both tables, every column), best of {REPEATS}")
    results = {
        "plain parts": _read_seconds(_parquet_reader(plain)),
        "compacted": _read_seconds(_parquet_reader(compacted)),
        f"Delta ({label})": _read_seconds(delta_read),
    }
    base = results["plain parts"][0]
    for name, (seconds, rows) in results.items():
        _figure(name, f"{seconds * 1000:8.1f} ms  ({rows:,} rows, x{base / seconds:.1f} vs plain)")


if __name__ == "__main__":
    main()
