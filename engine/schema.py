"""The declared Arrow schemas of the two feeds, and records -> Arrow tables.

This module is the one place the feed schema is declared; ``docs/schema.md`` documents it
column by column (a test keeps the two in step). Changes are additive only: new nullable
columns at the end, never a rename, retype or removal without a new ``SCHEMA_VERSION``.

Column names equal the attribute names of the records they come from (:class:`Lineage`,
:class:`~engine.clean.Offer` and :class:`OfferEvidence` for ``matches``, :class:`ImageRow` for
``images``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from engine.clean import CleanResult, Offer

if TYPE_CHECKING:
    from engine.evidence.visual import Verdict

SCHEMA_VERSION = "2"
"""2: the catalogue columns (``sku``, ``sku_title``), the ``ocean`` supplier signals and the offer
evidence, all nullable at the end of their tables (version 1 files read as these with nulls)."""

MONEY = pa.decimal128(18, 4)
"""CNY amounts: exact, 14 digits before the point, 4 after."""
TIMESTAMP = pa.timestamp("us", tz="UTC")

PRICE_TIER = pa.struct(
    [
        pa.field("min_quantity", pa.int64(), nullable=False),
        pa.field("price", MONEY, nullable=False),
    ]
)


def _required(name: str, type_: pa.DataType) -> pa.Field:
    return pa.field(name, type_, nullable=False)


def _list_of(type_: pa.DataType) -> pa.DataType:
    """A list whose elements are never null (the list itself may be empty)."""
    return pa.list_(pa.field("element", type_, nullable=False))


_LINEAGE_FIELDS = (
    _required("query_path", pa.string()),
    _required("query_sha256", pa.string()),
    _required("run_id", pa.string()),
    _required("protocol", pa.string()),
    _required("searched_at", TIMESTAMP),
    _required("engine_version", pa.string()),
)


def _metadata(table: str) -> dict[str, str]:
    return {"img1688.schema_version": SCHEMA_VERSION, "img1688.table": table}


MATCHES_SCHEMA = pa.schema(
    [
        *_LINEAGE_FIELDS,
        _required("item_id", pa.int64()),
        _required("rank", pa.int64()),
        pa.field("title", pa.string()),
        pa.field("price_min", MONEY),
        pa.field("price_max", MONEY),
        _required("price_tiers", _list_of(PRICE_TIER)),
        pa.field("min_order", pa.int64()),
        pa.field("unit", pa.string()),
        pa.field("similarity", pa.float64()),
        pa.field("province", pa.string()),
        pa.field("city", pa.string()),
        _required("freight", pa.string()),
        pa.field("company", pa.string()),
        pa.field("monthly_sales", pa.int64()),
        _required("offer_url", pa.string()),
        pa.field("image_url", pa.string()),
        _required("notes", _list_of(pa.string())),
        # Schema version 2: the catalogue's identifiers, the supplier signals, the evidence.
        pa.field("sku", pa.string()),
        pa.field("sku_title", pa.string()),
        pa.field("title_en", pa.string()),
        pa.field("repurchase_rate", pa.float64()),
        pa.field("seller_identities", _list_of(pa.string())),
        pa.field("one_piece_sale", pa.bool_()),
        pa.field("ship_in", pa.string()),
        pa.field("free_shipping", pa.bool_()),
        pa.field("offer_image_sha256", pa.string()),
        pa.field("visual_score", pa.float64()),
        pa.field("same_photo", pa.bool_()),
        pa.field("verdict", pa.string()),
        pa.field("cluster_id", pa.string()),
        pa.field("similarity_source", pa.string()),
    ],
    metadata=_metadata("matches"),
)
"""One row per (query image, kept offer)."""

IMAGES_SCHEMA = pa.schema(
    [
        _required("query_path", pa.string()),
        pa.field("query_sha256", pa.string()),  # null when the file could not be read
        _required("run_id", pa.string()),
        _required("protocol", pa.string()),
        pa.field("searched_at", TIMESTAMP),
        _required("engine_version", pa.string()),
        _required("status", pa.string()),
        pa.field("failure_reason", pa.string()),
        pa.field("failure_message", pa.string()),
        pa.field("offers_received", pa.int64()),
        pa.field("offers_kept", pa.int64()),
        pa.field("duplicates", pa.int64()),
        pa.field("removed_by_price", pa.int64()),
        pa.field("removed_by_moq", pa.int64()),
        pa.field("removed_by_freight", pa.int64()),
        pa.field("unparsable", pa.int64()),
        _required("calls", pa.int64()),
        _required("reused", pa.bool_()),
        pa.field("width", pa.int64()),
        pa.field("height", pa.int64()),
        _required("preprocess_steps", _list_of(pa.string())),
        # Schema version 2.
        pa.field("sku", pa.string()),
        pa.field("sku_title", pa.string()),
        pa.field("same_photo_offers", pa.int64()),
        pa.field("same_product_offers", pa.int64()),
    ],
    metadata=_metadata("images"),
)
"""One row per query image, searched or failed."""


def _require_utc(name: str, value: datetime | None) -> None:
    # A naive datetime would be stored as if it were UTC: refuse it rather than guess.
    if value is not None and (value.tzinfo is None or value.utcoffset() is None):
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")


@dataclass(frozen=True)
class Lineage:
    """Where a row comes from; the engine fills it once per query image."""

    query_path: str
    query_sha256: str
    run_id: str
    protocol: str
    searched_at: datetime
    engine_version: str
    sku: str | None = None
    sku_title: str | None = None
    """The catalogue row's SKU and title; ``None`` for a photo found by ``inputs.paths``."""

    def __post_init__(self) -> None:
        _require_utc("searched_at", self.searched_at)


