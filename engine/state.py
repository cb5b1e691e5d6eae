"""Checkpoints: the job's durable memory, one SQLite database (WAL) in the output directory.

What it records, and why each fact is enough to resume exactly:

* ``runs``: one row per run (a run spans every invocation until it completes), with the
  fingerprint of the job's result-changing settings, so a resume under other settings is refused.
* ``images``: one row per query file and run (the latest completed run's, and the run under
  way's), moved only by the named transitions of :class:`StateStore`:

  - ``discovered`` -> ``pending`` (``prepared`` then records what the photo's bytes are);
  - ``in_flight``: a search is about to spend calls; ``requeued``: back to ``pending``;
  - ``fetched``: the answer is stored in the same commit; ``reused`` and ``reused_unchanged``:
    ``fetched`` from an answer already stored, with no call;
  - ``failed``: with a reason, to be published with no offers;
  - ``exported``: ``fetched`` or ``failed`` -> ``exported`` only in the same transaction that
    registers the Parquet parts holding its rows, so "done" always means "durably in the feed".
* ``responses``: every gateway answer, verbatim, keyed by the photo's SHA-256 and the request
  key. Stored before the image is marked fetched, so an answer is never paid for twice, and the
  feed can be re-cleaned later without calls. A completed run drops the answers older than its
  reuse horizon that it did not use, and earlier runs' image records (:meth:`StateStore.prune`).
* ``parts``: the Parquet files that belong to the dataset. A file on disk that is not listed
  here was left by a crash between its rename and this commit, and is deleted on the next start.
* ``calls``: the call ledger, one row per gateway call spent (admitted and not refunded), with
  its time (epoch seconds, UTC), run and app key (masked), written with the run's call total
  (``record_calls``, ``fetched``). It outlives ``--fresh``: those calls were paid for.
  ``quota_settings``: the job's quota keys as the latest invocation gave them, for ``img1688
  status``, which has no job file (see :mod:`engine.ledger`).

* ``feed_output``: where the feed of these checkpoints is (:meth:`StateStore.bind_output`): the
  folder itself, or ``s3://bucket/prefix``; the parts listed are that feed's and no other's.

The database is ``OUT/state.sqlite``, ``OUT`` being the job's local folder (the output directory,
or ``output.state_dir`` for a feed on object storage); each shard of a sharded job
(:mod:`engine.shard`) keeps its own, ``OUT/state-shard-I-of-N.sqlite``, under its own lock,
listing only its own parts.

Every write commits at once with ``synchronous=FULL``: a kill at any instant loses at most the
call that was in flight. Calls are short and few (one per image), so they run on the event
loop's thread; that keeps the ordering of writes obvious.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from engine.errors import ConfigError, StorageError
from engine.ledger import QuotaSettings
from engine.lock import OutputLock
from engine.protocol import ProtocolName
from engine.shard import UNSHARDED, Shard

if TYPE_CHECKING:
    from engine.ratelimit import CallEntry

STATE_FILE = "state.sqlite"
STATE_VERSION = 1
"""``PRAGMA user_version`` of the checkpoint database; bumped on any incompatible change."""

ImageStatus = Literal["pending", "in_flight", "fetched", "failed", "exported"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT PRIMARY KEY,
    run_date     TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    completed_at TEXT,
    calls        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS responses (
    id          INTEGER PRIMARY KEY,
    sha256      TEXT NOT NULL,
    request_key TEXT NOT NULL,
    protocol    TEXT NOT NULL,
    raw_body    TEXT NOT NULL,
    searched_at TEXT NOT NULL,
    calls       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_image ON responses (sha256, request_key, searched_at);
CREATE TABLE IF NOT EXISTS images (
    run_id      TEXT NOT NULL,
    path        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    sha256      TEXT,
    status      TEXT NOT NULL,
    reason      TEXT,
    message     TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    response_id INTEGER REFERENCES responses (id),
    reused      INTEGER NOT NULL DEFAULT 0,
    calls       INTEGER NOT NULL DEFAULT 0,
    width       INTEGER,
    height      INTEGER,
    steps       TEXT,
    part        TEXT,
    source      TEXT,
    sku         TEXT,
    title       TEXT,
    etag        TEXT,
    PRIMARY KEY (run_id, path)
);
CREATE INDEX IF NOT EXISTS images_by_status ON images (run_id, status);
CREATE INDEX IF NOT EXISTS images_by_path ON images (path);
-- The foreign key's child column: deleting an answer looks up who names it.
CREATE INDEX IF NOT EXISTS images_by_response ON images (response_id);
CREATE TABLE IF NOT EXISTS parts (
    name       TEXT NOT NULL,
    run_id     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    run_date   TEXT NOT NULL,
    rows       INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS forgotten_runs (
    run_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS clusters (
    run_id     TEXT NOT NULL,
    image_sha  TEXT NOT NULL,
    cluster_id TEXT NOT NULL,
    PRIMARY KEY (run_id, image_sha)
);
CREATE TABLE IF NOT EXISTS feed_output (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    url TEXT
);
CREATE TABLE IF NOT EXISTS calls (
    at     REAL NOT NULL,
    run_id TEXT NOT NULL,
    app    TEXT
);
CREATE INDEX IF NOT EXISTS calls_by_run ON calls (run_id, at);
CREATE INDEX IF NOT EXISTS calls_by_day ON calls (date(at, 'unixepoch', '+8 hours'));
CREATE TABLE IF NOT EXISTS quota_settings (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    daily_calls   INTEGER,
    package_calls INTEGER,
    package_start TEXT,
    low_share     REAL NOT NULL,
    saved_at      TEXT NOT NULL
);
"""
_ADDED_COLUMNS = {"images": ("source TEXT", "sku TEXT", "title TEXT", "etag TEXT")}
"""Columns added since state version 1 was released: a database written before them gains them
(``ALTER TABLE``) when it is opened, so a run in progress resumes across the upgrade."""
_GATEWAY_DAY = "date(at, 'unixepoch', '+8 hours')"
"""A call's gateway day, GMT+8 (:data:`engine.ledger.GATEWAY_TZ`), as ``calls_by_day`` indexes
it: a query must spell it exactly so to use the index."""


