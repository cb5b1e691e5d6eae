"""engine.pool: real worker processes, real kills, real timeouts."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.pool import PreprocessPool
from engine.preprocess import (
    PreparedImage,
    PreprocessFailure,
    PreprocessOptions,
    prepare_image,
)
from tests.waiting import wait_for

# Worker-side functions: module level so that they pickle by reference. They tell the test
# where they are through files beside the image (the tests give them private copies), so that
# nothing depends on how long a worker takes to start.

WORKER_PATIENCE = 60.0
"""Seconds a worker-side function waits for a state before it gives up: only a hang gets there."""


NEIGHBOUR_STARTED = "neighbour.started"


def started(path: Path) -> Path:
    """The file that says a worker has begun on ``path``."""
    return path.with_name(path.name + ".started")


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WORKER_PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still no {what} after {WORKER_PATIENCE:g} s")
        time.sleep(0.01)


def die(path: Path, options: PreprocessOptions) -> PreparedImage:
    """Stand-in for an image that makes its worker die (a decoder segfault, the OOM killer)."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def die_beside_a_neighbour(path: Path, options: PreprocessOptions) -> PreparedImage:
    """Like :func:`die`, once :func:`prepare_until_the_neighbour_died` has begun beside it; it
    leaves its process id for that neighbour."""
    wait_until(path.with_name(NEIGHBOUR_STARTED).exists, "neighbour at work")
    killer = path.with_name("killer.pid")
    killer.with_suffix(".tmp").write_text(str(os.getpid()))
    killer.with_suffix(".tmp").replace(killer)
    return die(path, options)


def prepare_until_the_neighbour_died(
    path: Path, options: PreprocessOptions
) -> PreparedImage | PreprocessFailure:
    """An innocent image still being prepared when its neighbour dies: it says it has begun,
    then finishes only once the pool has reaped the dead worker (seen the crash)."""
    path.with_name(NEIGHBOUR_STARTED).touch()
    killer = path.with_name("killer.pid")
    wait_until(
        lambda: killer.exists() and not Path(f"/proc/{killer.read_text()}").exists(),
        "reaped neighbour",
    )
    return prepare_image(path, options)


def slow_prepare(path: Path, options: PreprocessOptions) -> PreparedImage | PreprocessFailure:
    """An innocent image, half a second of work, that says when it has begun."""
    started(path).touch()
    time.sleep(0.5)
    return prepare_image(path, options)


def stall(path: Path, options: PreprocessOptions) -> PreparedImage:
    """An image nobody will wait for; it says when it has begun."""
    started(path).touch()
    time.sleep(60)
    raise AssertionError("should have been stopped")


def buggy(path: Path, options: PreprocessOptions) -> PreparedImage:
    raise ZeroDivisionError("a bug, not bad input")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(6):
        path = folder / f"img{index}.png"
        Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("huge") / "huge.bmp"  # 72 MB, quick to write, slow to prepare
    coarse = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    coarse.resize((6000, 4000), Image.Resampling.BICUBIC).save(path)
    return path


def private_copy(image: Path, folder: Path) -> Path:
    """A copy of ``image`` in the test's own ``folder``, so that its state files are the test's."""
    copy = folder / image.name
    shutil.copy(image, copy)
    return copy


def worker_pids(pool: PreprocessPool) -> list[int]:
    executor = pool._main.executor  # type: ignore[union-attr]
    return list(executor._processes)  # type: ignore[attr-defined]


