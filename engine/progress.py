"""Progress: what a person watching a run needs, every few seconds.

On a terminal it is one line rewritten in place; elsewhere (cron, CI, a log file) it is a
periodic log line, so nightly logs show how the night went.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

from engine.ratelimit import CallGate

log = logging.getLogger("engine.progress")


@dataclass
class Counters:
    """Live counts for one invocation; the checkpoint database holds the durable truth."""

    already_done: int = 0
    discovered: int = 0
    exported_ok: int = 0
    exported_failed: int = 0
    reused: int = 0
    searched: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.exported_ok + self.exported_failed

    @property
    def pending(self) -> int:
        return max(0, self.discovered - self.already_done - self.finished)


class Progress:
    """Reports :class:`Counters` and the gate's window use until cancelled."""

    def __init__(
        self,
        counters: Counters,
        gate: CallGate,
        *,
        interval: float | None = None,
        stream: TextIO = sys.stderr,
    ) -> None:
        self.counters = counters
        self.gate = gate
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = interval if interval is not None else (1.0 if self.tty else 30.0)

    def line(self) -> str:
        c = self.counters
        elapsed = time.monotonic() - c.started
        rate = c.finished / elapsed if elapsed > 0 else 0.0
        eta = f"{c.pending / rate:,.0f}s" if rate > 0 and c.pending else "-"
        bar = _bar(c.already_done + c.finished, c.discovered) + " " if self.tty else ""
        return (
            f"{bar}done {c.already_done + c.exported_ok:,} | failed {c.exported_failed:,} | "
            f"pending {c.pending:,} | searched {c.searched:,}, reused {c.reused:,} | "
            f"calls {self.gate.calls_in_window()}/{self.gate.rate.calls} "
            f"per {self.gate.rate.period:g}s (spent {self.gate.spent:,}) | ETA {eta}"
        )

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                self.show()
        finally:
            if self.tty:
                self.stream.write("\n")

    def show(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line())
            self.stream.flush()
        else:
            log.info("%s", self.line())


def _bar(done: int, known: int, width: int = 20) -> str:
    """``[#####-----]`` over the photos found so far (the walk may still be finding more)."""
    filled = width * done // known if known else 0
    return "[" + "#" * filled + "-" * (width - filled) + "]"
