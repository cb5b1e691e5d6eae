"""``python -m engine`` is the same as the ``img1688`` console script."""

from engine.cli import console

raise SystemExit(console())
