"""The catalogue table: real CSV, TSV and Parquet files read back; every refusal names the file,
the row and the column, and every accepted table comes back row for row."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.catalogue_table import CatalogueEntry, read_catalogue
from engine.errors import ConfigError

BOM = "\ufeff"


def write_text(path: Path, text: str, encoding: str = "utf-8") -> Path:
    # newline="": the file holds exactly the line breaks written (CRLF, LF, or one in a quote).
    with path.open("w", encoding=encoding, newline="") as out:
        out.write(text)
    return path


def write_parquet(path: Path, columns: dict[str, pa.Array | list]) -> Path:
    pq.write_table(pa.table(columns), path)
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        read_catalogue(path)
    message = str(caught.value)
    assert message.startswith(str(path))  # names the file first
    return message


# --- accepted tables -----------------------------------------------------------------------


def test_a_csv_with_bom_quotes_and_blank_lines_comes_back_row_for_row(tmp_path: Path) -> None:
    table = write_text(
        tmp_path / "catalogue.csv",
        BOM + " SKU ,Image,Title,supplier\r\n"  # names in any case, blanks around them
        '000123, photos/a.jpg ,"Dress, red ""summer""",acme\r\n'
        "\r\n"  # a blank line
        'B-2,https://cdn.example.com/p/b.jpg?size=big&v=2,"two\r\nlines",\r\n'
        ",,,\r\n"  # a spreadsheet's empty row
        "C3,sub/../c.png,  ,x\r\n"
        "D4,/srv/photos/d.heic,连衣裙,y\r\n",
    )

    entries = read_catalogue(table)

    assert entries == [
        CatalogueEntry("000123", str(tmp_path / "photos" / "a.jpg"), 'Dress, red "summer"', 2),
        CatalogueEntry("B-2", "https://cdn.example.com/p/b.jpg?size=big&v=2", "two\r\nlines", 4),
        CatalogueEntry("C3", str(tmp_path / "c.png"), None, 7),  # a blank title is none
        CatalogueEntry("D4", "/srv/photos/d.heic", "连衣裙", 8),
    ]
    assert [entry.is_url for entry in entries] == [False, True, False, False]


def test_a_tsv_without_bom_and_without_a_title_column(tmp_path: Path) -> None:
    table = write_text(tmp_path / "cat.TSV", "image\tsku\nx, y.jpg\tA1\nHTTP://h.example/z\tA2\n")
    assert read_catalogue(table) == [
        CatalogueEntry("A1", str(tmp_path / "x, y.jpg"), None, 2),
        CatalogueEntry("A2", "HTTP://h.example/z", None, 3),
    ]


def test_a_relative_table_path_still_gives_absolute_photo_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tables").mkdir()
    write_text(tmp_path / "tables" / "c.csv", "sku,image\nA1,../photos/a.jpg\n")
    monkeypatch.chdir(tmp_path)
    [entry] = read_catalogue(Path("tables/c.csv"))
    assert entry.image == str(tmp_path / "photos" / "a.jpg")


def test_a_parquet_table_of_text_columns_in_any_arrow_string_type(tmp_path: Path) -> None:
    table = write_parquet(
        tmp_path / "catalogue.parquet",
        {
            "Sku": pa.array(["000123", "A2", "A3"], pa.large_string()),
            "image": pa.array(
                ["a.jpg", "https://cdn.example.com/b.jpg", "c.jpg"]
            ).dictionary_encode(),
            "title": pa.array([" Red dress ", None, ""]),
            "price": pa.array([1.5, 2.5, 3.5]),  # another column, whatever its type, is ignored
        },
    )
    assert read_catalogue(table) == [
        CatalogueEntry("000123", str(tmp_path / "a.jpg"), "Red dress", 1),
        CatalogueEntry("A2", "https://cdn.example.com/b.jpg", None, 2),
        CatalogueEntry("A3", str(tmp_path / "c.jpg"), None, 3),
    ]


