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
from collections.abc import Callable

from engine.errors import ConfigError
from engine.feed import Feed
from engine.jobfile import Job
from engine.state import Run, StateStore, checkpoint_shards, utc_now

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """Sortable by start time, unique across machines: ``20261202T073744Z-a1b2c3``."""
    return f"{utc_now():%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def open_run(state: StateStore, feed: Feed, job: Job, *, fresh: bool) -> Run:
    """Resume the unfinished run, or start a new one.

    Raises:
        ConfigError: the unfinished run was made with other result-changing settings, or the
            output directory holds checkpoints of another split into shards.
    """
    if feed.shard != state.shard:
        raise ValueError(f"feed of shard {feed.shard} with the checkpoints of shard {state.shard}")
    _check_layout(state)
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


def complete_run(
    state: StateStore, feed: Feed, run: Run, manifest: Callable[[], dict[str, object]]
) -> None:
    """Publish a run whose every image is exported: ``manifest.json`` (built by ``manifest``
    once the files of the dataset are final), then ``_SUCCESS`` (a shard's own, then the
    dataset's once every shard of the run date is complete)."""
    # A later run on the same day replaces an earlier one's partition instead of doubling it.
    # The checkpoints list only this shard's parts, so another shard's are never superseded.
    superseded = [p for p in state.parts() if p.run_date == run.run_date and p.run_id != run.run_id]
    if superseded:
        state.drop_parts(superseded)
        feed.delete_parts(superseded)
    feed.mark_complete(manifest())
    state.complete_run(run.run_id)
