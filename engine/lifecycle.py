"""A run's life across invocations: open (resume or start), and complete.

A *run* spans every invocation until all its images are in the feed. Opening one first removes
the part files a crash left unregistered; it resumes the latest unfinished run when the job's
result-changing settings (its fingerprint) match, refuses when they do not, and otherwise starts
a new run, whose feed is incomplete (no ``_SUCCESS``) until it completes.

Each shard of a sharded job (:mod:`engine.shard`) has runs of its own, in its own checkpoint
database; everything here touches only that shard's files (its parts, its markers) and the
dataset's ``_SUCCESS``, never another shard's parts.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine import compact
from engine.changes import ReadRows, record_changes
from engine.delta import DELTA_TABLES, DeltaTables
from engine.errors import ConfigError
from engine.feed import KINDS, Feed, part_seq
from engine.feedread import FeedRun, read_rows
from engine.jobfile import DEFAULT_TARGET_FILE_MB, Job
from engine.state import Run, RunIndex, StateStore, checkpoint_shards, utc_now

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """Sortable by start time, unique across machines: ``20261202T073744Z-a1b2c3``."""
    return f"{utc_now():%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def open_run(state: StateStore, feed: Feed, job: Job, *, fresh: bool) -> Run:
    """Resume the unfinished run, or start a new one.

    Raises:
        ConfigError: the unfinished run was made with other result-changing settings, the
            output directory holds checkpoints of another split into shards, or the
            checkpoints are another feed's (:meth:`~engine.state.StateStore.bind_output`), or
            the output's format cannot be used there (:func:`check_format`).
    """
    if feed.shard != state.shard:
        raise ValueError(f"feed of shard {feed.shard} with the checkpoints of shard {state.shard}")
    _check_layout(state)
    check_format(job, feed)
    # Before anything is deleted: these checkpoints must be the ones of this feed.
    state.bind_output(job.output)
    fingerprint = json.dumps(job.fingerprint(), sort_keys=True)
    if fresh:
        state.forget_runs()
        feed.clear()
    # Only parts of runs these checkpoints know: lost checkpoints never empty a feed.
    removed = feed.remove_orphans(state.parts(), state.known_runs())
    if removed:
        log.info("removed %d part file(s) left by an interrupted run", len(removed))
    latest = state.latest_run()
    if latest is not None and latest.completed_at is None:
        if latest.fingerprint != fingerprint:
            raise ConfigError(
                f"{job.out} holds an unfinished run made with other settings (protocol, filters,"
                " preprocessing, page size, title keywords, evidence or output format differ,"
                " or an img1688 from before evidence started it); run with --fresh to start"
                " over there (answers stored within engine.reuse_ttl_days are reused, not paid"
                " for again), or give another --out"
            )
        # A run that died between its markers and recording completion is still unfinished:
        # it may add parts now, so readers must stop trusting the markers it left.
        feed.mark_incomplete()
        requeued = state.reset_in_flight(latest.run_id)
        log.info(
            "resuming run %s%s",
            latest.run_id,
            f" ({requeued} search(es) were in flight and will be made again)" if requeued else "",
        )
        return latest
    feed.mark_incomplete()
    return state.start_run(new_run_id(), f"{utc_now():%Y-%m-%d}", fingerprint)


def _check_layout(state: StateStore) -> None:
    """Refuse a directory holding checkpoints of another shard count: their parts would be
    invisible to this layout's same-day supersede and clean-ups, and doubled in the feed."""
    others = sorted({s.count for s in checkpoint_shards(state.out)} - {state.shard.count})
    if others:
        found = ", ".join(
            "state.sqlite" if n == 1 else f"state-shard-*-of-{n}.sqlite" for n in others
        )
        wanted = "without --shard" if others[0] == 1 else f"with --shard I/{others[0]}"
        raise ConfigError(
            f"{state.out} holds the checkpoints of another split into shards ({found}); every"
            f" process on one output directory must split the job the same way: run {wanted},"
            " or give another --out"
        )


def check_format(job: Job, feed: Feed) -> None:
    """Refuse an ``output.format`` the feed cannot take, before anything is written or deleted
    (``--fresh`` clears the table folders of a Parquet feed: Delta tables' files there would go).

    Raises:
        ConfigError: Delta tables with ``--shard`` (several writers to one table need a lock
            that delta-rs does not have on object storage); Parquet parts where the tables are
            Delta tables; Delta where the table folders hold the Parquet layout.
    """
    store = feed.store
    delta_tables = [kind for kind in DELTA_TABLES if store.list_files(f"{kind}/_delta_log")]
    if job.output_format == "delta" and job.shard.sharded:
        raise ConfigError(
            'output.format = "delta" cannot be used with --shard: several processes committing'
            " to one Delta table need a lock that delta-rs does not have on object storage;"
            ' run the job unsharded, or use output.format = "parquet"'
        )
    if job.output_format == "parquet" and delta_tables:
        raise ConfigError(
            f"output.format: {store.url} holds Delta tables ({', '.join(delta_tables)}), written"
            ' with output.format = "delta": keep that format there, or give another output.dir'
        )
    if job.output_format == "delta":
        layout = [
            kind
            for kind in DELTA_TABLES
            if kind not in delta_tables and any(_is_part(f.key) for f in store.list_files(kind))
        ]
        if layout:
            raise ConfigError(
                f"output.format: {store.url} holds the Parquet layout ({', '.join(layout)}),"
                ' written with output.format = "parquet": keep that format there, or give'
                " another output.dir"
            )


