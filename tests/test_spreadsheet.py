"""``img1688 export``: a finished run's feed as xlsx and CSV, read back and compared with the
Parquet feed, plus the spreadsheet rules (formulas, long text, Excel's limits) on their own.

The run is made once for the module, against a sandbox on loopback whose catalogue has hostile
and oversized titles; every test reads that feed (and copies it before changing anything).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from engine.cli import main
from engine.errors import ConfigError
from engine.feedread import find_run, read_rows
from engine.outcome import ExitCode
from engine.sandbox.catalogue import DEFAULT_CATALOGUE
from engine.schema import IMAGES_SCHEMA, MATCHES_SCHEMA
from engine.shard import Shard
from engine.spreadsheet import (
    COLUMNS,
    EXCEL_MAX_CELL,
    IMAGES_COLUMNS,
    MATCHES_COLUMNS,
    TRUNCATED,
    ExportRow,
    csv_text,
    export_rows,
    fit_cell,
    flat_table,
    is_web_link,
    money_text,
    neutralise,
    write_xlsx,
)
from engine.state import StateStore
from tests.paths import SAMPLES

HOSTILE = ('=HYPERLINK("http://evil","x")', "@SUM(1)", "+1+2 折扣", "-2 减价")
LONG = "长" * 40_000
HEADERS = [c.header for c in COLUMNS]


@pytest.fixture(scope="module")
def feed(tmp_path_factory: pytest.TempPathFactory, run_sandbox_job: Callable[..., Any]) -> Path:
    """The output directory of a finished run over the sample set (good photos and awkward
    files, some of which fail), against a catalogue whose first titles are hostile or long."""
    root = tmp_path_factory.mktemp("export")
    catalogue = root / "catalogue"
    shutil.copytree(DEFAULT_CATALOGUE, catalogue)
    entries = json.loads((catalogue / "catalogue.json").read_text("utf-8"))
    for entry, title in zip(entries, [*HOSTILE, LONG], strict=False):
        entry["title"] = title
    (catalogue / "catalogue.json").write_text(json.dumps(entries, ensure_ascii=False), "utf-8")
    photos = root / "photos"
    shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.json"))
    out = root / "out"
    outcome = run_sandbox_job(photos, out, catalogue_dir=catalogue)
    assert outcome.exit_code == ExitCode.DONE_WITH_FAILURES, outcome.message  # the awkward files
    return out


def feed_rows(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The feed's ``images`` and ``matches`` rows, read as any reader would."""

    def read(kind: str) -> list[dict[str, Any]]:
        return ds.dataset(out / kind, format="parquet", partitioning="hive").to_table().to_pylist()

    return read("images"), read("matches")


def expected_rows(out: Path) -> list[dict[str, Any]]:
    """What the export must hold, built from the feed independently of the exporter: per
    photo (by path), its offers by rank, or one row with its failure."""
    images, matches = feed_rows(out)
    offers = defaultdict(list)
    for match in matches:
        offers[match["query_path"]].append(match)
    rows: list[dict[str, Any]] = []
    for image in sorted(images, key=lambda r: r["query_path"]):
        path = image["query_path"]
        for match in sorted(offers[path], key=lambda m: m["rank"]):
            rows.append({"Photo": path, "Rank": match["rank"], "Failure": None} | _offer(match))
        if not offers[path]:
            rows.append({"Photo": path, "Rank": None, "Failure": image["failure_reason"]})
    return rows


def _offer(match: dict[str, Any]) -> dict[str, Any]:
    return {
        "Title": match["title"],
        "Price min (CNY)": match["price_min"],
        "Price max (CNY)": match["price_max"],
        "MOQ": match["min_order"],
        "Supplier": match["company"],
        "City": match["city"],
        "Link": match["offer_url"],
    }


def run_export(
    out: Path, fmt: str, capsys: pytest.CaptureFixture[str], *args: str
) -> dict[str, Any]:
    assert main(["export", str(out), "--format", fmt, *args]) == 0
    return json.loads(capsys.readouterr().out)


def read_xlsx(path: Path) -> tuple[openpyxl.Workbook, list[dict[str, Any]]]:
    workbook = openpyxl.load_workbook(path)
    rows: list[dict[str, Any]] = []
    for sheet in workbook.worksheets:
        lines = list(sheet.iter_rows())
        assert [c.value for c in lines[0]] == HEADERS
        rows.extend({h: c for h, c in zip(HEADERS, line, strict=True)} for line in lines[1:])
    return workbook, rows


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == HEADERS
        return [dict(zip(HEADERS, line, strict=True)) for line in reader]


# --- the command, end to end ----------------------------------------------------------------


