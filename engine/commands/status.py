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
    state["success_marker"] = (args.out / SUCCESS_FILE).exists()
    if args.json:
        print(json.dumps(state, indent=2))
        return 0
    if state["run"] is None:
        print("no run yet")
        return 0
    images = state["images"]
    assert isinstance(images, dict)
    total = sum(images.values())
    print(f"run {state['run']} ({state['state']}), started {state['started_at']}")
    print(
        "images: "
        + ", ".join(f"{status} {n}" for status, n in sorted(images.items()))
        + f" (of {total} known)"
    )
    failures = state["failures"]
    if failures:
        print("failures: " + ", ".join(f"{r} {n}" for r, n in sorted(failures.items())))  # type: ignore[union-attr]
    print(f"calls spent: {state['calls']}, answers reused: {state['reused_answers']}")
    print(f"_SUCCESS: {'present' if state['success_marker'] else 'absent'}")
    return 0
