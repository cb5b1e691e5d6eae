"""The feed schemas: tables conform, survive Parquet with pyarrow and DuckDB, and are documented."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_clean import REAL_BODIES, mutated

from engine import __version__
from engine.clean import Offer, WholesaleFilters, parse_response
from engine.schema import (
    IMAGES_SCHEMA,
    MATCHES_SCHEMA,
    SCHEMA_VERSION,
    ImageRow,
    Lineage,
    images_table,
    matches_table,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "schema.md"
D = Decimal
GMT8 = timezone(timedelta(hours=8))


def lineage(path: str = "photos/cup.jpg", at: datetime | None = None) -> Lineage:
    return Lineage(
        query_path=path,
        query_sha256="ab" * 32,
        run_id="20260112T020000Z-3fa2",
        protocol="seed",
        searched_at=at or datetime(2026, 1, 12, 10, 3, 41, 512000, tzinfo=GMT8),
        engine_version=__version__,
    )


def cleaned_offers() -> tuple[Offer, ...]:
    """Real offers: the seed test body (every item format) through the cleaner."""
    return parse_response("seed", REAL_BODIES["seed"], WholesaleFilters()).offers


BARE_OFFER = Offer(
    item_id=2**62,
    title=None,
    price_min=None,
    price_max=None,
    price_tiers=(),
    min_order=None,
    unit=None,
    similarity=None,
    rank=20,
    province=None,
    city=None,
    freight="unknown",
    company=None,
    monthly_sales=None,
    offer_url=f"https://detail.1688.com/offer/{2**62}.html",
    image_url=None,
    notes=("price: not a price: 'call'",),
)


def matches_sample() -> pa.Table:
    rows = [(lineage(), offer) for offer in cleaned_offers()]
    rows.append((lineage("photos/other.png"), BARE_OFFER))
    return matches_table(rows)


def images_sample() -> pa.Table:
    result = parse_response("seed", REAL_BODIES["seed"], WholesaleFilters(freight="free"))
    ok = ImageRow.from_result(
        lineage(),
        result,
        calls=1,
        reused=False,
        width=800,
        height=600,
        preprocess_steps=("exif_transpose", "resize 800"),
    )
    failed = ImageRow(
        query_path="photos/broken.jpg",
        query_sha256=None,
        run_id="20260112T020000Z-3fa2",
        protocol="seed",
        searched_at=None,
        engine_version=__version__,
        status="failed",
        failure_reason="unreadable",
        failure_message="cannot identify image file",
    )
    return images_table([ok, failed])


# ---------------------------------------------------------------------------- conformance


def test_matches_table_conforms_to_the_schema() -> None:
    table = matches_sample()
    assert table.schema.equals(MATCHES_SCHEMA, check_metadata=True)
    assert table.num_rows == len(cleaned_offers()) + 1
    table.validate(full=True)
    for field in MATCHES_SCHEMA:
        if not field.nullable:
            assert table.column(field.name).null_count == 0


def test_matches_values_are_typed() -> None:
    rows = matches_sample().to_pylist()
    first = rows[0]
    assert first["item_id"] == 610947572360
    assert first["price_min"] == D("12.50") and isinstance(first["price_min"], Decimal)
    assert first["searched_at"] == datetime(2026, 1, 12, 2, 3, 41, 512000, tzinfo=UTC)
    assert first["query_sha256"] == "ab" * 32
    assert first["engine_version"] == __version__
    tiered = next(r for r in rows if r["price_tiers"])
    assert tiered["price_tiers"] == [{"min_quantity": 2, "price": D("15.00")}]
    bare = rows[-1]
    assert (bare["price_min"], bare["price_tiers"], bare["notes"]) == (
        None,
        [],
        ["price: not a price: 'call'"],
    )


def test_images_table_conforms_to_the_schema() -> None:
    table = images_sample()
    assert table.schema.equals(IMAGES_SCHEMA, check_metadata=True)
    ok, failed = table.to_pylist()
    assert ok["status"] == "ok" and ok["failure_reason"] is None
    assert ok["offers_received"] == 5
    counted = ("offers_kept", "duplicates", "removed_by_price", "removed_by_moq",
               "removed_by_freight", "unparsable")  # fmt: skip
    assert sum(ok[name] for name in counted) == ok["offers_received"]
    assert ok["removed_by_freight"] == 2
    assert ok["preprocess_steps"] == ["exif_transpose", "resize 800"]
    assert failed["searched_at"] is None and failed["offers_received"] is None
    assert failed["calls"] == 0 and failed["reused"] is False
    assert failed["preprocess_steps"] == []


def test_empty_tables_keep_the_schema() -> None:
    assert matches_table([]).schema.equals(MATCHES_SCHEMA, check_metadata=True)
    assert images_table([]).num_rows == 0


def test_schema_metadata_names_version_and_table() -> None:
    assert MATCHES_SCHEMA.metadata == {
        b"img1688.schema_version": SCHEMA_VERSION.encode(),
        b"img1688.table": b"matches",
    }
    assert IMAGES_SCHEMA.metadata[b"img1688.table"] == b"images"


def test_required_columns_are_declared_not_null() -> None:
    required = {f.name for f in MATCHES_SCHEMA if not f.nullable}
    lineage_columns = {"query_path", "query_sha256", "run_id", "protocol", "searched_at"}
    assert {"item_id", "rank", "offer_url", "engine_version", *lineage_columns} <= required
    assert MATCHES_SCHEMA.field("item_id").type == pa.int64()
    assert MATCHES_SCHEMA.field("searched_at").type == pa.timestamp("us", tz="UTC")
    assert MATCHES_SCHEMA.field("price_min").type == pa.decimal128(18, 4)


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        lineage(at=datetime(2026, 1, 1, 12, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        ImageRow("p", None, "r", "seed", datetime(2026, 1, 1), "0", "ok")


@pytest.mark.parametrize(
    ("status", "reason"), [("done", None), ("failed", None), ("ok", "unreadable")]
)
def test_image_row_status_and_reason_agree(status: str, reason: str | None) -> None:
    with pytest.raises(ValueError):
        ImageRow("p", None, "r", "seed", None, "0", status, failure_reason=reason)  # type: ignore[arg-type]


def test_a_null_in_a_required_column_is_refused() -> None:
    broken = dict(BARE_OFFER.__dict__, title="x")
    broken["offer_url"] = None
    with pytest.raises(ValueError, match="offer_url"):
        matches_table([(lineage(), Offer(**broken))])


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_cleaned_offer_converts(data: st.DataObject) -> None:
    """Whatever the cleaner makes of a mangled body, the feed can store it."""
    body = data.draw(mutated(json.loads(REAL_BODIES["seed"])))
    offers = parse_response("seed", json.dumps(body), WholesaleFilters()).offers
    table = matches_table((lineage(), offer) for offer in offers)
    assert table.schema.equals(MATCHES_SCHEMA, check_metadata=True)
    assert table.num_rows == len(offers)


# ---------------------------------------------------------------------------- Parquet round trip


@pytest.fixture
def feed(tmp_path: Path) -> Path:
    """A two-day hive layout written the way the engine writes it."""
    out = tmp_path / "out"
    for kind, table in (("matches", matches_sample()), ("images", images_sample())):
        for day in ("2026-01-12", "2026-01-13"):
            folder = out / kind / f"run_date={day}"
            folder.mkdir(parents=True)
            pq.write_table(
                table, folder / "part-r1-000000.parquet", compression="zstd", compression_level=9
            )
    return out


def test_pyarrow_dataset_reads_it_back(feed: Path) -> None:
    dataset = ds.dataset(feed / "matches", format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == 2 * matches_sample().num_rows
    for field in MATCHES_SCHEMA:
        read = table.schema.field(field.name)
        assert read.type == field.type, field.name
        assert read.nullable == field.nullable, field.name
    assert table.schema.field("run_date").type == pa.string()
    assert dataset.schema.metadata[b"img1688.schema_version"] == SCHEMA_VERSION.encode()
    prices = table.column("price_min").drop_null().to_pylist()
    assert all(isinstance(p, Decimal) for p in prices)


def test_schema_metadata_survives_the_file(feed: Path) -> None:
    for kind in ("matches", "images"):
        path = next((feed / kind).rglob("*.parquet"))
        metadata = pq.read_schema(path).metadata
        assert metadata[b"img1688.schema_version"] == SCHEMA_VERSION.encode()
        assert metadata[b"img1688.table"] == kind.encode()
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_duckdb_reads_it_back(feed: Path) -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    glob = str(feed / "matches" / "**" / "*.parquet")
    relation = con.sql(f"SELECT * FROM read_parquet('{glob}', hive_partitioning = true)")
    types = dict(zip(relation.columns, map(str, relation.types), strict=True))
    assert types["item_id"] == "BIGINT"
    assert types["price_min"] == "DECIMAL(18,4)"
    assert types["searched_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["similarity"] == "DOUBLE"
    assert types["run_date"] == "DATE"
    assert types["price_tiers"].startswith("STRUCT(min_quantity BIGINT, price DECIMAL(18,4))")
    expected = matches_sample()
    count, price_sum, first_seen = con.execute(
        f"SELECT count(*), sum(price_min), min(searched_at) "
        f"FROM read_parquet('{glob}', hive_partitioning = true)"
    ).fetchone()
    assert count == 2 * expected.num_rows
    exact = sum(p for p in expected.column("price_min").to_pylist() if p is not None)
    assert price_sum == 2 * exact  # decimal: the sum is exact
    assert first_seen == datetime(2026, 1, 12, 2, 3, 41, 512000, tzinfo=UTC)
    images = str(feed / "images" / "**" / "*.parquet")
    (failed,) = con.execute(
        f"SELECT count(*) FROM read_parquet('{images}') WHERE status = 'failed'"
    ).fetchone()
    assert failed == 2


def test_duckdb_sees_the_schema_version(feed: Path) -> None:
    path = next((feed / "matches").rglob("*.parquet"))
    rows = duckdb.sql(f"SELECT key, value FROM parquet_kv_metadata('{path}')").fetchall()
    metadata = {bytes(k): bytes(v) for k, v in rows}
    assert metadata[b"img1688.schema_version"] == SCHEMA_VERSION.encode()


# ---------------------------------------------------------------------------- documentation


def _doc_type(type_: pa.DataType) -> str:
    """The notation docs/schema.md uses: Arrow's, without element names and not-null marks."""
    if pa.types.is_list(type_):
        return f"list<{_doc_type(type_.value_type)}>"
    if pa.types.is_struct(type_):
        inner = ", ".join(f"{f.name}: {_doc_type(f.type)}" for f in type_)
        return f"struct<{inner}>"
    return str(type_)


def _documented_columns(table: str) -> dict[str, tuple[str, str]]:
    text = DOCS.read_text(encoding="utf-8")
    section = text.split(f"## Table `{table}`", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| `([^`]+)` \| (yes|no) \|", section, re.MULTILINE)
    return {name: (type_, nullable) for name, type_, nullable in rows}


@pytest.mark.parametrize(
    ("table", "schema"), [("matches", MATCHES_SCHEMA), ("images", IMAGES_SCHEMA)]
)
def test_docs_document_every_column(table: str, schema: pa.Schema) -> None:
    documented = _documented_columns(table)
    assert list(documented) == schema.names  # same columns, same order
    for field in schema:
        assert documented[field.name] == (
            _doc_type(field.type),
            "yes" if field.nullable else "no",
        ), field.name


def test_docs_state_the_schema_version() -> None:
    assert f"Schema version: **{SCHEMA_VERSION}**" in DOCS.read_text(encoding="utf-8")