@dataclass(frozen=True)
class OfferEvidence:
    """What the engine found comparing the query photo with one offer's main image.

    All ``None`` when there is no evidence (evidence off, or the offer image could not be had:
    a note on the offer says why). ``similarity_source`` says where the row's ``similarity``
    came from: ``gateway`` (``seed`` scores), ``visual`` (``ocean``: our ``visual_score``).
    """

    offer_image_sha256: str | None = None
    visual_score: float | None = None
    same_photo: bool | None = None
    verdict: Verdict | None = None
    cluster_id: str | None = None
    similarity_source: Literal["gateway", "visual"] | None = None


NO_EVIDENCE = OfferEvidence()


@dataclass(frozen=True)
class ImageRow:
    """One query image's outcome: lineage, status, what cleaning counted, what it cost.

    The counters are ``None`` when no answer was cleaned (the image failed before or during
    the search); ``failure_reason`` is a short stable code, ``failure_message`` the detail.
    """

    query_path: str
    query_sha256: str | None
    run_id: str
    protocol: str
    searched_at: datetime | None
    engine_version: str
    status: Literal["ok", "failed"]
    failure_reason: str | None = None
    failure_message: str | None = None
    offers_received: int | None = None
    offers_kept: int | None = None
    duplicates: int | None = None
    removed_by_price: int | None = None
    removed_by_moq: int | None = None
    removed_by_freight: int | None = None
    unparsable: int | None = None
    calls: int = 0
    reused: bool = False
    width: int | None = None
    height: int | None = None
    preprocess_steps: tuple[str, ...] = ()
    sku: str | None = None
    sku_title: str | None = None
    same_photo_offers: int | None = None
    same_product_offers: int | None = None
    """Kept offers whose verdict is ``same_photo``, and ``same_photo`` or ``same_product``;
    ``None`` without evidence."""

    def __post_init__(self) -> None:
        _require_utc("searched_at", self.searched_at)
        if self.status not in ("ok", "failed"):
            raise ValueError(f"status must be 'ok' or 'failed', got {self.status!r}")
        if (self.status == "failed") != (self.failure_reason is not None):
            raise ValueError("failure_reason is required for a failed image and only for one")

    @classmethod
    def from_result(
        cls,
        lineage: Lineage,
        result: CleanResult,
        *,
        calls: int,
        reused: bool,
        width: int | None = None,
        height: int | None = None,
        preprocess_steps: tuple[str, ...] = (),
        evidence: Sequence[OfferEvidence] | None = None,
    ) -> ImageRow:
        """The row of an image whose answer was cleaned into ``result``; ``evidence`` is that of
        its kept offers (``None``, or no offer with a verdict: no evidence, null counts)."""
        same_photo = same_product = None
        if evidence is not None and any(e.verdict is not None for e in evidence):
            same_photo = sum(e.verdict == "same_photo" for e in evidence)
            same_product = same_photo + sum(e.verdict == "same_product" for e in evidence)
        return cls(
            **asdict(lineage),
            same_photo_offers=same_photo,
            same_product_offers=same_product,
            status="ok",
            offers_received=result.received,
            offers_kept=len(result.offers),
            duplicates=result.duplicates,
            removed_by_price=result.removed_by_price,
            removed_by_moq=result.removed_by_moq,
            removed_by_freight=result.removed_by_freight,
            unparsable=result.unparsable,
            calls=calls,
            reused=reused,
            width=width,
            height=height,
            preprocess_steps=preprocess_steps,
        )


