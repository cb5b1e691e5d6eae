"""``img1688 status OUT``: a job's state, read without running it (safe during a run)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.feed import SUCCESS_FILE
from engine.state import snapshot


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show a job's state without running it")
    parser.add_argument("out", type=Path, help="the job's output directory")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    state = snapshot(args.out)
    if state is None:
        print(f"img1688: {args.out} holds no job state (never run there?)", file=sys.stderr)
        return 2
    success = (args.out / SUCCESS_FILE).exists()
    if args.json:
        print(json.dumps(state.to_json() | {"success_marker": success}, indent=2))
        return 0
    run = state.run
    if run is None:
        print("no run yet")
        return 0
    progress = "complete" if run.completed_at else "unfinished"
    print(f"run {run.run_id} ({progress}), started {run.started_at}")
    images = ", ".join(f"{status} {n}" for status, n in sorted(state.images.items()))
    print(f"images: {images} (of {sum(state.images.values())} known)")
    if state.failures:
        print("failures: " + ", ".join(f"{r} {n}" for r, n in sorted(state.failures.items())))
    print(
        f"calls spent: {state.calls}, photos searched: {state.searched},"
        f" answers reused: {state.reused_answers}"
    )
    print(f"_SUCCESS: {'present' if success else 'absent'}")
    return 0
