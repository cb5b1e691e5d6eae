"""Compaction: a completed run's many small parts become a few files of the target size.

A nightly run at 10 calls a minute flushes a part every few minutes: hundreds of small Parquet
files a night, which Spark and Trino open one by one. When a run completes, each ``run_date``
partition of each of its tables is rewritten as ``ceil(size / output.target_file_mb)`` files
(one, for any ordinary night), rows in the order the parts held them.

Sizing: the parts' Parquet sizes say how many files the partition needs; their rows are then
spread evenly over those files (Parquet's zstd compresses rows of one feed alike, so bytes per
row is a steady estimate). The rows stream through: one row group (:data:`ROW_GROUP_MB` of
Parquet) is in memory at a time, never the partition.

Exactly once: the new files are written under their final part names (atomically, as every
part), then one checkpoint transaction registers them and unregisters the small parts
(:meth:`~engine.state.StateStore.replace_parts`), then the small files are deleted. A kill
before that commit leaves the new files unregistered, a kill after it the old ones: either
way the next start's orphan clean-up deletes them, and the checkpoints list every row once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING

from engine.errors import StorageError
from engine.feed import Feed, last_seq, part_seq
from engine.state import PartRecord, Run, StateStore

if TYPE_CHECKING:
    import pyarrow as pa

MB = 1024 * 1024
ROW_GROUP_MB = 16
"""Parquet bytes per row group of a compacted file: what is in memory at a time, uncompressed
(a few times this), and large enough for readers that skip by row group statistics."""
READ_BATCH_ROWS = 8192
"""Rows read from a small part at a time."""


@dataclass(frozen=True)
class Compaction:
    """What compacting one partition of one table did (or found already done)."""

    kind: str
    run_date: str
    files_before: int
    files_after: int
    rows: int


def compact_run(state: StateStore, feed: Feed, run: Run, target_mb: int) -> list[Compaction]:
    """Rewrite each partition of each table of ``run`` (this shard's parts, as ``state`` lists
    them) as the fewest files of about ``target_mb`` MB, swapped in by one transaction; a
    partition that already has no more files than it needs is left as it is (so a second call,
    after a kill, redoes only what was not committed).

    Raises:
        StorageError: a part could not be read or written (nothing is registered then).
    """
    target = target_mb * MB
    parts = sorted(state.parts(run.run_id), key=lambda p: (p.kind, p.run_date, part_seq(p.name)))
    seq = last_seq(parts)
    done: list[Compaction] = []
    old: list[PartRecord] = []
    new: list[PartRecord] = []
    for (kind, run_date), grouped in groupby(parts, key=lambda p: (p.kind, p.run_date)):
        group = list(grouped)
        sizes = _sizes(feed, group)
        rows = sum(p.rows for p in group)
        files = max(1, math.ceil(sum(sizes) / target))
        if len(group) <= files:
            done.append(Compaction(kind, run_date, len(group), len(group), rows))
            continue
        bytes_per_row = max(1.0, sum(sizes) / max(1, rows))
        written = _rewrite(
            feed,
            group,
            first_seq=seq + 1,
            files=files,
            rows_per_group=max(1, int(ROW_GROUP_MB * MB / bytes_per_row)),
        )
        seq += len(written)
        old += group
        new += written
        done.append(Compaction(kind, run_date, len(group), len(written), rows))
    if new:
        state.replace_parts(old, new)
        feed.delete_parts(old)
    return done


def _rewrite(
    feed: Feed,
    group: Sequence[PartRecord],
    *,
    first_seq: int,
    files: int,
    rows_per_group: int,
) -> list[PartRecord]:
    """Write the rows of ``group`` (one table, one partition, in order) as ``files`` new parts
    of as many rows each as can be (the registered row counts say how many there are), in row
    groups of ``rows_per_group``."""
    schema, batches = read_parts(feed, group)
    source = _Rows(batches)
    head = group[0]
    total = sum(p.rows for p in group)
    written = [
        feed.write_part_stream(
            head.kind,
            head.run_id,
            head.run_date,
            first_seq + index,
            schema,
            _row_groups(source, total // files + (index < total % files), rows_per_group),
        )
        for index in range(files)
    ]
    if sum(p.rows for p in written) != total or source.take(1):
        # Never swap in files that lost or gained rows: they stay unregistered orphans.
        raise StorageError(
            f"the {head.kind} parts of run {head.run_id} hold other row counts than the"
            " checkpoints list; not compacted"
        )
    return written


def _sizes(feed: Feed, group: Sequence[PartRecord]) -> list[int]:
    """The bytes of each part of ``group`` (one table, one partition), from one listing.

    Raises:
        StorageError: a part is missing.
    """
    head = group[0]
    folder = feed.part_key(head.kind, head.run_date, "").rstrip("/")
    listed = {f.key: f.size for f in feed.store.list_files(folder)}
    keys = [feed.part_key(p.kind, p.run_date, p.name) for p in group]
    missing = [feed.store.location(key) for key in keys if key not in listed]
    if missing:
        raise StorageError(f"registered parts are missing: {', '.join(map(str, missing))}")
    return [listed[key] for key in keys]


def read_parts(
    feed: Feed,
    parts: Sequence[PartRecord],
    base: pa.Schema | None = None,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The rows of ``parts`` (one table), part after part, as batches of one schema: ``base``
    (if given) and the parts' own, unified (a column one of them lacks is null there). Reads
    :data:`READ_BATCH_ROWS` rows, of one part, at a time.

    Raises:
        StorageError: a part is missing or unreadable.
    """
    import pyarrow as pa

    schemas = [] if base is None else [base]
    footers = []  # kept for the second pass: on S3 a footer costs requests
    for part in parts:  # one file open at a time: a run may have hundreds of parts
        with feed.open_part(part.kind, part.run_date, part.name) as file:
            schemas.append(file.schema_arrow)
            footers.append(file.metadata)
    if not schemas:
        raise ValueError("read_parts needs parts or a base schema")
    schema = pa.unify_schemas(schemas)

    def batches() -> Iterator[pa.RecordBatch]:
        for part, footer in zip(parts, footers, strict=True):
            with feed.open_part(part.kind, part.run_date, part.name, footer) as file:
                present = [name for name in schema.names if name in file.schema_arrow.names]
                try:
                    for batch in file.iter_batches(batch_size=READ_BATCH_ROWS, columns=present):
                        yield _conform(batch, schema)
                except (OSError, pa.ArrowInvalid) as exc:
                    raise _unreadable(feed, part, exc) from None

    return schema, batches()


