"""A run's feed as a buyer's spreadsheet: one flat, sorted table, written as xlsx or CSV.

One row per (photo, kept offer); a photo without offers, or that failed, still gets one row,
with empty offer columns and why, so that no photo silently disappears. Rows are sorted by
SKU, photo and rank. The columns (:data:`COLUMNS`) and the rules below are documented in
``docs/export.md``:

- no cell ever holds a formula: xlsx text is written as text cells (``write_string``), CSV text
  that a spreadsheet would read as a formula is prefixed with ``'`` (OWASP's CSV-injection
  advice);
- text longer than a cell holds (32,767 UTF-16 units) is cut and ends with :data:`TRUNCATED`;
- an xlsx sheet holds at most 1,048,576 rows: the table continues on numbered sheets;
- offer links are hyperlinks in xlsx (http and https only, up to Excel's limits), prices are
  numbers with a number format, never strings.

Files are written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc

from engine.storage import write_atomic

if TYPE_CHECKING:
    from xlsxwriter.format import Format as CellFormat
    from xlsxwriter.worksheet import Worksheet

Format = Literal["xlsx", "csv"]

EXCEL_MAX_ROWS = 1_048_576
"""Rows of one worksheet, its header row included."""
EXCEL_MAX_CELL = 32_767
"""UTF-16 code units one cell holds (a character outside the BMP, such as an emoji, is two)."""
EXCEL_MAX_LINKS = 65_530
"""Hyperlinks one worksheet holds; XlsxWriter leaves the cell empty past it, so we write text."""
EXCEL_MAX_URL = 2_079
"""UTF-16 units of a hyperlink's target that Excel accepts."""
TRUNCATED = " …[truncated]"
"""Ends a cell whose text was cut to fit."""
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\0", "＝", "＋", "－", "＠")
"""A CSV cell starting with one of these is prefixed with ``'``: OWASP's list (and the NUL of
OWASP ASVS 1.2.10), plus the full-width forms of the four signs, which East Asian input writes
and which we neutralise as a precaution."""

SHEET_NAME = "Offers"
_BATCH_ROWS = 4096
_MONEY_FORMAT = "#,##0.00##"


@dataclass(frozen=True)
class Column:
    header: str
    kind: Literal["text", "integer", "money", "link"]
    width: int
    """Characters, for xlsx."""


@dataclass(frozen=True)
class ExportRow:
    """One line of the spreadsheet, in :data:`COLUMNS` order (the fields' order)."""

    sku: str | None
    photo: str
    rank: int | None
    verdict: str | None
    title: str | None
    title_en: str | None
    price_min: Decimal | None
    price_max: Decimal | None
    price_tiers: str | None
    min_order: int | None
    unit: str | None
    supplier: str | None
    city: str | None
    link: str | None
    failure: str | None
    note: str | None

    def cells(self) -> tuple[str | int | Decimal | None, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


COLUMNS: tuple[Column, ...] = (
    Column("SKU", "text", 14),
    Column("Photo", "text", 40),
    Column("Rank", "integer", 6),
    Column("Verdict", "text", 10),
    Column("Title", "text", 50),
    Column("English title", "text", 50),
    Column("Price min (CNY)", "money", 12),
    Column("Price max (CNY)", "money", 12),
    Column("Price tiers (CNY per unit)", "text", 30),
    Column("MOQ", "integer", 8),
    Column("MOQ unit", "text", 8),
    Column("Supplier", "text", 30),
    Column("City", "text", 10),
    Column("Link", "link", 45),
    Column("Failure", "text", 18),
    Column("Note", "text", 40),
)
"""The spreadsheet's columns, always all of them, in :class:`ExportRow`'s order."""
assert len(COLUMNS) == len(fields(ExportRow))

# Feed columns the export reads. The optional ones come with later schema additions: SKU
# (per photo, in `images`, or per row in `matches`), an English title, a verdict.
MATCHES_COLUMNS = (
    "query_path",
    "rank",
    "title",
    "price_min",
    "price_max",
    "price_tiers",
    "min_order",
    "unit",
    "company",
    "city",
    "offer_url",
    "sku",
    "title_en",
    "verdict",
)
IMAGES_COLUMNS = (
    "query_path",
    "status",
    "failure_reason",
    "failure_message",
    "offers_received",
    "sku",
    "verdict",
)
_OPTIONAL = ("sku", "title_en", "verdict")


@dataclass(frozen=True)
class Written:
    """What an export wrote."""

    path: Path
    format: Format
    rows: int
    photos: int
    sheets: int
    truncated_cells: int
    links_as_text: int
    """xlsx links written as plain text: not http(s), too long, or past a sheet's limit."""

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "format": self.format,
            "rows": self.rows,
            "photos": self.photos,
            "sheets": self.sheets,
            "truncated_cells": self.truncated_cells,
            "links_as_text": self.links_as_text,
        }