def is_gone(pid: int) -> bool:
    """The process no longer exists or is only a zombie about to be reaped."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return status.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def wait_until_gone(pids: list[int]) -> bool:
    for _ in range(200):
        if all(is_gone(pid) for pid in pids):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_many_concurrent_calls_all_succeed(images: list[Path]) -> None:
    async with PreprocessPool(workers=2) as pool:
        assert pool.workers == 2
        results = await asyncio.gather(*(pool.prepare(p) for p in images * 2))
    assert all(isinstance(r, PreparedImage) for r in results)
    assert [r.sha256 for r in results[:6]] == [r.sha256 for r in results[6:]]
    assert len({r.sha256 for r in results}) == 6


async def test_failures_come_back_as_records(images: list[Path], tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    async with PreprocessPool(workers=2) as pool:
        bad, good = await asyncio.gather(pool.prepare(text), pool.prepare(images[0]))
    assert isinstance(bad, PreprocessFailure) and bad.reason == "not_an_image"
    assert isinstance(good, PreparedImage)


async def test_the_pool_options_reach_the_workers(images: list[Path]) -> None:
    async with PreprocessPool(workers=1, options=PreprocessOptions(max_side=60)) as pool:
        result = await pool.prepare(images[0])
    assert isinstance(result, PreparedImage)
    assert (result.width, result.height) == (60, 45)


async def test_a_worker_killed_mid_image_fails_only_that_image(
    images: list[Path], tmp_path: Path
) -> None:
    options = PreprocessOptions()
    doomed, innocent = (private_copy(image, tmp_path) for image in images[:2])
    # The killer waits for the innocent image's start, and the innocent one for the killer's
    # end: both are in flight when the pool sees the crash.
    async with PreprocessPool(workers=2, options=options) as pool:
        killer = asyncio.create_task(pool._run(die_beside_a_neighbour, doomed, options))
        bystander = asyncio.create_task(
            pool._run(prepare_until_the_neighbour_died, innocent, options)
        )
        others = [asyncio.create_task(pool.prepare(p)) for p in images[2:]]
        crashed, survived, *rest = await asyncio.gather(killer, bystander, *others)
        after = await pool.prepare(images[0])
    assert isinstance(crashed, PreprocessFailure)
    assert crashed.reason == "worker_crashed"
    assert isinstance(survived, PreparedImage)
    assert all(isinstance(r, PreparedImage) for r in rest)
    assert isinstance(after, PreparedImage)


async def test_a_lone_crash_is_blamed_at_once_and_the_pool_recovers(images: list[Path]) -> None:
    options = PreprocessOptions()
    async with PreprocessPool(workers=2, options=options) as pool:
        crashed = await pool._run(die, images[0], options)
        after = await asyncio.gather(*(pool.prepare(p) for p in images))
    assert isinstance(crashed, PreprocessFailure) and crashed.reason == "worker_crashed"
    assert "died while" in crashed.message
    assert all(isinstance(r, PreparedImage) for r in after)


async def test_an_exception_in_the_worker_fails_only_that_image(images: list[Path]) -> None:
    options = PreprocessOptions()
    async with PreprocessPool(workers=1, options=options) as pool:
        failure = await pool._run(buggy, images[0], options)
        after = await pool.prepare(images[0])
    assert isinstance(failure, PreprocessFailure) and failure.reason == "worker_crashed"
    assert "ZeroDivisionError" in failure.message
    assert isinstance(after, PreparedImage)


async def test_timeout_stops_the_stuck_worker_and_the_pool_goes_on(
    images: list[Path], huge: Path, tmp_path: Path
) -> None:
    options = PreprocessOptions()
    async with PreprocessPool(workers=2, options=options) as pool:
        await pool.prepare(images[0])  # workers started
        stuck_pids = worker_pids(pool)
        innocent = private_copy(images[1], tmp_path)
        bystander = asyncio.create_task(pool._run(slow_prepare, innocent, options))
        await wait_for(started(innocent).exists, "the bystander at work")
        timed_out = await pool._run(prepare_image, huge, options, time_limit=0.01)
        survived = await bystander
        after = await asyncio.gather(*(pool.prepare(p) for p in images))
        assert await wait_until_gone(stuck_pids)
        assert not set(stuck_pids) & set(worker_pids(pool))
    assert isinstance(timed_out, PreprocessFailure)
    assert timed_out.reason == "timeout"
    assert timed_out.message == "not done after 0.01 s; its worker process was stopped"
    assert isinstance(survived, PreparedImage)  # killed with the pool, run again: not its fault
    assert all(isinstance(r, PreparedImage) for r in after)


async def test_leaving_the_context_reaps_every_worker(images: list[Path]) -> None:
    async with PreprocessPool(workers=2) as pool:
        await asyncio.gather(*(pool.prepare(p) for p in images))
        pids = worker_pids(pool)
    assert pids
    assert await wait_until_gone(pids)


async def test_a_cancelled_caller_stops_its_image(images: list[Path], tmp_path: Path) -> None:
    options = PreprocessOptions()
    stuck = private_copy(images[0], tmp_path)
    async with PreprocessPool(workers=1, options=options) as pool:
        await pool.prepare(images[0])
        pids = worker_pids(pool)
        task = asyncio.create_task(pool._run(stall, stuck, options))
        await wait_for(started(stuck).exists, "the stalled image at work")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await wait_until_gone(pids)  # an idle worker would live on: it was stopped
        assert isinstance(await pool.prepare(images[1]), PreparedImage)


_KILL_OWNER = """
import asyncio, os, signal, sys
from pathlib import Path
from engine.pool import PreprocessPool

async def main():
    async with PreprocessPool(workers=2) as pool:
        await asyncio.gather(pool.prepare(Path(sys.argv[1])), pool.prepare(Path(sys.argv[1])))
        print(*pool._main.executor._processes, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":
    asyncio.run(main())
"""


async def test_workers_exit_when_the_owning_process_is_killed(
    images: list[Path], tmp_path: Path
) -> None:
    script = tmp_path / "owner.py"
    script.write_text(_KILL_OWNER)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    owner = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(images[0]), env=env, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await owner.communicate()
    assert owner.returncode == -signal.SIGKILL
    pids = [int(pid) for pid in output.split()]
    assert len(pids) == 2
    assert await wait_until_gone(pids)


async def test_prepare_needs_the_context() -> None:
    with pytest.raises(RuntimeError, match="async with"):
        await PreprocessPool(workers=1).prepare(Path("x.jpg"))


def test_prepare_image_runs_in_a_plain_process_pool(images: list[Path]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        results = list(executor.map(prepare_image, images[:2]))
    assert all(isinstance(r, PreparedImage) for r in results)
    assert io.BytesIO(results[0].jpeg).read(2) == b"\xff\xd8"


def quick(path: Path, options: PreprocessOptions) -> PreprocessFailure:
    return PreprocessFailure("not_an_image", "quick")


def result_is_in(task: asyncio.Task[object]) -> bool:
    waiting_on = task._fut_waiter  # type: ignore[attr-defined]
    return waiting_on is not None and waiting_on.done()


async def test_a_caller_cancelled_as_its_image_completes_stops_all_the_same(
    images: list[Path],
) -> None:
    # The race that matters: the result is in, the caller not yet resumed, and it is cancelled
    # (a TaskGroup stopping its stages). Swallowing that cancellation would leave the caller
    # running on into work nobody waits for.
    async with PreprocessPool(workers=1) as pool:
        for _ in range(8):
            caller = asyncio.create_task(pool._run(quick, images[0], PreprocessOptions()))
            # Poll the task's own wait, one loop turn at a time: no event marks that instant.
            while not result_is_in(caller):  # noqa: ASYNC110
                await asyncio.sleep(0)
            caller.cancel()
            with pytest.raises(asyncio.CancelledError):
                await caller
