"""The batch engine: discover -> preprocess -> search -> clean -> store, resumable at any instant.

One run is a pipeline of asyncio tasks joined by bounded queues::

    discover ──► preprocessors (process pool) ──► searchers (call gate) ──► exporter
        │                  │                                                  ▲
        └──── done, or reusable answer on record ──────────────────────────────┘

* The producer walks the inputs; files already exported in this run are skipped without being
  read, unchanged files with a fresh stored answer go straight to the exporter.
* Preprocessors prepare the JPEG in the process pool and learn the photo's SHA-256. Photos with
  the same bytes share one search: the first starts it, the others wait on it.
* Searchers pass every HTTP attempt through a call gate of the app the search went to (an app
  pool: several apps spread the searches); the answer is stored verbatim in the
  checkpoint database before anything else happens to it.
* The exporter cleans stored answers into rows and writes Parquet parts; the same transaction
  that registers a part marks its images exported.

Stopping (a signal, a fatal gateway error, the call budget or the gateway's daily cap) cancels
the work in progress, flushes what is fetched, and leaves everything else pending for the next
invocation.

This module is the plumbing: queues, tasks and stops. The policies it applies live beside it:
:mod:`engine.reuse` (stored answers instead of calls), :mod:`engine.inflight` (one search for
identical bytes), :mod:`engine.breaker` (outage or real failures), :mod:`engine.accounting`
(calls spent), :mod:`engine.lifecycle` (resume, complete), :mod:`engine.summary` (what a run
reports) and :mod:`engine.outcome` (exit codes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path

from engine.accounting import CallAccount
from engine.apps import AppPool
from engine.batcher import PartBatcher
from engine.breaker import OutageBreaker
from engine.client import SearchResult
from engine.credentials import Credentials
from engine.discover import Candidate, DiscoveryReport, discover, missing_inputs
from engine.download import Downloader, DownloadFailed
from engine.endpoint import open_endpoint, token_store_for
from engine.errors import (
    ConfigError,
    GatewayError,
    ImageRejected,
    RateLimited,
    StorageError,
    TransientError,
)
from engine.evidence.stage import EvidenceStage, open_images
from engine.export import Exporter
from engine.feed import Feed, job_feed
from engine.inflight import InFlightSearches, Search
from engine.jobfile import Job
from engine.ledger import open_ledger
from engine.lifecycle import Publishing, complete_run, open_run
from engine.outcome import ExitCode, Interrupted, RunOutcome, completed_outcome, stop_outcome
from engine.pool import PreprocessPool
from engine.preprocess import Prepared, PreparedImage, PreprocessFailure
from engine.progress import Counters, Progress
from engine.ratelimit import BudgetExhausted, CallBudget
from engine.reuse import AnswerReuse
from engine.shard import photo_key
from engine.state import NewAnswer, Run, StateStore
from engine.summary import run_manifest, run_summary

log = logging.getLogger(__name__)

_END = None
STOP_GRACE_SECONDS = 5.0
"""How long a signal lets the calls already in flight finish before cancelling them."""


class JobRunner:
    """Runs one job against one output directory: the pipeline's tasks, queues and stops.
    Use :func:`run_job`."""

    def __init__(
        self,
        job: Job,
        state: StateStore,
        run: Run,
        feed: Feed,
        *,
        client: AppPool,
        pool: PreprocessPool,
        stop: asyncio.Event,
        stop_signal: Callable[[], int | None],
        evidence: EvidenceStage | None = None,
        photos: Downloader | None = None,
    ) -> None:
        self.job = job
        self.state = state
        self.run = run
        self.client = client
        self.pool = pool
        self.stop = stop
        self.stop_signal = stop_signal
        self.feed = feed
        self.evidence = evidence
        self.photos = photos
        """Downloads the catalogue's web photos; ``None`` when it has none."""
        self.exporter = Exporter(
            state,
            self.feed,
            run,
            job.filters,
            job.gateway.protocol,
            evidence.judge if evidence is not None else None,
        )
        self.reuse = AnswerReuse(
            state,
            run,
            json.dumps(job.request_key(), sort_keys=True),
            job.engine.reuse_ttl_days,
        )
        self.searches = InFlightSearches()
        self.breaker = OutageBreaker(job.engine.max_consecutive_failures)
        apps = len(client.apps)
        rate = job.gateway.rate_text + (f" per app, {apps} apps" if apps > 1 else "")
        self.calls = CallAccount(state, run.run_id, client.budget, rate)
        self.counters = Counters()
        self.discovery = DiscoveryReport()
        self.limit_reached = False
        """``--limit`` stopped discovery: what is queued still finishes."""
        self.winding_down: str | None = None
        """Why the pipeline winds down (call budget spent, a signal): it takes no new work and
        lets the calls already admitted finish and be stored, leaving the rest pending."""
        size = job.engine.queue_size
        self._to_prepare: asyncio.Queue[Candidate | None] = asyncio.Queue(size)
        self._to_search: asyncio.Queue[Search | None] = asyncio.Queue(job.engine.searches * 2)
        self._to_judge: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue(size)
        """Answered photos whose offers' images are fetched before export: (path, answer id)."""
        self._to_export = PartBatcher(
            self._flush,
            part_images=job.engine.part_images,
            flush_seconds=job.engine.flush_seconds,
            queue_size=size,
        )

    async def execute(self) -> None:
        """Run the pipeline until the inputs are exhausted or something stops it."""
        exporter = asyncio.create_task(self._to_export.run(), name="exporter")
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
                await self._to_export.close()
            await exporter

    async def _wind_down(self, pipeline: asyncio.Task[None]) -> None:
        """After a signal: admit no new call, give the calls in flight a short grace to be
        answered and stored (they are paid for), then cancel whatever is left."""
        self.winding_down = "interrupted"
        self.client.budget.close()
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
            fetchers = [
                stages.create_task(self._evidence_loop())
                for _ in range(self.job.evidence.concurrency if self.evidence else 0)
            ]
            await asyncio.gather(*preparers)
            for _ in searchers:
                await self._to_search.put(_END)
            await asyncio.gather(*searchers)
            # A streak too short to trip the breaker: those photos really failed.
            await self._export_all(self.breaker.answered())
            for _ in fetchers:
                await self._to_judge.put(_END)

    # -- discover ---------------------------------------------------------------------------

    async def _produce(self, preparers: int) -> None:
        new_work = 0
        run_id = self.run.run_id
        async for candidate in discover(self.job.inputs, self.discovery, self.job.catalogue):
            if self.winding_down is not None:
                break
            path = candidate.id
            if not self.job.shard.owns(photo_key(str(candidate.path), candidate.sku)):
                continue  # another shard's photo: not counted, not recorded
            self.counters.discovered += 1
            record = self.state.image(run_id, path)
            # Within a run, a photo with rows (or an answer) is settled even if the file has
            # changed since: its rows stay exactly once, and the next run sees the change.
            if record is not None and record.status == "exported":
                self.counters.already_done += 1
                continue
            if record is not None and record.status in ("fetched", "failed"):
                await self._finish(path)
                continue
            if self.reuse.reuse_unchanged(candidate, self._keyword(candidate.title)):
                await self._finish(path)
                continue
            if self.job.limit is not None and new_work >= self.job.limit:
                self.limit_reached = True
                self.counters.discovered -= 1
                break
            new_work += 1
            # A catalogue row edited between invocations (another URL or title) is another
            # question, even where its file's version cannot tell (a web photo's is learnt later).
            unchanged = record is not None and (
                record.size,
                record.mtime_ns,
                record.etag,
                record.source,
                record.title,
            ) == (
                candidate.size,
                candidate.mtime_ns,
                candidate.etag,
                candidate.source,
                candidate.title,
            )
            if not unchanged:
                self.state.discovered(
                    run_id,
                    path,
                    candidate.size,
                    candidate.mtime_ns,
                    etag=candidate.etag,
                    source=candidate.source,
                    sku=candidate.sku,
                    title=candidate.title,
                )
            await self._to_prepare.put(candidate)
        for _ in range(preparers):
            await self._to_prepare.put(_END)

    # -- preprocess -------------------------------------------------------------------------

    async def _prepare_loop(self) -> None:
        run_id = self.run.run_id
        while (candidate := await self._to_prepare.get()) is not _END:
            if self.winding_down is not None:
                continue  # winding down: leave it pending, spend no more CPU on it
            path = candidate.id
            prepared = await self._prepare(candidate)
            if not isinstance(prepared, PreparedImage):
                self.state.failed(
                    run_id, [path], prepared.reason, prepared.message, sha256=prepared.sha256
                )
                await self._to_export.put(path)
                continue
            self.state.prepared(
                run_id, path, prepared.sha256, prepared.width, prepared.height, prepared.steps
            )
            if self.evidence is not None:
                await self.evidence.keep_query(prepared)
            keyword = self._keyword(candidate.title)
            if self.reuse.reuse_same_bytes(path, prepared.sha256, keyword):
                await self._finish(path)
                continue
            if not self.searches.ride_along(prepared.sha256, path, keyword):
                await self._to_search.put(self.searches.start(prepared, path, keyword))

    def _keyword(self, title: str | None) -> str | None:
        """The keyword a photo's search sends: its catalogue title, with ``send_title``."""
        return self.job.search_filters_for(title).keyword

    async def _prepare(self, candidate: Candidate) -> Prepared:
        """Prepare a photo in the pool. A local file is read there; an object's bytes are read
        here first, in a thread, at most ``max_input_bytes`` + 1 of them (the pool refuses a
        photo over the limit), so the preparing loops bound what is held in memory."""
        if candidate.is_url:
            return await self._download(str(candidate.path))
        if candidate.store is None:
            return await self.pool.prepare(Path(candidate.path))
        limit = self.pool.options.max_input_bytes + 1
        try:
            data = await asyncio.to_thread(candidate.store.read_bytes, candidate.key, limit)
        except StorageError as exc:
            return PreprocessFailure("unreadable", str(exc))
        if data is None:
            return PreprocessFailure("unreadable", f"{candidate.path} is gone since the listing")
        return await self.pool.prepare(data)

    async def _download(self, url: str) -> Prepared:
        """A catalogue photo on the web: downloaded (or revalidated) into the image cache, then
        prepared from there; a failed download fails the photo with the download's reason."""
        if self.photos is None:  # run_job opens a downloader whenever the catalogue has URLs
            raise RuntimeError("a web photo, and no downloader")
        got = await self.photos.fetch(url, revalidate=True)
        if isinstance(got, DownloadFailed):
            return PreprocessFailure(got.reason, got.message)
        return await self.pool.prepare(got.path)

    # -- search -----------------------------------------------------------------------------

    async def _search_loop(self) -> None:
        while (search := await self._to_search.get()) is not _END:
            if self.winding_down is not None:
                self._requeue(search)
                continue
            try:
                await self._search(search)
            finally:
                # Every call counts, answered or not: a kill loses at most the calls in flight.
                self.calls.record()

    async def _search(self, search: Search) -> None:
        self.state.in_flight(self.run.run_id, search.paths)
        try:
            filters = self.job.search_filters_for(search.keyword)
            result = await self.client.search(search.prepared.jpeg, filters)
        except BudgetExhausted as exc:
            # Wind down instead of cancelling: the other searchers' calls already admitted
            # complete and are stored, so no paid-for answer is thrown away.
            self.winding_down = self.winding_down or str(exc)
            self._requeue(search)
            return
        except ImageRejected as exc:
            await self._export_all(self.breaker.answered())
            self._fail(search, "gateway_rejected", f"{exc.code}: {exc.message}", 1, exc.calls)
            await self._export_all(search.paths)
            return
        except (TransientError, RateLimited) as exc:
            attempts = self.job.gateway.retry.attempts
            message = f"gave up after {attempts} attempts: {exc}"
            self._fail(search, "retries_exhausted", message, attempts, exc.calls)
            # Held back from the feed until the streak ends: if it trips the breaker, these
            # photos failed because the gateway was down, and the next invocation retries them.
            self.breaker.failed(search.paths, exc)
            return
        except GatewayError:
            # Fatal for the job, not this image's fault: leave it pending for the next run.
            self._requeue(search)
            raise
        await self._export_all(self.breaker.answered())
        self.counters.searched += 1
        self._store(search, result)
        await self._export_all(search.paths)

    def _requeue(self, search: Search) -> None:
        self.searches.finish(search)
        self.state.requeued(self.run.run_id, search.paths)

    def _fail(self, search: Search, reason: str, message: str, attempts: int, calls: int) -> None:
        self.searches.finish(search)
        self.state.failed(
            self.run.run_id, search.paths, reason, message, attempts=attempts, calls=calls
        )

    def _store(self, search: Search, result: SearchResult) -> None:
        # No await between finishing the search and storing its answer: a duplicate that
        # arrives later finds the stored answer instead of the in-flight entry.
        self.searches.finish(search)
        answer = NewAnswer(
            sha256=search.sha256,
            request_key=self.reuse.key_for(search.keyword),
            protocol=result.protocol,
            raw_body=result.raw_body,
            searched_at=result.searched_at,
            calls=result.http_calls,
        )
        booking = self.calls.book()
        self.state.fetched(
            self.run.run_id, search.paths, answer, booking.run_calls, booking.call_log
        )

    async def _export_all(self, paths: list[str]) -> None:
        for path in paths:
            await self._finish(path)

    async def _finish(self, path: str) -> None:
        """A photo is answered (or failed): on to the exporter, through the evidence stage
        when it has an answer whose offers need their images."""
        if self.evidence is not None:
            record = self.state.image(self.run.run_id, path)
            if record is not None and record.status == "fetched" and record.response_id is not None:
                await self._to_judge.put((path, record.response_id))
                return
        await self._to_export.put(path)

    # -- evidence ---------------------------------------------------------------------------

    async def _evidence_loop(self) -> None:
        """Fetch the offer images of answered photos, then hand the photos to the exporter.
        Winding down, a photo is left ``fetched``: the next invocation fetches its images and
        exports it, rather than publishing it without evidence."""
        evidence = self.evidence
        assert evidence is not None  # only started with evidence on
        while (answered := await self._to_judge.get()) is not _END:
            if self.winding_down is not None:
                continue
            path, response_id = answered
            await evidence.images.fetch(self.state.response(response_id))
            await self._to_export.put(path)

    # -- clean and store --------------------------------------------------------------------

    async def _flush(self, paths: list[str]) -> None:
        batch = await self.exporter.export_finished(paths)
        if batch is None:
            return
        self.counters.exported_ok += batch.images_ok
        self.counters.exported_failed += batch.images_failed
        self.counters.reused += batch.reused

    # -- how it ended -----------------------------------------------------------------------

    @property
    def stopped_early(self) -> str | None:
        """Why this invocation ends before the run does, if it does."""
        if self.winding_down is not None:
            return self.winding_down
        return f"stopped at --limit {self.job.limit}" if self.limit_reached else None

    def run_complete(self) -> bool:
        counts = self.state.counts(self.run.run_id)
        unfinished = sum(n for status, n in counts.items() if status != "exported")
        return not self.stopped_early and unfinished == 0

    def summary(self) -> dict[str, object]:
        return run_summary(
            self.state,
            self.run,
            output=self.job.feed_location,
            calls=self.calls,
            counters=self.counters,
            discovery=self.discovery,
        )

    def complete(self) -> None:
        complete_run(
            self.state,
            self.feed,
            self.run,
            lambda: run_manifest(self.state, self.run, self.job, self.summary()),
            Publishing.of(self.job, self.feed),
        )
        # Housekeeping of a run already published: a failure here must not fail the run.
        try:
            pruned = self.state.prune(self.run.run_id, self.reuse.since)
        except StorageError as exc:
            log.warning("checkpoints not pruned until the next completed run: %s", exc)
            return
        if any(pruned):
            log.info(
                "checkpoints pruned: %d image records of earlier runs, %d stored answers older"
                " than engine.reuse_ttl_days that this run did not use",
                *pruned,
            )


