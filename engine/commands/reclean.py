"""``img1688 reclean OUT``: rebuild a finished run's feed from the stored answers, no calls."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.clean import WholesaleFilters
from engine.errors import ConfigError, StorageError
from engine.export import Exporter
from engine.feed import Feed, manifest_files
from engine.jobfile import load_job
from engine.state import StateStore

BATCH = 500


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reclean",
        help="rebuild the feed from stored answers with today's cleaning rules (no calls)",
        description="Re-clean the latest finished run in OUT from the gateway answers stored in"
        " its checkpoints, and replace its Parquet parts. Makes no gateway call.",
    )
    parser.add_argument("out", type=Path, help="the job's output directory")
    parser.add_argument(
        "--job",
        type=Path,
        help="take the wholesale filters from this job file instead of the run's own",
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        summary = reclean(args.out, load_job(args.job).filters if args.job else None)
    except ConfigError as exc:
        print(f"img1688: {exc}", file=sys.stderr)
        return 2
    except StorageError as exc:
        print(f"img1688: {exc}", file=sys.stderr)
        return 5
    print(json.dumps(summary, indent=2))
    return 0


def reclean(out: Path, filters: WholesaleFilters | None = None) -> dict[str, object]:
    """Rebuild the latest finished run's parts; returns what was written."""
    if not (out / "state.sqlite").exists():
        raise ConfigError(f"{out} holds no job state (never run there?)")
    with StateStore(out) as state:
        manifest = Feed(out).read_manifest() or {}
        feed = Feed(out, int(manifest.get("zstd_level", 6)))  # type: ignore[call-overload]
        feed.remove_orphans(state.parts())
        run = state.latest_run()
        if run is None or run.completed_at is None:
            raise ConfigError(f"{out} has no finished run to re-clean; finish the run first")
        fingerprint = json.loads(run.fingerprint)
        filters = filters or WholesaleFilters(**fingerprint["filters"])
        old_parts = state.parts(run.run_id)
        records = state.images_in(run.run_id, ("exported",))
        exporter = Exporter(state, feed, run, filters, fingerprint["request"]["protocol"])
        feed.mark_incomplete()
        rows = 0
        for start in range(0, len(records), BATCH):
            # The old parts are unregistered with the first new batch; their files go after
            # the last one, so a crash in between leaves only orphans, which the next start
            # deletes.
            batch = exporter.export(
                records[start : start + BATCH], replacing=old_parts if start == 0 else ()
            )
            rows += batch.match_rows
        feed.delete_parts(old_parts)
        manifest.update(
            {
                "files": manifest_files(state.parts()),
                "recleaned_with_filters": filters.fingerprint(),
            }
        )
        feed.mark_complete(manifest)
    return {"run_id": run.run_id, "images": len(records), "match_rows": rows, "calls": 0}
