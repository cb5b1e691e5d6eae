"""Stored answers replace calls only when fresh, for the same request, and for the same photo."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.discover import Candidate
from engine.reuse import AnswerReuse
from engine.state import NewAnswer, Run, StateStore

KEY = '{"page_size":20}'
NOW = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def search(state: StateStore, run_id: str, path: str, sha256: str, age_days: float) -> int:
    state.discovered(run_id, path, 100, 7)
    state.prepared(run_id, path, sha256, 10, 10, ("resize 800",))
    when = NOW - timedelta(days=age_days)
    return state.fetched(run_id, [path], NewAnswer(sha256, KEY, "seed", "{}", when, 1), 1)


def current_run(state: StateStore, started: datetime = NOW) -> Run:
    run = state.start_run("new", "2026-12-02", "{}")
    return Run(run.run_id, run.run_date, started.isoformat(), run.fingerprint, None)


def test_an_unchanged_file_with_a_fresh_answer_is_reused_without_preprocessing(
    state: StateStore,
) -> None:
    state.start_run("old", "2026-11-30", "{}")
    response_id = search(state, "old", "/p/a.jpg", "s1", age_days=2)
    reuse = AnswerReuse(state, current_run(state), KEY, ttl_days=7, now=NOW)

    assert reuse.reuse_unchanged(Candidate(Path("/p/a.jpg"), 100, 7))
    record = state.image("new", "/p/a.jpg")
    assert record is not None
    assert (record.status, record.response_id, record.reused, record.sha256) == (
        "fetched",
        response_id,
        True,
        "s1",
    )


def test_a_changed_file_or_an_unknown_one_is_not_reused(state: StateStore) -> None:
    state.start_run("old", "2026-11-30", "{}")
    search(state, "old", "/p/a.jpg", "s1", age_days=2)
    reuse = AnswerReuse(state, current_run(state), KEY, ttl_days=7, now=NOW)
    assert not reuse.reuse_unchanged(Candidate(Path("/p/a.jpg"), 101, 7))  # size differs
    assert not reuse.reuse_unchanged(Candidate(Path("/p/a.jpg"), 100, 8))  # mtime differs
    assert not reuse.reuse_unchanged(Candidate(Path("/p/b.jpg"), 100, 7))
    assert state.image("new", "/p/a.jpg") is None


def test_an_answer_older_than_the_ttl_is_searched_again(state: StateStore) -> None:
    state.start_run("old", "2026-11-20", "{}")
    search(state, "old", "/p/a.jpg", "s1", age_days=8)
    run = current_run(state)
    reuse = AnswerReuse(state, run, KEY, ttl_days=7, now=NOW)
    assert reuse.answer("s1") is None
    assert not reuse.reuse_unchanged(Candidate(Path("/p/a.jpg"), 100, 7))
    assert not reuse.reuse_same_bytes("/p/copy.jpg", "s1")
    # Within the TTL the same answer is fresh.
    assert AnswerReuse(state, run, KEY, ttl_days=9, now=NOW).answer("s1")


def test_answers_stored_by_the_current_run_are_fresh_whatever_the_ttl(state: StateStore) -> None:
    run = current_run(state, started=NOW - timedelta(days=3))  # a run resumed for days
    state.discovered(run.run_id, "/p/b.jpg", 1, 1)
    search(state, run.run_id, "/p/a.jpg", "s1", age_days=2)
    reuse = AnswerReuse(state, run, KEY, ttl_days=0, now=NOW)
    assert reuse.reuse_same_bytes("/p/b.jpg", "s1")
    record = state.image(run.run_id, "/p/b.jpg")
    assert record is not None and (record.status, record.reused, record.calls) == (
        "fetched",
        True,
        0,
    )


def test_another_request_key_is_never_reused(state: StateStore) -> None:
    state.start_run("old", "2026-11-30", "{}")
    search(state, "old", "/p/a.jpg", "s1", age_days=1)
    reuse = AnswerReuse(state, current_run(state), '{"page_size":50}', ttl_days=7, now=NOW)
    assert reuse.answer("s1") is None
    assert not reuse.reuse_unchanged(Candidate(Path("/p/a.jpg"), 100, 7))
