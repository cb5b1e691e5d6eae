"""Opening a run resumes, refuses or starts; completing one publishes it last."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from engine.errors import ConfigError
from engine.feed import MANIFEST_FILE, SUCCESS_FILE, Feed
from engine.jobfile import Job, parse_job
from engine.lifecycle import complete_run, new_run_id, open_run
from engine.shard import Shard
from engine.state import PartRecord, StateStore, utc_now


def job_for(out: Path, **filters: object) -> Job:
    data: dict[str, dict[str, object]] = {
        "inputs": {"paths": [str(out.parent)]},
        "output": {"dir": str(out)},
        "gateway": {"endpoint": "sandbox"},
    }
    if filters:
        data["filters"] = filters
    return parse_job(data, base=out.parent)


@pytest.fixture
def feed(state: StateStore) -> Feed:
    return Feed(state.out)


def test_run_ids_sort_by_start_and_do_not_collide() -> None:
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", i) for i in ids)


def test_a_new_run_makes_the_feed_incomplete_until_it_completes(
    state: StateStore, feed: Feed
) -> None:
    feed.mark_complete({"run_id": "earlier"})
    run = open_run(state, feed, job_for(state.out), fresh=False)
    assert not (state.out / SUCCESS_FILE).exists()
    assert run.completed_at is None
    assert state.latest_run() == run


def test_an_unfinished_run_is_resumed_with_its_lost_calls_requeued(
    state: StateStore, feed: Feed
) -> None:
    job = job_for(state.out)
    first = open_run(state, feed, job, fresh=False)
    state.discovered(first.run_id, "a.jpg", 1, 1)
    state.in_flight(first.run_id, ["a.jpg"])
    again = open_run(state, feed, job, fresh=False)
    assert again.run_id == first.run_id
    record = state.image(first.run_id, "a.jpg")
    assert record is not None and record.status == "pending"


def test_resuming_under_other_filters_is_refused_and_fresh_starts_over(
    state: StateStore, feed: Feed
) -> None:
    first = open_run(state, feed, job_for(state.out), fresh=False)
    other = job_for(state.out, freight="free")
    with pytest.raises(ConfigError, match="unfinished run made with other settings"):
        open_run(state, feed, other, fresh=False)
    second = open_run(state, feed, other, fresh=True)
    assert second.run_id != first.run_id
    assert state.latest_run() == second


def test_opening_removes_parts_that_were_never_registered(state: StateStore, feed: Feed) -> None:
    kept = feed.write_part("images", "r0", "2026-12-01", 1, pa.table({"x": [1]}))
    state.exported([kept], [])
    orphan = feed.write_part("images", "r0", "2026-12-01", 2, pa.table({"x": [2]}))
    open_run(state, feed, job_for(state.out), fresh=False)
    assert feed.part_path("images", kept.run_date, kept.name).exists()
    assert not feed.part_path("images", orphan.run_date, orphan.name).exists()


def test_completing_replaces_an_earlier_run_of_the_same_day_and_publishes_last(
    state: StateStore, feed: Feed
) -> None:
    table = pa.table({"x": [1]})
    earlier = feed.write_part("images", "r-earlier", "2026-12-02", 1, table)
    yesterday = feed.write_part("images", "r-yesterday", "2026-12-01", 1, table)
    state.exported([earlier, yesterday], [])
    run = state.start_run("r-now", "2026-12-02", "{}")
    mine = feed.write_part("images", run.run_id, run.run_date, 1, table)
    state.exported([mine], [])
    seen: dict[str, object] = {}

    def manifest() -> dict[str, object]:
        # Built once the files are final, and before the markers are written.
        seen["parts"] = sorted(p.name for p in state.parts())
        seen["success_before"] = (state.out / SUCCESS_FILE).exists()
        return {"run_id": run.run_id}

    complete_run(state, feed, run, manifest)

    changes = feed.part_name(run.run_id, 2)  # the run's changes table (engine.changes)
    assert seen == {
        "parts": sorted([yesterday.name, mine.name, changes]),
        "success_before": False,
    }
    assert not feed.part_path("images", earlier.run_date, earlier.name).exists()
    assert (state.out / SUCCESS_FILE).exists()
    assert (state.out / MANIFEST_FILE).exists()
    latest = state.latest_run()
    assert latest is not None and latest.completed_at is not None


@pytest.fixture
def shards(tmp_path: Path) -> Iterator[tuple[StateStore, StateStore]]:
    """Shards 0/2 and 1/2 of one output directory, open at once as two processes would be."""
    out = tmp_path / "out"
    with StateStore(out, Shard(0, 2)) as first, StateStore(out, Shard(1, 2)) as second:
        yield first, second


def shard_feed(state: StateStore) -> Feed:
    return Feed(state.out, shard=state.shard)


def finish(state: StateStore, run_id: str, seqs: range) -> list[PartRecord]:
    """A completed run of ``state``'s shard today, written as parts ``seqs``; returns the parts
    registered once it completed (compacted)."""
    feed = shard_feed(state)
    run = state.start_run(run_id, f"{utc_now():%Y-%m-%d}", "{}")
    parts = [
        feed.write_part(k, run_id, run.run_date, n, pa.table({"x": [n]}))
        for n in seqs
        for k in ("matches", "images")
    ]
    state.exported(parts, [])
    complete_run(state, feed, run, lambda: {"run_id": run_id, "run_date": run.run_date})
    return state.parts(run_id)


def test_shard_0_starting_resuming_completing_or_fresh_never_deletes_shard_1s_parts(
    shards: tuple[StateStore, StateStore],
) -> None:
    first, second = shards
    # Shard 1 finished a run today: the same run date shard 0's runs get, the supersede's case.
    theirs = finish(second, "r-shard-1", range(1, 3))
    feed, job = shard_feed(first), job_for(first.out)

    def intact() -> bool:
        return all(feed.part_path(p.kind, p.run_date, p.name).exists() for p in theirs)

    run = open_run(first, feed, job, fresh=False)
    assert intact()
    feed.write_part("images", run.run_id, run.run_date, 9, pa.table({"x": [9]}))  # an orphan
    assert open_run(first, feed, job, fresh=False) == run  # resumes, removing the orphan
    assert intact() and not list(first.out.rglob(f"part-{run.run_id}-*"))
    mine = feed.write_part("images", run.run_id, run.run_date, 1, pa.table({"x": [1]}))
    first.exported([mine], [])
    complete_run(first, feed, run, lambda: {"run_id": run.run_id, "run_date": run.run_date})
    finish(first, "r-shard-0-again", range(1, 2))  # supersedes shard 0's earlier run of today
    assert intact() and not feed.part_path("images", run.run_date, mine.name).exists()
    assert (first.out / SUCCESS_FILE).exists()
    open_run(first, feed, job, fresh=True)
    assert intact()
    assert not list(first.out.rglob("*-s0of2-*"))
    assert (first.out / "_SUCCESS-shard-1-of-2").exists()
    assert not (first.out / SUCCESS_FILE).exists()  # the dataset is changing


def test_a_shard_starting_a_new_run_takes_the_datasets_success_down(
    shards: tuple[StateStore, StateStore],
) -> None:
    first, second = shards
    finish(first, "r0", range(1, 2))
    assert not (first.out / SUCCESS_FILE).exists()  # shard 1 has not completed yet
    finish(second, "r1", range(1, 2))
    assert (first.out / SUCCESS_FILE).exists()
    assert (first.out / MANIFEST_FILE).exists()

    open_run(second, shard_feed(second), job_for(second.out), fresh=False)

    assert not (first.out / SUCCESS_FILE).exists()
    assert not (first.out / "_SUCCESS-shard-1-of-2").exists()
    assert (first.out / "_SUCCESS-shard-0-of-2").exists()


@pytest.mark.parametrize(
    ("existing", "shard", "found"),
    [
        (Shard(0, 1), Shard(0, 2), "state.sqlite"),
        (Shard(1, 3), Shard(0, 2), "state-shard-*-of-3.sqlite"),
        (Shard(0, 2), Shard(0, 1), "state-shard-*-of-2.sqlite"),
    ],
)
def test_an_output_directory_split_another_way_is_refused(
    tmp_path: Path, existing: Shard, shard: Shard, found: str
) -> None:
    out = tmp_path / "out"
    StateStore(out, existing).close()
    with StateStore(out, shard) as state:
        state.start_run("r-unfinished", "2026-12-01", "{}")
        with pytest.raises(ConfigError) as refused:
            open_run(state, Feed(out, shard=shard), job_for(out), fresh=True)
        assert found in str(refused.value) and "another --out" in str(refused.value)
        assert state.latest_run() is not None  # refused before --fresh forgot anything


def test_a_fresh_start_cut_short_after_forgetting_the_runs_still_clears_their_parts(
    state: StateStore, feed: Feed
) -> None:
    old = open_run(state, feed, job_for(state.out), fresh=False)
    part = feed.write_part("images", old.run_id, old.run_date, 1, pa.table({"x": [1]}))
    state.exported([part], [])
    state.forget_runs()  # `--fresh`, killed before feed.clear() deleted anything
    new = open_run(state, feed, job_for(state.out), fresh=False)
    assert new.run_id != old.run_id
    assert not Path(feed.part_path("images", old.run_date, part.name)).exists()
