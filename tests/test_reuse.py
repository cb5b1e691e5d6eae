"""Stored answers replace calls only when fresh, for the same request, and for the same photo."""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.discover import Candidate
from engine.errors import StorageError
from engine.jobfile import Job
from engine.outcome import ExitCode
from engine.preprocess import PreparedImage, prepare_image
from engine.ratelimit import Rate
from engine.reuse import AnswerReuse
from engine.runner import run_job
from engine.sandbox import Sandbox, SandboxConfig
from engine.state import STATE_FILE, NewAnswer, PartRecord, Pruned, Run, StateStore
from tests.job_kit import creds, image_files, make_job, read_table

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


def test_a_completed_run_keeps_its_records_the_answers_it_used_and_those_still_fresh(
    state: StateStore,
) -> None:
    state.start_run("old", "2026-11-12", "{}")
    unused = search(state, "old", "/p/gone.jpg", "s0", age_days=20)
    used = search(state, "old", "/p/a.jpg", "s1", age_days=20)
    fresh = search(state, "old", "/p/b.jpg", "s2", age_days=3)
    part = PartRecord("run_date=2026-11-12/part-0.parquet", "old", "matches", "2026-11-12", 20)
    state.exported([part], [("old", "/p/gone.jpg")], clusters={"f" * 64: "c1"})
    assert state.clusters("old") == {"f" * 64: "c1"}
    state.complete_run("old")
    run = current_run(state)
    state.discovered(run.run_id, "/p/a.jpg", 100, 7)
    state.reused(run.run_id, "/p/a.jpg", used)  # an answer older than the TTL, reused all the same
    state.complete_run(run.run_id)

    assert state.prune(run.run_id, NOW - timedelta(days=7)) == (3, 1)

    remaining = {row[0] for row in state.db.execute("SELECT id FROM responses")}
    assert remaining == {used, fresh} and unused not in remaining
    assert state.response(used).sha256 == "s1"  # what reclean of this run reads
    assert state.image(run.run_id, "/p/a.jpg") is not None
    assert all(state.image("old", f"/p/{name}.jpg") is None for name in ("gone", "a", "b"))
    assert state.clusters("old") == {}
    assert [r.run_id for r in state.runs()] == ["old", run.run_id]  # the runs themselves stay
    assert state.parts("old") == [part]  # and their parts: the feed's index
    assert state.prune(run.run_id, NOW - timedelta(days=7)) == (0, 0)


# --- end to end: the sandbox on loopback, the real checkpoint database, the feed read back ---


async def test_a_stored_answer_older_than_the_ttl_is_searched_again_end_to_end(
    query_dir: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "three"
    photos.mkdir()
    for source in sorted(query_dir.glob("q0*.jpg"))[:3]:
        shutil.copy(source, photos / source.name)
    stale, *fresh = image_files(photos)
    out = tmp_path / "out"
    config = SandboxConfig(rate=Rate(1000, 1.0))
    async with Sandbox(config) as sandbox:
        job = make_job(photos, out, sandbox.url, engine={"reuse_ttl_days": 7})
        first = await run_job(job, credentials=creds(config))
        assert first.exit_code == ExitCode.OK, first.message
        # Make the stale photo's answer eight days old, as if it was searched back then.
        eight_days_ago = (datetime.now(UTC) - timedelta(days=8)).isoformat()
        with sqlite3.connect(out / STATE_FILE) as db:
            aged = db.execute(
                "UPDATE responses SET searched_at = ? WHERE sha256 = ?",
                (eight_days_ago, hashlib.sha256(stale.read_bytes()).hexdigest()),
            ).rowcount
        db.close()
        assert aged == 1

        second = await run_job(job, credentials=creds(config))
        searches = sandbox.stats()["searches"]

    assert second.exit_code == ExitCode.OK, second.message
    assert second.run_id != first.run_id
    # The sandbox counts searches by the SHA-256 of the JPEG it was sent.
    sent = {path: uploaded_sha256(path, job) for path in (stale, *fresh)}
    assert searches == {sent[stale]: 2, **{sent[path]: 1 for path in fresh}}
    rows = {
        row["query_path"]: row
        for row in read_table(out, "images").to_table().to_pylist()
        if row["run_id"] == second.run_id
    }
    assert (rows[str(stale)]["reused"], rows[str(stale)]["calls"]) == (False, 2)
    # The stale answer, which no later run can reuse, is gone from the checkpoints, and so are
    # the first run's records; the answers the second run used (its new one for the stale
    # photo) are kept.
    with sqlite3.connect(out / STATE_FILE) as db:
        stored = [when for (when,) in db.execute("SELECT searched_at FROM responses")]
        record_runs = {run_id for (run_id,) in db.execute("SELECT run_id FROM images")}
    db.close()
    assert len(stored) == 3 and eight_days_ago not in stored
    assert record_runs == {second.run_id}
    assert all(rows[str(path)]["reused"] and rows[str(path)]["calls"] == 0 for path in fresh)


def uploaded_sha256(path: Path, job: Job) -> str:
    """The SHA-256 of the JPEG the engine sends for ``path`` (preprocessing is deterministic)."""
    prepared = prepare_image(path, job.preprocess)
    assert isinstance(prepared, PreparedImage)
    return hashlib.sha256(prepared.jpeg).hexdigest()


async def test_a_completed_run_whose_housekeeping_fails_is_still_complete(
    sandbox: Sandbox,
    query_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def disk_full(self: StateStore, keep_run: str, answers_before: datetime) -> Pruned:
        raise StorageError("checkpoint database write failed: database or disk is full")

    monkeypatch.setattr(StateStore, "prune", disk_full)
    photos = tmp_path / "one"
    photos.mkdir()
    shutil.copy(sorted(query_dir.glob("q0*.jpg"))[0], photos / "a.jpg")
    job = make_job(photos, tmp_path / "out", sandbox.url)
    with caplog.at_level(logging.WARNING, logger="engine.runner"):
        outcome = await run_job(job, credentials=creds(sandbox.config))

    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert "checkpoints not pruned until the next completed run" in caplog.text
    with StateStore(tmp_path / "out") as state:
        latest = state.latest_run()
    assert latest is not None and latest.completed_at is not None
