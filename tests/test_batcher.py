"""Finished photos become parts by count, by time when they trickle in, and all at the end."""

from __future__ import annotations

import asyncio

import pytest

from engine.batcher import PartBatcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.flushed = asyncio.Event()

    async def __call__(self, paths: list[str]) -> None:
        self.batches.append(list(paths))
        self.flushed.set()


async def test_a_full_batch_is_flushed_at_once_and_the_rest_at_close() -> None:
    record = Recorder()
    batcher = PartBatcher(record, part_images=3, flush_seconds=3600, queue_size=10)
    task = asyncio.create_task(batcher.run())
    for name in "abcde":
        await batcher.put(name)
    async with asyncio.timeout(5):
        await record.flushed.wait()
    assert record.batches == [["a", "b", "c"]]  # not waiting for the hour
    await batcher.close()
    await task
    assert record.batches == [["a", "b", "c"], ["d", "e"]]


async def test_a_trickle_is_flushed_after_flush_seconds_without_more_input() -> None:
    record = Recorder()
    batcher = PartBatcher(record, part_images=500, flush_seconds=0.05, queue_size=10)
    task = asyncio.create_task(batcher.run())
    await batcher.put("a")
    async with asyncio.timeout(5):
        await record.flushed.wait()  # one photo, far from 500, still reaches the feed
    assert record.batches == [["a"]]
    await batcher.close()
    await task
    # Idle deadlines flush nothing; the close hands over the (empty) remainder once.
    assert record.batches == [["a"], []]


async def test_an_error_in_flush_ends_the_batcher_with_that_error() -> None:
    async def broken(paths: list[str]) -> None:
        raise OSError("disk full")

    batcher = PartBatcher(broken, part_images=1, flush_seconds=3600, queue_size=10)
    task = asyncio.create_task(batcher.run())
    await batcher.put("a")
    with pytest.raises(OSError, match="disk full"):
        async with asyncio.timeout(5):
            await task


async def test_one_flush_at_a_time() -> None:
    release, first = asyncio.Event(), asyncio.Event()
    started: list[list[str]] = []

    async def slow(paths: list[str]) -> None:
        started.append(list(paths))
        first.set()
        await release.wait()  # a part still being written in a worker thread

    batcher = PartBatcher(slow, part_images=2, flush_seconds=3600, queue_size=10)
    task = asyncio.create_task(batcher.run())
    for name in "abcd":
        await batcher.put(name)
    async with asyncio.timeout(5):
        await first.wait()
    for _ in range(10):  # give a second flush every chance to start
        await asyncio.sleep(0)
    assert started == [["a", "b"]]  # c and d wait: one batch in memory at a time
    release.set()
    await batcher.close()
    async with asyncio.timeout(5):
        await task
    assert started == [["a", "b"], ["c", "d"], []]