def _is_part(key: str) -> bool:
    """Whether ``key`` names a part this engine writes (not a Delta table's data file)."""
    try:
        part_seq(key.rpartition("/")[2])
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Publishing:
    """How a completed run is published (``[output]``): its compaction target, and the Delta
    tables it is committed to (``None``: the Parquet layout)."""

    target_file_mb: int = DEFAULT_TARGET_FILE_MB
    delta: DeltaTables | None = None

    @classmethod
    def of(cls, job: Job, feed: Feed) -> Publishing:
        """What ``job`` says, for its ``feed``."""
        if job.output_format == "parquet":
            return cls(job.target_file_mb)
        return cls(job.target_file_mb, DeltaTables(feed.store, job.zstd_level, job.target_file_mb))


def complete_run(
    state: StateStore,
    feed: Feed,
    run: Run,
    manifest: Callable[[], dict[str, object]],
    publishing: Publishing = Publishing(),
) -> None:
    """Publish a run whose every image is exported, in this order: its parts compacted
    (:mod:`engine.compact`; the Parquet layout only: delta-rs sizes its own files), the
    ``changes`` table (:mod:`engine.changes`), then either the run committed to the Delta
    tables and its staged parts dropped, or an earlier run of the same day superseded; then
    ``manifest.json`` (built by ``manifest`` once the files of the dataset are final), then
    ``_SUCCESS`` (a shard's own, then the dataset's once every shard of the run date is
    complete). Each step finds what a killed earlier attempt committed and does not redo it.
    """
    delta = publishing.delta
    if delta is None:
        compact.compact_run(state, feed, run, publishing.target_file_mb)
    record_changes(state, feed, run, _run_rows(state, feed), published=_published(run, delta))
    if delta is None:
        _supersede(state, feed, run)
        published: dict[str, object] = {"format": "parquet"}
    else:
        published = _commit_to_delta(state, feed, run, delta)
    feed.mark_complete(manifest() | published)
    state.complete_run(run.run_id)


def _supersede(state: StateStore, feed: Feed, run: Run) -> None:
    """Drop an earlier run's parts of the same day: a partition never holds two runs. The
    checkpoints list only this shard's parts, so another shard's are never superseded."""
    superseded = [p for p in state.parts() if p.run_date == run.run_date and p.run_id != run.run_id]
    if superseded:
        state.drop_parts(superseded)
        feed.delete_parts(superseded)


def _published(run: Run, delta: DeltaTables | None) -> bool:
    """Whether the run's ``changes`` are already in their Delta table (their staged part may
    be gone): a kill after the commits must not compute them again, against rows that the
    commits have just replaced."""
    return delta is not None and delta.committed(run.run_id, "changes")


def _commit_to_delta(
    state: StateStore, feed: Feed, run: Run, delta: DeltaTables
) -> dict[str, object]:
    """Commit the run's staged parts to their Delta tables (each commit skipped if its
    transaction is recorded), then drop the staged parts; returns what the manifest says of
    the tables."""
    from engine.schema import SCHEMAS

    staged = state.parts(run.run_id)
    for kind in DELTA_TABLES:
        parts = [p for p in staged if p.kind == kind]
        schema, batches = compact.read_parts(feed, parts, SCHEMAS[kind])
        delta.commit(run, kind, schema, batches)
    if staged:
        state.drop_parts(staged)
        feed.delete_parts(staged)
    published = {kind: delta.published(run, kind) for kind in DELTA_TABLES}
    return {
        "format": "delta",
        "tables": {
            kind: {"path": kind, "version": version, "rows": rows}
            for kind, (version, rows) in published.items()
        },
        "rows": {kind: published[kind][1] for kind in KINDS},
    }


def _run_rows(state: StateStore, feed: Feed) -> ReadRows:
    """Reads a run's rows as ``img1688 export`` does (:func:`engine.feedread.read_rows`): from
    its registered parts, or from the Delta tables once it is committed there. The parts are
    those registered when it is called."""
    index = RunIndex(state.shard, tuple(state.runs()), tuple(state.parts()))

    def read(run: Run, kind: str, columns: Sequence[str]) -> pa.Table:
        return read_rows(FeedRun(state.out, run, index, feed.store), kind, columns)

    return read
