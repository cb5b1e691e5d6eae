"""Kill -9 at random moments, run the same command again: exactly-once output, no call lost.

The engine runs as a real subprocess (``python -m engine run``); the sandbox runs in the test
so that it outlives every kill and counts every call the engine ever made. Signals other than
SIGKILL are in ``tests/test_stops.py``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from engine.outcome import ExitCode
from engine.ratelimit import Rate
from engine.sandbox import Sandbox, SandboxConfig
from tests.job_kit import (
    assert_every_photo_once,
    engine_env,
    image_files,
    kill_rounds,
    start_engine,
)

SEARCHES = 3
ROUNDS = 4
MOST_CALLS_A_ROUND = 8
"""Calls a round may let through before its kill: ``ROUNDS`` rounds stay well short of the
sample's two calls per distinct photo, so every round dies mid-run."""


@pytest.mark.parametrize("evidence", [False, True], ids=["plain", "with-evidence"])
async def test_kill_9_rounds_then_resume_give_exactly_once_output(
    evidence: bool, query_dir: Path, tmp_path: Path, write_job
) -> None:
    rng = random.Random(1688)
    config = SandboxConfig(rate=Rate(15, 1.0))
    out = tmp_path / "out"
    async with Sandbox(config) as sandbox:
        job = write_job(
            inputs={"paths": [str(query_dir)]},
            output={"dir": str(out)},
            gateway={
                "protocol": "ocean",
                "endpoint": sandbox.url,
                "rate": "15/1s",
                "backoff_base": 0.01,
                "backoff_max": 0.1,
            },
            engine={"searches": SEARCHES, "flush_seconds": 0.3, "part_images": 4},
            evidence={"enabled": evidence, "cache_dir": str(tmp_path / "images")},
        )
        env = engine_env(config, tmp_path)
        kills = await kill_rounds(
            job, env, sandbox, rng, rounds=ROUNDS, most_calls=MOST_CALLS_A_ROUND
        )
        final = await start_engine(job, env)
        _, stderr = await final.communicate()
        assert final.returncode == ExitCode.OK, stderr.decode()[-2000:]
        stats = sandbox.stats()

    assert kills == ROUNDS  # every round really interrupted the job
    run_id = json.loads((out / "manifest.json").read_text())["run_id"]
    images = [
        r
        for r in ds.dataset(out / "images", partitioning="hive").to_table().to_pylist()
        if r["run_id"] == run_id
    ]
    matches = [
        r
        for r in ds.dataset(out / "matches", partitioning="hive").to_table().to_pylist()
        if r["run_id"] == run_id
    ]
    assert_every_photo_once(images, matches, query_dir)
    if evidence:
        # Every offer was judged, whichever invocation exported it, and one image has one
        # cluster over the run: the ids registered before a kill are the ids used after it.
        assert all(r["verdict"] is not None for r in matches), "an offer without evidence"
        clusters: dict[str, set[str]] = {}
        for r in matches:
            clusters.setdefault(r["offer_image_sha256"], set()).add(r["cluster_id"])
        assert all(len(ids) == 1 for ids in clusters.values())
    # Every photo was searched; beyond one search each, only calls in flight at a kill recur.
    unique = len({p.read_bytes() for p in image_files(query_dir)})
    queries = stats["calls"]["product.search.imageQuery"]
    uploads = stats["calls"]["product.image.upload"]
    assert len(stats["searches"]) == unique
    assert queries - unique <= kills * SEARCHES
    assert uploads - unique <= kills * SEARCHES