def test_a_parquet_title_column_of_nulls_only_is_no_title(tmp_path: Path) -> None:
    table = write_parquet(
        tmp_path / "c.parquet",
        {"sku": ["A1"], "image": ["a.jpg"], "title": pa.nulls(1)},
    )
    assert read_catalogue(table)[0].title is None


# --- refused tables: CSV -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("id,photo,title\nA1,a.jpg,x\n", "missing columns sku, image (required: sku, image;"),
        ("sku,photo\nA1,a.jpg\n", "missing column image (required"),
        ("sku;image\nA1;a.jpg\n", "found: 'sku;image'"),
        ("sku,image,SKU\nA1,a.jpg,A1\n", "column sku appears twice ('sku' and 'SKU')"),
        ("sku,image\nA1,a.jpg\nA2,b.jpg\n A1 ,c.jpg\n", "line 4, column sku: 'A1' repeats line 2"),
        ("sku,image\nA1,a.jpg\n  ,b.jpg\n", "line 3, column sku: empty"),
        ("sku,image\nA1,a.jpg\nA2,\n", "line 3, column image: empty"),
        ("sku,image,title\nA1,a.jpg,x\nA2,  ,y\n", "line 3, column image: empty"),
        ('sku,image,title\n"A1","a\n.jpg",x\nA2,,y\n', "line 4, column image: empty"),
        ("sku,image\nA1,s3://bucket/a.jpg\n", "line 2, column image: s3:// URLs are not"),
        ("sku,image\nA1,https:///a.jpg\n", "line 2, column image: a URL without a host"),
        ("sku,image\nA1,http://[::1/a.jpg\n", "line 2, column image: not a valid URL"),
        ("sku,image\nA1,a\0.jpg\n", "line 2, column image: not a path"),
        ("sku,image\nA1,a.jpg,extra\n", "line 2: 3 fields where the header has 2"),
        ("sku,image,title\nA1,a.jpg\n", "line 2: 2 fields where the header has 3"),
        ('sku,image\nA1,"a.jpg"x\n', "line 2: not valid CSV"),
        ('sku,image\nA1,a.jpg\nA2,"b.jpg\n', "line 3: not valid CSV"),
        ("", "empty (the first line must name the columns"),
        ("\n\n", "empty (the first line must name the columns"),
        ("sku,image,title\n\n,,\n", "no rows under the header"),
    ],
)
def test_a_bad_csv_is_refused_naming_the_line_and_the_column(
    tmp_path: Path, text: str, says: str
) -> None:
    assert says in refusal(write_text(tmp_path / "c.csv", text))


def test_a_non_utf8_csv_is_refused_naming_the_line(tmp_path: Path) -> None:
    table = write_text(tmp_path / "c.csv", "sku,image\nA1,a.jpg\nA2,bébé.jpg\n", "latin-1")
    assert "line 3: not UTF-8 text" in refusal(table)


def test_a_refused_url_is_never_echoed(tmp_path: Path) -> None:
    # A download link may carry its credential: the error names the place, not the value.
    table = write_text(tmp_path / "c.csv", "sku,image\nA1,ftp://user:s3cr3t@host/a.jpg?sig=k3y\n")
    message = refusal(table)
    assert "line 2, column image: ftp:// URLs" in message
    assert "s3cr3t" not in message and "k3y" not in message


def test_a_missing_or_unknown_file_is_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path / "none.csv").endswith(": no such file")
    (tmp_path / "dir.csv").mkdir()
    assert refusal(tmp_path / "dir.csv").endswith(": not a file")
    wrong = write_text(tmp_path / "c.xlsx", "sku,image\nA1,a.jpg\n")
    assert "must be a .csv, .tsv or .parquet file (got .xlsx)" in refusal(wrong)


# --- refused tables: Parquet ---------------------------------------------------------------


def test_a_numeric_parquet_sku_column_is_refused_not_converted(tmp_path: Path) -> None:
    table = write_parquet(tmp_path / "c.parquet", {"sku": [123, 124], "image": ["a", "b"]})
    message = refusal(table)
    assert "column sku: holds int64 values, not text" in message
    assert "000123 keeps its zeros" in message


