"""A fake event-loop clock for timing tests: waits take no real time, and bounds are exact.

``@on_fake_clock`` runs an ``async def`` test on a :class:`FakeClockLoop`, whose ``time()``
starts at 0, moves :data:`TICK` on every turn of the loop, and jumps straight to the next timer
whenever the loop would sleep. Everything timed by the loop (``asyncio.sleep``, timeouts,
aiolimiter's bucket) then agrees with a gate given ``clock=asyncio.get_running_loop().time``, and
a run that would take minutes of real time takes milliseconds. Sockets and threads still wake the
loop, but time does not wait for them: use it for code that only sleeps.

Why the tick: on a real machine every turn of the loop takes some time, and aiolimiter relies on
it. After a wake-up its bucket level can keep a float residue (``1e-16`` above empty), so it asks
to be woken again "now"; a clock that stands still between timers (looptime's does) re-runs that
wake-up forever. docs/testing.md has the rest of the comparison.
"""

from __future__ import annotations

import asyncio
import functools
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec

P = ParamSpec("P")

TICK = 1e-6
"""Fake seconds each turn of the loop takes: a fast machine's, and far below any bound tested."""


class _FastForwardSelector(selectors.DefaultSelector):
    """Polls for I/O without blocking; when nothing is ready, moves the fake time on by a tick,
    or to the timer the loop would sleep until."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:  # no timer at all: only I/O or a thread can wake the loop
            return super().select(None)
        ready = super().select(0)
        if not ready:
            # To the timer (asyncio then runs every handle due before now + its clock
            # resolution, so float rounding never strands one), and never less than a tick.
            self.now += max(timeout, TICK)
        return ready


class FakeClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is fake (see the module doc)."""

    def __init__(self) -> None:
        self._fast_forward = _FastForwardSelector()
        super().__init__(self._fast_forward)

    def time(self) -> float:
        return self._fast_forward.now


def on_fake_clock(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run the ``async def`` test (fixtures and parameters as usual) on a fresh
    :class:`FakeClockLoop` instead of pytest-asyncio's loop."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        with asyncio.Runner(loop_factory=FakeClockLoop) as runner:
            runner.run(test(*args, **kwargs))

    return run
