"""Injected faults: which admitted call misbehaves, and how, decided by a seeded RNG."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum


class Fault(Enum):
    """How a call misbehaves instead of being answered. The value is the stats key."""

    SERVER_ERROR = "5xx"
    MALFORMED = "malformed"
    DROP = "drop"
    SPURIOUS_RATE_LIMIT = "spurious_rate_limit"
    BUSY = "busy"


SLOW = "slow"  # stats key of the slow fault, which delays an answer instead of replacing it
FAULT_KEYS: tuple[str, ...] = ("5xx", SLOW, "malformed", "drop", "spurious_rate_limit", "busy")
_SHARES = ("error_5xx", "slow", "malformed", "drop", "spurious_rate_limit", "busy")
SERVER_ERROR_STATUSES = (500, 502, 503)


@dataclass(frozen=True)
class Faults:
    """Shares in [0, 1] of admitted ``param2`` calls that misbehave.

    ``error_5xx``, ``malformed``, ``drop``, ``spurious_rate_limit`` and ``busy`` replace the
    answer and exclude one another, so their sum must not exceed 1. ``slow`` is drawn
    independently: a slow call waits ``slow_seconds``, then gets its answer (or its other fault).

    Attributes:
        error_5xx: answer HTTP 500, 502 or 503.
        slow: wait ``slow_seconds`` before answering.
        slow_seconds: the delay of a slow call.
        malformed: answer HTTP 200 with a truncated, non-parseable JSON body.
        drop: close the connection without an answer.
        spurious_rate_limit: answer the rate-limit error though the call was within the limit.
        busy: answer HTTP 200 with the protocol's business failure saying the system is busy.
        seed: seed of the RNG, so a run's faults repeat exactly.
    """

    error_5xx: float = 0.0
    slow: float = 0.0
    slow_seconds: float = 2.0
    malformed: float = 0.0
    drop: float = 0.0
    spurious_rate_limit: float = 0.0
    busy: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in _SHARES:
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"fault share {name}={share} is not in [0, 1]")
        if sum(share for _, share in self.exclusive_shares()) > 1.0 + 1e-9:
            raise ValueError(
                "the shares of 5xx, malformed, drop, rate-limit and busy faults exceed 1"
            )
        if self.slow_seconds < 0:
            raise ValueError(f"slow_seconds={self.slow_seconds} is negative")

    def exclusive_shares(self) -> tuple[tuple[Fault, float], ...]:
        """The faults that replace an answer, with their shares, in drawing order (new kinds go
        last, so a seed keeps giving the faults it gave before)."""
        return (
            (Fault.SERVER_ERROR, self.error_5xx),
            (Fault.MALFORMED, self.malformed),
            (Fault.DROP, self.drop),
            (Fault.SPURIOUS_RATE_LIMIT, self.spurious_rate_limit),
            (Fault.BUSY, self.busy),
        )


@dataclass(frozen=True)
class Decision:
    """What happens to one call: an optional delay, then an optional fault."""

    delay: float
    fault: Fault | None
    status: int  # the 5xx status, meaningful for Fault.SERVER_ERROR only


class FaultPicker:
    """Draws one :class:`Decision` per admitted call.

    Every call draws the same three numbers whatever the shares, so the same seed and the same
    sequence of calls give the same faults.
    """

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self._rng = random.Random(faults.seed)

    def decide(self) -> Decision:
        """The fate of the next call."""
        slow_draw, fault_draw, status_draw = (self._rng.random() for _ in range(3))
        delay = self.faults.slow_seconds if slow_draw < self.faults.slow else 0.0
        fault = None
        edge = 0.0
        for kind, share in self.faults.exclusive_shares():
            edge += share
            if fault_draw < edge:
                fault = kind
                break
        status = SERVER_ERROR_STATUSES[int(status_draw * len(SERVER_ERROR_STATUSES))]
        return Decision(delay, fault, status)
