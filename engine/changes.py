"""The ``changes`` table: what changed in the offers since the job's previous completed run.

A buyer who reads the feed every morning wants "what is new since last night", not two
snapshots to diff by hand. At completion, each photo's offers are compared with those of the
previous completed run of the same checkpoints (the same job, or the same shard of it), per
*key*: the catalogue's ``sku`` when the row has one, else the photo's ``query_path``. Offers
are told apart by ``item_id``; when several photos of one SKU found the same offer, the
best-ranked row speaks for it.

* ``offer_new``: an offer for a key that the previous run did not have for that key (a photo
  new to the job has only new offers);
* ``offer_gone``: an offer the previous run had for a key that this run searched successfully
  and did not find again. A photo that failed this run, or is gone from the inputs, reports
  nothing: its offers are unknown, not gone;
* ``price_changed``: ``price_min`` or ``price_max`` differs (a price that became unreadable
  counts: null against a value);
* ``moq_changed``: ``min_order`` differs.

An offer whose price and MOQ both changed has one row of each. Every row carries the old and the
new values it knows (an ``offer_new`` has no old ones). A first run gets an empty table with
the full schema, so readers always find one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from engine.feed import Feed, last_seq
from engine.state import Run, StateStore

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

ChangeKind = Literal["offer_new", "offer_gone", "price_changed", "moq_changed"]

MATCH_COLUMNS = ("query_path", "sku", "item_id", "rank", "offer_url", "price_min", "price_max",
                 "min_order")  # fmt: skip
"""The ``matches`` columns a comparison reads (``sku`` only where the feed has it)."""
IMAGE_COLUMNS = ("query_path", "sku", "status")
"""The ``images`` columns that say which keys this run searched successfully."""
_COMPARED = ("price_min", "price_max", "min_order")
_CARRIED = ("query_path", "offer_url", "key_kind")

ReadRows = Callable[[Run, str, Sequence[str]], "pa.Table"]
"""Reads a run's rows of a table (``matches`` or ``images``), with those of the columns asked
for that the feed has: :func:`engine.feedread.read_rows` over a live run."""


def previous_run(runs: Sequence[Run], run: Run) -> Run | None:
    """The latest completed run before ``run`` (``runs`` oldest first), if any."""
    ids = [r.run_id for r in runs]
    earlier = runs[: ids.index(run.run_id)] if run.run_id in ids else runs
    completed = [r for r in earlier if r.completed_at is not None]
    return completed[-1] if completed else None


def record_changes(
    state: StateStore, feed: Feed, run: Run, read: ReadRows, *, published: bool
) -> None:
    """Write and register ``run``'s ``changes`` part, against the previous completed run in
    ``state``, unless the run has one registered already or its changes are ``published``
    (committed to a table format's table, the part dropped): a completion resumed after a kill
    never computes them twice.

    Raises:
        StorageError: a part could not be read or written.
    """
    parts = state.parts(run.run_id)
    if published or any(p.kind == "changes" for p in parts):
        return
    previous = previous_run(state.runs(), run)
    table = run_changes(run, previous, read)
    part = feed.write_part("changes", run.run_id, run.run_date, last_seq(parts) + 1, table)
    state.exported([part], [])
    log.info(
        "changes since %s: %d",
        previous.run_id if previous is not None else "no earlier run",
        table.num_rows,
    )


def run_changes(run: Run, previous: Run | None, read: ReadRows) -> pa.Table:
    """The ``changes`` rows of ``run`` against ``previous``: empty without a previous run.

    Reads the previous run's ``matches`` through ``read``: call it before anything removes
    them (a same-day run supersedes the earlier one's rows).
    """
    from engine.schema import CHANGES_SCHEMA

    if previous is None:
        return CHANGES_SCHEMA.empty_table()
    return compare(
        run.run_id,
        previous.run_id,
        current=read(run, "matches", MATCH_COLUMNS),
        images=read(run, "images", IMAGE_COLUMNS),
        previous=read(previous, "matches", MATCH_COLUMNS),
    )


def compare(
    run_id: str, previous_run_id: str, *, current: pa.Table, images: pa.Table, previous: pa.Table
) -> pa.Table:
    """The changes from ``previous`` (the earlier run's ``matches``) to ``current`` (this run's),
    where ``images`` (this run's) says which keys were searched successfully; exactly
    :data:`~engine.schema.CHANGES_SCHEMA`, sorted by key, item id and change."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from engine.schema import CHANGES_SCHEMA

    searched = _keyed(images.filter(pc.equal(images["status"], "ok")))["key"]
    old = _suffixed(_best_rows(_keyed(previous)), "_old")
    new = _suffixed(_best_rows(_keyed(current)), "_new")
    joined = new.join(old, ["key", "item_id"], join_type="full outer")

    in_new = pc.is_valid(joined["query_path_new"])
    in_old = pc.is_valid(joined["query_path_old"])
    both = pc.and_(in_new, in_old)
    was_searched = pc.is_in(joined["key"], value_set=searched.combine_chunks())
    masks: dict[ChangeKind, pa.ChunkedArray] = {
        "offer_new": pc.and_(in_new, pc.invert(in_old)),
        "offer_gone": pc.and_(pc.and_(in_old, pc.invert(in_new)), was_searched),
        "price_changed": pc.and_(
            both, pc.or_(_differs(joined, "price_min"), _differs(joined, "price_max"))
        ),
        "moq_changed": pc.and_(both, _differs(joined, "min_order")),
    }
    pieces = []
    for change, mask in masks.items():
        rows = joined.filter(mask)
        columns = {
            "run_id": pa.array([run_id] * rows.num_rows, pa.string()),
            "previous_run_id": pa.array([previous_run_id] * rows.num_rows, pa.string()),
            "change": pa.array([change] * rows.num_rows, pa.string()),
            "key": rows["key"],
            "item_id": rows["item_id"],
        }
        for name in _CARRIED:  # where the offer is: this run's row, else the previous one's
            columns[name] = pc.coalesce(rows[f"{name}_new"], rows[f"{name}_old"])
        for name in _COMPARED:
            columns[f"{name}_old"] = rows[f"{name}_old"]
            columns[f"{name}_new"] = rows[f"{name}_new"]
        pieces.append(pa.table(columns).select(CHANGES_SCHEMA.names).cast(CHANGES_SCHEMA))
    return pa.concat_tables(pieces).sort_by(
        [("key", "ascending"), ("item_id", "ascending"), ("change", "ascending")]
    )


def _keyed(table: pa.Table) -> pa.Table:
    """``table`` with ``key`` (the row's SKU, else its photo's path) and ``key_kind``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    path = table["query_path"]
    if "sku" in table.column_names:
        sku = table["sku"]
        key = pc.coalesce(sku, path)
        kind = pc.if_else(pc.is_null(sku), "query_path", "sku")
    else:
        key, kind = path, pa.array(["query_path"] * table.num_rows, pa.string())
    return table.append_column("key", key).append_column("key_kind", kind)


def _best_rows(table: pa.Table) -> pa.Table:
    """One row per (key, item id): the best-ranked (then first by path) of its rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ordered = table.sort_by(
        [("key", "ascending"), ("item_id", "ascending"), ("rank", "ascending"),
         ("query_path", "ascending")]
    ).combine_chunks()  # fmt: skip
    if ordered.num_rows < 2:
        return ordered
    key, item = ordered["key"], ordered["item_id"]
    repeats = pc.and_(
        pc.equal(key[1:], key[:-1]), pc.equal(item[1:], item[:-1])
    )  # row i+1 repeats row i: both columns are required, never null
    first = pa.concat_arrays([pa.array([True]), pc.invert(repeats.combine_chunks())])
    return ordered.filter(first)


def _suffixed(table: pa.Table, suffix: str) -> pa.Table:
    """The columns a comparison needs, all but the join keys renamed with ``suffix``."""
    wanted = ["key", "item_id", *_CARRIED, *_COMPARED]
    return table.select(wanted).rename_columns(
        [name if name in ("key", "item_id") else f"{name}{suffix}" for name in wanted]
    )


def _differs(joined: pa.Table, name: str) -> pa.ChunkedArray:
    """Row by row, whether the old and new ``name`` differ, a null against a value included."""
    import pyarrow.compute as pc

    old, new = joined[f"{name}_old"], joined[f"{name}_new"]
    same = pc.or_(
        pc.fill_null(pc.equal(old, new), False), pc.and_(pc.is_null(old), pc.is_null(new))
    )
    return pc.invert(same)
