"""The batch engine: discover -> preprocess -> search -> clean -> store, resumable at any instant.

One run is a pipeline of asyncio tasks joined by bounded queues::

    discover ──► preprocessors (process pool) ──► searchers (call gate) ──► exporter
        │                  │                                                  ▲
        └──── done, or reusable answer on record ──────────────────────────────┘

* The producer walks the inputs; files already exported in this run are skipped without being
  read, unchanged files with a fresh stored answer go straight to the exporter.
* Preprocessors prepare the JPEG in the process pool and learn the photo's SHA-256. Photos with
  the same bytes share one search: the first starts it, the others wait on it.
* Searchers pass every HTTP attempt through the call gate; the answer is stored verbatim in the
  checkpoint database before anything else happens to it.
* The exporter cleans stored answers into rows and writes Parquet parts; the same transaction
  that registers a part marks its images exported.

Stopping (a signal, a fatal gateway error, the call budget) cancels the work in progress,
flushes what is fetched, and leaves everything else pending for the next invocation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import IntEnum

from engine import __version__
from engine.client import GatewayClient, SearchResult
from engine.credentials import Credentials, TokenStore, load_credentials
from engine.discover import Candidate, DiscoveryReport, discover
from engine.errors import (
    ConfigError,
    FatalGatewayError,
    GatewayError,
    ImageRejected,
    RateLimited,
    StorageError,
    TransientError,
)
from engine.export import Exporter
from engine.feed import Feed, manifest_files
from engine.jobfile import SANDBOX, Job
from engine.pool import PreprocessPool
from engine.preprocess import PreparedImage
from engine.progress import Counters, Progress
from engine.ratelimit import BudgetExhausted, CallGate
from engine.schema import SCHEMA_VERSION
from engine.state import ImageRecord, Run, StateStore, utc_now

log = logging.getLogger(__name__)


class ExitCode(IntEnum):
    """Process exit codes of ``img1688 run`` (documented in the README)."""

    OK = 0
    """Every image is done and none failed."""
    DONE_WITH_FAILURES = 1
    """Every image is done; some failed (see the images table)."""
    CONFIG = 2
    """The job file, a flag or the credentials are wrong."""
    FATAL_GATEWAY = 3
    """The gateway refused the job (credentials, IP, permission, quota) or kept failing."""
    STOPPED_EARLY = 4
    """The call budget or ``--limit`` was reached: run the same command again to continue."""
    STORAGE = 5
    """The output directory is locked by another run, unwritable or full."""
    INTERRUPTED = 130
    TERMINATED = 143


class Interrupted(Exception):
    """A signal asked the run to stop."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by signal {signum}")


class GatewayFailing(Exception):
    """Too many images in a row exhausted their retries: the gateway is down or overloaded."""


@dataclass
class RunOutcome:
    exit_code: ExitCode
    run_id: str | None
    message: str
    summary: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class _Search:
    """One photo to search, and every path that carries the same bytes."""

    sha256: str
    prepared: PreparedImage
    paths: list[str]


_END = None
STOP_GRACE_SECONDS = 5.0
"""How long a signal lets the calls already in flight finish before cancelling them."""


