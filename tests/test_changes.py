"""engine.changes: what changed in the offers since the job's previous completed run; the
comparison on hand-made tables, then two real runs against a sandbox whose catalogue changes
between them (real Parquet read back)."""

from __future__ import annotations

import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from engine.changes import compare, previous_run, run_changes
from engine.commands.reclean import reclean
from engine.outcome import ExitCode
from engine.ratelimit import Rate
from engine.runner import run_job
from engine.sandbox import Sandbox, SandboxConfig
from engine.sandbox.catalogue import DEFAULT_CATALOGUE
from engine.schema import CHANGES_SCHEMA, MONEY
from engine.state import Run
from tests.job_kit import creds, make_job
from tests.paths import SAMPLES
from tests.test_schema import _doc_type, _documented_columns


def matches(*rows: tuple[Any, ...], sku: bool = True) -> pa.Table:
    """``matches`` rows as (query_path, sku, item_id, rank, price_min, price_max, min_order)."""
    columns: dict[str, Any] = {
        "query_path": pa.array([r[0] for r in rows], pa.string()),
        "item_id": pa.array([r[2] for r in rows], pa.int64()),
        "rank": pa.array([r[3] for r in rows], pa.int64()),
        "offer_url": pa.array(
            [f"https://detail.1688.com/offer/{r[2]}.html" for r in rows], pa.string()
        ),
        "price_min": pa.array([r[4] for r in rows], MONEY),
        "price_max": pa.array([r[5] for r in rows], MONEY),
        "min_order": pa.array([r[6] for r in rows], pa.int64()),
    }
    if sku:
        columns["sku"] = pa.array([r[1] for r in rows], pa.string())
    return pa.table(columns)


def images(*rows: tuple[str, str | None, str]) -> pa.Table:
    """``images`` rows as (query_path, sku, status)."""
    return pa.table(
        {
            "query_path": [r[0] for r in rows],
            "sku": pa.array([r[1] for r in rows], pa.string()),
            "status": [r[2] for r in rows],
        }
    )


def summary(table: pa.Table) -> set[tuple[Any, ...]]:
    return {(r["change"], r["key"], r["item_id"]) for r in table.to_pylist()}


D = Decimal


def test_new_gone_price_and_moq_changes_per_photo() -> None:
    before = matches(
        ("a.jpg", None, 1, 1, D("1.50"), D("2.00"), 10),  # price_min changes
        ("a.jpg", None, 2, 2, D("3.00"), D("3.00"), 5),  # gone
        ("a.jpg", None, 3, 3, D("4.00"), D("4.00"), 5),  # MOQ changes
        ("a.jpg", None, 4, 4, D("5.00"), D("5.00"), 5),  # price_max and MOQ change: two rows
        ("a.jpg", None, 5, 5, D("6.00"), D("6.00"), 5),  # unchanged
        ("a.jpg", None, 6, 6, D("7.00"), D("7.00"), 5),  # its price becomes unreadable
    )
    after = matches(
        ("a.jpg", None, 1, 1, D("1.60"), D("2.00"), 10),
        ("a.jpg", None, 3, 3, D("4.00"), D("4.00"), 50),
        ("a.jpg", None, 4, 4, D("5.00"), D("5.50"), 6),
        ("a.jpg", None, 5, 5, D("6.00"), D("6.00"), 5),
        ("a.jpg", None, 6, 6, None, None, 5),
        ("a.jpg", None, 7, 7, D("8.00"), D("8.00"), 1),  # new
    )

    table = compare(
        "r2", "r1", current=after, images=images(("a.jpg", None, "ok")), previous=before
    )

    assert table.schema.equals(CHANGES_SCHEMA, check_metadata=True)
    assert summary(table) == {
        ("price_changed", "a.jpg", 1),
        ("offer_gone", "a.jpg", 2),
        ("moq_changed", "a.jpg", 3),
        ("price_changed", "a.jpg", 4),
        ("moq_changed", "a.jpg", 4),
        ("price_changed", "a.jpg", 6),
        ("offer_new", "a.jpg", 7),
    }
    rows = {(r["change"], r["item_id"]): r for r in table.to_pylist()}
    price = rows[("price_changed", 1)]
    assert (price["price_min_old"], price["price_min_new"]) == (D("1.5"), D("1.6"))
    assert (price["price_max_old"], price["price_max_new"]) == (D("2"), D("2"))
    assert (
        rows[("moq_changed", 3)]["min_order_old"],
        rows[("moq_changed", 3)]["min_order_new"],
    ) == (
        5,
        50,
    )
    gone, new = rows[("offer_gone", 2)], rows[("offer_new", 7)]
    assert (gone["price_min_old"], gone["price_min_new"]) == (D("3"), None)
    assert (new["price_min_old"], new["price_min_new"]) == (None, D("8"))
    assert gone["offer_url"] == "https://detail.1688.com/offer/2.html"
    assert {r["run_id"] for r in rows.values()} == {"r2"}
    assert {r["previous_run_id"] for r in rows.values()} == {"r1"}
    assert {r["key_kind"] for r in rows.values()} == {"query_path"}


