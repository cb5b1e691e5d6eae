"""Kill -9 at random moments, run the same command again: exactly-once output, no call lost.

The engine runs as a real subprocess (``python -m engine run``); the sandbox runs in the test
so that it outlives every kill and counts every call the engine ever made. Signals other than
SIGKILL are in ``tests/test_stops.py``.
"""

from __future__ import annotations

import json
import random
import signal
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds

from engine.outcome import ExitCode
from engine.ratelimit import Rate
from engine.sandbox import Sandbox, SandboxConfig
from tests.job_kit import engine_env, start_engine
from tests.waiting import wait_for

SEARCHES = 3
ROUNDS = 4
MOST_CALLS_A_ROUND = 8
"""Calls a round may let through before its kill: ``ROUNDS`` rounds stay well short of the
sample's two calls per distinct photo, so every round dies mid-run."""


async def test_kill_9_rounds_then_resume_give_exactly_once_output(
    query_dir: Path, tmp_path: Path, write_job
) -> None:
    rng = random.Random(1688)
    config = SandboxConfig(rate=Rate(15, 1.0))
    out = tmp_path / "out"
    kills = 0
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
        )
        env = engine_env(config, tmp_path)
        for _ in range(ROUNDS):
            process = await start_engine(job, env)
            # Kill once the gateway has seen a random number of this round's calls: mid-run
            # whatever the start-up takes, at a different point of the pipeline each round.
            target = sandbox.stats()["total_calls"] + rng.randint(1, MOST_CALLS_A_ROUND)
            await wait_for(
                lambda: sandbox.stats()["total_calls"] >= target,  # noqa: B023
                f"call {target} at the gateway",
                process=process,
            )
            process.send_signal(signal.SIGKILL)
            kills += 1
            await process.wait()
        final = await start_engine(job, env)
        _, stderr = await final.communicate()
        assert final.returncode == ExitCode.OK, stderr.decode()[-2000:]
        stats = sandbox.stats()

    assert kills == ROUNDS  # every round really interrupted the job
    photos = sorted(p for p in query_dir.rglob("*") if p.is_file())
    run_id = json.loads((out / "manifest.json").read_text())["run_id"]
    images = [
        r
        for r in ds.dataset(out / "images", partitioning="hive").to_table().to_pylist()
        if r["run_id"] == run_id
    ]
    assert Counter(r["query_path"] for r in images) == Counter(str(p) for p in photos)
    matches = [
        r
        for r in ds.dataset(out / "matches", partitioning="hive").to_table().to_pylist()
        if r["run_id"] == run_id
    ]
    per_image = Counter(r["query_path"] for r in matches)
    assert all(per_image[r["query_path"]] == r["offers_kept"] for r in images)
    assert len({(r["query_path"], r["item_id"]) for r in matches}) == len(matches)
    # Every photo was searched; beyond one search each, only calls in flight at a kill recur.
    unique = len({p.read_bytes() for p in photos})
    queries = stats["calls"]["product.search.imageQuery"]
    uploads = stats["calls"]["product.image.upload"]
    assert len(stats["searches"]) == unique
    assert queries - unique <= kills * SEARCHES
    assert uploads - unique <= kills * SEARCHES