class JobRunner:
    """Runs one job against one output directory. Use :func:`run_job`."""

    def __init__(
        self,
        job: Job,
        state: StateStore,
        run: Run,
        *,
        client: GatewayClient,
        gate: CallGate,
        pool: PreprocessPool,
        stop: asyncio.Event,
        stop_signal: Callable[[], int | None],
    ) -> None:
        self.job = job
        self.state = state
        self.run = run
        self.client = client
        self.gate = gate
        self.pool = pool
        self.stop = stop
        self.stop_signal = stop_signal
        self.feed = Feed(job.out, job.zstd_level)
        self.exporter = Exporter(state, self.feed, run, job.filters, job.gateway.protocol)
        self.request_key = json.dumps(job.request_key(), sort_keys=True)
        self.counters = Counters()
        self.report = DiscoveryReport()
        self._calls_before = state.calls_spent(run.run_id)
        self._calls_recorded = 0
        self.limit_reached = False
        """``--limit`` stopped discovery: what is queued still finishes."""
        self.winding_down: str | None = None
        """Why the pipeline winds down (call budget spent, a signal): it takes no new work and
        lets the calls already admitted finish and be stored, leaving the rest pending."""
        self._in_search: dict[str, _Search] = {}
        self._streak: list[str] = []
        """Photos whose searches exhausted their retries since the gateway last answered."""
        self._streak_searches = 0
        ttl = timedelta(days=job.engine.reuse_ttl_days)
        # Answers stored during this run are always reusable (duplicates), whatever the TTL.
        self._reuse_since = min(utc_now() - ttl, datetime.fromisoformat(run.started_at))
        size = job.engine.queue_size
        self._to_prepare: asyncio.Queue[Candidate | None] = asyncio.Queue(size)
        self._to_search: asyncio.Queue[_Search | None] = asyncio.Queue(job.engine.searches * 2)
        self._to_export: asyncio.Queue[str | None] = asyncio.Queue(size)

    async def execute(self) -> None:
        """Run the pipeline until the inputs are exhausted or something stops it."""
        exporter = asyncio.create_task(self._export_loop(), name="exporter")
        pipeline = asyncio.create_task(self._pipeline(), name="pipeline")
        stopper = asyncio.create_task(self.stop.wait(), name="stop")
        try:
            await asyncio.wait({exporter, pipeline, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper.done() and not exporter.done():
                await self._wind_down(pipeline)
                raise Interrupted(self.stop_signal() or signal.SIGINT)
            if not pipeline.done():
                # The exporter failed: nothing more can be stored, so stop at once. Searches
                # in flight stay 'in_flight' and are made again by the next invocation.
                pipeline.cancel()
                await asyncio.gather(pipeline, return_exceptions=True)
                exporter.result()
            pipeline.result()
            if not self.stopped_early:
                self.state.forget_unfinished(self.run.run_id)
        finally:
            stopper.cancel()
            if not exporter.done():
                await self._to_export.put(_END)
            await exporter

    async def _wind_down(self, pipeline: asyncio.Task[None]) -> None:
        """After a signal: admit no new call, give the calls in flight a short grace to be
        answered and stored (they are paid for), then cancel whatever is left."""
        self.winding_down = "interrupted"
        self.gate.close()
        try:
            async with asyncio.timeout(STOP_GRACE_SECONDS):
                await asyncio.shield(pipeline)
        except TimeoutError:
            pipeline.cancel()
        await asyncio.gather(pipeline, return_exceptions=True)

    async def _pipeline(self) -> None:
        workers = self.pool.workers * 2
        async with asyncio.TaskGroup() as stages:
            stages.create_task(self._produce(workers))
            preparers = [stages.create_task(self._prepare_loop()) for _ in range(workers)]
            searchers = [
                stages.create_task(self._search_loop()) for _ in range(self.job.engine.searches)
            ]
            await asyncio.gather(*preparers)
            for _ in searchers:
                await self._to_search.put(_END)
        await self._end_streak()  # a streak too short to trip the breaker: real failures

    # -- discover ---------------------------------------------------------------------------

    async def _produce(self, preparers: int) -> None:
        new_work = 0
        async for candidate in discover(self.job.inputs, self.report):
            if self.winding_down is not None:
                break
            self.counters.discovered += 1
            path = str(candidate.path)
            record = self.state.image(self.run.run_id, path)
            # Within a run, a photo with rows (or an answer) is settled even if the file has
            # changed since: its rows stay exactly once, and the next run sees the change.
            if record is not None and record.status == "exported":
                self.counters.already_done += 1
                continue
            if record is not None and record.status in ("fetched", "failed"):
                await self._to_export.put(path)
                continue
            if self._reuse_previous(candidate):
                await self._to_export.put(path)
                continue
            if self.job.limit is not None and new_work >= self.job.limit:
                self.limit_reached = True
                self.counters.discovered -= 1
                break
            new_work += 1
            unchanged = (
                record is not None
                and record.size == candidate.size
                and record.mtime_ns == candidate.mtime_ns
            )
            if not unchanged:
                self.state.put_image(_new_record(self.run.run_id, candidate))
            await self._to_prepare.put(candidate)
        for _ in range(preparers):
            await self._to_prepare.put(_END)

    def _reuse_previous(self, candidate: Candidate) -> bool:
        """A file unchanged since an earlier run (same path, size and mtime: the quick check
        rsync makes) whose stored answer is fresh costs nothing: no preprocessing, no call."""
        path = str(candidate.path)
        previous = self.state.previous_image(
            self.run.run_id, path, candidate.size, candidate.mtime_ns
        )
        if previous is None or previous.sha256 is None:
            return False
        stored = self.state.fresh_response(previous.sha256, self.request_key, self._reuse_since)
        if stored is None:
            return False
        self.state.put_image(
            replace(
                _new_record(self.run.run_id, candidate),
                sha256=previous.sha256,
                status="fetched",
                response_id=stored.id,
                reused=True,
                width=previous.width,
                height=previous.height,
                steps=previous.steps,
            )
        )
        return True

    # -- preprocess -------------------------------------------------------------------------

    async def _prepare_loop(self) -> None:
        while (candidate := await self._to_prepare.get()) is not _END:
            if self.winding_down is not None:
                continue  # winding down: leave it pending, spend no more CPU on it
            path = str(candidate.path)
            prepared = await self.pool.prepare(candidate.path)
            if not isinstance(prepared, PreparedImage):
                self.state.set_status(
                    self.run.run_id,
                    path,
                    "failed",
                    sha256=prepared.sha256,
                    reason=prepared.reason,
                    message=prepared.message,
                )
                await self._to_export.put(path)
                continue
            self.state.set_status(
                self.run.run_id,
                path,
                "pending",
                sha256=prepared.sha256,
                width=prepared.width,
                height=prepared.height,
                steps=json.dumps(prepared.steps),
            )
            stored = self.state.fresh_response(prepared.sha256, self.request_key, self._reuse_since)
            if stored is not None:
                self.state.set_status(
                    self.run.run_id, path, "fetched", response_id=stored.id, reused=1, calls=0
                )
                await self._to_export.put(path)
                continue
            waiting = self._in_search.get(prepared.sha256)
            if waiting is not None:
                # Same bytes already queued or in flight: ride along, pay nothing.
                waiting.paths.append(path)
                continue
            search = _Search(prepared.sha256, prepared, [path])
            self._in_search[prepared.sha256] = search
            await self._to_search.put(search)

    # -- search -----------------------------------------------------------------------------

    async def _search_loop(self) -> None:
        while (search := await self._to_search.get()) is not _END:
            await self._search(search)

    async def _search(self, search: _Search) -> None:
        if self.winding_down is not None:
            self._leave_pending(search)
            return
        try:
            await self._search_once(search)
        finally:
            # Every call counts, answered or not: a kill loses at most the calls in flight.
            if self._calls_recorded != self.gate.spent:
                self._calls_recorded = self.gate.spent
                self.state.record_calls(self.run.run_id, self._calls_before + self.gate.spent)

    async def _search_once(self, search: _Search) -> None:
        for path in search.paths:
            self.state.set_status(self.run.run_id, path, "in_flight")
        try:
            with self.gate.reserve(self.client.calls_per_search):
                result = await self.client.search(search.prepared.jpeg, self.job.search_filters)
        except BudgetExhausted as exc:
            # Wind down instead of cancelling: the other searchers' calls already admitted
            # complete and are stored, so no paid-for answer is thrown away.
            self.winding_down = self.winding_down or str(exc)
            self._leave_pending(search)
            return
        except ImageRejected as exc:
            await self._end_streak()
            self._fail(search, "gateway_rejected", f"{exc.code}: {exc.message}", 1)
            await self._export_all(search.paths)
            return
        except (TransientError, RateLimited) as exc:
            attempts = self.job.gateway.retry.attempts
            self._fail(
                search, "retries_exhausted", f"gave up after {attempts} attempts: {exc}", attempts
            )
            # Held back from the feed until the streak ends: if it trips the breaker, these
            # photos failed because the gateway was down, and the next invocation retries them.
            self._streak.extend(search.paths)
            self._streak_searches += 1
            if self._streak_searches >= self.job.engine.max_consecutive_failures:
                raise GatewayFailing(
                    f"{self._streak_searches} searches in a row exhausted their retries;"
                    f" last error: {exc}"
                ) from None
            return
        except GatewayError:
            # Fatal for the job, not this image's fault: leave it pending for the next run.
            self._leave_pending(search)
            raise
        await self._end_streak()
        self.counters.searched += 1
        self._store(search, result)
        await self._export_all(search.paths)

    async def _end_streak(self) -> None:
        """The gateway answers again: the photos that failed before were really failures."""
        streak, self._streak, self._streak_searches = self._streak, [], 0
        await self._export_all(streak)

    def _leave_pending(self, search: _Search) -> None:
        self._finish_search(search)
        for path in search.paths:
            self.state.set_status(self.run.run_id, path, "pending")

    def _fail(self, search: _Search, reason: str, message: str, attempts: int) -> None:
        self._finish_search(search)
        for path in search.paths:
            self.state.set_status(
                self.run.run_id, path, "failed", reason=reason, message=message, attempts=attempts
            )

    def _finish_search(self, search: _Search) -> None:
        self._in_search.pop(search.sha256, None)

    def _store(self, search: _Search, result: SearchResult) -> None:
        # No await between taking the entry out and storing: a duplicate that arrives later
        # finds the stored answer instead of the in-flight entry.
        self._finish_search(search)
        fetched = [
            (self.run.run_id, path, result.http_calls if i == 0 else 0)
            for i, path in enumerate(search.paths)
        ]
        self._calls_recorded = self.gate.spent
        self.state.store_response(
            search.sha256,
            self.request_key,
            result.protocol,
            result.raw_body,
            result.searched_at,
            result.http_calls,
            fetched,
            run_calls=(self.run.run_id, self._calls_before + self.gate.spent),
        )

    async def _export_all(self, paths: list[str]) -> None:
        for path in paths:
            await self._to_export.put(path)

    # -- clean and store --------------------------------------------------------------------

    async def _export_loop(self) -> None:
        batch: list[str] = []
        deadline = time.monotonic() + self.job.engine.flush_seconds
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                async with asyncio.timeout(timeout):
                    path = await self._to_export.get()
            except TimeoutError:
                path = ""
            if path is _END:
                self._flush(batch)
                return
            if path:
                batch.append(path)
            if len(batch) >= self.job.engine.part_images or (
                batch and time.monotonic() >= deadline
            ):
                self._flush(batch)
                batch = []
            if time.monotonic() >= deadline:
                deadline = time.monotonic() + self.job.engine.flush_seconds

    def _flush(self, paths: list[str]) -> None:
        # A path queued twice (named twice in the inputs, say) is exported once: the status,
        # not the queue, decides.
        records = [
            r
            for p in dict.fromkeys(paths)
            if (r := self.state.image(self.run.run_id, p)) and r.status != "exported"
        ]
        if not records:
            return
        batch = self.exporter.export(records)
        self.counters.exported_ok += batch.images_ok
        self.counters.exported_failed += batch.images_failed
        self.counters.reused += batch.reused

    # -- bookkeeping ------------------------------------------------------------------------

    def run_complete(self) -> bool:
        counts = self.state.counts(self.run.run_id)
        unfinished = sum(n for status, n in counts.items() if status != "exported")
        return not self.stopped_early and unfinished == 0

    @property
    def stopped_early(self) -> str | None:
        """Why this invocation ends before the run does, if it does."""
        if self.winding_down is not None:
            return self.winding_down
        return f"stopped at --limit {self.job.limit}" if self.limit_reached else None

    def summary(self) -> dict[str, object]:
        run_id = self.run.run_id
        counts = self.state.counts(run_id)
        totals = self.state.run_totals(run_id)
        return {
            "run_id": run_id,
            "run_date": self.run.run_date,
            "output": str(self.job.out),
            "images": totals["images"],
            "status": counts,
            "failures": self.state.failure_counts(run_id),
            "calls_this_run": self._calls_before + self.gate.spent,
            "calls_this_invocation": self.gate.spent,
            "reused_answers": totals["reused"],
            "searched": totals["searched"],
            "elapsed_seconds": round(time.monotonic() - self.counters.started, 2),
            "rate": str(self.gate.rate),
            # The first few are enough to act on; a broken share could list thousands.
            "unreadable": len(self.report.unreadable),
            "unreadable_examples": self.report.unreadable[:20],
            "missing_inputs": self.report.missing_inputs,
            "symlink_loops": self.report.symlink_loops,
        }

    def manifest(self) -> dict[str, object]:
        parts = self.state.parts()
        totals = self.state.run_totals(self.run.run_id)
        return {
            "schema_version": SCHEMA_VERSION,
            "engine_version": __version__,
            "job": self.job.name,
            "run_id": self.run.run_id,
            "run_date": self.run.run_date,
            "started_at": self.run.started_at,
            "completed_at": utc_now().isoformat(),
            "protocol": self.job.gateway.protocol,
            "zstd_level": self.job.zstd_level,
            "files": manifest_files(parts),
            "rows": {
                kind: sum(p.rows for p in parts if p.kind == kind and p.run_id == self.run.run_id)
                for kind in ("matches", "images")
            },
            "images": {
                "total": totals["images"],
                "searched": totals["searched"],
                "reused": totals["reused"],
                "failed": sum(self.state.failure_counts(self.run.run_id).values()),
            },
            "stats": self.summary(),
        }


def _new_record(run_id: str, candidate: Candidate) -> ImageRecord:
    return ImageRecord(
        run_id=run_id,
        path=str(candidate.path),
        size=candidate.size,
        mtime_ns=candidate.mtime_ns,
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


def new_run_id() -> str:
    return f"{utc_now():%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def open_run(state: StateStore, feed: Feed, job: Job, *, fresh: bool) -> Run:
    """Resume the unfinished run, or start a new one. Refuses a resume under other settings."""
    fingerprint = json.dumps(job.fingerprint(), sort_keys=True)
    if fresh:
        state.forget_runs()
        feed.clear()
    removed = feed.remove_orphans(state.parts())
    if removed:
        log.info("removed %d part file(s) left by an interrupted run", len(removed))
    latest = state.latest_run()
    if latest is not None and latest.completed_at is None:
        if latest.fingerprint != fingerprint:
            raise ConfigError(
                f"{job.out} holds an unfinished run made with other settings (protocol, filters,"
                " preprocessing or page size differ); run with --fresh to start over there,"
                " or give another --out"
            )
        requeued = state.reset_in_flight(latest.run_id)
        log.info(
            "resuming run %s%s",
            latest.run_id,
            f" ({requeued} search(es) were in flight and will be made again)" if requeued else "",
        )
        return latest
    feed.mark_incomplete()
    now = utc_now()
    return state.start_run(new_run_id(), f"{now:%Y-%m-%d}", fingerprint)


async def run_job(
    job: Job,
    *,
    credentials: Credentials | None = None,
    fresh: bool = False,
    stop: asyncio.Event | None = None,
    stop_signal: Callable[[], int | None] = lambda: None,
    progress_interval: float | None = None,
) -> RunOutcome:
    """Run (or resume) ``job`` to completion or to a clean stop. Never raises for expected
    conditions: the outcome carries the exit code and a message that says what to do."""
    stop = stop or asyncio.Event()
    missing = [str(p) for p in job.inputs.paths if not p.exists()]
    if missing:
        # An unmounted share must not pass for an empty catalogue: that would publish an
        # empty feed under _SUCCESS.
        return RunOutcome(
            ExitCode.CONFIG, None, f"inputs.paths: {', '.join(missing)} does not exist"
        )
    try:
        state = StateStore(job.out)
    except StorageError as exc:
        return RunOutcome(ExitCode.STORAGE, None, str(exc))
    runner: JobRunner | None = None
    try:
        feed = Feed(job.out, job.zstd_level)
        run = open_run(state, feed, job, fresh=fresh)
        async with AsyncExitStack() as stack:
            base_url, credentials = await _gateway(stack, job, credentials)
            gate = CallGate(job.gateway.rate, budget=job.max_calls)
            client = await stack.enter_async_context(
                GatewayClient(
                    base_url=base_url,
                    protocol=job.gateway.protocol,
                    credentials=credentials,
                    gate=gate,
                    retry=job.gateway.retry,
                    token_store=_token_store(job),
                )
            )
            pool = await stack.enter_async_context(
                PreprocessPool(job.engine.preprocess_workers, job.preprocess)
            )
            runner = JobRunner(
                job,
                state,
                run,
                client=client,
                gate=gate,
                pool=pool,
                stop=stop,
                stop_signal=stop_signal,
            )
            progress = Progress(runner.counters, gate, interval=progress_interval)
            reporter = asyncio.create_task(progress.run())
            try:
                outcome = await _execute(runner)
            finally:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
        return outcome
    except ConfigError as exc:
        return RunOutcome(ExitCode.CONFIG, None, str(exc))
    except StorageError as exc:
        return _stopped(runner, ExitCode.STORAGE, f"{exc}; nothing committed was lost")
    finally:
        state.close()


async def _execute(runner: JobRunner) -> RunOutcome:
    try:
        await runner.execute()
    except Exception as exc:  # every stop becomes an outcome; unknown causes re-raise
        code, message = _why_stopped(exc)
        return _stopped(runner, code, message)
    if runner.stopped_early is not None:
        message = f"{runner.stopped_early}; run the same command again to continue"
        return _stopped(runner, ExitCode.STOPPED_EARLY, message)
    if not runner.run_complete():
        return _stopped(runner, ExitCode.STOPPED_EARLY, "some images are still pending")
    _complete(runner)
    failures = runner.state.failure_counts(runner.run.run_id)
    code = ExitCode.DONE_WITH_FAILURES if failures else ExitCode.OK
    message = "run complete" + (
        f" with {sum(failures.values())} failed image(s)" if failures else ""
    )
    return RunOutcome(code, runner.run.run_id, message, runner.summary())


def _why_stopped(exc: Exception) -> tuple[ExitCode, str]:
    """Map what stopped the pipeline (possibly an exception group) to an exit code and a
    message that says what to do. The most telling cause wins."""
    causes = _leaves(exc)
    for kind, describe in _STOP_CAUSES:
        for cause in causes:
            if isinstance(cause, kind):
                return describe(cause)
    raise exc


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _interrupted(exc: BaseException) -> tuple[ExitCode, str]:
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
    return code, "interrupted; run the same command again to continue"


_Describe = Callable[[BaseException], tuple[ExitCode, str]]
_STOP_CAUSES: tuple[tuple[type[BaseException], _Describe], ...] = (
    (StorageError, lambda e: (ExitCode.STORAGE, f"{e}; nothing committed was lost")),
    (
        FatalGatewayError,
        lambda e: (
            ExitCode.FATAL_GATEWAY,
            f"the gateway refused the job: {e}. Fix that, then run the same command again:"
            " the job resumes where it stopped.",
        ),
    ),
    (
        GatewayFailing,
        lambda e: (
            ExitCode.FATAL_GATEWAY,
            f"{e}. The gateway looks down; run again later to continue.",
        ),
    ),
    (Interrupted, _interrupted),
    (
        GatewayError,
        lambda e: (ExitCode.FATAL_GATEWAY, f"unexpected gateway error: {e}; run again later"),
    ),
)


def _complete(runner: JobRunner) -> None:
    state, run = runner.state, runner.run
    # A later run on the same day replaces an earlier one's partition instead of doubling it.
    superseded = [p for p in state.parts() if p.run_date == run.run_date and p.run_id != run.run_id]
    if superseded:
        state.drop_parts(superseded)
        runner.feed.delete_parts(superseded)
    runner.feed.mark_complete(runner.manifest())
    state.complete_run(run.run_id)


def _stopped(runner: JobRunner | None, code: ExitCode, message: str) -> RunOutcome:
    if runner is None:
        return RunOutcome(code, None, message)
    return RunOutcome(code, runner.run.run_id, message, runner.summary())


async def _gateway(
    stack: AsyncExitStack, job: Job, credentials: Credentials | None
) -> tuple[str, Credentials]:
    if job.gateway.endpoint != SANDBOX:
        return job.gateway.endpoint, credentials or load_credentials()
    # Imported here: the sandbox (and its catalogue) is only needed for the embedded gateway.
    from engine.sandbox import Sandbox, SandboxConfig

    config = SandboxConfig(rate=job.gateway.rate)
    sandbox = await stack.enter_async_context(Sandbox(config))
    log.info("embedded sandbox gateway at %s (rate %s)", sandbox.url, job.gateway.rate)
    return sandbox.url, credentials or Credentials(
        app_key=config.app_key,
        app_secret=config.app_secret,
        access_token=config.access_token,
        refresh_token=config.refresh_token,
    )


def _token_store(job: Job) -> TokenStore | None:
    # The embedded sandbox's tokens are throwaway: keep them out of the user's token store.
    return None if job.gateway.endpoint == SANDBOX else TokenStore.default()
