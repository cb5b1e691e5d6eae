"""Read one run of a job's Parquet feed back: which run, and its rows (``img1688 export``).

A run is found in the checkpoints (:func:`~engine.state.run_index`, read-only, so reading is
safe while a job runs), in the job's local folder; the feed is where the checkpoints recorded
it (:func:`feed_store`: that folder, or ``s3://bucket/prefix``). Its rows are read from the part
files the checkpoints register for it, filtered by ``run_id`` too: a part left by a crash
(written, never registered) is not read, and neither is another run's. A run of an
``output.format = "delta"`` job is read from its staged parts until it completes, then from the
Delta tables (:mod:`engine.delta`). Importing this module is light; pyarrow loads on the first
read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ConfigError, StorageError
from engine.feed import Feed
from engine.shard import UNSHARDED, Shard
from engine.state import Run, RunIndex, checkpoint_shards, recorded_output, run_index
from engine.storage import LocalStore, Store, open_store

if TYPE_CHECKING:
    import pyarrow as pa

_LISTED_RUNS = 5
"""How many of the latest run ids an error about an unknown run lists."""


def feed_store(out: Path, shards: Sequence[Shard]) -> Store:
    """Where the feed of the checkpoints in the job folder ``out`` (of ``shards``, its
    :func:`~engine.state.checkpoint_shards`) is: the URL they recorded (an ``s3://`` feed, or a
    local one with its state elsewhere), else ``out`` itself.

    Raises:
        ConfigError: the recorded feed is on S3 and the environment has no credentials for it.
        StorageError: a checkpoint database cannot be read.
    """
    url = recorded_output(out, shards[0]) if shards else None
    if url is None:
        return LocalStore(out)
    return open_store(url, os.environ)


@dataclass(frozen=True)
class FeedRun:
    """A run found in a job's folder, with the part files registered for it."""

    out: Path
    """The job's local folder (its checkpoints)."""
    run: Run
    index: RunIndex
    store: Store
    """Where the feed is (:func:`feed_store`)."""

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def complete(self) -> bool:
        return self.run.completed_at is not None

    @property
    def feed(self) -> Feed:
        """The feed, as the run's shard sees it (for reading): a Delta run's parts are staged
        until it completes."""
        staging = self.run.format == "delta"
        return Feed(self.store, shard=self.index.shard, staging=staging, lock_dir=self.out)

    def part_paths(self, kind: str) -> list[str]:
        """The ``kind`` (``matches`` or ``images``) part files that hold this run's rows, as
        paths in the store's filesystem (``Store.filesystem``)."""
        feed = self.feed
        _, root = self.store.filesystem()
        return [
            f"{root}/{feed.part_key(p.kind, p.run_date, p.name)}"
            for p in self.index.parts
            if p.run_id == self.run_id and p.kind == kind
        ]


def find_run(out: Path, run_id: str | None = None) -> FeedRun:
    """The run ``run_id`` of the job folder ``out`` (of whichever shard holds it); without
    one, the latest completed run, else the latest run.

    Raises:
        ConfigError: ``out`` holds no job state, no run, or no run ``run_id``; or, without
            ``run_id``, ``out`` is split into shards (each has runs of its own: one must be
            named, since exporting one shard's run as if it were the job's would drop rows).
        StorageError: a checkpoint database cannot be read.
    """
    shards = checkpoint_shards(out)
    indexes = [i for s in shards if (i := run_index(out, s)) is not None]
    if not indexes:
        raise ConfigError(f"{out} holds no job state (never run there?)")
    store = feed_store(out, shards)
    if run_id is not None:
        for index in indexes:
            for run in index.runs:
                if run.run_id == run_id:
                    return FeedRun(out, run, index, store)
        known = sorted((r for i in indexes for r in i.runs), key=lambda r: r.started_at)
        listed = ", ".join(r.run_id for r in known[-_LISTED_RUNS:]) or "none"
        raise ConfigError(f"{out} has no run {run_id!r} (latest runs: {listed})")
    if [i.shard for i in indexes] != [UNSHARDED]:
        latest = ", ".join(
            f"{i.shard} {i.runs[-1].run_id}" for i in indexes if i.runs
        )  # the latest of each shard
        raise ConfigError(
            f"{out} is split into shards, each with runs of its own: name one with --run"
            f" (latest per shard: {latest or 'none'})"
        )
    index = indexes[0]
    if not index.runs:
        raise ConfigError(f"{out} holds no run yet")
    completed = [r for r in index.runs if r.completed_at is not None]
    return FeedRun(out, (completed or list(index.runs))[-1], index, store)


def read_rows(run: FeedRun, kind: str, columns: Sequence[str]) -> pa.Table:
    """The rows of ``run`` in its ``kind`` table (a Delta run's: from its staged parts until it
    is committed, then from the Delta table), with those of ``columns`` that the feed has
    (a column added by a later schema is absent from older parts: null there; absent from the
    result if no part has it). Parts written by different versions are read as one table.

    Raises:
        StorageError: a registered part is missing or unreadable.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from engine.schema import SCHEMAS

    declared = SCHEMAS[kind]
    paths = run.part_paths(kind)
    if run.run.format == "delta" and not paths:
        # Committed to its Delta table: the staged parts are gone.
        from engine.delta import DeltaTables

        return DeltaTables(run.store).read(run.run, kind, columns)
    filesystem, _ = run.store.filesystem()
    try:
        schema = pa.unify_schemas(
            [declared, *(pq.read_schema(p, filesystem=filesystem) for p in paths)]
        )
        wanted = [name for name in columns if name in schema.names]
        if not paths:
            return schema.empty_table().select(wanted)
        dataset = ds.dataset(paths, schema=schema, format="parquet", filesystem=filesystem)
        return dataset.to_table(columns=wanted, filter=ds.field("run_id") == run.run_id)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(
            f"cannot read the {kind} parts of run {run.run_id} in {run.store.url}: {exc}"
            " (a run still in progress may have replaced them: try again)"
        ) from None
