"""Run :func:`engine.preprocess.prepare_image` in worker processes, one image never costing more.

:class:`PreprocessPool` wraps a :class:`~concurrent.futures.ProcessPoolExecutor` so that a batch
goes on whatever single images do:

- at most ``workers`` images are in the executor at once, so the per-image ``timeout`` measures
  work, not queueing, however many coroutines call :meth:`PreprocessPool.prepare`;
- an image still running after ``timeout`` becomes a ``timeout`` failure; its stuck worker cannot
  be stopped alone, so every process of the pool is killed and a fresh pool takes over; the other
  images that were running there are run again (they did nothing wrong). A cancelled caller
  stops its image the same way;
- a worker killed by the OS (out of memory, a decoder crash) breaks the whole executor
  (``BrokenProcessPool`` for everything in flight). If one image was in flight, it is the culprit:
  ``worker_crashed``. Otherwise each of them is retried once, alone, in a one-process
  *quarantine* pool: the culprit breaks it again and gets ``worker_crashed``, the others succeed,
  and new images keep flowing through a fresh main pool meanwhile.

Workers exit by themselves if the process that owns the pool dies (SIGKILL, OOM killer): no
orphans keep running. They start with the ``forkserver`` method where available (a clean process
forked from a small server that has already imported :mod:`engine.imaging`, Pillow and its AVIF
and HEIF decoders; ``fork`` from a threaded asyncio process is unsafe), else ``spawn``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

from engine.preprocess import Prepared, PreprocessFailure, PreprocessOptions, prepare_image

__all__ = ["PreprocessPool"]


@dataclass(eq=False)
class _Generation:
    """One executor and what its callers need to know when it breaks."""

    executor: ProcessPoolExecutor
    inflight: int = 0
    witnesses: int | None = None  # images in flight when its break was first seen
    killed: bool = False  # broken on purpose (after a timeout), not by an image
    retired: bool = False


class PreprocessPool:
    """Prepare images in worker processes, with a per-image timeout and crash isolation.

    Use as an async context manager; :meth:`prepare` may be called from many coroutines at once::

        async with PreprocessPool(workers=4, options=PreprocessOptions(max_side=800)) as pool:
            results = await asyncio.gather(*(pool.prepare(p) for p in paths))

    Every call returns a :data:`~engine.preprocess.Prepared`; nothing it does to one image raises.
    Leaving the context waits for running images, or kills them when leaving on an exception or
    with calls still in flight (cancelled callers), and reaps every worker process.
    """

    def __init__(
        self, workers: int | None = None, options: PreprocessOptions = PreprocessOptions()
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self._workers = workers or _available_cpus()
        self._options = options
        self._context = _worker_context()
        self._slots = asyncio.Semaphore(self._workers)
        self._quarantine_lock = asyncio.Lock()
        self._main: _Generation | None = None
        self._quarantine: _Generation | None = None
        self._retired: list[ProcessPoolExecutor] = []
        self._lifeline: tuple[Connection, Connection] | None = None

    @property
    def workers(self) -> int:
        """How many images are prepared at once."""
        return self._workers

    @property
    def options(self) -> PreprocessOptions:
        """The options every image is prepared with."""
        return self._options

    async def __aenter__(self) -> PreprocessPool:
        self._lifeline = self._context.Pipe(duplex=False)
        self._main = self._new_generation(self._workers)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        live = [gen for gen in (self._main, self._quarantine) if gen is not None]
        self._main = self._quarantine = None
        for gen in live:
            if exc_type is not None or gen.inflight:
                _kill_processes(gen.executor)
        for executor in [gen.executor for gen in live] + self._retired:
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
        self._retired.clear()
        if self._lifeline is not None:
            for end in self._lifeline:
                end.close()
            self._lifeline = None

    async def prepare(self, source: Path | bytes) -> Prepared:
        """Prepare one image (a file, or its bytes) in a worker process."""
        return await self._run(prepare_image, source, self._options)

    async def _run(
        self, fn: Callable[..., Prepared], *args: Any, time_limit: float | None = None
    ) -> Prepared:
        """Run ``fn(*args)`` in the pool under the timeout and crash rules above.

        The seam :meth:`prepare` is built on; ``time_limit`` overrides ``options.timeout``.
        """
        limit = self._options.timeout if time_limit is None else time_limit
        async with self._slots:
            while True:
                gen = self._current_main()
                try:
                    result = await self._call(gen, fn, args, limit)
                except BrokenProcessPool:
                    if gen.killed:
                        continue  # another image timed out and took this pool down: run again
                    if gen.witnesses == 1:
                        return _crashed("its worker process died while preparing it")
                    return await self._run_quarantined(fn, args, limit)
                if result is not None:
                    return result

    async def _run_quarantined(
        self, fn: Callable[..., Prepared], args: tuple[Any, ...], limit: float
    ) -> Prepared:
        """Retry one image alone in a one-process pool, so that a crash there is its own."""
        async with self._quarantine_lock:
            while True:
                if self._quarantine is None:
                    self._quarantine = self._new_generation(1)
                try:
                    result = await self._call(self._quarantine, fn, args, limit)
                except BrokenProcessPool:
                    return _crashed("its worker process died twice while preparing it")
                if result is not None:
                    return result

    async def _call(
        self, gen: _Generation, fn: Callable[..., Prepared], args: tuple[Any, ...], limit: float
    ) -> Prepared | None:
        """One attempt in ``gen``: the result, or ``None`` if ``gen`` was broken before submitting.

        Raises:
            BrokenProcessPool: ``gen`` broke while the image was in flight (``gen`` is replaced).
        """
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(gen.executor, fn, *args)
        except BrokenProcessPool:
            self._retire(gen)
            return None
        gen.inflight += 1
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the result and
            # swallows a cancellation that arrives as the image completes, leaving a cancelled
            # caller running (a TaskGroup then waits for it forever).
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            self._kill(gen)
            return PreprocessFailure(
                "timeout", f"not done after {limit:g} s; its worker process was stopped"
            )
        except asyncio.CancelledError:
            # Left running, the image would hold a worker that the slot count no longer sees.
            self._kill(gen)
            raise
        except BrokenProcessPool:
            if gen.witnesses is None:
                gen.witnesses = gen.inflight
            self._retire(gen)
            raise
        except Exception as exc:  # a bug in the worker function: fail this image, keep the batch
            return _crashed(f"internal error {type(exc).__name__}: {exc}")
        finally:
            gen.inflight -= 1

    def _current_main(self) -> _Generation:
        if self._main is None:
            raise RuntimeError("PreprocessPool is not running: use 'async with PreprocessPool()'")
        return self._main

    def _new_generation(self, workers: int) -> _Generation:
        assert self._lifeline is not None
        executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=self._context,
            initializer=_exit_with_parent,
            initargs=(self._lifeline[0],),
        )
        return _Generation(executor)

    def _kill(self, gen: _Generation) -> None:
        """Stop every process of ``gen`` (its other images are run again) and replace it."""
        gen.killed = True
        _kill_processes(gen.executor)
        self._retire(gen)

    def _retire(self, gen: _Generation) -> None:
        """Replace a broken or killed executor; the first caller to notice does it."""
        if gen.retired:
            return
        gen.retired = True
        if gen is self._main:
            self._main = self._new_generation(self._workers)
        elif gen is self._quarantine:
            self._quarantine = None
        # No cancel_futures: a cancelled future would surface as CancelledError in its caller;
        # the executor fails pending work with BrokenProcessPool instead, which we handle.
        gen.executor.shutdown(wait=False)
        self._retired.append(gen.executor)


def _exit_with_parent(lifeline: Connection) -> None:
    """Worker initializer: exit as soon as the pool's process is gone.

    A worker blocks on a task queue it holds both ends of, and keeps the forkserver alive: if the
    pool's process is killed (SIGKILL, OOM), workers and forkserver would live on forever. The
    pool's process alone holds the sending end of ``lifeline``; its death closes it, and the read
    here returns.
    """

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv_bytes()
        os._exit(1)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()


def _crashed(message: str) -> PreprocessFailure:
    return PreprocessFailure("worker_crashed", message)


def _kill_processes(executor: ProcessPoolExecutor) -> None:
    # Python < 3.14 has no public way to stop a running task; the worker table is private but
    # stable since 3.3. The executor notices the deaths, fails pending work and reaps them.
    processes = getattr(executor, "_processes", None) or {}
    for process in list(processes.values()):
        if process.is_alive():
            process.kill()


def _available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker_context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that already imported Pillow and registered its AVIF and
        # HEIF decoders: cheap (re)starts. Under spawn, each worker imports them on its first
        # image (engine.preprocess.prepare_image does).
        context.set_forkserver_preload(["engine.imaging"])
        return context
    return multiprocessing.get_context("spawn")