@dataclass(frozen=True)
class Run:
    run_id: str
    run_date: str
    started_at: str
    fingerprint: str
    completed_at: str | None

    @property
    def format(self) -> str:
        """The run's ``output.format`` (its fingerprint names any but the default)."""
        fingerprint = json.loads(self.fingerprint)
        return str(fingerprint.get("format", "parquet")) if isinstance(fingerprint, dict) else ""


@dataclass(frozen=True)
class ImageRecord:
    run_id: str
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    status: ImageStatus
    reason: str | None
    message: str | None
    attempts: int
    response_id: int | None
    reused: bool
    calls: int
    width: int | None
    height: int | None
    steps: tuple[str, ...]
    part: str | None
    source: str | None = None
    """Where the photo's bytes come from when ``path`` is not that: a catalogue row's image
    (a local path or a URL). ``path`` is then the row's key, ``sku:<SKU>``."""
    sku: str | None = None
    title: str | None = None
    etag: str | None = None
    """An input object's ETag: with ``size`` and ``mtime_ns``, its version (see
    :meth:`StateStore.previous_image`); ``None`` for a local file."""

    @property
    def query_path(self) -> str:
        """The photo as the feed names it: the catalogue row's image, else the path."""
        return self.source or self.path


class Pruned(NamedTuple):
    """What :meth:`StateStore.prune` deleted."""

    records: int
    """Image records of earlier runs."""
    answers: int
    """Stored answers."""


@dataclass(frozen=True)
class NewAnswer:
    """A gateway answer to store: verbatim, keyed by the photo's bytes and the request."""

    sha256: str
    request_key: str
    protocol: ProtocolName
    raw_body: str
    searched_at: datetime
    calls: int
    """Gated HTTP attempts the search spent."""


@dataclass(frozen=True)
class StoredResponse:
    id: int
    sha256: str
    protocol: ProtocolName
    raw_body: str
    searched_at: datetime
    calls: int


@dataclass(frozen=True)
class PartRecord:
    name: str
    run_id: str
    kind: str
    run_date: str
    rows: int


def utc_now() -> datetime:
    return datetime.now(UTC)


# SQLite's primary result codes that mean the disk, the file or another process, never our own
# SQL: the user can fix them (exit 5). Everything else is a bug and propagates with its
# traceback: SQLITE_CONSTRAINT (IntegrityError), SQLITE_ERROR (bad SQL, a missing table),
# SQLITE_MISUSE, SQLITE_RANGE, SQLITE_MISMATCH, SQLITE_LOCKED (a conflict inside our one
# connection, unlike SQLITE_BUSY, which is another process), and the module's own
# InterfaceError and ProgrammingError, which carry no SQLite code. A damaged file
# (SQLITE_CORRUPT, SQLITE_NOTADB) is no bug of ours either: it is reported, not traced.
_STORAGE_CODES: dict[int, str] = {
    sqlite3.SQLITE_FULL: "the disk is full, or the database reached its size limit",
    sqlite3.SQLITE_IOERR: "the disk failed to read or write",
    sqlite3.SQLITE_READONLY: "the database or its directory is read-only",
    sqlite3.SQLITE_PERM: "access to the database file was denied",
    sqlite3.SQLITE_CANTOPEN: "the database file cannot be opened or created",
    sqlite3.SQLITE_BUSY: "another process kept the database locked",
    sqlite3.SQLITE_PROTOCOL: "file locking failed (a network file system?)",
    sqlite3.SQLITE_NOLFS: "the file system cannot hold a file this large",
    sqlite3.SQLITE_CORRUPT: "the database file is damaged: restore it or use a new --out",
    sqlite3.SQLITE_NOTADB: "the file is not a SQLite database: move it away or use a new --out",
}


