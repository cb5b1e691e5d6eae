"""An ``s3://`` feed killed and resumed: every photo exactly once, as on disk.

The engine runs as a real subprocess (``python -m engine run``) writing to moto's S3 server on
loopback through the AWS_* variables; the checkpoints stay in the default local state folder.
First SIGKILL at random moments (after a random number of calls at the sandbox, which runs in
the test and outlives every kill), then deterministic crashes at the named points of the commit
protocol (``tests/crash_kit``): a part uploaded but not registered, parts written before their
registering commit, the manifest uploaded but not ``_SUCCESS``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.feed import MANIFEST_FILE, SUCCESS_FILE
from engine.outcome import ExitCode
from engine.ratelimit import Rate
from engine.sandbox import Sandbox, SandboxConfig
from engine.state import run_index
from engine.storage import default_state_dir, parse_location
from tests.job_kit import (
    CRASH_EXIT,
    assert_every_photo_once,
    engine_env,
    invoke,
    kill_rounds,
    start_engine,
)
from tests.paths import SAMPLES
from tests.s3_kit import S3Bucket

SEARCHES = 3
ROUNDS = 3
MOST_CALLS_A_ROUND = 6
PHOTOS = ["q001.jpg", "q002.jpg", "q003.jpg", "q004.jpg", "q005.jpg", "q006.jpg", "q007.jpg"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Seven sample photos and a copy of one (two photos, one search)."""
    folder = tmp_path / "photos"
    (folder / "dup").mkdir(parents=True)
    for name in PHOTOS:
        shutil.copy2(SAMPLES / "queries" / name, folder / name)
    shutil.copy2(SAMPLES / "queries" / "dup" / "q005-copy.jpg", folder / "dup")
    return folder


def job_file(write_job: Callable[..., Path], photos: Path, feed: str, endpoint: str) -> Path:
    return write_job(
        inputs={"paths": [photos]},
        output={"dir": feed},
        gateway={
            "protocol": "ocean",
            "endpoint": endpoint,
            "rate": "15/1s",
            "backoff_base": 0.01,
            "backoff_max": 0.1,
        },
        engine={"searches": SEARCHES, "part_images": 2, "flush_seconds": 0.3},
    )


def state_dir(feed: str) -> Path:
    where = parse_location(feed, "output.dir")
    assert not isinstance(where, Path)
    return default_state_dir(where, os.environ)


def assert_exactly_once(bucket: S3Bucket, prefix: str, photos: Path) -> None:
    """The latest run's rows: each photo once, each offer once per photo; every Parquet object
    under ``prefix`` registered in the checkpoints and listed by the manifest; ``_SUCCESS``."""
    manifest = json.loads(bucket.get(f"{prefix}/{MANIFEST_FILE}"))
    run_id = manifest["run_id"]

    def rows(table: str) -> list[dict[str, Any]]:
        return [r for r in bucket.feed_rows(prefix, table) if r["run_id"] == run_id]

    assert_every_photo_once(rows("images"), rows("matches"), photos)
    objects = {
        key.removeprefix(f"{prefix}/") for key in bucket.keys(prefix) if key.endswith(".parquet")
    }
    index = run_index(state_dir(f"{bucket.url}/{prefix}"))
    assert index is not None
    registered = {f"{p.kind}/run_date={p.run_date}/{p.name}" for p in index.parts}
    assert objects == registered
    assert {f["path"] for f in manifest["files"]} >= objects
    assert bucket.exists(f"{prefix}/{SUCCESS_FILE}")


async def test_kill_9_rounds_then_resume_give_every_photo_exactly_once_on_s3(
    s3_bucket: S3Bucket, photos: Path, tmp_path: Path, write_job: Callable[..., Path]
) -> None:
    rng = random.Random(1688)
    config = SandboxConfig(rate=Rate(15, 1.0))
    feed = f"{s3_bucket.url}/feeds/killed"
    async with Sandbox(config) as sandbox:
        job = job_file(write_job, photos, feed, sandbox.url)
        env = engine_env(config, tmp_path)
        kills = await kill_rounds(
            job, env, sandbox, rng, rounds=ROUNDS, most_calls=MOST_CALLS_A_ROUND
        )
        final = await start_engine(job, env)
        _, stderr = await final.communicate()
        assert final.returncode == ExitCode.OK, stderr.decode()[-2000:]
        stats = sandbox.stats()

    assert kills == ROUNDS
    assert_exactly_once(s3_bucket, "feeds/killed", photos)
    unique = len({p.read_bytes() for p in photos.rglob("*.jpg")})
    assert len(stats["searches"]) == unique
    assert stats["calls"]["product.search.imageQuery"] - unique <= kills * SEARCHES


CRASHES = [
    # (point:nth, an unregistered part object at the crash, manifest.json at the crash)
    ("uploaded-not-registered:3", True, False),
    ("before-register:2", True, False),
    ("s3-manifest-no-success:1", False, True),
]
S3_POINTS = {point.partition(":")[0] for point, _, _ in CRASHES}
"""The crash kit's points this module has a case for (``test_crash_points`` checks that every
point of the kit has one somewhere)."""


@pytest.mark.parametrize(("point", "unregistered_object", "manifest"), CRASHES)
def test_a_crash_at_each_point_of_the_s3_commit_protocol_resumes_exactly_once(
    point: str,
    unregistered_object: bool,
    manifest: bool,
    s3_bucket: S3Bucket,
    photos: Path,
    write_job: Callable[..., Path],
) -> None:
    prefix = "feeds/crashed"
    job = job_file(write_job, photos, f"{s3_bucket.url}/{prefix}", "sandbox")

    code, stderr = invoke("run", str(job), crash_at=point)

    assert code == CRASH_EXIT and "CRASH AT" in stderr, stderr[-3000:]
    index = run_index(state_dir(f"{s3_bucket.url}/{prefix}"))
    assert index is not None
    registered = {f"{prefix}/{p.kind}/run_date={p.run_date}/{p.name}" for p in index.parts}
    parts = {k for k in s3_bucket.keys(prefix) if k.endswith(".parquet")}
    assert registered <= parts  # the checkpoints never list an object that is not there
    assert bool(parts - registered) == unregistered_object
    assert s3_bucket.exists(f"{prefix}/{MANIFEST_FILE}") == manifest
    assert not s3_bucket.exists(f"{prefix}/{SUCCESS_FILE}")

    code, stderr = invoke("run", str(job))

    assert code == ExitCode.OK, stderr[-3000:]
    assert_exactly_once(s3_bucket, prefix, photos)
