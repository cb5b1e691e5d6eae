"""The ``img1688`` command line: a thin root parser over :mod:`engine.commands`.

It starts fast: ``img1688 --help``, ``status`` and ``sign`` must answer at once, so building
the parser imports no machinery (pyarrow, Pillow, aiohttp, numpy, the runner, the sandbox).
Each command module imports only argparse and light modules at its top and imports what its
handler needs inside the handler. The one exception is ``sandbox``, whose options take their
defaults from the sandbox server's own configuration: its module is imported, and its parser
filled in, only when that command is used (:class:`_CommandParser`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from engine import __version__
from engine.commands import export, preprocess, reclean, report, run, sign, status


@dataclass(frozen=True)
class _Deferred:
    """A command whose module is imported only when the command is used."""

    name: str
    module: str
    help: str


COMMANDS: tuple[ModuleType | _Deferred, ...] = (
    run,
    status,
    reclean,
    export,
    report,
    preprocess,
    _Deferred(
        "sandbox",
        "engine.commands.sandbox",
        "serve a local stand-in for the 1688 gateway (no credentials needed)",
    ),
    sign,
)
"""In the order ``img1688 --help`` lists them."""


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser; a deferred one is filled in by its module on first use.

    ``img1688 --help`` lists subcommands from their one-line help alone, so a deferred parser
    is only filled when argparse hands it the subcommand's own arguments (including ``-h``).
    """

    def __init__(
        self, *, fill: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._fill = fill

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._fill is not None:
            fill, self._fill = self._fill, None
            fill(self)
        return super().parse_known_args(args, namespace)


class _Into:
    """Stands in for the subparsers action when a deferred command's ``add_parser`` runs: the
    parser it asks for is the one already registered under its name."""

    # What a command may pass to ``add_parser`` besides its help, set on the parser as is.
    SETTINGS = frozenset({"description", "epilog", "formatter_class", "usage"})

    def __init__(self, parser: argparse.ArgumentParser, name: str) -> None:
        self._parser = parser
        self._name = name

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        kwargs.pop("help", None)  # listed from the _Deferred entry
        unknown = set(kwargs) - self.SETTINGS
        if name != self._name or unknown:
            raise TypeError(f"deferred command {self._name!r} cannot register {name!r} {unknown}")
        for key, value in kwargs.items():
            setattr(self._parser, key, value)
        return self._parser


def _filler(command: _Deferred) -> Callable[[argparse.ArgumentParser], None]:
    def fill(parser: argparse.ArgumentParser) -> None:
        importlib.import_module(command.module).add_parser(_Into(parser, command.name))

    return fill


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="img1688",
        description="Match product photos against the 1688.com wholesale catalogue, in batch.",
    )
    parser.add_argument("--version", action="version", version=f"img1688 {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser
    )
    for command in COMMANDS:
        if isinstance(command, _Deferred):
            subparsers.add_parser(command.name, help=command.help, fill=_filler(command))
        else:
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


def console(argv: Sequence[str] | None = None) -> int:
    """The ``img1688`` program: :func:`main`, then what only the process's end may do.

    Tests call :func:`main` many times in one process; this runs once per process.
    """
    try:
        return main(argv)
    finally:
        from engine.storage import finalize_s3

        finalize_s3()