def storage_error(exc: sqlite3.Error, doing: str) -> StorageError | None:
    """The :class:`StorageError` for ``exc`` if its SQLite code means the disk, the file or
    another process (``_STORAGE_CODES``, extended codes included), else ``None``: the caller
    re-raises ``exc`` as the bug it is. ``doing`` starts the message."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in _STORAGE_CODES:
        return None
    name = getattr(exc, "sqlite_errorname", None) or str(code)
    return StorageError(f"{doing}: {exc} ({name}: {_STORAGE_CODES[code & 0xFF]})")


class StateStore:
    """The checkpoint database of one output directory, held under an :class:`OutputLock`
    (a second process on the same output directory is refused with :class:`StorageError`).

    Images move only through the named transitions below (``discovered``, ``prepared``,
    ``in_flight``, ``requeued``, ``fetched``, ``reused``, ``reused_unchanged``, ``failed``,
    ``exported``); each is one durable transaction.
    """

    def __init__(self, out: Path, shard: Shard = UNSHARDED) -> None:
        self.out = out
        self.shard = shard
        self.path = state_path(out, shard)
        self._lock: OutputLock | None = OutputLock(out, shard)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self._check_version()
            self.db.executescript(_SCHEMA)
            _add_columns(self.db)
            self.db.execute(f"PRAGMA user_version={STATE_VERSION}")
        except sqlite3.Error as exc:
            self.close()
            storage = storage_error(exc, f"cannot open checkpoint database {self.path}")
            if storage is None:
                raise
            raise storage from None

    def _check_version(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if has_tables and version != STATE_VERSION:
            self.close()
            raise StorageError(
                f"{self.path} was written by another version of img1688"
                f" (state version {version}, this one reads {STATE_VERSION});"
                " use a new --out, or that version to finish its run"
            )

    def close(self) -> None:
        """Close the database, then release the output directory. Idempotent."""
        if getattr(self, "db", None) is not None:
            self.db.close()
            del self.db  # as before __init__ connected: getattr above makes close idempotent
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable write: all of it is committed, or none of it.

        Raises:
            StorageError: the disk or the database file failed (see :func:`storage_error`).
            sqlite3.Error: any other database error (a violated constraint, bad SQL): a bug,
                raised as it is, after the rollback.
        """
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")  # inside: a failed COMMIT must roll back too
            except BaseException:
                # SQLite may already have rolled back (after SQLITE_FULL or SQLITE_IOERR); a
                # ROLLBACK that fails must not hide the error that made it necessary.
                if self.db.in_transaction:
                    with suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            storage = storage_error(exc, "checkpoint database write failed")
            if storage is None:
                raise
            raise storage from None

    # -- runs -----------------------------------------------------------------------------

    def latest_run(self) -> Run | None:
        return _latest_run(self.db)

    def runs(self) -> list[Run]:
        """Every run these checkpoints remember, oldest first."""
        return [Run(*row) for row in self.db.execute(_RUNS_OLDEST_FIRST)]

    def start_run(self, run_id: str, run_date: str, fingerprint: str) -> Run:
        started = utc_now().isoformat()
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs (run_id, run_date, started_at, fingerprint) VALUES (?,?,?,?)",
                (run_id, run_date, started, fingerprint),
            )
        return Run(run_id, run_date, started, fingerprint, None)

    def set_fingerprint(self, run_id: str, fingerprint: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET fingerprint = ? WHERE run_id = ?", (fingerprint, run_id))

    def calls_spent(self, run_id: str) -> int:
        """Gateway calls this run has spent, over all its invocations, lost ones included."""
        return _run_calls(self.db, run_id)

    def record_calls(self, run_id: str, calls: int, call_log: Sequence[CallEntry] = ()) -> None:
        """Write the run's call total and log ``call_log`` in the ledger, in one commit."""
        with self.transaction() as db:
            db.execute("UPDATE runs SET calls = ? WHERE run_id = ?", (calls, run_id))
            _log_calls(db, run_id, call_log)

    def calls_per_day(self) -> dict[date, int]:
        """Calls logged per gateway day (GMT+8), over every run."""
        return _calls_per_day(self.db)

    def save_quota_settings(self, settings: QuotaSettings) -> None:
        """Keep the job's quota keys for ``img1688 status`` (replacing any kept before)."""
        start = settings.package_start.isoformat() if settings.package_start else None
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO quota_settings (id, daily_calls, package_calls,"
                " package_start, low_share, saved_at) VALUES (1,?,?,?,?,?)",
                (
                    settings.daily_calls,
                    settings.package_calls,
                    start,
                    settings.low_share,
                    utc_now().isoformat(),
                ),
            )

    def quota_settings(self) -> QuotaSettings | None:
        """The quota keys the latest invocation kept; ``None`` before any."""
        return _quota_settings(self.db)

    def bind_output(self, url: str | None) -> None:
        """Record where the feed of these checkpoints is (``url``; ``None`` for this folder
        itself, the usual local layout), or check that it is where it was recorded: the
        checkpoints list parts of one feed only.

        Raises:
            ConfigError: another feed is recorded here.
        """
        row = self.db.execute("SELECT url FROM feed_output").fetchone()
        if row is None:
            with self.transaction() as db:
                db.execute("INSERT INTO feed_output (id, url) VALUES (1, ?)", (url,))
            return
        if row[0] != url:
            raise ConfigError(
                f"output.state_dir: {self.out} holds the checkpoints of the feed at"
                f" {row[0] or self.out}, not {url or self.out}: two feeds must not share one"
                " state directory; give this output its own output.state_dir"
            )

    def complete_run(self, run_id: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE runs SET completed_at = ? WHERE run_id = ?",
                (utc_now().isoformat(), run_id),
            )

    def forget_runs(self) -> None:
        """Drop every run, image and part record; stored answers are kept (``--fresh``). The
        run ids are remembered in ``forgotten_runs``: their part files are still this feed's to
        clean up (:meth:`known_runs`) if the clearing that follows is cut short."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO forgotten_runs SELECT run_id FROM runs"
                " UNION SELECT run_id FROM parts"
            )
            db.execute("DELETE FROM images")
            db.execute("DELETE FROM parts")
            db.execute("DELETE FROM runs")

    # -- images ---------------------------------------------------------------------------

    def image(self, run_id: str, path: str) -> ImageRecord | None:
        row = self.db.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE run_id = ? AND path = ?", (run_id, path)
        ).fetchone()
        return _image(row) if row else None

    def previous_image(
        self, run_id: str, path: str, size: int, mtime_ns: int, etag: str | None = None
    ) -> ImageRecord | None:
        """The newest record of the same unchanged file in an earlier run: same size, mtime
        and (for an object) ETag."""
        row = self.db.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE path = ? AND run_id != ? AND size = ?"
            " AND mtime_ns = ? AND etag IS ? AND sha256 IS NOT NULL ORDER BY rowid DESC LIMIT 1",
            (path, run_id, size, mtime_ns, etag),
        ).fetchone()
        return _image(row) if row else None

    def discovered(
        self,
        run_id: str,
        path: str,
        size: int,
        mtime_ns: int,
        *,
        source: str | None = None,
        sku: str | None = None,
        title: str | None = None,
        etag: str | None = None,
    ) -> None:
        """A file to search in this run: ``pending``, forgetting whatever this run knew of an
        earlier version of it. A catalogue row passes its image as ``source``, its SKU and
        title; an input object its ``etag``."""
        self._put(
            replace(
                _new_record(run_id, path, size, mtime_ns),
                source=source,
                sku=sku,
                title=title,
                etag=etag,
            )
        )

    def reused_unchanged(
        self,
        run_id: str,
        path: str,
        size: int,
        mtime_ns: int,
        previous: ImageRecord,
        response_id: int,
        etag: str | None = None,
        *,
        source: str | None = None,
        sku: str | None = None,
        title: str | None = None,
    ) -> None:
        """A file unchanged since an earlier run: ``fetched`` from a stored answer, with the
        facts that run learnt about it, and no call (a catalogue row: with its image, SKU and
        title, as :meth:`discovered`)."""
        self._put(
            replace(
                _new_record(run_id, path, size, mtime_ns),
                etag=etag,
                source=source,
                sku=sku,
                title=title,
                sha256=previous.sha256,
                status="fetched",
                response_id=response_id,
                reused=True,
                width=previous.width,
                height=previous.height,
                steps=previous.steps,
            )
        )

    def prepared(
        self, run_id: str, path: str, sha256: str, width: int, height: int, steps: Sequence[str]
    ) -> None:
        """Preprocessing produced the JPEG to send: remember what the photo is."""
        self._update(
            "status = 'pending', sha256 = ?, width = ?, height = ?, steps = ?",
            [(sha256, width, height, json.dumps(list(steps)), run_id, path)],
        )

    def reused(self, run_id: str, path: str, response_id: int) -> None:
        """``fetched`` from a stored answer to the same bytes: no call."""
        self._update(
            "status = 'fetched', response_id = ?, reused = 1, calls = 0",
            [(response_id, run_id, path)],
        )

    def in_flight(self, run_id: str, paths: Iterable[str]) -> None:
        """A search for these photos is about to spend calls."""
        self._update("status = 'in_flight'", [(run_id, p) for p in paths])

    def requeued(self, run_id: str, paths: Iterable[str]) -> None:
        """Back to ``pending``: their search was not made (the run is stopping)."""
        self._update("status = 'pending'", [(run_id, p) for p in paths])

    def failed(
        self,
        run_id: str,
        paths: Iterable[str],
        reason: str,
        message: str,
        *,
        attempts: int | None = None,
        sha256: str | None = None,
        calls: int | None = None,
    ) -> None:
        """These photos failed for ``reason``: they go to the feed with no offers.
        ``attempts`` (calls tried per photo), ``sha256`` (for a photo that was read but could
        not be prepared) and ``calls`` (what their failed search spent, booked on the first
        path like :meth:`fetched` does) are recorded when given."""
        self._update(
            "status = 'failed', reason = ?, message = ?, attempts = coalesce(?, attempts),"
            " sha256 = coalesce(?, sha256), calls = coalesce(?, calls)",
            [
                (
                    reason,
                    message,
                    attempts,
                    sha256,
                    None if calls is None else calls * (i == 0),
                    run_id,
                    p,
                )
                for i, p in enumerate(paths)
            ],
        )

    def fetched(
        self,
        run_id: str,
        paths: Sequence[str],
        answer: NewAnswer,
        run_calls: int,
        call_log: Sequence[CallEntry] = (),
    ) -> int:
        """Store a gateway answer and mark every photo it answers ``fetched``, atomically;
        returns the answer's id.

        The answer's calls are booked on the first path (the others rode along for free);
        ``run_calls``, the calls the run has spent so far, is recorded in the same commit, and
        so is ``call_log`` in the ledger.
        """
        with self.transaction() as db:
            db.execute("UPDATE runs SET calls = ? WHERE run_id = ?", (run_calls, run_id))
            _log_calls(db, run_id, call_log)
            cursor = db.execute(
                "INSERT INTO responses (sha256, request_key, protocol, raw_body, searched_at,"
                " calls) VALUES (?,?,?,?,?,?)",
                (
                    answer.sha256,
                    answer.request_key,
                    answer.protocol,
                    answer.raw_body,
                    answer.searched_at.isoformat(),
                    answer.calls,
                ),
            )
            response_id = int(cursor.lastrowid or 0)
            db.executemany(
                "UPDATE images SET status = 'fetched', response_id = ?, calls = ?,"
                " attempts = attempts + 1 WHERE run_id = ? AND path = ?",
                [
                    (response_id, answer.calls if i == 0 else 0, run_id, path)
                    for i, path in enumerate(paths)
                ],
            )
        return response_id

    def _put(self, record: ImageRecord) -> None:
        with self.transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO images ({_IMAGE_COLUMNS}) VALUES ({_IMAGE_PLACEHOLDERS})",
                _image_values(record),
            )

    def _update(self, assignments: str, rows: list[tuple[object, ...]]) -> None:
        """``UPDATE images SET assignments`` for each row of values, which end with the
        image's ``(run_id, path)``; one transaction."""
        with self.transaction() as db:
            db.executemany(f"UPDATE images SET {assignments} WHERE run_id = ? AND path = ?", rows)

    def fresh_response(
        self, sha256: str, request_key: str, since: datetime
    ) -> StoredResponse | None:
        row = self.db.execute(
            "SELECT id, sha256, protocol, raw_body, searched_at, calls FROM responses"
            " WHERE sha256 = ? AND request_key = ? AND searched_at >= ?"
            " ORDER BY searched_at DESC LIMIT 1",
            (sha256, request_key, since.isoformat()),
        ).fetchone()
        return _response(row) if row else None

    def prune(self, keep_run: str, answers_before: datetime) -> Pruned:
        """Forget what no run will read again, when ``keep_run`` completes (no other run is
        unfinished then): the image records and cluster ids of every earlier run (their rows
        live on in the feed; only the latest run's records are read, by ``status``, ``reclean``
        and the next run's quick check), and the stored answers searched before
        ``answers_before`` that ``keep_run`` does not use. Pass the run's reuse horizon
        (:attr:`engine.reuse.AnswerReuse.since`): a later run, whose horizon is later, could
        not reuse those answers either. Unpruned, the database would keep a record of every
        photo of every night and every answer ever paid for (an ocean answer is about 17 KB).
        The runs, their parts and the call ledger are kept."""
        with self.transaction() as db:
            records = db.execute("DELETE FROM images WHERE run_id != ?", (keep_run,)).rowcount
            db.execute("DELETE FROM clusters WHERE run_id != ?", (keep_run,))
            answers = db.execute(
                "DELETE FROM responses WHERE searched_at < ? AND id NOT IN"
                " (SELECT response_id FROM images WHERE response_id IS NOT NULL)",
                (answers_before.isoformat(),),
            ).rowcount
        return Pruned(records, answers)

    def response(self, response_id: int) -> StoredResponse:
        row = self.db.execute(
            "SELECT id, sha256, protocol, raw_body, searched_at, calls FROM responses WHERE id = ?",
            (response_id,),
        ).fetchone()
        return _response(row)

    def reset_in_flight(self, run_id: str) -> int:
        """On resume: calls that were in flight have no answer stored, and searches that gave
        up while the gateway was failing were never exported; search them all again."""
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE images SET status = 'pending', reason = NULL, message = NULL"
                " WHERE run_id = ? AND (status = 'in_flight'"
                " OR (status = 'failed' AND reason = 'retries_exhausted'))",
                (run_id,),
            )
        return cursor.rowcount

    def forget_unfinished(self, run_id: str) -> int:
        """At the end of a full pass, images still pending were not found again: they left the
        inputs since an earlier invocation of this run. Drop them so the run can complete."""
        with self.transaction() as db:
            cursor = db.execute(
                "DELETE FROM images WHERE run_id = ? AND status IN ('pending', 'in_flight')",
                (run_id,),
            )
        return cursor.rowcount

    def images_in(self, run_id: str, statuses: tuple[ImageStatus, ...]) -> list[ImageRecord]:
        marks = ",".join("?" * len(statuses))
        rows = self.db.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images WHERE run_id = ? AND status IN ({marks})"
            " ORDER BY path",
            (run_id, *statuses),
        ).fetchall()
        return [_image(r) for r in rows]

    def counts(self, run_id: str) -> dict[str, int]:
        return _status_counts(self.db, run_id)

    def failure_counts(self, run_id: str) -> dict[str, int]:
        return _failure_counts(self.db, run_id)

    def run_totals(self, run_id: str) -> dict[str, int]:
        return _run_totals(self.db, run_id)

    # -- parts ----------------------------------------------------------------------------

    def exported(
        self,
        parts: list[PartRecord],
        exported: list[tuple[str, str]],
        *,
        replacing: Sequence[PartRecord] = (),
        clusters: Mapping[str, str] | None = None,
    ) -> None:
        """Register new Parquet parts, mark their images (``(run_id, path)`` pairs) exported
        and unregister the parts they replace, in one transaction; with it, the offer-image
        ``clusters`` (SHA-256 -> cluster id) the parts' rows name for the first time."""
        now = utc_now().isoformat()
        image_part = next((p.name for p in parts if p.kind == "images"), None)
        with self.transaction() as db:
            _swap_parts(db, replacing, parts, now)
            db.executemany(
                "UPDATE images SET status = 'exported', part = ? WHERE run_id = ? AND path = ?",
                [(image_part, run_id, path) for run_id, path in exported],
            )
            if clusters and parts:
                db.executemany(
                    "INSERT OR REPLACE INTO clusters (run_id, image_sha, cluster_id)"
                    " VALUES (?,?,?)",
                    [(parts[0].run_id, sha, cid) for sha, cid in clusters.items()],
                )

    def clusters(self, run_id: str) -> dict[str, str]:
        """The run's offer-image clusters so far: image SHA-256 -> cluster id."""
        return dict(
            self.db.execute(
                "SELECT image_sha, cluster_id FROM clusters WHERE run_id = ?", (run_id,)
            ).fetchall()
        )

    def parts(self, run_id: str | None = None) -> list[PartRecord]:
        query = "SELECT name, run_id, kind, run_date, rows FROM parts"
        args: tuple[str, ...] = ()
        if run_id is not None:
            query += " WHERE run_id = ?"
            args = (run_id,)
        return [PartRecord(*row) for row in self.db.execute(query + " ORDER BY name", args)]

    def known_runs(self) -> set[str]:
        """The run ids these checkpoints know: of their runs, of their registered parts, and
        of the runs ``--fresh`` forgot (:meth:`engine.feed.Feed.remove_orphans` deletes only
        parts of these)."""
        rows = self.db.execute(
            "SELECT run_id FROM runs UNION SELECT run_id FROM parts"
            " UNION SELECT run_id FROM forgotten_runs"
        )
        return {run_id for (run_id,) in rows}

    def drop_parts(self, parts: Sequence[PartRecord]) -> None:
        with self.transaction() as db:
            db.executemany(
                "DELETE FROM parts WHERE kind = ? AND name = ?", [(p.kind, p.name) for p in parts]
            )

    def replace_parts(self, old: Sequence[PartRecord], new: Sequence[PartRecord]) -> None:
        """Unregister ``old`` and register ``new`` in one transaction (compaction's swap): the
        checkpoints list one set or the other, never both and never neither."""
        with self.transaction() as db:
            _swap_parts(db, old, new, utc_now().isoformat())


