"""``python -m engine`` is the same as the ``img1688`` console script."""

from engine.cli import main

raise SystemExit(main())
