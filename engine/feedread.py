"""Read one run of a job's Parquet feed back: which run, and its rows (``img1688 export``).

A run is found in the checkpoints (:func:`~engine.state.run_index`, read-only, so reading is
safe while a job runs), and its rows are read from the part files the checkpoints register for
it, filtered by ``run_id`` too: a part left by a crash (on disk, never registered) is not read,
and neither is another run's. Importing this module is light; pyarrow loads on the first read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ConfigError, StorageError
from engine.feed import Feed
from engine.shard import UNSHARDED
from engine.state import Run, RunIndex, checkpoint_shards, run_index

if TYPE_CHECKING:
    import pyarrow as pa

_LISTED_RUNS = 5
"""How many of the latest run ids an error about an unknown run lists."""


@dataclass(frozen=True)
class FeedRun:
    """A run found in an output directory, with the part files registered for it."""

    out: Path
    run: Run
    index: RunIndex

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def complete(self) -> bool:
        return self.run.completed_at is not None

    def part_paths(self, kind: str) -> list[Path]:
        """The ``kind`` (``matches`` or ``images``) part files that hold this run's rows."""
        feed = Feed(self.out, shard=self.index.shard)
        return [
            feed.part_path(p.kind, p.run_date, p.name)
            for p in self.index.parts
            if p.run_id == self.run_id and p.kind == kind
        ]


def find_run(out: Path, run_id: str | None = None) -> FeedRun:
    """The run ``run_id`` of ``out`` (of whichever shard holds it); without one, the latest
    completed run, else the latest run.

    Raises:
        ConfigError: ``out`` holds no job state, no run, or no run ``run_id``; or, without
            ``run_id``, ``out`` is split into shards (each has runs of its own: one must be
            named, since exporting one shard's run as if it were the job's would drop rows).
        StorageError: a checkpoint database cannot be read.
    """
    indexes = [i for s in checkpoint_shards(out) if (i := run_index(out, s)) is not None]
    if not indexes:
        raise ConfigError(f"{out} holds no job state (never run there?)")
    if run_id is not None:
        for index in indexes:
            for run in index.runs:
                if run.run_id == run_id:
                    return FeedRun(out, run, index)
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
    return FeedRun(out, (completed or list(index.runs))[-1], index)


def read_rows(run: FeedRun, kind: str, columns: Sequence[str]) -> pa.Table:
    """The rows of ``run`` in its ``kind`` table, with those of ``columns`` that the feed has
    (a column added by a later schema is absent from older parts: null there; absent from the
    result if no part has it). Parts written by different versions are read as one table.

    Raises:
        StorageError: a registered part is missing or unreadable.
    """
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from engine.schema import IMAGES_SCHEMA, MATCHES_SCHEMA

    declared = {"matches": MATCHES_SCHEMA, "images": IMAGES_SCHEMA}[kind]
    paths = run.part_paths(kind)
    try:
        schema = pa.unify_schemas([declared, *(pq.read_schema(p) for p in paths)])
        wanted = [name for name in columns if name in schema.names]
        if not paths:
            return schema.empty_table().select(wanted)
        dataset = ds.dataset([str(p) for p in paths], schema=schema, format="parquet")
        return dataset.to_table(columns=wanted, filter=ds.field("run_id") == run.run_id)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(
            f"cannot read the {kind} parts of run {run.run_id} in {run.out}: {exc}"
            " (a run still in progress may have replaced them: try again)"
        ) from None
