"""What a run reports: the summary printed after each invocation, and ``manifest.json``.

Both are read from the checkpoint database (the durable truth), plus the live counters of the
invocation. The manifest is part of the feed's contract (docs/schema.md): it lists every file
of the dataset with its rows, so a reader can check it saw everything.
"""

from __future__ import annotations

import time
from pathlib import Path

from engine import __version__
from engine.accounting import CallAccount
from engine.discover import DiscoveryReport
from engine.feed import manifest_files
from engine.jobfile import Job
from engine.progress import Counters
from engine.schema import SCHEMA_VERSION
from engine.state import Run, StateStore, utc_now

UNREADABLE_EXAMPLES = 20
"""Unreadable entries listed by name: the first few are enough to act on, and a broken share
could list thousands."""


def run_summary(
    state: StateStore,
    run: Run,
    *,
    output: Path | str,
    calls: CallAccount,
    counters: Counters,
    discovery: DiscoveryReport,
) -> dict[str, object]:
    """The run so far, as ``img1688 run`` prints it."""
    counts = state.counts(run.run_id)
    totals = state.run_totals(run.run_id)
    return {
        "run_id": run.run_id,
        "run_date": run.run_date,
        "output": str(output),
        "images": totals["images"],
        "status": counts,
        "failures": state.failure_counts(run.run_id),
        "calls_this_run": calls.this_run,
        "calls_this_invocation": calls.this_invocation,
        "reused_answers": totals["reused"],
        "searched": totals["searched"],
        "elapsed_seconds": round(time.monotonic() - counters.started, 2),
        "rate": calls.rate,
        # The alerts fire quota_low on quota.low: keep the key and its shape (engine.ledger).
        "quota": calls.quota().to_json(),
        "unreadable": len(discovery.unreadable),
        "unreadable_examples": discovery.unreadable[:UNREADABLE_EXAMPLES],
        "missing_inputs": discovery.missing_inputs,
        "symlink_loops": discovery.symlink_loops,
    }


def run_manifest(
    state: StateStore, run: Run, job: Job, summary: dict[str, object]
) -> dict[str, object]:
    """``manifest.json`` for a run that just completed: every file of the dataset."""
    parts = state.parts()
    totals = state.run_totals(run.run_id)
    return {
        "schema_version": SCHEMA_VERSION,
        "engine_version": __version__,
        "job": job.name,
        "run_id": run.run_id,
        "run_date": run.run_date,
        "started_at": run.started_at,
        "completed_at": utc_now().isoformat(),
        "protocol": job.gateway.protocol,
        "zstd_level": job.zstd_level,
        # What `img1688 reclean` needs to judge the offers again from the image cache.
        "evidence": {
            "enabled": job.evidence.enabled,
            "rendition": job.evidence.rendition,
            "cache_dir": str(job.evidence.cache_dir),
        },
        "files": manifest_files(parts),
        "rows": {
            kind: sum(p.rows for p in parts if p.kind == kind and p.run_id == run.run_id)
            for kind in ("matches", "images")
        },
        "images": {
            "total": totals["images"],
            "searched": totals["searched"],
            "reused": totals["reused"],
            "failed": sum(state.failure_counts(run.run_id).values()),
        },
        "stats": summary,
    }
