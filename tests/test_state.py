"""The checkpoint store: each named transition writes exactly its facts, atomically, to one run."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from engine.errors import StorageError
from engine.ledger import QuotaSettings
from engine.ratelimit import CallEntry
from engine.shard import UNSHARDED, Shard
from engine.state import (
    NewAnswer,
    PartRecord,
    Snapshot,
    StateStore,
    checkpoint_shards,
    run_call_times,
    run_index,
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
    assert run_call_times(store.out, RUN) == sorted(mine)
    assert len(run_call_times(store.out, OTHER)) == 1
    store.forget_runs()  # --fresh: the calls were paid for all the same
    assert run_call_times(store.out, RUN) == sorted(mine)
    assert sum(store.calls_per_day().values()) == 3


def test_a_refund_entry_removes_one_row_of_its_call(store: StateStore) -> None:
    call = CallEntry(gmt8("2026-12-02 10:00"), "ap***21")
    store.record_calls(RUN, 2, [call, call])  # two calls at the same instant: alike
    store.record_calls(RUN, 1, [replace(call, refund=True)])
    assert run_call_times(store.out, RUN) == [call.at]


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


# -- read-only views: status, export ----------------------------------------------------


def test_a_snapshot_shows_the_latest_run_its_counts_and_the_ledger(store: StateStore) -> None:
    call = CallEntry(gmt8("2026-12-02 10:00"), None)
    answered = store.fetched(RUN, ["a.jpg"], answer(calls=2), run_calls=3, call_log=[call] * 3)
    store.reused(RUN, "b.jpg", answered)
    store.failed(RUN, ["c.jpg"], "truncated", "cut")
    store.fetched(OTHER, ["a.jpg"], answer("s2"), run_calls=1)  # another run's answer
    settings = QuotaSettings(50, 1000, date(2026, 12, 1), 0.2)
    store.save_quota_settings(settings)
    run = store.latest_run()
    assert run is not None and run.run_id == RUN

    snap = snapshot(store.out)  # while the store holds the lock, as status does

    assert snap == Snapshot(
        run=run,
        images={"fetched": 2, "failed": 1},
        failures={"truncated": 1},
        calls=3,
        reused_answers=1,
        searched=1,  # b.jpg was served from a.jpg's answer
        stored_answers=2,
        call_days={date(2026, 12, 2): 3},
        quota_settings=settings,
    )
    assert snap.to_json() == {
        "run": RUN,
        "run_date": "2026-12-02",
        "started_at": run.started_at,
        "completed_at": None,
        "state": "unfinished",
        "images": {"fetched": 2, "failed": 1},
        "failures": {"truncated": 1},
        "calls": 3,
        "reused_answers": 1,
        "searched": 1,
        "stored_answers": 2,
    }
    store.complete_run(RUN)
    completed = snapshot(store.out)
    assert completed is not None and completed.run is not None
    assert completed.to_json()["state"] == "complete"
    assert completed.to_json()["completed_at"] == completed.run.completed_at is not None


def test_a_snapshot_after_fresh_has_no_run_but_keeps_answers_and_the_ledger(
    store: StateStore,
) -> None:
    call = CallEntry(gmt8("2026-12-02 10:00"), "ap***21")
    store.fetched(RUN, ["a.jpg"], answer(), run_calls=1, call_log=[call])
    settings = QuotaSettings(daily_calls=50)
    store.save_quota_settings(settings)
    store.forget_runs()

    snap = snapshot(store.out)

    assert snap == Snapshot(None, {}, {}, 0, 0, 0, 1, {date(2026, 12, 2): 1}, settings)
    assert snap.to_json() == {
        "run": None,
        "run_date": None,
        "started_at": None,
        "completed_at": None,
        "state": "none",
        "images": {},
        "failures": {},
        "calls": 0,
        "reused_answers": 0,
        "searched": 0,
        "stored_answers": 1,
    }


def test_the_run_index_lists_runs_oldest_first_and_every_registered_part(
    store: StateStore, tmp_path: Path
) -> None:
    store.set_fingerprint(RUN, '{"zstd_level": 9}')
    store.exported([part("p-c.parquet"), part("p-b.parquet", "matches")], [(RUN, "a.jpg")])
    store.exported([part("p-a.parquet", run_id=OTHER)], [(OTHER, "a.jpg")])

    index = run_index(store.out)

    assert index is not None and index.shard == UNSHARDED
    assert [(r.run_id, r.fingerprint) for r in index.runs] == [
        (OTHER, "{}"),
        (RUN, '{"zstd_level": 9}'),  # set_fingerprint changed only the named run
    ]
    assert index.runs[-1] == store.latest_run()
    assert index.parts == (  # by name, every run's
        part("p-a.parquet", run_id=OTHER),
        part("p-b.parquet", "matches"),
        part("p-c.parquet"),
    )
    assert run_index(tmp_path / "nowhere") is None
    assert run_index(store.out, Shard(0, 2)) is None


def test_a_damaged_checkpoint_database_is_a_storage_error_for_its_readers(tmp_path: Path) -> None:
    tmp_path.joinpath("state.sqlite").write_bytes(b"not a database, " * 512)
    with pytest.raises(StorageError, match=r"cannot read checkpoint database .*not a database"):
        run_index(tmp_path)
    with pytest.raises(StorageError, match="cannot read checkpoint database"):
        run_call_times(tmp_path, RUN)


def test_run_call_times_reads_one_runs_ledger_read_only(store: StateStore, tmp_path: Path) -> None:
    first, second = gmt8("2026-12-02 10:00:01"), gmt8("2026-12-02 10:00:02")
    store.record_calls(RUN, 2, [CallEntry(second, None), CallEntry(first, None)])
    store.record_calls(OTHER, 1, [CallEntry(gmt8("2026-12-01 10:00"), None)])
    assert run_call_times(store.out, RUN) == [first, second]
    assert run_call_times(tmp_path / "nowhere", RUN) == []
    old = tmp_path / "old"
    with StateStore(old) as state:
        state.db.execute("DROP TABLE calls")  # as a version before the ledger left it
    assert run_call_times(old, RUN) == []


def test_images_in_lists_the_runs_photos_of_those_statuses_by_path(store: StateStore) -> None:
    store.discovered(RUN, "0.jpg", 100, 7)  # recorded last, listed first
    store.failed(RUN, ["c.jpg", "0.jpg"], "truncated", "cut")
    store.in_flight(RUN, ["b.jpg"])
    failed = store.images_in(RUN, ("failed",))
    assert [(r.path, r.reason) for r in failed] == [("0.jpg", "truncated"), ("c.jpg", "truncated")]
    assert [(r.path, r.status) for r in store.images_in(RUN, ("failed", "in_flight"))] == [
        ("0.jpg", "failed"),
        ("b.jpg", "in_flight"),
        ("c.jpg", "failed"),
    ]
    assert store.images_in(OTHER, ("failed",)) == []


def test_a_storage_error_names_the_code_when_sqlite_gives_no_name() -> None:
    error = sqlite3.OperationalError("disk I/O error")
    error.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE  # type: ignore[attr-defined]
    assert str(storage_error(error, "writing")) == (
        f"writing: disk I/O error ({sqlite3.SQLITE_IOERR_WRITE}: the disk failed to read or write)"
    )


def test_a_failed_search_books_its_calls_on_the_first_photo_only(store: StateStore) -> None:
    store.failed(RUN, ["a.jpg", "b.jpg"], "retries_exhausted", "down", attempts=5, calls=10)
    store.failed(RUN, ["c.jpg"], "not_an_image", "text")  # no search: calls untouched
    calls = [store.image(RUN, p).calls for p in ("a.jpg", "b.jpg", "c.jpg")]  # type: ignore[union-attr]
    assert calls == [10, 0, 0]


def test_run_call_times_reads_the_named_shards_checkpoints(tmp_path: Path) -> None:
    at = gmt8("2026-12-02 10:00")
    with StateStore(tmp_path, Shard(1, 2)) as state:
        state.start_run(RUN, "2026-12-02", "{}")
        state.record_calls(RUN, 1, [CallEntry(at, None)])
    assert run_call_times(tmp_path, RUN, Shard(1, 2)) == [at]
    assert run_call_times(tmp_path, RUN) == []  # no unsharded state.sqlite here


def test_a_catalogue_row_keeps_its_image_sku_and_title_and_names_the_photo_by_its_image(
    store: StateStore,
) -> None:
    store.discovered(RUN, "sku:A-1", 10, 3, source="https://cdn/x.jpg", sku="A-1", title="Cup")
    row = store.image(RUN, "sku:A-1")
    assert row is not None
    assert (row.source, row.sku, row.title, row.query_path) == (
        "https://cdn/x.jpg",
        "A-1",
        "Cup",
        "https://cdn/x.jpg",
    )
    plain = store.image(RUN, "a.jpg")
    assert plain is not None and (plain.sku, plain.query_path) == (None, "a.jpg")


def test_clusters_are_registered_with_the_parts_that_name_them(store: StateStore) -> None:
    store.exported([part("part-x-000001.parquet")], [(RUN, "a.jpg")], clusters={"f1": "c1"})
    store.exported([part("part-x-000002.parquet")], [(RUN, "b.jpg")], clusters={"f2": "c1"})
    assert store.clusters(RUN) == {"f1": "c1", "f2": "c1"}
    assert store.clusters(OTHER) == {}


def test_a_database_from_before_the_catalogue_gains_its_columns_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    with StateStore(out) as state:
        state.start_run(RUN, "2026-12-02", "{}")
        state.discovered(RUN, "a.jpg", 1, 2)
        for column in ("source", "sku", "title"):  # as the first release wrote it
            state.db.execute(f"ALTER TABLE images DROP COLUMN {column}")
    with StateStore(out) as state:
        row = state.image(RUN, "a.jpg")
        assert row is not None and (row.path, row.sku) == ("a.jpg", None)
        state.discovered(RUN, "sku:B", 1, 2, source="b.jpg", sku="B")
        again = state.image(RUN, "sku:B")
        assert again is not None and again.sku == "B"