async def run_job(
    job: Job,
    *,
    credentials: Credentials | Sequence[Credentials] | None = None,
    fresh: bool = False,
    stop: asyncio.Event | None = None,
    stop_signal: Callable[[], int | None] = lambda: None,
    progress_interval: float | None = None,
    clock: Callable[[], float] = time.time,
) -> RunOutcome:
    """Run (or resume) ``job`` to completion or to a clean stop. Never raises for expected
    conditions: the outcome carries the exit code and a message that says what to do.
    ``credentials`` (one app or several) win over the environment's and the credentials
    file's. ``clock`` (epoch seconds) times the calls in the ledger and decides the gateway
    day of the daily cap."""
    stop = stop or asyncio.Event()
    try:
        missing = await missing_inputs(job.inputs)
    except StorageError as exc:
        return RunOutcome(ExitCode.STORAGE, None, str(exc))
    if missing:
        # An unmounted share must not pass for an empty catalogue: that would publish an
        # empty feed under _SUCCESS.
        return RunOutcome(
            ExitCode.CONFIG, None, f"inputs.paths: {', '.join(missing)} does not exist"
        )
    try:
        state = StateStore(job.out, job.shard)
    except StorageError as exc:
        return RunOutcome(ExitCode.STORAGE, None, str(exc))
    runner: JobRunner | None = None
    try:
        feed = job_feed(job)
        run = open_run(state, feed, job, fresh=fresh)
        async with AsyncExitStack() as stack:
            base_url, apps = await open_endpoint(stack, job, credentials)
            # One budget for the run, whatever the number of apps and gates drawing on it;
            # the gateway's daily cap is a limit of its own on it, renewed each gateway day.
            daily_cap = open_ledger(state, job.gateway.quota, clock)
            budget = CallBudget(job.max_calls, cap=daily_cap, clock=clock)
            client = await stack.enter_async_context(
                AppPool(
                    base_url=base_url,
                    protocol=job.gateway.protocol,
                    apps=apps,
                    windows=job.gateway.windows,
                    budget=budget,
                    retry=job.gateway.retry,
                    token_store=token_store_for(job),
                )
            )
            pool = await stack.enter_async_context(
                PreprocessPool(job.engine.preprocess_workers, job.preprocess)
            )
            images = await open_images(stack, job)
            runner = JobRunner(
                job,
                state,
                run,
                feed,
                client=client,
                pool=pool,
                stop=stop,
                stop_signal=stop_signal,
                evidence=images.evidence,
                photos=images.photos,
            )
            progress = Progress(
                runner.counters, client.gates, budget=budget, interval=progress_interval
            )
            reporter = asyncio.create_task(progress.run())
            try:
                return await _execute(runner)
            finally:
                reporter.cancel()
                await asyncio.gather(reporter, return_exceptions=True)
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
        stop = stop_outcome(exc)
        return _stopped(runner, stop.code, stop.message, fix=stop.fix)
    if runner.stopped_early is not None:
        message = f"{runner.stopped_early}; run the same command again to continue"
        return _stopped(runner, ExitCode.STOPPED_EARLY, message)
    if not runner.run_complete():
        return _stopped(runner, ExitCode.STOPPED_EARLY, "some images are still pending")
    runner.complete()
    failures = runner.state.failure_counts(runner.run.run_id)
    return completed_outcome(runner.run.run_id, failures, runner.summary())


def _stopped(
    runner: JobRunner | None, code: ExitCode, message: str, *, fix: str | None = None
) -> RunOutcome:
    if runner is None:
        return RunOutcome(code, None, message, fix=fix)
    return RunOutcome(code, runner.run.run_id, message, runner.summary(), fix=fix)
