"""``img1688 export OUT --format xlsx|csv``: one run of the feed as a buyer's spreadsheet.

Reads the Parquet feed only (no gateway call, no lock: safe while a job runs); the table and
its rules are :mod:`engine.spreadsheet`'s, documented in ``docs/export.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.commands import refused
from engine.errors import ConfigError, StorageError

# The feed reader and the writers (pyarrow, XlsxWriter) are imported by the handler: other
# commands build this parser without loading them.
if TYPE_CHECKING:
    from engine.feedread import FeedRun
    from engine.spreadsheet import Format, Written

FORMATS = ("xlsx", "csv")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write one run's matches as a spreadsheet for buyers (xlsx or CSV)",
        description="Write one run of the feed in OUT as a flat table, one row per photo and"
        " offer (a photo without offers, or that failed, gets one row saying why), sorted by"
        " SKU, photo and rank. Reads the Parquet feed only; makes no gateway call.",
    )
    parser.add_argument("out", type=Path, help="the job's output directory")
    parser.add_argument("--format", required=True, choices=FORMATS, help="the file's format")
    parser.add_argument(
        "--run",
        dest="run_id",
        metavar="RUN_ID",
        help="the run to export (default: the latest completed run, else the latest run)",
    )
    parser.add_argument(
        "--out",
        dest="file",
        type=Path,
        metavar="FILE",
        help="where to write (default: OUT/export-<run_id>.<format>)",
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        run, written = export(args.out, args.format, run_id=args.run_id, file=args.file)
    except (ConfigError, StorageError) as exc:
        return refused(exc)
    if not run.complete:
        print(
            f"img1688: run {run.run_id} is unfinished: the export holds the photos it has"
            " published so far",
            file=sys.stderr,
        )
    print(
        json.dumps({"run_id": run.run_id, "complete": run.complete} | written.to_json(), indent=2)
    )
    return 0


def export(
    out: Path, format: Format, *, run_id: str | None = None, file: Path | None = None
) -> tuple[FeedRun, Written]:
    """Write run ``run_id`` of ``out`` (default: see :func:`~engine.feedread.find_run`) as
    ``format`` to ``file`` (default ``OUT/export-<run_id>.<format>``); returns the run and
    what was written.

    Raises:
        ConfigError: no job state, no such run, or the run has no rows in the feed.
        StorageError: the feed cannot be read or the file cannot be written.
    """
    from engine.feedread import find_run, read_rows
    from engine.spreadsheet import (
        IMAGES_COLUMNS,
        MATCHES_COLUMNS,
        export_rows,
        flat_table,
        write_csv,
        write_xlsx,
    )

    run = find_run(out, run_id)
    images = read_rows(run, "images", IMAGES_COLUMNS)
    matches = read_rows(run, "matches", MATCHES_COLUMNS)
    if images.num_rows == 0 and matches.num_rows == 0:
        raise ConfigError(
            f"run {run.run_id} has no rows in the feed of {out}: it has published nothing yet,"
            " or a later run of the same day replaced its parts"
        )
    rows = export_rows(flat_table(matches, images))
    target = file if file is not None else out / f"export-{run.run_id}.{format}"
    writer = write_xlsx if format == "xlsx" else write_csv
    return run, writer(rows, target)