def _swap_parts(
    db: sqlite3.Connection, old: Sequence[PartRecord], new: Sequence[PartRecord], now: str
) -> None:
    """Unregister ``old`` and register ``new``, inside the caller's transaction."""
    db.executemany("DELETE FROM parts WHERE kind = ? AND name = ?", [(p.kind, p.name) for p in old])
    db.executemany(
        "INSERT INTO parts (name, run_id, kind, run_date, rows, created_at) VALUES (?,?,?,?,?,?)",
        [(p.name, p.run_id, p.kind, p.run_date, p.rows, now) for p in new],
    )


_IMAGE_FIELDS = (
    "run_id",
    "path",
    "size",
    "mtime_ns",
    "sha256",
    "status",
    "reason",
    "message",
    "attempts",
    "response_id",
    "reused",
    "calls",
    "width",
    "height",
    "steps",
    "part",
    "source",
    "sku",
    "title",
    "etag",
)
_IMAGE_COLUMNS = ", ".join(_IMAGE_FIELDS)
_IMAGE_PLACEHOLDERS = ",".join("?" * len(_IMAGE_FIELDS))


def _new_record(run_id: str, path: str, size: int, mtime_ns: int) -> ImageRecord:
    return ImageRecord(
        run_id=run_id,
        path=path,
        size=size,
        mtime_ns=mtime_ns,
        sha256=None,
        status="pending",
        reason=None,
        message=None,
        attempts=0,
        response_id=None,
        reused=False,
        calls=0,
        width=None,
        height=None,
        steps=(),
        part=None,
    )