# --- the flat table ------------------------------------------------------------------------


def flat_table(matches: pa.Table, images: pa.Table) -> pa.Table:
    """The export's rows as one Arrow table, sorted by SKU (rows without one last), photo and
    rank: every ``matches`` row, and one row for each photo of ``images`` that has none.

    ``matches`` and ``images`` hold one run's rows with at least the feed columns of
    :data:`MATCHES_COLUMNS` and :data:`IMAGES_COLUMNS` that are not optional.
    """
    offer_paths = matches.column("query_path")
    at_image = pc.index_in(offer_paths, value_set=images.column("query_path"))
    offers = {
        "sku": pc.coalesce(_optional(matches, "sku"), _optional(images, "sku", take=at_image)),
        "photo": offer_paths,
        "rank": matches.column("rank"),
        "verdict": pc.coalesce(
            _optional(matches, "verdict"), _optional(images, "verdict", take=at_image)
        ),
        "title": matches.column("title"),
        "title_en": _optional(matches, "title_en"),
        "price_min": matches.column("price_min"),
        "price_max": matches.column("price_max"),
        "price_tiers": matches.column("price_tiers"),
        "min_order": matches.column("min_order"),
        "unit": matches.column("unit"),
        "supplier": matches.column("company"),
        "city": matches.column("city"),
        "link": matches.column("offer_url"),
    }
    bare = images.filter(pc.invert(pc.is_in(images.column("query_path"), value_set=offer_paths)))
    placeholders = {
        "sku": _optional(bare, "sku"),
        "photo": bare.column("query_path"),
        "verdict": _optional(bare, "verdict"),
        "status": bare.column("status"),
        "failure_reason": bare.column("failure_reason"),
        "failure_message": bare.column("failure_message"),
        "offers_received": bare.column("offers_received"),
    }
    types = {name: column.type for name, column in offers.items()} | {
        "status": pa.string(),
        "failure_reason": pa.string(),
        "failure_message": pa.string(),
        "offers_received": pa.int64(),
    }
    table = pa.concat_tables(
        [_table(offers, types, matches.num_rows), _table(placeholders, types, bare.num_rows)]
    )
    return table.sort_by([("sku", "ascending"), ("photo", "ascending"), ("rank", "ascending")])


def _optional(
    table: pa.Table, name: str, take: pa.Array | None = None
) -> pa.ChunkedArray | pa.Array:
    """Column ``name`` as strings (taken at ``take``), or nulls when the feed has no such
    column."""
    rows = table.num_rows if take is None else len(take)
    if name not in table.column_names:
        return pa.nulls(rows, pa.string())
    column = pc.cast(table.column(name), pa.string())
    return column if take is None else column.take(take)


def _table(
    columns: dict[str, pa.ChunkedArray | pa.Array], types: dict[str, pa.DataType], rows: int
) -> pa.Table:
    return pa.table(
        {
            name: columns[name].cast(type_) if name in columns else pa.nulls(rows, type_)
            for name, type_ in types.items()
        }
    )


_AS_IS = tuple(
    f.name for f in fields(ExportRow) if f.name not in ("price_tiers", "failure", "note")
)
"""The :class:`ExportRow` fields that are :func:`flat_table` columns of the same name."""


