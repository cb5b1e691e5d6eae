"""The ``img1688`` command line: a thin root parser over :mod:`engine.commands`."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from engine import __version__
from engine.commands import preprocess, reclean, run, sandbox, sign, status

COMMANDS = (run, status, reclean, preprocess, sandbox, sign)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="img1688",
        description="Match product photos against the 1688.com wholesale catalogue, in batch.",
    )
    parser.add_argument("--version", action="version", version=f"img1688 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args))
