"""Batching finished photos into Parquet parts: few files, and none waits long.

At 10 calls a minute a part of 500 photos would take most of an hour to fill, and a kill before
its commit would make the next invocation re-export all of them. So a batch is flushed when it
holds ``part_images`` photos, or ``flush_seconds`` after the previous flush if it holds any.
The batcher awaits each flush before it takes the next photo, so one batch is exported at a time;
the flush itself keeps the event loop free (the runner's does its CPU and disk work in a worker
thread, :meth:`engine.export.Exporter.export`), so the call gate and the searches go on
meanwhile. The queue in front of the batcher is bounded: a slow disk slows the pipeline instead
of growing memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

_END = None


class PartBatcher:
    """Collects photo paths from :meth:`put` and hands them to ``flush`` in batches.

    Args:
        flush: exports one batch of paths (a path may come twice; ``flush`` decides); awaited
            before the next photo is taken.
        part_images: photos per batch at most.
        flush_seconds: longest time between flushes while photos are waiting.
        queue_size: paths that may wait in front of the batcher before :meth:`put` blocks.
    """

    def __init__(
        self,
        flush: Callable[[list[str]], Awaitable[None]],
        *,
        part_images: int,
        flush_seconds: float,
        queue_size: int,
    ) -> None:
        self._flush = flush
        self.part_images = part_images
        self.flush_seconds = flush_seconds
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(queue_size)

    async def put(self, path: str) -> None:
        """Queue one finished photo."""
        await self._queue.put(path)

    async def close(self) -> None:
        """No more photos: :meth:`run` flushes what it holds and returns."""
        await self._queue.put(_END)

    async def run(self) -> None:
        """Flush batches until :meth:`close`; an error in ``flush`` ends it."""
        batch: list[str] = []
        deadline = time.monotonic() + self.flush_seconds
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    path = await self._queue.get()
            except TimeoutError:
                path = ""
            if path is _END:
                await self._flush(batch)
                return
            if path:
                batch.append(path)
            now = time.monotonic()
            if len(batch) >= self.part_images or (batch and now >= deadline):
                await self._flush(batch)
                batch = []
            if now >= deadline:
                deadline = time.monotonic() + self.flush_seconds