def _add_columns(db: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _image(row: tuple[object, ...]) -> ImageRecord:
    values = dict(zip(_IMAGE_FIELDS, row, strict=True))
    values["reused"] = bool(values["reused"])
    values["steps"] = tuple(json.loads(str(values["steps"]))) if values["steps"] else ()
    # The columns are ImageRecord's fields (_IMAGE_FIELDS); mypy cannot type a **dict by key.
    return ImageRecord(**values)  # type: ignore[arg-type]


def _image_values(record: ImageRecord) -> tuple[object, ...]:
    values = [getattr(record, name) for name in _IMAGE_FIELDS]
    values[_IMAGE_FIELDS.index("reused")] = int(record.reused)
    values[_IMAGE_FIELDS.index("steps")] = json.dumps(list(record.steps))
    return tuple(values)


def _response(row: tuple[int, str, ProtocolName, str, str, int]) -> StoredResponse:
    # NOT NULL columns, written only by this module, with these types.
    rid, sha, protocol, body, searched_at, calls = row
    return StoredResponse(rid, sha, protocol, body, datetime.fromisoformat(searched_at), calls)


def _status_counts(db: sqlite3.Connection, run_id: str) -> dict[str, int]:
    rows = db.execute(
        "SELECT status, count(*) FROM images WHERE run_id = ? GROUP BY status", (run_id,)
    ).fetchall()
    return dict(rows)


def _failure_counts(db: sqlite3.Connection, run_id: str) -> dict[str, int]:
    rows = db.execute(
        "SELECT reason, count(*) FROM images WHERE run_id = ? AND reason IS NOT NULL"
        " GROUP BY reason",
        (run_id,),
    ).fetchall()
    return dict(rows)


def _run_totals(db: sqlite3.Connection, run_id: str) -> dict[str, int]:
    images, calls, reused, searched = db.execute(
        "SELECT count(*), coalesce(sum(calls), 0), coalesce(sum(reused), 0),"
        " coalesce(sum(calls > 0), 0) FROM images WHERE run_id = ?",
        (run_id,),
    ).fetchone()
    return {"images": images, "calls": calls, "reused": reused, "searched": searched}


def _run_calls(db: sqlite3.Connection, run_id: str) -> int:
    row = db.execute("SELECT calls FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return int(row[0]) if row else 0


def _log_calls(db: sqlite3.Connection, run_id: str, call_log: Sequence[CallEntry]) -> None:
    """Log spent calls in the ledger, and delete the row of each refunded one."""
    for entry in call_log:
        if entry.refund:
            # Rows alike (same time, run and app) are interchangeable: deleting any one is right.
            db.execute(
                "DELETE FROM calls WHERE rowid = (SELECT rowid FROM calls WHERE run_id = ?"
                " AND at = ? AND app IS ? LIMIT 1)",
                (run_id, entry.at, entry.app),
            )
        else:
            db.execute(
                "INSERT INTO calls (at, run_id, app) VALUES (?,?,?)", (entry.at, run_id, entry.app)
            )


def _calls_per_day(db: sqlite3.Connection) -> dict[date, int]:
    rows = db.execute(
        f"SELECT {_GATEWAY_DAY} AS day, count(*) FROM calls GROUP BY day ORDER BY day"
    ).fetchall()
    return {date.fromisoformat(day): int(calls) for day, calls in rows}


def _quota_settings(db: sqlite3.Connection) -> QuotaSettings | None:
    row = db.execute(
        "SELECT daily_calls, package_calls, package_start, low_share FROM quota_settings"
    ).fetchone()
    if row is None:
        return None
    daily, package, start, share = row
    return QuotaSettings(daily, package, date.fromisoformat(start) if start else None, share)


def _call_times(db: sqlite3.Connection, run_id: str) -> list[float]:
    rows = db.execute("SELECT at FROM calls WHERE run_id = ? ORDER BY at", (run_id,)).fetchall()
    return [float(at) for (at,) in rows]


def _has_ledger(db: sqlite3.Connection) -> bool:
    """Whether the database has the ledger's tables: one that no version with a ledger has
    opened yet (status reads it read-only) has none."""
    names = {
        name
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE name IN ('calls', 'quota_settings')"
        )
    }
    return names == {"calls", "quota_settings"}


_RUNS_OLDEST_FIRST = (
    "SELECT run_id, run_date, started_at, fingerprint, completed_at FROM runs"
    " ORDER BY started_at, rowid"
)


def _latest_run(db: sqlite3.Connection) -> Run | None:
    row = db.execute(
        "SELECT run_id, run_date, started_at, fingerprint, completed_at FROM runs"
        " ORDER BY started_at DESC, rowid DESC LIMIT 1"
    ).fetchone()
    return Run(*row) if row else None


@dataclass(frozen=True)
class Snapshot:
    """A job's state as ``img1688 status`` shows it."""

    run: Run | None
    images: dict[str, int]
    failures: dict[str, int]
    calls: int
    reused_answers: int
    searched: int
    stored_answers: int
    call_days: dict[date, int] = field(default_factory=dict)
    """The call ledger: calls per gateway day, over every run."""
    quota_settings: QuotaSettings | None = None
    """The quota keys the latest invocation kept, if any."""

    def to_json(self) -> dict[str, object]:
        run = self.run
        return {
            "run": run.run_id if run else None,
            "run_date": run.run_date if run else None,
            "started_at": run.started_at if run else None,
            "completed_at": run.completed_at if run else None,
            "state": "none" if run is None else "complete" if run.completed_at else "unfinished",
            "images": self.images,
            "failures": self.failures,
            "calls": self.calls,
            "reused_answers": self.reused_answers,
            "searched": self.searched,
            "stored_answers": self.stored_answers,
        }


def state_path(out: Path, shard: Shard = UNSHARDED) -> Path:
    """Where the checkpoint database of ``shard`` lives in ``out``."""
    return out / shard.file_name(STATE_FILE)


def checkpoint_shards(out: Path) -> list[Shard]:
    """The shards (:data:`~engine.shard.UNSHARDED` for ``state.sqlite``) whose checkpoint
    database is in ``out``, in order; empty when there is none or ``out`` is no directory."""
    try:
        names = [p.name for p in out.iterdir()]
    except OSError:
        return []
    return sorted(s for name in names if (s := Shard.of_file(name, STATE_FILE)) is not None)


def snapshot(out: Path, shard: Shard = UNSHARDED) -> Snapshot | None:
    """A read-only view of a job's state (of one shard's), safe while a run holds the lock (WAL
    readers never block the writer). ``None`` when ``out`` holds no such checkpoint database."""
    path = state_path(out, shard)
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        stored = db.execute("SELECT count(*) FROM responses").fetchone()[0]
        ledger = _has_ledger(db)
        days = _calls_per_day(db) if ledger else {}
        settings = _quota_settings(db) if ledger else None
        run = _latest_run(db)
        if run is None:
            return Snapshot(None, {}, {}, 0, 0, 0, stored, days, settings)
        totals = _run_totals(db, run.run_id)
        return Snapshot(
            run=run,
            images=_status_counts(db, run.run_id),
            failures=_failure_counts(db, run.run_id),
            calls=_run_calls(db, run.run_id),
            reused_answers=totals["reused"],
            searched=totals["searched"],
            stored_answers=stored,
            call_days=days,
            quota_settings=settings,
        )
    finally:
        db.close()


@dataclass(frozen=True)
class RunIndex:
    """What one checkpoint database knows of its runs and its feed: readers of the Parquet
    feed (``img1688 export``) use it to find a run and the part files that hold it."""

    shard: Shard
    runs: tuple[Run, ...]
    """Oldest first."""
    parts: tuple[PartRecord, ...]
    """Every registered part, of every run still in the feed, by name."""


def run_index(out: Path, shard: Shard = UNSHARDED) -> RunIndex | None:
    """The runs and registered parts of ``shard``'s checkpoints in ``out``, read-only and safe
    while a run holds the lock, like :func:`snapshot`. ``None`` when there is no such database.

    Raises:
        StorageError: the database cannot be read (damaged, not a database, unreadable).
    """
    path = state_path(out, shard)
    if not path.exists():
        return None
    with _read_only(path) as db:
        runs = db.execute(_RUNS_OLDEST_FIRST).fetchall()
        parts = db.execute(
            "SELECT name, run_id, kind, run_date, rows FROM parts ORDER BY name"
        ).fetchall()
    return RunIndex(shard, tuple(Run(*r) for r in runs), tuple(PartRecord(*p) for p in parts))


def recorded_output(out: Path, shard: Shard = UNSHARDED) -> str | None:
    """Where the feed of ``shard``'s checkpoints in ``out`` is, as :meth:`StateStore.bind_output`
    recorded it; ``None`` when it is ``out`` itself (or nothing is recorded). Read-only, safe
    while a run holds the lock.

    Raises:
        StorageError: the database cannot be read.
    """
    path = state_path(out, shard)
    if not path.exists():
        return None
    with _read_only(path) as db:
        has_table = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'feed_output'").fetchone()
        row = db.execute("SELECT url FROM feed_output").fetchone() if has_table else None
    return None if row is None else row[0]


def run_call_times(out: Path, run_id: str, shard: Shard = UNSHARDED) -> list[float]:
    """When each call of the run that ``shard``'s ledger in ``out`` holds was spent: epoch
    seconds (UTC), in order, over all its invocations. Read-only and safe while a run holds the
    lock, like :func:`run_index`. Empty when there is no such database,
    or when no version with the call ledger has opened it yet.

    Raises:
        StorageError: the database cannot be read (damaged, not a database, unreadable).
    """
    path = state_path(out, shard)
    if not path.exists():
        return []
    with _read_only(path) as db:
        return _call_times(db, run_id) if _has_ledger(db) else []


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the checkpoint database at ``path``, closed on leaving (a WAL
    reader never blocks the writer, so this is safe while a run holds the lock).

    Raises:
        StorageError: the database cannot be read (see :func:`storage_error`).
    """
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            yield db
        finally:
            db.close()
    except sqlite3.Error as exc:
        storage = storage_error(exc, f"cannot read checkpoint database {path}")
        if storage is None:
            raise
        raise storage from None
