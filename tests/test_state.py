"""The checkpoint store: each named transition writes exactly its facts, atomically, to one run."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from engine.errors import StorageError
from engine.ratelimit import CallEntry
from engine.shard import UNSHARDED, Shard
from engine.state import (
    NewAnswer,
    PartRecord,
    StateStore,
    checkpoint_shards,
    snapshot,
    storage_error,
)

RUN = "20261202T000000Z-aaaaaa"
OTHER = "20261201T000000Z-bbbbbb"
WHEN = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def answer(sha256: str = "s1", calls: int = 2, when: datetime = WHEN) -> NewAnswer:
    return NewAnswer(sha256, '{"page_size":20}', "ocean", '{"result":{}}', when, calls)


@pytest.fixture
def store(state: StateStore) -> StateStore:
    state.start_run(OTHER, "2026-12-01", "{}")
    state.start_run(RUN, "2026-12-02", "{}")
    for run_id in (RUN, OTHER):
        for path in ("a.jpg", "b.jpg", "c.jpg"):
            state.discovered(run_id, path, 100, 7)
    return state


def status(state: StateStore, path: str, run_id: str = RUN) -> str:
    record = state.image(run_id, path)
    assert record is not None
    return record.status


def test_discovered_is_pending_and_forgets_an_earlier_version_in_this_run(
    store: StateStore,
) -> None:
    store.failed(RUN, ["a.jpg"], "truncated", "cut short", sha256="old")
    store.discovered(RUN, "a.jpg", 200, 9)
    record = store.image(RUN, "a.jpg")
    assert record is not None
    assert (record.status, record.size, record.mtime_ns) == ("pending", 200, 9)
    assert (record.sha256, record.reason, record.message) == (None, None, None)


def test_prepared_records_the_photo_and_stays_pending(store: StateStore) -> None:
    store.prepared(RUN, "a.jpg", "s1", 640, 480, ("exif_transpose", "resize 800"))
    record = store.image(RUN, "a.jpg")
    assert record is not None
    assert record.status == "pending"
    assert (record.sha256, record.width, record.height) == ("s1", 640, 480)
    assert record.steps == ("exif_transpose", "resize 800")


def test_in_flight_and_requeued_move_only_the_named_photos_of_the_named_run(
    store: StateStore,
) -> None:
    store.in_flight(RUN, ["a.jpg", "b.jpg"])
    assert [status(store, p) for p in ("a.jpg", "b.jpg", "c.jpg")] == [
        "in_flight",
        "in_flight",
        "pending",
    ]
    assert status(store, "a.jpg", OTHER) == "pending"
    store.requeued(RUN, ["b.jpg"])
    assert [status(store, p) for p in ("a.jpg", "b.jpg")] == ["in_flight", "pending"]


def test_fetched_stores_the_answer_books_calls_once_and_the_run_total_in_one_commit(
    store: StateStore,
) -> None:
    store.in_flight(RUN, ["a.jpg", "b.jpg"])
    response_id = store.fetched(RUN, ["a.jpg", "b.jpg"], answer(calls=3), run_calls=17)
    a, b = store.image(RUN, "a.jpg"), store.image(RUN, "b.jpg")
    assert a is not None and b is not None
    assert (a.status, a.response_id, a.calls, a.attempts) == ("fetched", response_id, 3, 1)
    assert (b.status, b.response_id, b.calls) == ("fetched", response_id, 0)  # rode along
    assert store.calls_spent(RUN) == 17
    assert store.calls_spent(OTHER) == 0
    stored = store.response(response_id)
    assert (stored.sha256, stored.raw_body, stored.calls, stored.searched_at) == (
        "s1",
        '{"result":{}}',
        3,
        WHEN,
    )


def test_fresh_response_honours_the_request_key_and_the_horizon(store: StateStore) -> None:
    old = store.fetched(RUN, ["a.jpg"], answer(when=WHEN - timedelta(days=9)), 2)
    new = store.fetched(RUN, ["b.jpg"], answer(when=WHEN - timedelta(days=1)), 4)
    found = store.fresh_response("s1", '{"page_size":20}', WHEN - timedelta(days=30))
    assert found is not None and found.id == new  # the newest wins
    assert store.fresh_response("s1", '{"page_size":20}', WHEN) is None  # all too old
    assert store.fresh_response("s1", '{"page_size":50}', WHEN - timedelta(days=30)) is None
    assert store.fresh_response("s2", '{"page_size":20}', WHEN - timedelta(days=30)) is None
    assert old != new


def test_reused_is_fetched_with_no_call(store: StateStore) -> None:
    response_id = store.fetched(RUN, ["a.jpg"], answer(), 2)
    store.reused(RUN, "b.jpg", response_id)
    record = store.image(RUN, "b.jpg")
    assert record is not None
    assert (record.status, record.response_id, record.reused, record.calls) == (
        "fetched",
        response_id,
        True,
        0,
    )


def test_reused_unchanged_carries_the_earlier_runs_facts(store: StateStore) -> None:
    store.prepared(OTHER, "a.jpg", "s1", 640, 480, ("resize 800",))
    response_id = store.fetched(OTHER, ["a.jpg"], answer(), 2)
    previous = store.previous_image(RUN, "a.jpg", 100, 7)
    assert previous is not None and previous.run_id == OTHER
    assert store.previous_image(RUN, "a.jpg", 100, 8) is None  # mtime changed: not the same

    store.reused_unchanged(RUN, "a.jpg", 100, 7, previous, response_id)
    record = store.image(RUN, "a.jpg")
    assert record is not None
    assert (record.status, record.sha256, record.reused, record.calls) == (
        "fetched",
        "s1",
        True,
        0,
    )
    assert (record.width, record.height, record.steps) == (640, 480, ("resize 800",))


def test_failed_keeps_attempts_and_sha256_unless_given(store: StateStore) -> None:
    store.prepared(RUN, "a.jpg", "s1", 1, 1, ())
    store.failed(RUN, ["a.jpg"], "retries_exhausted", "gave up after 5 attempts", attempts=5)
    store.failed(RUN, ["b.jpg"], "not_an_image", "text file", sha256="s2")
    a, b = store.image(RUN, "a.jpg"), store.image(RUN, "b.jpg")
    assert a is not None and b is not None
    assert (a.status, a.reason, a.attempts, a.sha256) == ("failed", "retries_exhausted", 5, "s1")
    assert (b.reason, b.message, b.attempts, b.sha256) == ("not_an_image", "text file", 0, "s2")


def test_reset_in_flight_requeues_lost_calls_and_outage_failures_only(store: StateStore) -> None:
    store.in_flight(RUN, ["a.jpg"])
    store.failed(RUN, ["b.jpg"], "retries_exhausted", "down", attempts=5)
    store.failed(RUN, ["c.jpg"], "not_an_image", "text")
    assert store.reset_in_flight(RUN) == 2
    assert [status(store, p) for p in ("a.jpg", "b.jpg", "c.jpg")] == [
        "pending",
        "pending",
        "failed",
    ]
    b = store.image(RUN, "b.jpg")
    assert b is not None and b.reason is None


def part(name: str, kind: str = "images", run_id: str = RUN) -> PartRecord:
    return PartRecord(name=name, run_id=run_id, kind=kind, run_date="2026-12-02", rows=3)


def test_exported_registers_parts_marks_images_and_unregisters_replaced_parts(
    store: StateStore,
) -> None:
    old = [part("part-old-000001.parquet")]
    store.exported(old, [(RUN, "a.jpg")])
    new = [part("part-new-000001.parquet", "matches"), part("part-new-000001.parquet")]
    store.exported(new, [(RUN, "a.jpg"), (RUN, "b.jpg")], replacing=old)
    assert sorted((p.kind, p.name) for p in store.parts()) == [
        ("images", "part-new-000001.parquet"),
        ("matches", "part-new-000001.parquet"),
    ]
    a = store.image(RUN, "a.jpg")
    assert a is not None and (a.status, a.part) == ("exported", "part-new-000001.parquet")
    assert status(store, "c.jpg") == "pending"


def test_a_failed_transition_changes_nothing(store: StateStore) -> None:
    store.exported([part("part-1.parquet")], [(RUN, "a.jpg")])
    with pytest.raises(sqlite3.IntegrityError):
        # The same part registered twice violates the key: a bug, not a full disk, and the
        # whole commit rolls back.
        store.exported([part("part-2.parquet"), part("part-1.parquet")], [(RUN, "b.jpg")])
    assert status(store, "b.jpg") == "pending"
    assert [p.name for p in store.parts()] == ["part-1.parquet"]
    store.exported([part("part-2.parquet")], [(RUN, "b.jpg")])  # the store is still usable
    assert status(store, "b.jpg") == "exported"


def test_a_full_disk_is_a_storage_error_and_changes_nothing(store: StateStore) -> None:
    # SQLITE_FULL for real: the database may not grow past the pages it has now.
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages}")
    long = "x" * 2000
    with pytest.raises(StorageError, match="SQLITE_FULL") as caught:
        for i in range(100):
            store.discovered(RUN, f"{long}-{i}.jpg", 100, 7)
    assert "checkpoint database write failed" in str(caught.value)
    assert store.image(RUN, f"{long}-{i}.jpg") is None  # the failed transition left nothing
    store.db.execute("PRAGMA max_page_count=1073741823")
    store.discovered(RUN, "after.jpg", 1, 1)  # rolled back: no transaction left open
    assert status(store, "after.jpg") == "pending"


def test_a_read_only_database_is_a_storage_error(store: StateStore) -> None:
    store.db.execute("PRAGMA query_only=ON")  # SQLite answers writes with SQLITE_READONLY
    with pytest.raises(StorageError, match="SQLITE_READONLY"):
        store.in_flight(RUN, ["a.jpg"])
    store.db.execute("PRAGMA query_only=OFF")
    assert status(store, "a.jpg") == "pending"


def test_bad_sql_in_a_transaction_is_a_bug_not_a_storage_error(store: StateStore) -> None:
    with pytest.raises(sqlite3.OperationalError, match="no such table"), store.transaction() as db:
        db.execute("UPDATE images SET status = 'failed'")
        db.execute("INSERT INTO no_such_table VALUES (1)")
    assert status(store, "a.jpg") == "pending"  # the first statement was rolled back


def _sqlite_error(code: int | None) -> sqlite3.Error:
    error = sqlite3.OperationalError("boom")
    if code is not None:
        error.sqlite_errorcode = code  # type: ignore[attr-defined]
        error.sqlite_errorname = "SQLITE_X"  # type: ignore[attr-defined]
    return error


@pytest.mark.parametrize(
    ("code", "storage"),
    [
        (sqlite3.SQLITE_FULL, True),
        (sqlite3.SQLITE_IOERR_WRITE, True),  # extended codes map by their primary code
        (sqlite3.SQLITE_IOERR_FSYNC, True),
        (sqlite3.SQLITE_READONLY_DIRECTORY, True),
        (sqlite3.SQLITE_CANTOPEN_ISDIR, True),
        (sqlite3.SQLITE_BUSY, True),
        (sqlite3.SQLITE_PROTOCOL, True),
        (sqlite3.SQLITE_CORRUPT, True),
        (sqlite3.SQLITE_NOTADB, True),
        (sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, False),
        (sqlite3.SQLITE_ERROR, False),
        (sqlite3.SQLITE_MISUSE, False),
        (sqlite3.SQLITE_RANGE, False),
        (sqlite3.SQLITE_LOCKED, False),
        (None, False),  # raised by the sqlite3 module itself: no SQLite code
    ],
)
def test_only_codes_that_mean_the_disk_or_the_file_are_storage_errors(
    code: int | None, storage: bool
) -> None:
    assert (storage_error(_sqlite_error(code), "writing") is not None) is storage


def test_forget_unfinished_drops_only_pending_and_in_flight(store: StateStore) -> None:
    store.in_flight(RUN, ["a.jpg"])
    store.failed(RUN, ["b.jpg"], "truncated", "cut")
    assert store.forget_unfinished(RUN) == 2  # a (in flight) and c (pending)
    assert store.image(RUN, "a.jpg") is None
    assert store.image(RUN, "b.jpg") is not None
    assert store.image(OTHER, "a.jpg") is not None


def test_a_state_database_of_another_version_is_refused_clearly(tmp_path: Path) -> None:
    with StateStore(tmp_path) as state:
        state.db.execute("PRAGMA user_version = 99")
    with pytest.raises(StorageError, match="another version of img1688"):
        StateStore(tmp_path)
    StateStore(tmp_path / "new").close()  # a fresh directory is fine


def test_each_shard_has_its_own_checkpoints_and_unsharded_keeps_state_sqlite(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    with StateStore(out, Shard(0, 2)) as first, StateStore(out, Shard(1, 2)) as second:
        first.start_run("r0", "2026-12-02", "{}")
        second.start_run("r1", "2026-12-02", "{}")
        assert first.path == out / "state-shard-0-of-2.sqlite"
        assert checkpoint_shards(out) == [Shard(0, 2), Shard(1, 2)]  # not their -wal files
    with StateStore(out) as plain:
        assert plain.path == out / "state.sqlite"
    assert checkpoint_shards(out) == [UNSHARDED, Shard(0, 2), Shard(1, 2)]
    runs = {
        s: snap.run.run_id
        for s in checkpoint_shards(out)
        if (snap := snapshot(out, s)) and snap.run
    }
    assert runs == {Shard(0, 2): "r0", Shard(1, 2): "r1"}
    assert snapshot(out, Shard(0, 3)) is None
    assert checkpoint_shards(tmp_path / "nowhere") == []


# -- the call ledger ----------------------------------------------------------------------


def gmt8(text: str) -> float:
    """Epoch seconds of a wall time in GMT+8, ``"2026-12-02 23:59"``."""
    return datetime.fromisoformat(text + "+08:00").timestamp()


@pytest.mark.parametrize(
    ("calls", "days"),
    [
        (["2026-12-02 23:59", "2026-12-03 00:01"], {"2026-12-02": 1, "2026-12-03": 1}),
        (["2026-12-02 00:00", "2026-12-02 23:59:59.999"], {"2026-12-02": 2}),
        (["2026-12-02 07:59", "2026-12-02 08:00"], {"2026-12-02": 2}),  # UTC's midnight: no day
        (["2026-12-03 00:00", "2026-12-02 23:59:59"], {"2026-12-02": 1, "2026-12-03": 1}),
    ],
)
def test_the_ledger_counts_calls_per_gateway_day_in_gmt8(
    store: StateStore, calls: list[str], days: dict[str, int]
) -> None:
    store.record_calls(RUN, len(calls), [CallEntry(gmt8(c), None) for c in calls])
    assert store.calls_per_day() == {date.fromisoformat(d): n for d, n in days.items()}


def test_call_times_are_the_runs_own_in_order_and_outlive_fresh(store: StateStore) -> None:
    mine = [gmt8("2026-12-02 10:00:02"), gmt8("2026-12-02 10:00:01")]
    store.record_calls(RUN, 1, [CallEntry(mine[0], "ap***21")])
    store.fetched(RUN, ["a.jpg"], answer(), 2, [CallEntry(mine[1], "ap***21")])
    store.record_calls(OTHER, 1, [CallEntry(gmt8("2026-12-01 10:00"), "ap***21")])
    assert store.call_times(RUN) == sorted(mine)
    assert len(store.call_times(OTHER)) == 1
    store.forget_runs()  # --fresh: the calls were paid for all the same
    assert store.call_times(RUN) == sorted(mine)
    assert sum(store.calls_per_day().values()) == 3


def test_a_refund_entry_removes_one_row_of_its_call(store: StateStore) -> None:
    call = CallEntry(gmt8("2026-12-02 10:00"), "ap***21")
    store.record_calls(RUN, 2, [call, call])  # two calls at the same instant: alike
    store.record_calls(RUN, 1, [replace(call, refund=True)])
    assert store.call_times(RUN) == [call.at]


def test_a_database_without_the_ledger_reads_as_an_empty_one(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with StateStore(out) as state:
        state.start_run(RUN, "2026-12-02", "{}")
        state.db.execute("DROP TABLE calls")  # as a version before the ledger left it
        state.db.execute("DROP TABLE quota_settings")
    snap = snapshot(out)  # read-only, as status reads it: no table is created
    assert snap is not None and snap.run is not None
    assert (snap.call_days, snap.quota_settings) == ({}, None)
    with StateStore(out) as state:  # a run opens it: the ledger is added, nothing else changes
        assert state.calls_per_day() == {} and state.quota_settings() is None
        assert state.latest_run() is not None
