"""Waiting for a state instead of sleeping: a row in the checkpoint database, a file a worker
wrote, the nth call at the sandbox. Light to import (worker processes import the test modules
that use it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

STATE_TIMEOUT = 60.0
"""Seconds a test waits for a state before it fails: far beyond any healthy run, so that only a
hang reaches it."""


async def wait_for(
    condition: Callable[[], object],
    what: str,
    *,
    process: asyncio.subprocess.Process | None = None,
    patience: float = STATE_TIMEOUT,
) -> None:
    """Return once ``condition()`` is true; poll it every few milliseconds.

    Raises:
        AssertionError: ``process`` ended first, or ``patience`` seconds passed; the message
            names ``what`` was awaited.
    """
    try:
        async with asyncio.timeout(patience):
            while not condition():
                if process is not None and process.returncode is not None:
                    raise AssertionError(f"the engine exited {process.returncode} before {what}")
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"still no {what} after {patience:g} s") from None
