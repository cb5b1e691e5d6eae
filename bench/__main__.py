"""``python -m bench`` (``make bench``): every benchmark, one after the other.

Benchmarks print figures and ratios; they assert nothing, since these machines are shared and
noisy. ``python -m bench NAME`` runs one of them.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    "startup",
    "flush",
    "preprocess",
    "engine",
    "apps",
    "report",
    "evidence",
    "evidence_run",
    "lake",
    "checkpoints",
)


def main(argv: list[str]) -> None:
    names = argv or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; choose from {BENCHMARKS}")
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        importlib.import_module(f"bench.{name}").main()


main(sys.argv[1:])
