"""``img1688 report OUT``: one run as a self-contained HTML page, each photo beside its offers.

Reads the checkpoints and the Parquet feed only (no gateway call, no lock: safe while a job
runs); what the page shows is :mod:`engine.report`'s, how it is drawn :mod:`engine.report_html`'s,
documented in ``docs/report.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.commands import refused
from engine.errors import ConfigError, StorageError

# The report's machinery (pyarrow, the preprocessing pool, Pillow) is imported by the handler:
# other commands build this parser without loading it.


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write one run as an HTML page: each photo beside its best offers",
        description="Write one run of the job in OUT as a single HTML file that needs no network"
        " to view: a summary (photos searched, reused and failed, calls against the rate over"
        " time) and, per photo, its thumbnail beside its best offers, with filters. Reads the"
        " checkpoints and the Parquet feed only; makes no gateway call.",
    )
    parser.add_argument("out", type=Path, help="the job's output directory")
    parser.add_argument(
        "--run",
        dest="run_id",
        metavar="RUN_ID",
        help="the run to show (default: the latest completed run, else the latest run)",
    )
    parser.add_argument(
        "--out",
        dest="file",
        type=Path,
        metavar="FILE.html",
        help="where to write (default: OUT/report.html)",
    )
    parser.add_argument(
        "--top", type=_at_least_one, default=5, metavar="N", help="offers shown per photo (5)"
    )
    parser.add_argument(
        "--no-offer-images",
        dest="offer_images",
        action="store_false",
        help="leave out the offers' images (about 1 KB each: a smaller file for thousands of"
        " photos)",
    )
    parser.set_defaults(func=handle)


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def handle(args: argparse.Namespace) -> int:
    from engine.report import write_report

    try:
        written = write_report(
            args.out,
            run_id=args.run_id,
            dest=args.file,
            top=args.top,
            offer_images=args.offer_images,
        )
    except (ConfigError, StorageError) as exc:
        return refused(exc)
    size = written.bytes / 1024
    print(
        f"img1688: report of run {written.run_id}, {written.photos:,} photos,"
        f" {size:,.0f} KB; open it in a browser:"
    )
    print(written.path.resolve())
    return 0