def test_a_photo_that_failed_or_left_reports_no_offer_gone() -> None:
    before = matches(
        ("failed.jpg", None, 1, 1, D(1), D(1), 1),
        ("removed.jpg", None, 2, 1, D(1), D(1), 1),
        ("empty.jpg", None, 3, 1, D(1), D(1), 1),
    )
    now = images(("failed.jpg", None, "failed"), ("empty.jpg", None, "ok"))

    table = compare("r2", "r1", current=matches(), images=now, previous=before)

    # Its offers are unknown this run, not gone; a photo searched with no offer lost them all.
    assert summary(table) == {("offer_gone", "empty.jpg", 3)}


def test_a_sku_is_compared_across_its_photos_by_its_best_ranked_row() -> None:
    before = matches(
        ("front.jpg", "SKU-1", 9, 1, D(10), D(10), 1),
        ("side.jpg", "SKU-1", 9, 4, D(99), D(99), 1),  # the same offer, ranked lower
        ("plain.jpg", None, 9, 1, D(10), D(10), 1),
    )
    after = matches(
        # The SKU's photo is another file now: the SKU, not the path, is the key.
        ("new-front.jpg", "SKU-1", 9, 2, D(12), D(12), 1),
        ("plain.jpg", None, 9, 1, D(10), D(10), 1),
    )
    now = images(("new-front.jpg", "SKU-1", "ok"), ("plain.jpg", None, "ok"))

    table = compare("r2", "r1", current=after, images=now, previous=before)

    (row,) = table.to_pylist()
    assert (row["change"], row["key"], row["key_kind"]) == ("price_changed", "SKU-1", "sku")
    assert (row["price_min_old"], row["price_min_new"]) == (D(10), D(12))
    assert row["query_path"] == "new-front.jpg"


def test_a_feed_without_a_sku_column_keys_by_photo() -> None:
    before = matches(("a.jpg", None, 1, 1, D(1), D(1), 1), sku=False)
    after = matches(("a.jpg", None, 2, 1, D(1), D(1), 1), sku=False)
    now = images(("a.jpg", None, "ok")).drop_columns(["sku"])

    table = compare("r2", "r1", current=after, images=now, previous=before)

    assert summary(table) == {("offer_gone", "a.jpg", 1), ("offer_new", "a.jpg", 2)}


def test_a_first_run_has_an_empty_table_with_the_full_schema() -> None:
    run = Run("r1", "2026-12-02", "t", "{}", None)

    def unread(*args: object) -> pa.Table:
        raise AssertionError("a first run reads nothing")

    table = run_changes(run, None, unread)

    assert table.num_rows == 0
    assert table.schema.equals(CHANGES_SCHEMA, check_metadata=True)


def test_the_previous_run_is_the_latest_completed_one_before() -> None:
    runs = [
        Run("r1", "2026-12-01", "1", "{}", "done"),
        Run("r2", "2026-12-01", "2", "{}", "done"),
        Run("r3", "2026-12-02", "3", "{}", None),  # never completed
        Run("r4", "2026-12-02", "4", "{}", None),
    ]
    assert previous_run(runs, runs[3]) == runs[1]
    assert previous_run(runs, runs[1]) == runs[0]
    assert previous_run(runs, runs[0]) is None