def test_xlsx_holds_every_photo_and_offer_in_order_with_the_feeds_values(
    feed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = run_export(feed, "xlsx", capsys)

    expected = expected_rows(feed)
    images, matches = feed_rows(feed)
    assert summary["path"] == str(feed / f"export-{summary['run_id']}.xlsx")
    assert summary["complete"] is True
    assert (
        summary["rows"]
        == len(expected)
        == len(matches) + sum(1 for i in images if not i["offers_kept"])
    )
    assert summary["photos"] == len(images)
    workbook, rows = read_xlsx(Path(summary["path"]))
    assert [s.title for s in workbook.worksheets] == ["Offers"]
    assert len(rows) == len(expected)
    assert any(e["Failure"] for e in expected) and any(e["Rank"] is None for e in expected)
    for got, want in zip(rows, expected, strict=True):
        assert got["Photo"].value == want["Photo"]
        assert got["Rank"].value == want["Rank"]
        assert got["SKU"].value is None  # the feed has no SKU yet: the column is empty
        assert got["Failure"].value == want["Failure"]
        if want["Rank"] is None:  # a photo without offers: its offer columns are empty
            assert all(got[h].value is None for h in ("Title", "Link", "Price min (CNY)"))
            continue
        assert got["Title"].value == fit_cell(want["Title"])
        assert got["Title"].data_type == "s"
        for money in ("Price min (CNY)", "Price max (CNY)"):
            assert got[money].data_type == "n"  # a number, not text
            assert got[money].value == float(want[money])
            assert got[money].number_format == "#,##0.00##"
        assert got["MOQ"].value == want["MOQ"]
        assert (got["Supplier"].value, got["City"].value) == (want["Supplier"], want["City"])
        assert got["Link"].value == want["Link"]
        assert got["Link"].hyperlink.target == want["Link"]


def test_csv_is_utf8_with_bom_rfc4180_and_holds_the_feeds_values(
    feed: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "buyers.csv"
    summary = run_export(feed, "csv", capsys, "--out", str(target))

    assert summary["path"] == str(target)
    raw = target.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # the BOM: Excel reads the Chinese text as UTF-8
    assert raw.count(b"\r\n") == summary["rows"] + 1 and b"\n" not in raw.replace(b"\r\n", b"")
    expected = expected_rows(feed)
    rows = read_csv(target)
    assert len(rows) == summary["rows"] == len(expected)
    for got, want in zip(rows, expected, strict=True):
        assert got["Photo"] == want["Photo"]
        assert got["Rank"] == ("" if want["Rank"] is None else str(want["Rank"]))
        assert got["Failure"] == (want["Failure"] or "")
        if want["Rank"] is None:
            assert got["Title"] == got["Link"] == got["Price min (CNY)"] == ""
            continue
        assert got["Title"] == csv_text(want["Title"])
        assert Decimal(got["Price min (CNY)"]) == want["Price min (CNY)"]
        assert got["Price max (CNY)"] == money_text(want["Price max (CNY)"])
        assert got["MOQ"] == str(want["MOQ"])
        assert got["Link"] == want["Link"]


def test_hostile_titles_are_text_never_formulas(
    feed: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    xlsx = run_export(feed, "xlsx", capsys, "--out", str(tmp_path / "x.xlsx"))
    csv_summary = run_export(feed, "csv", capsys, "--out", str(tmp_path / "x.csv"))

    workbook, rows = read_xlsx(Path(xlsx["path"]))
    for sheet in workbook.worksheets:  # no formula anywhere in the workbook
        assert all(c.data_type != "f" for line in sheet.iter_rows() for c in line)
    titles = {r["Title"].value: r["Title"] for r in rows}
    csv_titles = {r["Title"] for r in read_csv(Path(csv_summary["path"]))}
    for hostile in HOSTILE:
        assert hostile in titles, f"{hostile!r} was not matched: the test proves nothing"
        assert titles[hostile].data_type == "s"
        assert "'" + hostile in csv_titles and hostile not in csv_titles


def test_a_title_longer_than_a_cell_is_cut_with_a_marker(
    feed: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    xlsx = run_export(feed, "xlsx", capsys, "--out", str(tmp_path / "x.xlsx"))
    csv_summary = run_export(feed, "csv", capsys, "--out", str(tmp_path / "x.csv"))

    _, matches = feed_rows(feed)
    long_rows = sum(1 for m in matches if m["title"] == LONG)
    assert long_rows > 0  # the feed holds the whole title; the spreadsheet cannot
    _, rows = read_xlsx(Path(xlsx["path"]))
    cut = [r["Title"].value for r in rows if (r["Title"].value or "").startswith("长长长")]
    assert len(cut) == long_rows == xlsx["truncated_cells"] == csv_summary["truncated_cells"]
    assert all(len(t) == EXCEL_MAX_CELL and t.endswith(TRUNCATED) for t in cut)
    csv_cut = [r["Title"] for r in read_csv(Path(csv_summary["path"])) if r["Title"][:1] == "长"]
    assert csv_cut == cut


def test_a_run_in_progress_is_not_the_default_and_an_empty_run_is_refused(
    feed: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(feed, out)
    finished = find_run(out)
    with StateStore(out) as state:
        state.start_run("29990101T000000Z-later", "2999-01-01", "{}")

    assert find_run(out).run_id == finished.run_id  # the latest *completed* run
    assert main(["export", str(out), "--format", "csv", "--run", "29990101T000000Z-later"]) == 2
    assert "has no rows in the feed" in capsys.readouterr().err


def test_an_unknown_run_or_no_job_state_is_exit_2(
    feed: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["export", str(feed), "--format", "xlsx", "--run", "nope"]) == 2
    err = capsys.readouterr().err
    assert "has no run 'nope'" in err and find_run(feed).run_id in err
    assert main(["export", str(tmp_path), "--format", "csv"]) == 2
    assert "holds no job state" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_an_unwritable_target_is_exit_5(
    feed: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "missing-folder" / "x.xlsx"
    assert main(["export", str(feed), "--format", "xlsx", "--out", str(target)]) == 5
    assert f"cannot write {target}" in capsys.readouterr().err


# --- Excel's limits, with small injected limits --------------------------------------------


def test_rows_past_a_sheets_limit_continue_on_numbered_sheets(feed: Path, tmp_path: Path) -> None:
    run = find_run(feed)
    table = flat_table(
        read_rows(run, "matches", MATCHES_COLUMNS), read_rows(run, "images", IMAGES_COLUMNS)
    )
    whole = write_xlsx(export_rows(table), tmp_path / "whole.xlsx")
    split = write_xlsx(export_rows(table), tmp_path / "split.xlsx", max_rows=50, max_links=10)

    pages = -(-table.num_rows // 49)  # 49 rows under each header
    assert (whole.sheets, split.sheets, split.rows) == (1, pages, table.num_rows)
    workbook, rows = read_xlsx(split.path)
    assert [s.title for s in workbook.worksheets] == [
        "Offers" if i == 0 else f"Offers {i + 1}" for i in range(pages)
    ]
    assert all(s.max_row <= 50 for s in workbook.worksheets)
    _, one_sheet = read_xlsx(whole.path)
    assert [_values(r) for r in rows] == [_values(r) for r in one_sheet]
    # The first 10 links of each sheet are hyperlinks; the ones past them, the same URL as text.
    as_text = 0
    for sheet in workbook.worksheets:
        links = [line[HEADERS.index("Link")] for line in sheet.iter_rows(min_row=2)]
        links = [c for c in links if c.value is not None]
        assert [c.hyperlink is not None for c in links] == [i < 10 for i in range(len(links))]
        assert all(c.hyperlink.target == c.value for c in links[:10])
        as_text += max(0, len(links) - 10)
    assert split.links_as_text == as_text > 0


def _values(row: dict[str, Any]) -> list[object]:
    return [cell.value for cell in row.values()]


# --- the flat table and the cell rules on crafted input --------------------------------------


def _images(**columns: list[Any]) -> pa.Table:
    """An ``images`` table of the given columns (``ok`` photos with one offer received unless
    told otherwise); a column the feed schema lacks is a string."""
    rows = len(columns["query_path"])
    data: dict[str, list[Any]] = {
        "status": ["ok"] * rows,
        "failure_reason": [None] * rows,
        "failure_message": [None] * rows,
        "offers_received": [1] * rows,
    } | columns
    return pa.table(data, schema=_schema(IMAGES_SCHEMA, data))


def _schema(declared: pa.Schema, data: dict[str, list[Any]]) -> pa.Schema:
    return pa.schema(
        declared.field(n) if n in declared.names else pa.field(n, pa.string()) for n in data
    )


def _matches(paths: list[str], ranks: list[int], **extra: list[Any]) -> pa.Table:
    rows = len(paths)
    columns: dict[str, list[Any]] = {
        "query_path": paths,
        "rank": ranks,
        "title": [f"t{i}" for i in range(rows)],
        "price_min": [Decimal("1.5")] * rows,
        "price_max": [Decimal("2")] * rows,
        "price_tiers": [[{"min_quantity": 2, "price": Decimal("2")}]] * rows,
        "min_order": [2] * rows,
        "unit": ["件"] * rows,
        "company": ["c"] * rows,
        "city": ["杭州市"] * rows,
        "offer_url": [f"https://detail.1688.com/offer/{i + 1}.html" for i in range(rows)],
    }
    return pa.table(columns | extra, schema=_schema(MATCHES_SCHEMA, columns | extra))


def test_sku_verdict_and_english_title_come_from_the_feed_when_it_has_them() -> None:
    images = _images(
        query_path=["a.jpg", "b.jpg", "c.jpg", "d.jpg"],
        sku=["SKU-2", "SKU-1", None, "SKU-1"],
        status=["ok", "ok", "ok", "failed"],
        failure_reason=[None, None, None, "not_an_image"],
        failure_message=[None, None, None, "not an image"],
        offers_received=[3, 0, 4, None],
    )
    matches = _matches(
        ["a.jpg", "a.jpg", "c.jpg"],
        [2, 1, 1],
        verdict=["same", "similar", None],
        title_en=["cup", "mug", None],
    )

    rows = list(export_rows(flat_table(matches, images)))

    # By SKU (rows without one last), then photo, then rank.
    assert [(r.sku, r.photo, r.rank) for r in rows] == [
        ("SKU-1", "b.jpg", None),
        ("SKU-1", "d.jpg", None),
        ("SKU-2", "a.jpg", 1),
        ("SKU-2", "a.jpg", 2),
        (None, "c.jpg", 1),
    ]
    assert (rows[0].failure, rows[0].note) == (None, "no offers found")
    assert (rows[1].failure, rows[1].note) == ("not_an_image", "not an image")
    assert (rows[2].verdict, rows[2].title_en, rows[3].verdict) == ("similar", "mug", "same")
    assert rows[2].price_tiers == "≥2: 2.00" and rows[2].price_min == Decimal("1.5")
    assert rows[2].note is None and rows[4].title_en is None


def test_a_photo_whose_offers_were_all_removed_says_so() -> None:
    images = _images(query_path=["a.jpg"], offers_received=[7])
    rows = list(export_rows(flat_table(_matches([], []), images)))
    assert [(r.photo, r.rank, r.link) for r in rows] == [("a.jpg", None, None)]
    assert rows[0].note == "no offers kept (7 received, none passed cleaning and the filters)"


@pytest.mark.parametrize("trigger", ["=", "+", "-", "@", "\t", "\r", "\0", "＝", "＠"])
def test_every_formula_trigger_is_neutralised_in_csv(trigger: str) -> None:
    assert neutralise(f"{trigger}1+1") == f"'{trigger}1+1"
    assert neutralise(f"a{trigger}1") == f"a{trigger}1"  # only a leading trigger counts


def test_fit_cell_counts_utf16_units_and_never_splits_a_character() -> None:
    assert fit_cell("x" * EXCEL_MAX_CELL) == "x" * EXCEL_MAX_CELL
    emoji = "😀" * EXCEL_MAX_CELL  # two UTF-16 units each
    cut = fit_cell(emoji)
    assert cut.endswith(TRUNCATED) and set(cut.removesuffix(TRUNCATED)) == {"😀"}
    assert len(cut.encode("utf-16-le")) // 2 <= EXCEL_MAX_CELL
    room = len(TRUNCATED) + 3
    assert fit_cell("ab" * 10, limit=room) == "aba" + TRUNCATED
    assert fit_cell("ab" * 10, limit=20) == "ab" * 10


@pytest.mark.parametrize(
    ("url", "linkable"),
    [
        ("https://detail.1688.com/offer/1.html", True),
        ("HTTP://example.com/a", True),
        ("javascript:alert(1)", False),
        ("file:///etc/passwd", False),
        ("https:///no-host", False),
        ("=HYPERLINK(1)", False),
    ],
)
def test_only_http_links_become_hyperlinks(url: str, linkable: bool) -> None:
    assert is_web_link(url) is linkable


def test_a_link_that_is_not_http_is_written_as_text(tmp_path: Path) -> None:
    empty = dict.fromkeys((f.name for f in dataclasses.fields(ExportRow)), None)
    row = ExportRow(**empty | {"photo": "a.jpg", "link": "javascript:alert(1)"})
    written = write_xlsx([row], tmp_path / "x.xlsx")
    cell = openpyxl.load_workbook(written.path).active.cell(2, HEADERS.index("Link") + 1)
    assert (cell.value, cell.hyperlink, cell.data_type) == ("javascript:alert(1)", None, "s")
    assert written.links_as_text == 1


def test_a_sharded_output_needs_a_run_named(tmp_path: Path) -> None:
    for index in range(2):
        with StateStore(tmp_path, Shard(index, 2)) as state:
            state.start_run(f"run-{index}", "2026-01-01", "{}")
    with pytest.raises(ConfigError, match="split into shards") as raised:
        find_run(tmp_path)
    assert "0/2 run-0" in str(raised.value) and "1/2 run-1" in str(raised.value)
    assert find_run(tmp_path, "run-1").index.shard == Shard(1, 2)


def test_a_damaged_checkpoint_database_is_exit_5(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "state.sqlite").write_bytes(b"not a database, just bytes" * 100)
    assert main(["export", str(tmp_path), "--format", "csv"]) == 5
    assert "cannot read checkpoint database" in capsys.readouterr().err
