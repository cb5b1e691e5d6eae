"""Offer evidence inside a run: what it adds to a job, and what a rerun downloads.

The sample buyer photos (``sample_images/queries``) are searched against the sandbox on
loopback (``ocean``, 20 offers per answer, no effective rate limit) three times, each a new run
into its own output: without evidence; with evidence and an empty image cache; again with the
warm cache (the answers are reused, so no call either). Figures printed: offer images
requested from the sandbox's CDN by each run (the rerun's target: 0), the cache hit rate of the
rerun, and the wall time each run took, with the evidence's share per kept offer. The engine's
own CPU competes with the sandbox for the cores, as it would not in production: the per-offer
figure is an upper bound. Run: ``python -m bench evidence_run``.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from bench.engine import ROOT, _credentials, _private_token_store
from engine.jobfile import parse_job
from engine.outcome import ExitCode
from engine.ratelimit import Rate
from engine.runner import run_job
from engine.sandbox import Sandbox, SandboxConfig

QUERIES = ROOT / "sample_images" / "queries"


async def _run(box: Sandbox, out: Path, cache: Path | None) -> dict[str, Any]:
    evidence: dict[str, Any] = {"enabled": False}
    if cache is not None:
        evidence = {"enabled": True, "cache_dir": str(cache), "rate": "1000/1s"}
    job = parse_job(
        {
            "inputs": {"paths": [str(QUERIES)]},
            "output": {"dir": str(out)},
            "gateway": {"protocol": "ocean", "endpoint": box.url, "rate": "1000/1s"},
            "engine": {"searches": 4, "flush_seconds": 1},
            "evidence": evidence,
        },
        base=out.parent,
    )
    before = box.stats()["images"]["requests"]
    start = time.perf_counter()
    outcome = await run_job(job, credentials=_credentials(box.config))
    seconds = time.perf_counter() - start
    if outcome.exit_code not in (ExitCode.OK, ExitCode.DONE_WITH_FAILURES):
        raise SystemExit(f"the job stopped: {outcome.message}")
    offers = ds.dataset(out / "matches", format="parquet", partitioning="hive").count_rows()
    return {
        "seconds": seconds,
        "requests": box.stats()["images"]["requests"] - before,
        "offers": offers,
    }


async def _measure(work: Path) -> None:
    async with Sandbox(SandboxConfig(rate=Rate(1000, 1.0))) as box:
        plain = await _run(box, work / "plain", None)
        cold = await _run(box, work / "cold", work / "cache")
        warm = await _run(box, work / "warm", work / "cache")
    offers = cold["offers"]
    print(f"{len(list(QUERIES.iterdir()))} photos, {offers} kept offers per run")
    print(f"  without evidence:           {plain['seconds']:6.1f} s")
    print(
        f"  evidence, empty cache:      {cold['seconds']:6.1f} s, {cold['requests']} offer images"
        f" requested, {(cold['seconds'] - plain['seconds']) / offers * 1000:.0f} ms per offer"
    )
    hit_rate = 1 - warm["requests"] / max(cold["requests"], 1)
    print(
        f"  evidence, rerun (warm):     {warm['seconds']:6.1f} s, {warm['requests']} offer images"
        f" requested (cache hit rate {hit_rate:.0%}; target: the rerun downloads nothing)"
    )


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="img1688-evidence-run-"))
    try:
        with _private_token_store():
            asyncio.run(_measure(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
