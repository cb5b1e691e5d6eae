"""One module per ``img1688`` subcommand. Each exposes ``add_parser(subparsers)``, which
registers the subcommand and sets ``func(args) -> int`` (the process exit code)."""

from __future__ import annotations

import sys

from engine.errors import ConfigError, StorageError


def refused(error: ConfigError | StorageError) -> int:
    """Print ``error`` for a person and return its exit code: 2 for a configuration error
    (the message names the key or flag), 5 for an output that cannot be used."""
    print(f"img1688: {error}", file=sys.stderr)
    return 2 if isinstance(error, ConfigError) else 5
