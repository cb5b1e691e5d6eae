"""The catalogue table: a buyer's SKUs and their photos, read and validated whole before any search.

``[inputs] catalogue`` names a CSV (``.csv``, comma-separated), TSV (``.tsv``, tab-separated) or
Parquet (``.parquet``) table with the columns ``sku`` (required, unique text), ``image``
(required: a path, relative to the table's folder, or an http(s) URL) and ``title`` (optional).
Column names match whatever their case and surrounding blanks; other columns are ignored.

A bad table is a :class:`~engine.errors.ConfigError` naming the file, the row and the column, so
that ``img1688 run`` refuses it (exit 2) before anything is searched: a missing column, an empty
or repeated SKU, an empty image, an image that is neither a path nor an http(s) URL with a host,
a CSV row whose field count differs from the header's, a Parquet column that is not text. A
photo that does not exist is *not* a table error: it fails that photo only, with its reason,
when the run reaches it, as a missing file named in ``paths`` would, so that one missing photo
does not hold back a whole catalogue and a large table on a network share is not stat'ed row by
row at load time.

SKUs are text and stay as written (``000123`` keeps its zeros): a Parquet ``sku`` column of
numbers is refused rather than converted. The module is pure: it reads the table it is given,
and imports pyarrow only for a Parquet table.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from engine.errors import ConfigError

if TYPE_CHECKING:
    from _csv import Reader

    import pyarrow as pa

SKU = "sku"
IMAGE = "image"
TITLE = "title"
REQUIRED_COLUMNS = (SKU, IMAGE)
COLUMNS = (SKU, IMAGE, TITLE)
DELIMITERS = {".csv": ",", ".tsv": "\t"}
PARQUET_SUFFIX = ".parquet"
URL_SCHEMES = ("http", "https")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
"""What makes an image a URL rather than a path: ``scheme://``."""

RowWord = Literal["line", "row"]
"""How a row is named: CSV rows by their line in the file, Parquet rows by their position."""

Row = tuple[int, Mapping[str, str | None]]
"""A row's number and its cells by column (:data:`COLUMNS` the table has), unstripped."""


@dataclass(frozen=True)
class CatalogueEntry:
    """One row of the catalogue table."""

    sku: str
    image: str
    """An absolute local path (resolved against the table's folder), or the http(s) URL as
    given."""
    title: str | None
    """``None`` when the table has no title column or the cell is empty."""
    row: int
    """The row as the user sees it: a CSV/TSV line number (the header is line 1; a record
    spanning several lines is named by its first), a Parquet row counted from 1."""

    @property
    def is_url(self) -> bool:
        """Whether ``image`` is a URL to download rather than a local path."""
        return is_web_url(self.image)


def is_web_url(text: str) -> bool:
    """Whether ``text`` is an ``http(s)://`` URL, its scheme in any case (``HTTPS://`` too)."""
    match = _SCHEME.match(text)
    return match is not None and match[0][:-3].lower() in URL_SCHEMES


def read_catalogue(path: Path) -> list[CatalogueEntry]:
    """Read and validate the whole table at ``path``; its entries in table order.

    The format is the file name's extension (case-insensitive): ``.csv``, ``.tsv`` (UTF-8 with
    or without a BOM, RFC 4180 quoting) or ``.parquet``. Values are stripped of surrounding
    blanks; rows whose every cell is empty are skipped. The table needs at least one row.

    Raises:
        ConfigError: naming the file, and the row and the column where there is one: the file
            is missing, unreadable, not UTF-8 or not Parquet; a required column is missing (the
            message lists the columns found) or a column appears twice; a SKU is empty or
            repeats an earlier row (both rows named); an image is empty, or neither a path nor
            an http(s) URL with a host; a CSV row has more or fewer fields than the header; a
            Parquet column holds something other than text.
    """
    suffix = path.suffix.lower()
    if suffix not in DELIMITERS and suffix != PARQUET_SUFFIX:
        raise ConfigError(
            f"{path}: a catalogue must be a .csv, .tsv or .parquet file"
            f" (got {suffix or 'no extension'})"
        )
    if not path.is_file():
        raise ConfigError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    if suffix == PARQUET_SUFFIX:
        return _entries(path, "row", _parquet_rows(path))
    return _entries(path, "line", _csv_rows(path, DELIMITERS[suffix]))


def _entries(path: Path, word: RowWord, rows: Iterable[Row]) -> list[CatalogueEntry]:
    # abspath, not resolve(): '..' goes, but symlinked folders keep the name the user gave.
    folder = os.path.dirname(os.path.abspath(path))
    first_row: dict[str, int] = {}
    entries: list[CatalogueEntry] = []
    for row, cells in rows:
        sku = _text(cells[SKU])
        if not sku:
            raise ConfigError(
                f"{path}, {word} {row}, column {SKU}: empty (every row needs its SKU)"
            )
        earlier = first_row.setdefault(sku, row)
        if earlier != row:
            raise ConfigError(
                f"{path}, {word} {row}, column {SKU}: {sku!r} repeats {word} {earlier}"
                " (SKUs must be unique)"
            )
        try:
            image = _image(_text(cells[IMAGE]), folder)
        except ValueError as exc:
            raise ConfigError(f"{path}, {word} {row}, column {IMAGE}: {exc}") from None
        title = _text(cells.get(TITLE)) or None
        entries.append(CatalogueEntry(sku=sku, image=image, title=title, row=row))
    if not entries:
        raise ConfigError(f"{path}: no rows under the header (a catalogue needs at least one SKU)")
    return entries