def test_docs_document_every_column() -> None:
    documented = _documented_columns("changes")
    assert list(documented) == CHANGES_SCHEMA.names
    for field in CHANGES_SCHEMA:
        expected = (_doc_type(field.type), "yes" if field.nullable else "no")
        assert documented[field.name] == expected, field.name


# -- two real runs ---------------------------------------------------------------------------


def changes_of(out: Path) -> list[dict[str, Any]]:
    table = ds.dataset(out / "changes", format="parquet", partitioning="hive").to_table()
    assert table.schema.remove_metadata().equals(
        CHANGES_SCHEMA.append(
            pa.field("run_date", table.schema.field("run_date").type)
        ).remove_metadata()
    )
    return table.to_pylist()


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    """A private copy of the sandbox's built-in catalogue, to change between runs."""
    target = tmp_path / "catalogue"
    shutil.copytree(DEFAULT_CATALOGUE, target)
    return target


def edit_catalogue(folder: Path, edit: Any) -> None:
    path = folder / "catalogue.json"
    products = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(edit(products), ensure_ascii=False), encoding="utf-8")


async def test_two_runs_report_the_catalogues_price_moq_and_offer_changes(
    catalogue: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("q001.jpg", "q002.jpg"):
        shutil.copy2(SAMPLES / "queries" / name, photos / name)
    out = tmp_path / "out"
    config = SandboxConfig(rate=Rate(1000, 1.0), catalogue_dir=catalogue)
    products = json.loads((catalogue / "catalogue.json").read_text(encoding="utf-8"))
    priced, moq, removed = products[0], products[1], products[2]
    added = dict(products[3], offer_id=999_000_001, title="新品")

    async with Sandbox(config) as sandbox:
        # Every product in every answer, and no stored answer reused: the second run sees the
        # catalogue as it is then.
        job = make_job(
            photos,
            out,
            sandbox.url,
            gateway={"page_size": 50},
            engine={"reuse_ttl_days": 0},
        )
        first = await run_job(job, credentials=creds(config))
        assert first.exit_code == ExitCode.OK, first.message
        assert changes_of(out) == []  # a first run: nothing to compare with

        def change(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            for item in items:
                if item["offer_id"] == priced["offer_id"]:
                    item["price"] = "99.90"
                if item["offer_id"] == moq["offer_id"]:
                    item["min_order"] = moq["min_order"] * 10
            return [i for i in items if i["offer_id"] != removed["offer_id"]] + [added]

        edit_catalogue(catalogue, change)
        # Reloaded before the run: the reload a search triggers lets searches running beside
        # it see the previous catalogue meanwhile.
        async with aiohttp.ClientSession() as session:
            reload = await session.post(f"{sandbox.url}/__sandbox__/reload")
            assert (await reload.json())["reloaded"]
        second = await run_job(job, credentials=creds(config))
    assert second.exit_code == ExitCode.OK, second.message
    rows = changes_of(out)
    keys = sorted(str(p) for p in photos.iterdir())
    assert {(r["change"], r["key"], r["item_id"]) for r in rows} == {
        (change, key, item)
        for key in keys
        for change, item in (
            ("price_changed", priced["offer_id"]),
            ("moq_changed", moq["offer_id"]),
            ("offer_gone", removed["offer_id"]),
            ("offer_new", added["offer_id"]),
        )
    }
    assert {r["run_id"] for r in rows} == {second.run_id}
    assert {r["previous_run_id"] for r in rows} == {first.run_id}
    for row in rows:
        if row["change"] == "price_changed":
            assert row["price_min_old"] == Decimal(priced["price"])
            assert row["price_min_new"] == Decimal("99.90")
        if row["change"] == "moq_changed":
            assert (row["min_order_old"], row["min_order_new"]) == (
                moq["min_order"],
                moq["min_order"] * 10,
            )

    # Re-cleaning rebuilds matches and images with other rules; the run's changes stay.
    reclean(out)
    assert changes_of(out) == rows
