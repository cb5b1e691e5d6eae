"""Kill -9 at random moments, run the same command again: exactly-once output, no call lost.

The engine runs as a real subprocess (``python -m engine run``); the sandbox runs in the test
so that it outlives every kill and counts every call the engine ever made.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
from collections import Counter
from pathlib import Path

import pyarrow.dataset as ds

from engine.outcome import ExitCode
from engine.ratelimit import Rate
from engine.sandbox import Sandbox, SandboxConfig
from engine.state import snapshot
from tests.paths import REPO

SEARCHES = 3


def engine_env(config: SandboxConfig, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        IMG1688_APP_KEY=config.app_key,
        IMG1688_APP_SECRET=config.app_secret,
        IMG1688_ACCESS_TOKEN=config.access_token,
        IMG1688_REFRESH_TOKEN=config.refresh_token or "",
        IMG1688_TOKEN_FILE=str(tmp_path / "tokens.json"),
        PYTHONPATH=str(REPO),
    )
    return env


async def start_engine(job: Path, env: dict[str, str], *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine",
        "run",
        str(job),
        *extra,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


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
        for _ in range(4):
            process = await start_engine(job, env)
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            await process.wait()
        final = await start_engine(job, env)
        _, stderr = await final.communicate()
        assert final.returncode == ExitCode.OK, stderr.decode()[-2000:]
        stats = sandbox.stats()

    assert kills >= 2  # the rounds really interrupted the job
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


async def test_sigterm_stops_promptly_and_resumes(
    query_dir: Path, tmp_path: Path, write_job
) -> None:
    config = SandboxConfig(rate=Rate(4, 1.0))
    out = tmp_path / "out"
    async with Sandbox(config) as sandbox:
        job = write_job(
            inputs={"paths": [str(query_dir)]},
            output={"dir": str(out)},
            gateway={"protocol": "seed", "endpoint": sandbox.url, "rate": "4/1s"},
            engine={"searches": 2, "flush_seconds": 0.3},
        )
        env = engine_env(config, tmp_path)
        process = await start_engine(job, env)
        await asyncio.sleep(3.0)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        assert process.returncode == ExitCode.TERMINATED, stderr.decode()[-2000:]
        assert not (out / "_SUCCESS").exists()
        done_before = ds.dataset(out / "images", partitioning="hive").count_rows()
        assert done_before > 0  # what was fetched before the signal was flushed
        # Calls in flight at the signal were let finish and stored: none was thrown away.
        state = snapshot(out)
        assert state is not None
        stats = sandbox.stats()
        assert state.calls == stats["total_calls"]
        assert state.stored_answers == stats["total_calls"] - stats["rate_limited"]

        final = await start_engine(job, env)
        _, stderr = await final.communicate()
        assert final.returncode == ExitCode.OK, stderr.decode()[-2000:]
    photos = [p for p in query_dir.rglob("*") if p.is_file()]
    assert ds.dataset(out / "images", partitioning="hive").count_rows() == len(photos)
