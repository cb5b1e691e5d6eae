"""engine.export: a batch's parts are cleaned, encoded and written off the event loop, and
registered on it afterwards; real SQLite, real Parquet read back."""

from __future__ import annotations

import asyncio

import pyarrow.parquet as pq
import pytest

from engine import __version__
from engine.clean import WholesaleFilters
from engine.errors import StorageError
from engine.export import Exporter
from engine.feed import Feed, part_seq
from engine.sandbox.catalogue import Catalogue, Match
from engine.sandbox.formats import seed_success
from engine.state import NewAnswer, Run, StateStore, utc_now
from tests.fake_clock import on_fake_clock

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


# The images columns of a failed photo that come from its checkpoint record and the job.
FAILED_FIELDS = (
    "query_sha256",
    "run_id",
    "protocol",
    "searched_at",
    "engine_version",
    "status",
    "failure_reason",
    "failure_message",
    "calls",
    "width",
    "height",
    "preprocess_steps",
)


async def test_answered_reused_and_failed_photos_each_get_their_images_row(
    state: StateStore, client_catalogue: Catalogue
) -> None:
    run, [answered] = _fetched(state, client_catalogue, 1)
    record = state.image(run.run_id, answered)
    assert record is not None and record.response_id is not None
    reused, failed, unexplained, answer_lost, *reuse_failed = (
        f"/photos/{name}.jpg" for name in ("reused", "failed", "empty", "lost", "rf1", "rf2")
    )
    for path in (reused, failed, unexplained, answer_lost, *reuse_failed):
        state.discovered(run.run_id, path, size=1, mtime_ns=1)
    # Bytes already answered: the stored answer serves this photo too, without a call.
    state.prepared(run.run_id, reused, "ab" * 32, 640, 480, ["resized"])
    state.reused(run.run_id, reused, record.response_id)
    state.prepared(run.run_id, failed, "cd" * 32, 300, 200, ["exif_rotated", "resized"])
    state.failed(run.run_id, [failed], "retries_exhausted", "http_503 three times", attempts=3)
    state.failed(run.run_id, [unexplained], "", "no reason recorded")
    # An answer was stored, then the photo failed all the same: the failure is what counts.
    answer = NewAnswer("ef" * 32, "{}", "seed", "{}", utc_now(), calls=1)
    state.fetched(run.run_id, [answer_lost], answer, run_calls=2)
    state.failed(run.run_id, [answer_lost], "unparsable", "not a seed answer")
    # A stored answer served these, then they failed all the same: failures, not reuses.
    for path in reuse_failed:
        state.reused(run.run_id, path, record.response_id)
    state.failed(run.run_id, reuse_failed, "unparsable", "not a seed answer")
    exporter = Exporter(state, Feed(state.out), run, WholesaleFilters(), "ocean")

    result = await exporter.export_finished(
        [answered, reused, failed, unexplained, answer_lost, *reuse_failed]
    )

    offers = len(client_catalogue.products)
    assert result is not None
    assert (result.images_ok, result.images_failed, result.reused, result.match_rows) == (
        2,
        5,
        1,
        2 * offers,
    )
    [images] = [p for p in state.parts(run.run_id) if p.kind == "images"]
    table = pq.read_table(Feed(state.out).part_path("images", images.run_date, images.name))
    rows = {row["query_path"]: row for row in table.to_pylist()}
    assert (rows[answered]["status"], rows[answered]["reused"]) == ("ok", False)
    assert (rows[reused]["status"], rows[reused]["reused"]) == ("ok", True)
    assert (rows[reused]["width"], rows[reused]["height"]) == (640, 480)
    assert rows[reused]["preprocess_steps"] == ["resized"]
    assert {k: rows[failed][k] for k in FAILED_FIELDS} == {
        "query_sha256": "cd" * 32,
        "run_id": run.run_id,
        "protocol": "ocean",  # the job's: a failed photo has no answer to tell it
        "searched_at": None,
        "engine_version": __version__,
        "status": "failed",
        "failure_reason": "retries_exhausted",
        "failure_message": "http_503 three times",
        "calls": 0,
        "width": 300,
        "height": 200,
        "preprocess_steps": ["exif_rotated", "resized"],
    }
    assert rows[unexplained]["failure_reason"] == "unknown"
    assert (rows[answer_lost]["status"], rows[answer_lost]["failure_reason"]) == (
        "failed",
        "unparsable",
    )
    assert rows[answer_lost]["calls"] == 1  # the call it spent is still counted


async def test_only_photos_not_yet_exported_are_exported_once(
    state: StateStore, client_catalogue: Catalogue
) -> None:
    run, paths = _fetched(state, client_catalogue, 3)
    exporter = Exporter(state, Feed(state.out), run, WholesaleFilters(), "seed")

    # Named twice, and a path the checkpoints do not know: each known photo once.
    first = await exporter.export_finished([*paths, paths[0], "/photos/unknown.jpg"])
    again = await exporter.export_finished(paths)

    assert first is not None and first.images_ok == 3
    assert again is None  # nothing left to export, and no empty part written for it
    assert sorted(p.rows for p in state.parts(run.run_id) if p.kind == "images") == [3]


async def test_a_new_exporter_numbers_its_parts_after_those_its_run_has(
    state: StateStore, client_catalogue: Catalogue
) -> None:
    run, paths = _fetched(state, client_catalogue, 4)
    feed = Feed(state.out)
    await Exporter(state, feed, run, WholesaleFilters(), "seed").export_finished(paths[:2])

    # The next invocation resumes the run with an exporter of its own.
    await Exporter(state, feed, run, WholesaleFilters(), "seed").export_finished(paths[2:])

    parts = state.parts(run.run_id)
    assert sorted(part_seq(p.name) for p in parts) == [1, 1, 2, 2]
    for part in parts:  # the second exporter overwrote none of the first one's parts
        path = feed.part_path(part.kind, part.run_date, part.name)
        assert pq.read_table(path).num_rows == part.rows


async def test_a_runs_parts_are_numbered_from_1_whatever_other_runs_left(
    state: StateStore, client_catalogue: Catalogue
) -> None:
    earlier, paths = _fetched(state, client_catalogue, 2)
    feed = Feed(state.out)
    for path in paths:  # two parts for the earlier run
        await Exporter(state, feed, earlier, WholesaleFilters(), "seed").export_finished([path])
    later = state.start_run("r2", "2024-05-02", "{}")
    state.discovered(later.run_id, paths[0], size=1, mtime_ns=1)
    state.failed(later.run_id, [paths[0]], "truncated", "cut")

    await Exporter(state, feed, later, WholesaleFilters(), "seed").export_finished(paths[:1])

    assert [part_seq(p.name) for p in state.parts(later.run_id)] == [1, 1]


@on_fake_clock
async def test_exporting_yields_to_the_loop_without_sleeping(
    state: StateStore, client_catalogue: Catalogue
) -> None:
    run, paths = _fetched(state, client_catalogue, 450)  # three slices of checkpoint reads
    exporter = Exporter(state, Feed(state.out), run, WholesaleFilters(), "seed")
    loop = asyncio.get_running_loop()
    started = loop.time()

    result = await exporter.export_finished(paths)

    assert result is not None and result.images_ok == 450
    # On the fake clock only the loop's turns (a microsecond each) pass: no yield waits.
    assert loop.time() - started < 0.1
