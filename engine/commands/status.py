"""``img1688 status OUT``: a job's state, read without running it (safe during a run).

``OUT`` is the job's local folder, the one holding its checkpoints: the output directory, or
``output.state_dir`` for an ``s3://`` feed. The completion markers are read from wherever the
checkpoints recorded the feed (:func:`~engine.feedread.feed_store`).

A sharded job's output directory holds one checkpoint database per shard: status reports every
one it finds, each shard's ``_SUCCESS-shard-I-of-N`` and the dataset's ``_SUCCESS``.

Each database also holds the call ledger and the quota keys its latest invocation was run with
(status has no job file): status shows the calls of the current gateway day, what the daily cap
leaves of it, what the package has left and when it runs out at the current pace
(:mod:`engine.ledger`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from engine.commands import refused
from engine.errors import ConfigError, StorageError
from engine.feed import SUCCESS_FILE
from engine.feedread import feed_store
from engine.ledger import QuotaReport, QuotaSettings, gateway_day, quota_report
from engine.shard import UNSHARDED, Shard
from engine.state import Snapshot, checkpoint_shards, snapshot


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("status", help="show a job's state without running it")
    parser.add_argument(
        "out", type=Path, help="the job's output directory (its output.state_dir for s3://)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace, clock: Callable[[], float] = time.time) -> int:
    """Print the state of ``args.out``; ``clock`` (epoch seconds) says which gateway day is
    today. Returns 2 when there is no job state there, else 0."""
    now = clock()
    out: Path = args.out
    shards = checkpoint_shards(out)
    state = snapshot(out) if shards == [UNSHARDED] else None
    if not shards or (shards == [UNSHARDED] and state is None):
        print(f"img1688: {out} holds no job state (never run there?)", file=sys.stderr)
        return 2
    try:
        store = feed_store(out, shards)
        success = store.exists(SUCCESS_FILE)
        markers = (
            {shard: store.exists(shard.file_name(SUCCESS_FILE)) for shard in shards}
            if state is None
            else {}  # unsharded: its one marker is the dataset's, read above
        )
    except (ConfigError, StorageError) as exc:
        return refused(exc)
    if state is not None:
        if args.json:
            report = state.to_json() | {"quota": _quota_json(state, now), "feed": store.url}
            print(json.dumps(report | {"success_marker": success}, indent=2))
        else:
            print(f"feed: {store.url}")
            _print_state(state, success, now)
        return 0
    _report_shards(out, markers, as_json=args.json, success=success, now=now, feed=store.url)
    return 0


def _report_shards(
    out: Path,
    markers: dict[Shard, bool],
    *,
    as_json: bool,
    success: bool,
    now: float,
    feed: str,
) -> None:
    """Every shard's state, ledger and marker (``markers``), the shards of that split with no
    state yet, and the dataset's marker."""
    shards = list(markers)
    states = {shard: snapshot(out, shard) for shard in shards}
    expected = {Shard(i, s.count) for s in shards if s.sharded for i in range(s.count)}
    not_started = [str(s) for s in sorted(expected - set(shards))]
    if as_json:
        report = {
            "shards": [
                {"shard": _name(shard)}
                | (state.to_json() | {"quota": _quota_json(state, now)} if state else {})
                | {"success_marker": markers[shard]}
                for shard, state in states.items()
            ],
            "not_started": not_started,
            "success_marker": success,
            "feed": feed,
        }
        print(json.dumps(report, indent=2))
        return
    print(f"feed: {feed}")
    for shard, state in states.items():
        print(f"shard {_name(shard)}:")
        if state is not None:
            _print_state(state, markers[shard], now, indent="  ")
    if not_started:
        print(f"shards not started: {', '.join(not_started)}")
    print(f"_SUCCESS (every shard): {'present' if success else 'absent'}")


def _name(shard: Shard) -> str:
    return str(shard) if shard.sharded else "unsharded"


def _quota(state: Snapshot, now: float) -> QuotaReport:
    return quota_report(state.call_days, state.quota_settings or QuotaSettings(), now)


def _quota_json(state: Snapshot, now: float) -> dict[str, object]:
    """The summary's ``quota`` fields, with the gateway day they are of and the pace."""
    report = _quota(state, now)
    return report.to_json() | {
        "gateway_day": gateway_day(now).isoformat(),
        "pace_per_day": report.pace,
    }


def _print_quota(state: Snapshot, now: float, indent: str) -> None:
    report = _quota(state, now)
    settings = state.quota_settings or QuotaSettings()
    today = f"{report.calls_today:,} calls today (gateway day {gateway_day(now)}, GMT+8)"
    if settings.daily_calls is not None and report.left_today is not None:
        today += f", {report.left_today:,} left of the daily cap of {settings.daily_calls:,}"
    print(f"{indent}quota: {today}")
    if settings.package_calls is not None and report.package_left is not None:
        line = f"package: {report.package_left:,} of {settings.package_calls:,} calls left"
        if report.run_out is not None and report.pace is not None:
            line += f", runs out on {report.run_out} at {report.pace:,.0f} calls a day"
        print(f"{indent}{line}")
    if report.message:
        print(f"{indent}warning: {report.message}")


def _print_state(state: Snapshot, success: bool, now: float, indent: str = "") -> None:
    run = state.run
    if run is None:
        print(f"{indent}no run yet")
        _print_quota(state, now, indent)
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
    _print_quota(state, now, indent)
    print(f"{indent}_SUCCESS: {'present' if success else 'absent'}")
