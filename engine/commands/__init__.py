"""One module per ``img1688`` subcommand. Each exposes ``add_parser(subparsers)``, which
registers the subcommand and sets ``func(args) -> int`` (the process exit code)."""
