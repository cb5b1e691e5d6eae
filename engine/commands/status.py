"""``img1688 status OUT``: a job's state, read without running it (safe during a run).

A sharded job's output directory holds one checkpoint database per shard: status reports every
one it finds, each shard's ``_SUCCESS-shard-I-of-N`` and the dataset's ``_SUCCESS``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.feed import SUCCESS_FILE
from engine.shard import UNSHARDED, Shard
from engine.state import Snapshot, checkpoint_shards, snapshot


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("status", help="show a job's state without running it")
    parser.add_argument("out", type=Path, help="the job's output directory")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    out: Path = args.out
    shards = checkpoint_shards(out)
    state = snapshot(out) if shards == [UNSHARDED] else None
    if not shards or (shards == [UNSHARDED] and state is None):
        print(f"img1688: {out} holds no job state (never run there?)", file=sys.stderr)
        return 2
    success = (out / SUCCESS_FILE).exists()
    if state is not None:
        if args.json:
            print(json.dumps(state.to_json() | {"success_marker": success}, indent=2))
        else:
            _print_state(state, success)
        return 0
    _report_shards(out, shards, as_json=args.json, success=success)
    return 0


def _report_shards(out: Path, shards: list[Shard], *, as_json: bool, success: bool) -> None:
    """Every shard's state and marker, the shards of that split with no state yet, and the
    dataset's marker."""
    states = {shard: snapshot(out, shard) for shard in shards}
    expected = {Shard(i, s.count) for s in shards if s.sharded for i in range(s.count)}
    not_started = [str(s) for s in sorted(expected - set(shards))]
    if as_json:
        report = {
            "shards": [
                {"shard": _name(shard)}
                | (state.to_json() if state else {})
                | {"success_marker": (out / shard.file_name(SUCCESS_FILE)).exists()}
                for shard, state in states.items()
            ],
            "not_started": not_started,
            "success_marker": success,
        }
        print(json.dumps(report, indent=2))
        return
    for shard, state in states.items():
        print(f"shard {_name(shard)}:")
        if state is not None:
            _print_state(state, (out / shard.file_name(SUCCESS_FILE)).exists(), indent="  ")
    if not_started:
        print(f"shards not started: {', '.join(not_started)}")
    print(f"_SUCCESS (every shard): {'present' if success else 'absent'}")


def _name(shard: Shard) -> str:
    return str(shard) if shard.sharded else "unsharded"


def _print_state(state: Snapshot, success: bool, indent: str = "") -> None:
    run = state.run
    if run is None:
        print(f"{indent}no run yet")
        return
    progress = "complete" if run.completed_at else "unfinished"
    print(f"{indent}run {run.run_id} ({progress}), started {run.started_at}")
    images = ", ".join(f"{status} {n}" for status, n in sorted(state.images.items()))
    print(f"{indent}images: {images} (of {sum(state.images.values())} known)")
    if state.failures:
        failures = ", ".join(f"{r} {n}" for r, n in sorted(state.failures.items()))
        print(f"{indent}failures: {failures}")
    print(
        f"{indent}calls spent: {state.calls}, photos searched: {state.searched},"
        f" answers reused: {state.reused_answers}"
    )
    print(f"{indent}_SUCCESS: {'present' if success else 'absent'}")
