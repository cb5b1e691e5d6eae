"""Progress: what a person watching a run needs, every few seconds.

On a terminal it is one line rewritten in place; elsewhere (cron, CI, a log file) it is a
periodic log line, so nightly logs show how the night went.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from engine.ratelimit import CallBudget, CallGate

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
    """Reports :class:`Counters` and the gates' window use until cancelled.

    Args:
        counters: the invocation's live counts.
        gates: the call gates of every app (or the one gate); their window use is shown summed
            per window length, e.g. ``calls 14/20 per 2s`` for two apps at 10/2s.
        budget: what the invocation spent over every gate; by default the first gate's.
    """

    def __init__(
        self,
        counters: Counters,
        gates: CallGate | Sequence[CallGate],
        *,
        budget: CallBudget | None = None,
        interval: float | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.counters = counters
        self.gates = (gates,) if isinstance(gates, CallGate) else tuple(gates)
        if not self.gates:
            raise ValueError("progress needs at least one call gate")
        self.budget = budget or self.gates[0].budget
        self.stream = sys.stderr if stream is None else stream  # stderr as it is now
        self.tty = self.stream.isatty()
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
            f"calls {self._window_use()} (spent {self.budget.spent:,}) | ETA {eta}"
        )

    def _window_use(self) -> str:
        """Calls in the window over calls allowed, summed over the gates of each period."""
        used: dict[float, list[int]] = {}
        for gate in self.gates:
            totals = used.setdefault(gate.rate.period, [0, 0])
            totals[0] += gate.calls_in_window()
            totals[1] += gate.rate.calls
        return " + ".join(f"{n}/{limit} per {period:g}s" for period, (n, limit) in used.items())

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
