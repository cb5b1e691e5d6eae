"""engine.export: a batch's parts are cleaned, encoded and written off the event loop, and
registered on it afterwards; real SQLite, real Parquet read back."""

from __future__ import annotations

import asyncio

import pyarrow.parquet as pq
import pytest

from engine.clean import WholesaleFilters
from engine.errors import StorageError
from engine.export import Exporter
from engine.feed import Feed
from engine.sandbox.catalogue import Catalogue, Match
from engine.sandbox.formats import seed_success
from engine.state import NewAnswer, Run, StateStore, utc_now

PHOTOS = 2_000


def _fetched(state: StateStore, catalogue: Catalogue, count: int) -> tuple[Run, list[str]]:
    """A run whose ``count`` photos are fetched, all answered by one realistic seed answer
    (every product of ``catalogue``, in the sandbox's varied field formats)."""
    run = state.start_run("r1", "2024-05-01", "{}")
    paths = [f"/photos/{i:05d}.jpg" for i in range(count)]
    for path in paths:
        state.discovered(run.run_id, path, size=1, mtime_ns=1)
    matches = [Match(p, 0.9 - i / 100) for i, p in enumerate(catalogue.products)]
    body = seed_success(matches, total=len(matches)).text()
    answer = NewAnswer("ab" * 32, "{}", "seed", body, utc_now(), calls=1)
    state.fetched(run.run_id, paths, answer, run_calls=1)
    return run, paths


async def test_a_large_flush_leaves_the_event_loop_free_and_registers_after_writing(
    state: StateStore, client_catalogue: Catalogue
) -> None:
    run, paths = _fetched(state, client_catalogue, PHOTOS)
    exporter = Exporter(state, Feed(state.out), run, WholesaleFilters(), "seed")
    ticks = 0
    seen: set[str] = set()
    flushing = True

    async def tick() -> None:
        # Another coroutine on the loop, using the checkpoint database meanwhile: the sqlite3
        # connection refuses any use from another thread, so the export's thread cannot have
        # touched it either.
        nonlocal ticks
        while flushing:
            record = state.image(run.run_id, paths[-1])
            assert record is not None
            seen.add(record.status)
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    before = ticks
    result = await exporter.export_finished(paths)
    during = ticks - before
    flushing = False
    await ticker

    assert during > 0, "the loop was blocked for the whole flush"
    assert seen == {"fetched"}  # exported only by the commit that follows the writes
    assert result is not None
    offers = len(client_catalogue.products)
    assert (result.images_ok, result.images_failed, result.match_rows) == (
        PHOTOS,
        0,
        PHOTOS * offers,
    )
    assert state.counts(run.run_id) == {"exported": PHOTOS}
    parts = state.parts(run.run_id)
    assert sorted(p.kind for p in parts) == ["images", "matches"]
    for part in parts:
        table = pq.read_table(Feed(state.out).part_path(part.kind, part.run_date, part.name))
        expected = PHOTOS * offers if part.kind == "matches" else PHOTOS
        assert table.num_rows == part.rows == expected


async def test_a_write_that_fails_registers_nothing(
    state: StateStore, client_catalogue: Catalogue
) -> None:
    run, paths = _fetched(state, client_catalogue, 3)
    feed = Feed(state.out)
    # A folder where the first part must go: its rename fails, in the worker thread.
    (feed.part_path("matches", run.run_date, feed.part_name(run.run_id, 1)) / "x").mkdir(
        parents=True
    )
    exporter = Exporter(state, feed, run, WholesaleFilters(), "seed")
    with pytest.raises(StorageError, match="cannot write"):
        await exporter.export_finished(paths)
    assert state.counts(run.run_id) == {"fetched": 3}
    assert state.parts(run.run_id) == []


async def test_the_synchronous_write_for_reclean_matches_the_export(
    state: StateStore, client_catalogue: Catalogue
) -> None:
    run, paths = _fetched(state, client_catalogue, 5)
    exporter = Exporter(state, Feed(state.out), run, WholesaleFilters(), "seed")
    records = [r for p in paths if (r := state.image(run.run_id, p))]
    parts, batch = exporter.write(records)  # reclean's path: no thread, nothing registered
    assert state.parts(run.run_id) == [] and state.counts(run.run_id) == {"fetched": 5}
    exported = await exporter.export(records)
    assert exported == batch
    assert [p.rows for p in state.parts(run.run_id)] == [p.rows for p in parts]
    assert {p.name for p in state.parts(run.run_id)}.isdisjoint(p.name for p in parts)
