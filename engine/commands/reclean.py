"""``img1688 reclean OUT``: rebuild a finished run's feed from the stored answers, no calls.

``OUT`` is the job's local folder (its checkpoints); the feed is where they recorded it
(:func:`~engine.feedread.feed_store`), on disk or on S3.

A sharded job's output directory is re-cleaned whole: every shard's latest finished run, each
from its own checkpoint database.
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.commands import refused
from engine.errors import ConfigError, StorageError
from engine.feed import KINDS, Feed, manifest_files
from engine.feedread import feed_store
from engine.shard import UNSHARDED
from engine.state import PartRecord, Run, StateStore, checkpoint_shards

# The job file, the cleaning rules and the exporter (pyarrow) are imported where they are used:
# other commands build this parser without loading them.
if TYPE_CHECKING:
    from engine.clean import WholesaleFilters
    from engine.evidence.judge import EvidenceJudge

BATCH = 500


@dataclass(frozen=True)
class Recleaned:
    """What re-cleaning one run wrote."""

    run_id: str
    images: int
    match_rows: int

    def to_json(self) -> dict[str, object]:
        return {"run_id": self.run_id, "images": self.images, "match_rows": self.match_rows}


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "reclean",
        help="rebuild the feed from stored answers with today's cleaning rules (no calls)",
        description="Re-clean the latest finished run in OUT from the gateway answers stored in"
        " its checkpoints, and replace its Parquet parts. Makes no gateway call.",
    )
    parser.add_argument(
        "out", type=Path, help="the job's output directory (its output.state_dir for s3://)"
    )
    parser.add_argument(
        "--job",
        type=Path,
        help="take the wholesale filters from this job file instead of the run's own",
    )
    parser.set_defaults(func=handle)


def handle(args: argparse.Namespace) -> int:
    from engine.jobfile import load_job

    try:
        summary = reclean(args.out, load_job(args.job).filters if args.job else None)
    except (ConfigError, StorageError) as exc:
        return refused(exc)
    print(json.dumps(summary, indent=2))
    return 0


def reclean(out: Path, filters: WholesaleFilters | None = None) -> dict[str, object]:
    """Rebuild the parts of the latest finished run of every shard in ``out`` (of the one run
    when unsharded), with ``filters`` or each run's own; returns what was written.

    Raises:
        ConfigError: ``out`` holds no job state, or a shard has no finished run.
        StorageError: a shard is in use by a running process, or a write failed.
    """
    shards = checkpoint_shards(out)
    if not shards:
        raise ConfigError(f"{out} holds no job state (never run there?)")
    store = feed_store(out, shards)
    with ExitStack() as stack:
        # Every shard is locked and checked before any is changed: one still running or
        # unfinished refuses the whole re-clean and leaves the feed as it was.
        stores = [stack.enter_context(StateStore(out, shard)) for shard in shards]
        runs: list[Run] = []
        for state in stores:
            run = state.latest_run()
            if run is None or run.completed_at is None:
                where = f"{out} (shard {state.shard})" if state.shard.sharded else str(out)
                raise ConfigError(f"{where} has no finished run to re-clean; finish the run first")
            if run.format != "parquet":
                raise ConfigError(
                    f"{state.out}: reclean rebuilds the Parquet layout only; this run was"
                    f" published as {run.format} tables (output.format)"
                )
            runs.append(run)
        results = [
            _reclean_run(state, Feed(store, shard=state.shard, lock_dir=out), run, filters, stack)
            for state, run in zip(stores, runs, strict=True)
        ]
    if shards == [UNSHARDED]:
        return results[0].to_json() | {"calls": 0}
    return {
        "shards": {str(shard): r.to_json() for shard, r in zip(shards, results, strict=True)},
        "images": sum(r.images for r in results),
        "match_rows": sum(r.match_rows for r in results),
        "calls": 0,
    }


def _reclean_run(
    state: StateStore, found: Feed, run: Run, filters: WholesaleFilters | None, stack: ExitStack
) -> Recleaned:
    """Rebuild one finished run's parts in its shard's feed (``found``, whose compression
    level the run's manifest gives); the image cache it judges from stays open in ``stack``."""
    from engine.clean import WholesaleFilters
    from engine.export import Exporter

    manifest = found.read_manifest() or {}
    # A JSON value, typed object: int() accepts the number run wrote, and raises otherwise.
    level = int(manifest.get("zstd_level", 6))  # type: ignore[call-overload]
    feed = Feed(found.store, level, state.shard, lock_dir=found.lock_dir)
    feed.remove_orphans(state.parts(), state.known_runs())
    fingerprint = json.loads(run.fingerprint)
    filters = filters or WholesaleFilters(**fingerprint["filters"])
    # The run's changes table compares offers, not cleaning rules: it stays as it is.
    old_parts = [p for p in state.parts(run.run_id) if p.kind in KINDS]
    records = state.images_in(run.run_id, ("exported",))
    judge = _judge(manifest, stack)
    exporter = Exporter(state, feed, run, filters, fingerprint["request"]["protocol"], judge)
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
    state.exported(
        new_parts,
        [(run.run_id, r.path) for r in records],
        replacing=old_parts,
        clusters=exporter.new_clusters(),
    )
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
    return Recleaned(run.run_id, len(records), rows)


def _judge(manifest: dict[str, object], stack: ExitStack) -> EvidenceJudge | None:
    """The evidence judge of the run's own settings (its manifest's ``evidence``), on the
    image cache alone: a re-clean downloads nothing."""
    from engine.evidence.judge import EvidenceJudge
    from engine.imagecache import ImageCache

    evidence = manifest.get("evidence")
    if not isinstance(evidence, dict) or not evidence.get("enabled"):
        return None
    cache = stack.enter_context(ImageCache(Path(str(evidence["cache_dir"]))))
    return EvidenceJudge(cache, int(evidence["rendition"]))