def _arrow_value(value: object) -> object:
    """Records -> values pyarrow converts: tuples of dataclasses become lists of dicts."""
    if isinstance(value, tuple):
        return [
            asdict(item) if is_dataclass(item) and not isinstance(item, type) else item
            for item in value
        ]
    return value


def _column_sources(schema: pa.Schema, *record_types: type) -> dict[str, int]:
    """For each column, the index of the record type that holds the attribute of that name."""
    owners: dict[str, int] = {}
    for index, record_type in enumerate(record_types):
        for record_field in fields(record_type):
            owners.setdefault(record_field.name, index)
    missing = [name for name in schema.names if name not in owners]
    if missing:  # caught at import: a column without a record attribute is a bug
        raise TypeError(f"no record attribute for columns {missing}")
    return {name: owners[name] for name in schema.names}


def _table(
    schema: pa.Schema, sources: dict[str, int], records: Iterable[tuple[object, ...]]
) -> pa.Table:
    columns: dict[str, list[object]] = {name: [] for name in schema.names}
    for record in records:
        for name, values in columns.items():
            values.append(_arrow_value(getattr(record[sources[name]], name)))
    table = pa.Table.from_pydict(columns, schema=schema)
    for field in schema:
        if not field.nullable and table.column(field.name).null_count:
            raise ValueError(f"column {field.name} must not be null")
    return table


_MATCHES_SOURCES = _column_sources(MATCHES_SCHEMA, Lineage, Offer, OfferEvidence)
_IMAGES_SOURCES = _column_sources(IMAGES_SCHEMA, ImageRow)


MatchRow = tuple[Lineage, Offer] | tuple[Lineage, Offer, OfferEvidence]
"""One row of ``matches``: a pair has no evidence."""


def matches_table(rows: Iterable[MatchRow]) -> pa.Table:
    """The ``matches`` table (exactly :data:`MATCHES_SCHEMA`) of (lineage, offer[, evidence])."""
    return _table(
        MATCHES_SCHEMA,
        _MATCHES_SOURCES,
        (row if len(row) == 3 else (*row, NO_EVIDENCE) for row in rows),
    )


def images_table(rows: Iterable[ImageRow]) -> pa.Table:
    """The ``images`` table (exactly :data:`IMAGES_SCHEMA`) of image rows."""
    return _table(IMAGES_SCHEMA, _IMAGES_SOURCES, ((row,) for row in rows))


CHANGES_SCHEMA = pa.schema(
    [
        _required("run_id", pa.string()),
        _required("previous_run_id", pa.string()),
        _required("change", pa.string()),
        _required("key", pa.string()),
        _required("key_kind", pa.string()),
        _required("query_path", pa.string()),
        _required("item_id", pa.int64()),
        _required("offer_url", pa.string()),
        pa.field("price_min_old", MONEY),
        pa.field("price_min_new", MONEY),
        pa.field("price_max_old", MONEY),
        pa.field("price_max_new", MONEY),
        pa.field("min_order_old", pa.int64()),
        pa.field("min_order_new", pa.int64()),
    ],
    metadata=_metadata("changes"),
)
"""One row per change of an offer between the job's previous completed run and this one
(:mod:`engine.changes`): ``offer_new``, ``offer_gone``, ``price_changed``, ``moq_changed``."""

SCHEMAS = {"matches": MATCHES_SCHEMA, "images": IMAGES_SCHEMA, "changes": CHANGES_SCHEMA}
"""Each table of the feed by name, as declared."""