def export_rows(table: pa.Table) -> Iterator[ExportRow]:
    """The rows of a :func:`flat_table`, in its order, as typed records (a batch at a time)."""
    for batch in table.to_batches(max_chunksize=_BATCH_ROWS):
        for row in batch.to_pylist():
            yield ExportRow(
                **{name: row[name] for name in _AS_IS},
                price_tiers=_tiers_text(row["price_tiers"]),
                failure=row["failure_reason"],
                note=_note(row),
            )


def _tiers_text(tiers: list[dict[str, object]] | None) -> str | None:
    """``≥2: 15.00; ≥100: 12.50`` (from 2 units, 15.00 CNY each ...), or None without tiers."""
    if not tiers:
        return None
    return "; ".join(
        f"≥{t['min_quantity']}: {money_text(t['price'])}"
        for t in tiers
        if isinstance(t["price"], Decimal)
    )


def _note(row: dict[str, object]) -> str | None:
    """Why a photo has no offer: the failure's message, or what became of the offers."""
    if row["status"] is None:  # an offer's row
        return None
    if row["status"] == "failed":
        message = row["failure_message"]
        return str(message) if message else None
    received = row["offers_received"]
    if not received:
        return "no offers found"
    return f"no offers kept ({received} received, none passed cleaning and the filters)"


def money_text(value: Decimal) -> str:
    """A CNY amount as plain text: at least 2 decimals, at most the 4 the feed keeps, no
    exponent and no thousands separator (``12.50``, ``0.125``, ``1200.00``)."""
    whole, _, fraction = f"{value:f}".partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


# --- cell rules ----------------------------------------------------------------------------


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def fit_cell(text: str, limit: int = EXCEL_MAX_CELL) -> str:
    """``text`` as is if a cell holds it, else cut (never inside a surrogate pair) so that,
    ending with :data:`TRUNCATED`, it is ``limit`` UTF-16 units at most."""
    if len(text) * 2 <= limit or _utf16_units(text) <= limit:
        return text
    keep = (limit - _utf16_units(TRUNCATED)) * 2
    # A cut between the two halves of a surrogate pair leaves half a character: ignored.
    return text.encode("utf-16-le")[:keep].decode("utf-16-le", errors="ignore") + TRUNCATED


def neutralise(text: str) -> str:
    """CSV text that no spreadsheet reads as a formula: text starting with a
    :data:`FORMULA_TRIGGERS` character gets a leading ``'``, other text is returned as is."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def csv_text(text: str) -> str:
    """A CSV cell's text: :func:`neutralise`, then :func:`fit_cell`."""
    return fit_cell(neutralise(text))


def is_web_link(url: str) -> bool:
    """Whether ``url`` may become a clickable link: http or https with a host."""
    parts = urlsplit(url)
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


# --- writers -------------------------------------------------------------------------------


class _Counter:
    """Counts what a writer did while it streams rows."""

    def __init__(self) -> None:
        self.rows = 0
        self.photos = 0
        self.truncated = 0
        self.links_as_text = 0
        self._last: tuple[str | None, str] | None = None

    def row(self, row: ExportRow) -> None:
        self.rows += 1
        key = (row.sku, row.photo)
        if key != self._last:
            self.photos += 1
            self._last = key

    def fit(self, text: str) -> str:
        """:func:`fit_cell`, counting the cells it cuts."""
        fitted = fit_cell(text)
        if fitted is not text:
            self.truncated += 1
        return fitted


def write_csv(rows: Iterable[ExportRow], path: Path) -> Written:
    """Write ``rows`` as CSV: UTF-8 with a BOM (so that Excel reads Chinese text), RFC 4180
    (commas, ``"`` quoting when needed, CRLF line ends), text neutralised by :func:`csv_text`,
    prices as plain decimals.

    Raises:
        StorageError: the file cannot be written.
    """
    count = _Counter()

    def write(temp: Path) -> None:
        with open(temp, "w", encoding="utf-8-sig", newline="") as handle:
            writer = csv.writer(handle, dialect="excel", lineterminator="\r\n")
            writer.writerow([c.header for c in COLUMNS])
            for row in rows:
                count.row(row)
                writer.writerow([_csv_cell(value, count) for value in row.cells()])

    write_atomic(path, write)
    return Written(path, "csv", count.rows, count.photos, 1, count.truncated, 0)