def _unreadable(feed: Feed, part: PartRecord, exc: Exception) -> StorageError:
    where = feed.part_path(part.kind, part.run_date, part.name)
    return StorageError(f"cannot read {where}: {exc}")


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with exactly ``schema``'s columns, in its order; those it lacks null."""
    import pyarrow as pa

    if batch.schema.equals(schema):
        return batch
    columns = [
        batch.column(f.name) if f.name in batch.schema.names else pa.nulls(batch.num_rows, f.type)
        for f in schema
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


class _Rows:
    """A stream of record batches taken a number of rows at a time."""

    def __init__(self, batches: Iterable[pa.RecordBatch]) -> None:
        self._batches = iter(batches)
        self._pending: pa.RecordBatch | None = None

    def take(self, rows: int) -> list[pa.RecordBatch]:
        """Up to ``rows`` rows, fewer only at the end of the stream."""
        taken: list[pa.RecordBatch] = []
        wanted = rows
        while wanted > 0:
            batch = self._next()
            if batch is None:
                break
            if batch.num_rows > wanted:
                self._pending = batch.slice(wanted)
                batch = batch.slice(0, wanted)
            taken.append(batch)
            wanted -= batch.num_rows
        return taken

    def _next(self) -> pa.RecordBatch | None:
        if self._pending is not None:
            batch, self._pending = self._pending, None
            return batch
        for batch in self._batches:
            if batch.num_rows:
                return batch
        return None


def _row_groups(source: _Rows, rows: int, rows_per_group: int) -> Iterator[pa.Table]:
    """The next ``rows`` rows of ``source`` as tables of ``rows_per_group`` rows (one row group
    each), pulled as the writer asks for them."""
    import pyarrow as pa

    left = rows
    while left > 0:
        batches = source.take(min(rows_per_group, left))
        if not batches:
            return
        table = pa.Table.from_batches(batches).combine_chunks()
        left -= table.num_rows
        yield table