def test_a_non_text_parquet_title_is_refused(tmp_path: Path) -> None:
    table = write_parquet(
        tmp_path / "c.parquet", {"sku": ["A1"], "image": ["a.jpg"], "title": [3.5]}
    )
    assert "column title: holds double values, not text" in refusal(table)


@pytest.mark.parametrize(
    ("columns", "says"),
    [
        ({"sku": ["A1"], "photo": ["a.jpg"]}, "missing column image (required"),
        (
            {"sku": ["A1", "A2", "A1"], "image": ["a", "b", "c"]},
            "row 3, column sku: 'A1' repeats row 1",
        ),
        ({"sku": ["A1", None], "image": ["a", "b"]}, "row 2, column sku: empty"),
        ({"sku": ["A1", "A2"], "image": ["a", None]}, "row 2, column image: empty"),
        ({"sku": ["A1", "A2"], "image": pa.nulls(2)}, "row 1, column image: empty"),
        ({"sku": pa.array([], pa.string()), "image": pa.array([], pa.string())}, "no rows"),
    ],
)
def test_a_bad_parquet_table_is_refused_naming_the_row_and_the_column(
    tmp_path: Path, columns: dict, says: str
) -> None:
    assert says in refusal(write_parquet(tmp_path / "c.parquet", columns))


def test_a_file_that_is_not_parquet_is_refused(tmp_path: Path) -> None:
    table = write_text(tmp_path / "c.parquet", "sku,image\nA1,a.jpg\n")
    assert "not a readable Parquet file" in refusal(table)


# --- any table round-trips -----------------------------------------------------------------

_values = (
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)
    .map(str.strip)
    .filter(bool)
)


@st.composite
def tables(draw: st.DrawFn) -> list[tuple[str, str, str | None]]:
    """Rows of (sku, image, title): unique SKUs of any text, local paths and URLs."""
    skus = draw(st.lists(_values, min_size=1, max_size=8, unique=True))
    rows = []
    for i, sku in enumerate(skus):
        image = f"https://cdn.example.com/p/{i}.jpg" if draw(st.booleans()) else f"photos/{i}.jpg"
        rows.append((sku, image, draw(st.none() | _values)))
    return rows


@settings(max_examples=150, deadline=None)
@given(rows=tables(), bom=st.booleans(), crlf=st.booleans(), parquet=st.booleans())
def test_any_table_of_unique_skus_round_trips(
    rows: list[tuple[str, str, str | None]], bom: bool, crlf: bool, parquet: bool
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        if parquet:
            skus, images, titles = zip(*rows, strict=True)
            path = write_parquet(
                base / "t.parquet",
                {"sku": list(skus), "image": list(images), "title": list(titles)},
            )
            numbers = list(range(1, len(rows) + 1))
        else:
            text = io.StringIO()
            # csv.writer quotes only the line breaks of its own terminator: with "\n" a value's
            # lone "\r" would go unquoted (not RFC 4180), so that writer quotes every value.
            writer = csv.writer(
                text,
                lineterminator="\r\n" if crlf else "\n",
                quoting=csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL,
            )
            writer.writerow(["sku", "image", "title"])
            writer.writerows((sku, image, title or "") for sku, image, title in rows)
            path = write_text(base / "t.csv", (BOM if bom else "") + text.getvalue())
            numbers = _record_starts(text.getvalue())

        entries = read_catalogue(path)

    assert [(e.sku, e.title, e.row) for e in entries] == [
        (sku, title, number) for (sku, _, title), number in zip(rows, numbers, strict=True)
    ]
    for entry, (_, image, _) in zip(entries, rows, strict=True):
        assert entry.image == (image if image.startswith("https:") else str(base / image))


def _record_starts(text: str) -> list[int]:
    """The line each data record starts on, lines counted as a text reader counts them: a
    record starts where the quotes before it are even (a quoted line break leaves them odd)."""
    starts, quotes = [], 0
    for number, line in enumerate(io.StringIO(text, newline=""), start=1):
        if quotes % 2 == 0 and number > 1:
            starts.append(number)
        quotes += line.count('"')
    return starts
