"""Finished photos become parts by count, by time when they trickle in, and all at the end."""

from __future__ import annotations

import asyncio

import pytest

from engine.batcher import PartBatcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.flushed = asyncio.Event()

    def __call__(self, paths: list[str]) -> None:
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
    def broken(paths: list[str]) -> None:
        raise OSError("disk full")

    batcher = PartBatcher(broken, part_images=1, flush_seconds=3600, queue_size=10)
    task = asyncio.create_task(batcher.run())
    await batcher.put("a")
    with pytest.raises(OSError, match="disk full"):
        async with asyncio.timeout(5):
            await task
