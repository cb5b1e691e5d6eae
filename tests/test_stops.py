"""Signals: SIGINT exits 130 and SIGTERM 143, calls in flight get a grace period, and the next
invocation finishes the job with every photo exactly once.

The engine runs as a real subprocess (``python -m engine run``) against the sandbox in the test.
Each signal is sent once the checkpoint database shows a search in flight and the sandbox has
received its call: a state, never a guess at how long start-up takes.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from engine.outcome import ExitCode
from engine.ratelimit import Rate
from engine.runner import STOP_GRACE_SECONDS
from engine.sandbox import Faults, Sandbox, SandboxConfig
from engine.state import snapshot
from tests.job_kit import (
    assert_every_photo_once,
    engine_env,
    image_files,
    image_statuses,
    read_table,
    start_engine,
)
from tests.waiting import STATE_TIMEOUT, wait_for

SLOW_ANSWER = STOP_GRACE_SECONDS + 2.0
"""Seconds the sandbox takes to answer in the grace test: longer than the grace, so that a
process that waited for the answers would have stored them (the test asserts it stored none),
and not much longer, since the sandbox finishes its slow answers before it stops."""


def some_photos(query_dir: Path, tmp_path: Path, count: int) -> Path:
    """A folder with the first ``count`` sample photos."""
    folder = tmp_path / "few"
    folder.mkdir()
    for source in sorted(query_dir.glob("q0*.jpg"))[:count]:
        shutil.copy(source, folder / source.name)
    return folder


def assert_feed_has_every_photo_once(out: Path, photos: Path) -> None:
    """The feed in ``out`` (every run's rows) holds each photo once, each offer once per photo,
    and as many ``matches`` rows per photo as its ``offers_kept`` says."""
    images = read_table(out, "images").to_table().to_pylist()
    matches = read_table(out, "matches").to_table().to_pylist()
    assert_every_photo_once(images, matches, photos)


@pytest.mark.parametrize(
    ("signum", "code"),
    [(signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.TERMINATED)],
)
async def test_a_signal_lets_the_calls_in_flight_finish_and_the_next_run_completes(
    signum: signal.Signals, code: ExitCode, query_dir: Path, tmp_path: Path, write_job
) -> None:
    assert (code, int(code)) in {(ExitCode.INTERRUPTED, 130), (ExitCode.TERMINATED, 143)}
    photos = some_photos(query_dir, tmp_path, 8)
    config = SandboxConfig(rate=Rate(5, 1.0))
    out = tmp_path / "out"
    async with Sandbox(config) as sandbox:
        job = write_job(
            inputs={"paths": [str(photos)]},
            output={"dir": str(out)},
            gateway={"protocol": "seed", "endpoint": sandbox.url, "rate": "5/1s"},
            engine={"searches": 2, "flush_seconds": 0.3},
        )
        env = engine_env(config, tmp_path)
        process = await start_engine(job, env)
        # Mid-run: a part is written, and a search is out at the gateway.
        await wait_for(
            lambda: image_statuses(out)["exported"] >= 1 and image_statuses(out)["in_flight"] >= 1,
            "an exported photo and a search in flight",
            process=process,
        )
        process.send_signal(signum)
        _, stderr = await asyncio.wait_for(process.communicate(), STATE_TIMEOUT)

        assert process.returncode == code, stderr.decode()[-2000:]
        assert "interrupted; run the same command again to continue" in stderr.decode()
        assert not (out / "_SUCCESS").exists()
        assert read_table(out, "images").count_rows() > 0  # what was fetched was flushed
        # The calls in flight were let finish and their answers stored: none thrown away.
        state = snapshot(out)
        assert state is not None
        stats = sandbox.stats()
        assert state.calls == stats["total_calls"]
        assert state.stored_answers == stats["total_calls"] - stats["rate_limited"]
        assert image_statuses(out)["in_flight"] == 0

        final = await start_engine(job, env)
        _, stderr = await asyncio.wait_for(final.communicate(), STATE_TIMEOUT)
        assert final.returncode == ExitCode.OK, stderr.decode()[-2000:]
        searches = sandbox.stats()["searches"]
    assert_feed_has_every_photo_once(out, photos)
    assert set(searches.values()) == {1}  # no photo was searched twice


async def test_calls_still_running_after_the_grace_are_cancelled_and_made_again(
    query_dir: Path, tmp_path: Path, write_job
) -> None:
    photos = some_photos(query_dir, tmp_path, 4)
    slow = SandboxConfig(rate=Rate(1000, 1.0), faults=Faults(slow=1.0, slow_seconds=SLOW_ANSWER))
    out = tmp_path / "out"
    async with Sandbox(slow) as sandbox:
        port = sandbox.config.port or int(sandbox.url.rsplit(":", 1)[1])
        job = write_job(
            inputs={"paths": [str(photos)]},
            output={"dir": str(out)},
            gateway={
                "protocol": "seed",
                "endpoint": sandbox.url,
                "rate": "1000/1s",
                "timeout": SLOW_ANSWER + 60,  # the client waits for the answer: only the
            },  # grace period can end these calls
            engine={"searches": 2},
        )
        env = engine_env(slow, tmp_path)
        process = await start_engine(job, env)
        await wait_for(
            lambda: len(sandbox.stats()["arrivals"]) == 2 and image_statuses(out)["in_flight"] == 2,
            "two calls at the gateway",
            process=process,
        )
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), STATE_TIMEOUT)
        assert process.returncode == ExitCode.INTERRUPTED, stderr.decode()[-2000:]
        cancelled = len(sandbox.stats()["arrivals"])
    assert cancelled == 2
    state = snapshot(out)
    assert state is not None
    # Cancelled, not answered: nothing stored, the photos still in flight, the calls counted.
    assert (state.stored_answers, state.calls) == (0, cancelled)
    assert image_statuses(out) == {"in_flight": 2, "pending": 2}

    async with Sandbox(replace(slow, faults=Faults(), port=port)) as back:
        final = await start_engine(job, env)
        _, stderr = await asyncio.wait_for(final.communicate(), STATE_TIMEOUT)
        assert final.returncode == ExitCode.OK, stderr.decode()[-2000:]
        searches = back.stats()["searches"]
    # The cancelled calls were made again, and every photo is in the feed exactly once.
    assert len(searches) == len(image_files(photos)) and set(searches.values()) == {1}
    assert_feed_has_every_photo_once(out, photos)
    finished = snapshot(out)
    assert finished is not None and finished.calls == cancelled + len(image_files(photos))
