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
from engine.state import PartRecord, StateStore

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
        # All new parts are written first and swapped in by one transaction: a crash before it
        # leaves the old feed registered (the new files are orphans, deleted on the next start),
        # a crash after it leaves the new feed with the old files as orphans.
        new_parts: list[PartRecord] = []
        rows = 0
        for start in range(0, len(records), BATCH):
            parts, batch = exporter.write(records[start : start + BATCH])
            new_parts.extend(parts)
            rows += batch.match_rows
        state.exported(new_parts, [(run.run_id, r.path) for r in records], replacing=old_parts)
        feed.delete_parts(old_parts)
        # Later re-cleans and resumes see the filters the feed now reflects.
        fingerprint["filters"] = filters.fingerprint()
        state.set_fingerprint(run.run_id, json.dumps(fingerprint, sort_keys=True))
        manifest.update(
            {
                "files": manifest_files(state.parts()),
                "rows": {"matches": rows, "images": len(records)},
                "recleaned_with_filters": filters.fingerprint(),
            }
        )
        feed.mark_complete(manifest)
    return {"run_id": run.run_id, "images": len(records), "match_rows": rows, "calls": 0}