def _csv_cell(value: str | int | Decimal | None, count: _Counter) -> str | int:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return money_text(value)
    if isinstance(value, int):
        return value
    return count.fit(neutralise(value))


def write_xlsx(
    rows: Iterable[ExportRow],
    path: Path,
    *,
    max_rows: int = EXCEL_MAX_ROWS,
    max_links: int = EXCEL_MAX_LINKS,
) -> Written:
    """Write ``rows`` as an xlsx workbook, streaming (XlsxWriter's ``constant_memory``: one
    row in memory at a time). Text is always a text cell; prices are numbers formatted
    ``#,##0.00##``; http(s) links are hyperlinks. A sheet takes ``max_rows`` rows, its header
    included, then the table continues on sheet "Offers 2", "Offers 3" ... each with the
    header; at most ``max_links`` hyperlinks a sheet, further links are text.

    Raises:
        StorageError: the file cannot be written.
    """
    import xlsxwriter
    from xlsxwriter.exceptions import FileCreateError

    if max_rows < 2:
        raise ValueError(f"a sheet needs room for the header and a row, got max_rows={max_rows}")
    count = _Counter()
    sheets = 0

    def write(temp: Path) -> None:
        nonlocal sheets
        workbook = xlsxwriter.Workbook(
            str(temp),
            {
                "constant_memory": True,
                # Defence in depth: only write_string is used for text anyway.
                "strings_to_formulas": False,
                "strings_to_numbers": False,
                "strings_to_urls": False,
            },
        )
        header = workbook.add_format({"bold": True, "bg_color": "#DDEBF7", "border": 1})
        money = workbook.add_format({"num_format": _MONEY_FORMAT})
        sheet: _Sheet | None = None
        for row in rows:
            if sheet is None or sheet.rows == max_rows:
                if sheet is not None:
                    sheet.finish()
                sheets += 1
                name = SHEET_NAME if sheets == 1 else f"{SHEET_NAME} {sheets}"
                sheet = _Sheet(workbook.add_worksheet(name), header, money, max_links, count)
            count.row(row)
            sheet.add(row)
        if sheet is None:  # no rows: the header alone
            sheets = 1
            sheet = _Sheet(workbook.add_worksheet(SHEET_NAME), header, money, max_links, count)
        sheet.finish()
        try:
            workbook.close()
        except FileCreateError as exc:
            raise OSError(str(exc)) from None

    write_atomic(path, write)
    return Written(
        path, "xlsx", count.rows, count.photos, sheets, count.truncated, count.links_as_text
    )


class _Sheet:
    """One worksheet being filled: the header, then rows in order."""

    def __init__(
        self,
        sheet: Worksheet,
        header: CellFormat,
        money: CellFormat,
        max_links: int,
        count: _Counter,
    ) -> None:
        self.sheet = sheet
        self.money = money
        self.links_left = max_links
        self.count = count
        for index, column in enumerate(COLUMNS):
            sheet.set_column(index, index, column.width)
            sheet.write_string(0, index, column.header, header)
        sheet.freeze_panes(1, 0)
        self.rows = 1

    def add(self, row: ExportRow) -> None:
        line = self.rows
        for index, (column, value) in enumerate(zip(COLUMNS, row.cells(), strict=True)):
            if value is None:
                continue
            if isinstance(value, Decimal):
                self.sheet.write_number(line, index, float(value), self.money)
            elif isinstance(value, int):
                self.sheet.write_number(line, index, value)
            elif column.kind == "link" and self._linkable(value):
                self.links_left -= 1
                self.sheet.write_url(line, index, value, string=value)
            else:
                if column.kind == "link":
                    self.count.links_as_text += 1
                self.sheet.write_string(line, index, self.count.fit(value))
        self.rows += 1

    def _linkable(self, url: str) -> bool:
        return self.links_left > 0 and is_web_link(url) and _utf16_units(url) <= EXCEL_MAX_URL

    def finish(self) -> None:
        self.sheet.autofilter(0, 0, self.rows - 1, len(COLUMNS) - 1)
