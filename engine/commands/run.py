"""``img1688 run JOB.toml``: run or resume a batch job."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ConfigError
from engine.outcome import ExitCode, RunOutcome
from engine.shard import Shard

# asyncio, the job file, the runner and pyarrow are imported where they are used:
# `img1688 --help` and the other commands build this parser without loading them.
if TYPE_CHECKING:
    from engine.feedread import FeedRun
    from engine.jobfile import Job


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run or resume a job",
        description="Run a job file. Run the same command again after any stop to continue.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("job", type=Path, help="the job file (TOML)")
    parser.add_argument(
        "--out",
        metavar="DIR|s3://BUCKET/PREFIX",
        help="where the feed goes (overrides output.dir; docs/storage.md)",
    )
    parser.add_argument("--limit", type=_positive_int, help="search at most N new images")
    parser.add_argument("--max-calls", type=_positive_int, help="spend at most N gateway calls")
    parser.add_argument("--rate", help="call limit, e.g. 10/60s (overrides gateway.rate)")
    parser.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="take only shard I of N of the photos (0 <= I < N); N processes, one per shard,"
        " share one output directory (docs/shards.md)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="forget the unfinished run and its files in the output directory and start over"
        " (stored gateway answers are kept and reused)",
    )
    parser.set_defaults(func=handle)


_EXIT_CODES = """exit codes:
  0    every image done, none failed
  1    every image done, some failed (see OUT/images)
  2    configuration error (job file, flags, credentials)
  3    the gateway refused the job or kept failing: fix what the message says, run again
  4    stopped early (--max-calls, --limit or the gateway's daily cap): run again to
       continue (after the daily cap: from the next gateway day, midnight GMT+8)
  5    output directory locked, unwritable or full
  130  interrupted (SIGINT)    143  terminated (SIGTERM)"""


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def handle(args: argparse.Namespace) -> int:
    import asyncio

    from engine.jobfile import load_job
    from engine.ratelimit import Rate

    try:
        job = load_job(args.job)
        rate = Rate.parse(args.rate) if args.rate else None
        job = job.with_overrides(
            out=args.out,
            limit=args.limit,
            max_calls=args.max_calls,
            rate=rate,
            shard=args.shard,
        )
    except (ConfigError, ValueError) as exc:
        print(f"img1688: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    outcome = asyncio.run(_run(job, fresh=args.fresh))
    _report(outcome, job)
    if job.notify.enabled:
        # Last: the notice points at what the invocation wrote.
        asyncio.run(_notify(job, outcome))
    return int(outcome.exit_code)


async def _run(job: Job, *, fresh: bool) -> RunOutcome:
    import asyncio

    from engine.runner import run_job

    stop = asyncio.Event()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        stop.set()

    with _signals_call(on_signal):
        return await run_job(
            job, fresh=fresh, stop=stop, stop_signal=lambda: received[0] if received else None
        )


async def _notify(job: Job, outcome: RunOutcome) -> None:
    """Deliver the job's notice; a signal abandons it (the run's exit code stands)."""
    import asyncio

    from engine.notify import notify

    sending = asyncio.ensure_future(notify(job, outcome))
    with _signals_call(lambda _signum: sending.cancel()):
        try:
            await sending
        except asyncio.CancelledError:
            print("img1688: notice abandoned on a signal", file=sys.stderr)


@contextmanager
def _signals_call(handler: Callable[[int], object]) -> Iterator[None]:
    """Within the running event loop, SIGINT and SIGTERM call ``handler(signum)`` instead of
    stopping the process."""
    import asyncio

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, handler, signum)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _report(outcome: RunOutcome, job: Job) -> None:
    from engine.feedread import find_run

    if outcome.summary:
        print(json.dumps(outcome.summary, indent=2, default=str))
    finished = outcome.exit_code in (ExitCode.OK, ExitCode.DONE_WITH_FAILURES)
    print(f"img1688: {outcome.message}", file=sys.stdout if finished else sys.stderr)
    if not finished or outcome.run_id is None:
        return
    print("\nBest match per photo (first rows):")
    run = find_run(job.out, outcome.run_id)
    out = run.store.url
    print(_preview(run))
    print(
        f"\nParquet feed: {out}/matches (offers) and {out}/images (one row per photo)\n"
        "Read it with DuckDB, Polars or pandas (docs/schema.md), e.g. in Python:\n"
        '  import duckdb; duckdb.sql("SELECT query_path, rank, item_id, title, price_min,'
        f" min_order, city FROM read_parquet('{out}/matches/**/*.parquet',"
        ' hive_partitioning = true) ORDER BY query_path, rank").show()'
    )


def _money(value: object) -> str:
    return "?" if value is None else f"{value:.2f}"


def _preview(run: FeedRun, rows: int = 12) -> str:
    """The best offer of the first photos of the run, read back from the feed itself (its
    registered parts, or its Delta table)."""
    import pyarrow.compute as pc

    from engine.feedread import read_rows

    columns = ["query_path", "title", "price_min", "min_order", "unit", "city", "offer_url"]
    matches = read_rows(run, "matches", [*columns, "rank"])
    table = matches.filter(pc.field("rank") == 1).sort_by("query_path")
    lines = [
        f"  {Path(r['query_path']).name:<22} {_money(r['price_min']):>8} CNY"
        f"  MOQ {r['min_order'] or '?'}{r['unit'] or ''}  {r['city'] or '?'}  {r['title']}"
        f"  {r['offer_url']}"
        for r in table.slice(0, rows).to_pylist()
    ]
    if table.num_rows > rows:
        lines.append(f"  ... and {table.num_rows - rows} more photos")
    return "\n".join(lines) if lines else "  (no offers kept by the filters)"