def _text(value: str | None) -> str:
    return "" if value is None else value.strip()


def _image(image: str, folder: str) -> str:
    """The URL as given, or the path made absolute against the table's ``folder``.

    Raises:
        ValueError: saying what is wrong with ``image``, without echoing it.
    """
    if not image:
        raise ValueError(
            "empty (give the photo's path, relative to the table's folder, or its http(s) URL)"
        )
    if _SCHEME.match(image):
        # The URL itself is never echoed: a signed download link carries its credential.
        try:
            parts = urlsplit(image)
        except ValueError:
            raise ValueError("not a valid URL") from None
        if parts.scheme.lower() not in URL_SCHEMES:
            raise ValueError(
                f"{parts.scheme}:// URLs are not downloaded; give an http(s) URL or a local path"
            )
        if not parts.hostname:
            raise ValueError("a URL without a host")
        return image
    if "\0" in image:
        raise ValueError("not a path (it holds a NUL character)")
    return os.path.normpath(os.path.join(folder, image))


def _columns(path: Path, found: Sequence[str]) -> dict[str, int]:
    """Column name -> its position among ``found``, for the :data:`COLUMNS` present.

    Raises:
        ConfigError: a required column is missing, or one of :data:`COLUMNS` appears twice.
    """
    where: dict[str, int] = {}
    for position, name in enumerate(found):
        column = name.strip().lower()
        if column not in COLUMNS:
            continue
        if column in where:
            raise ConfigError(
                f"{path}: column {column} appears twice"
                f" ({found[where[column]]!r} and {name!r}); keep one"
            )
        where[column] = position
    missing = [column for column in REQUIRED_COLUMNS if column not in where]
    if missing:
        names = ", ".join(repr(name) for name in found) or "none"
        raise ConfigError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
            f" (required: {', '.join(REQUIRED_COLUMNS)}; optional: {TITLE}; found: {names})"
        )
    return where


# -- CSV and TSV ----------------------------------------------------------------------------


def _csv_rows(path: Path, delimiter: str) -> Iterator[Row]:
    """The rows under the header, each named by the line it starts on."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 text (save the table as CSV UTF-8)"
        ) from None
    # newline="": line breaks inside quoted values reach the csv module as they are.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records = _records(path, reader)
    first = next(records, None)
    if first is None:
        raise ConfigError(f"{path}: empty (the first line must name the columns: sku,image,title)")
    header = first[1]
    where = _columns(path, header)
    separator = "a tab" if delimiter == "\t" else f"a {delimiter!r}"
    for line, record in records:
        if len(record) != len(header):
            raise ConfigError(
                f"{path}, line {line}: {len(record)} fields where the header has"
                f" {len(header)} (quote values that hold {separator})"
            )
        yield line, {column: record[position] for column, position in where.items()}


def _records(path: Path, reader: Reader) -> Iterator[tuple[int, list[str]]]:
    """The records that hold any value, each with the line it starts on."""
    # The reader's line_num is the last line a record used; the next record starts after it.
    end = 0
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise ConfigError(f"{path}, line {reader.line_num}: not valid CSV: {exc}") from None
        start, end = end + 1, reader.line_num
        if any(value.strip() for value in record):
            yield start, record


# -- Parquet --------------------------------------------------------------------------------


def _parquet_rows(path: Path) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as file:  # one footer read, for the schema and the rows
            schema = file.schema_arrow
            where = _columns(path, schema.names)
            names = {column: schema.names[position] for column, position in where.items()}
            for column, name in names.items():
                _check_text(path, column, schema.field(name).type)
            table = file.read(columns=list(names.values()))
    except (OSError, pa.ArrowException) as exc:
        raise ConfigError(f"{path}: not a readable Parquet file: {exc}") from None
    cells = {column: table.column(name).to_pylist() for column, name in names.items()}
    for index in range(table.num_rows):
        yield index + 1, {column: values[index] for column, values in cells.items()}


def _check_text(path: Path, column: str, kind: pa.DataType) -> None:
    """Refuse a column that is not text (or all null, which the row checks then name)."""
    import pyarrow as pa

    value_type = kind.value_type if pa.types.is_dictionary(kind) else kind
    if (
        pa.types.is_string(value_type)
        or pa.types.is_large_string(value_type)
        or pa.types.is_string_view(value_type)
        or pa.types.is_null(value_type)
    ):
        return
    why = (
        "write SKUs as strings, so that one such as 000123 keeps its zeros"
        if column == SKU
        else "it must be a string column"
    )
    raise ConfigError(f"{path}, column {column}: holds {kind} values, not text ({why})")
