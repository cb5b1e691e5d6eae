"""How an invocation of ``img1688 run`` ends: its exit code and a message that says what to do.

Every expected stop becomes a :class:`RunOutcome`; :func:`stop_outcome` maps what stopped the
pipeline (an exception, or an exception group from its task group) to the most telling exit
code. The codes are the command's contract with schedulers and are listed in the README.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from engine.errors import FatalGatewayError, GatewayError, GatewayUnreachable, StorageError


class ExitCode(IntEnum):
    """Process exit codes of ``img1688 run`` (documented in the README)."""

    OK = 0
    """Every image is done and none failed."""
    DONE_WITH_FAILURES = 1
    """Every image is done; some failed (see the images table)."""
    CONFIG = 2
    """The job file, a flag or the credentials are wrong."""
    FATAL_GATEWAY = 3
    """The gateway refused the job (credentials, IP, permission, quota) or kept failing."""
    STOPPED_EARLY = 4
    """The call budget, the gateway's daily cap or ``--limit`` was reached: run the same
    command again to continue (after the daily cap, once the next gateway day has started)."""
    STORAGE = 5
    """The output directory is locked by another run, unwritable or full."""
    INTERRUPTED = 130
    TERMINATED = 143


class Interrupted(Exception):
    """A signal asked the run to stop."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by signal {signum}")


class GatewayFailing(Exception):
    """Too many searches in a row exhausted their retries: the gateway is down or overloaded."""


@dataclass
class RunOutcome:
    """What one invocation achieved: the exit code, the run it worked on, and why it ended."""

    exit_code: ExitCode
    run_id: str | None
    message: str
    summary: dict[str, object] = field(default_factory=dict)
    fix: str | None = None
    """The one sentence that says what to change, when the gateway refused the job
    (:attr:`FatalGatewayError.fix <engine.errors.FatalGatewayError>`); alerts carry it alone."""


class Stop(NamedTuple):
    """How a stop cause ends the invocation: :func:`stop_outcome`'s answer."""

    code: ExitCode
    message: str
    fix: str | None = None
    """The refusal's fix sentence, for a :class:`FatalGatewayError` (also in ``message``)."""


def completed_outcome(
    run_id: str, failures: Mapping[str, int], summary: dict[str, object]
) -> RunOutcome:
    """The outcome of a run whose every image is in the feed."""
    failed = sum(failures.values())
    code = ExitCode.DONE_WITH_FAILURES if failed else ExitCode.OK
    message = "run complete" + (f" with {failed} failed image(s)" if failed else "")
    return RunOutcome(code, run_id, message, summary)


def stop_outcome(exc: BaseException) -> Stop:
    """The exit code, message and fix sentence for what stopped the pipeline. ``exc`` may be an
    exception group: the most telling cause wins (a full disk before a refused key before a
    signal), and the fix is that cause's.

    Raises:
        BaseException: ``exc`` itself when nothing in it is an expected stop (a bug).
    """
    causes = _leaves(exc)
    for kind, describe in _STOP_CAUSES:
        for cause in causes:
            if isinstance(cause, kind):
                fix = cause.fix if isinstance(cause, FatalGatewayError) else None
                return Stop(*describe(cause), fix)
    raise exc


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _interrupted(exc: BaseException) -> tuple[ExitCode, str]:
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    code = ExitCode.TERMINATED if signum == signal.SIGTERM else ExitCode.INTERRUPTED
    return code, "interrupted; run the same command again to continue"


_Describe = Callable[[BaseException], tuple[ExitCode, str]]
_STOP_CAUSES: tuple[tuple[type[BaseException], _Describe], ...] = (
    (StorageError, lambda e: (ExitCode.STORAGE, f"{e}; nothing committed was lost")),
    (
        GatewayUnreachable,
        lambda e: (
            ExitCode.FATAL_GATEWAY,
            f"cannot reach the gateway: {e}. Fix that, then run the same command again:"
            " the job resumes where it stopped.",
        ),
    ),
    (
        FatalGatewayError,
        lambda e: (
            ExitCode.FATAL_GATEWAY,
            f"the gateway refused the job: {e}. Fix that, then run the same command again:"
            " the job resumes where it stopped.",
        ),
    ),
    (
        GatewayFailing,
        lambda e: (
            ExitCode.FATAL_GATEWAY,
            f"{e}. The gateway looks down; run again later to continue.",
        ),
    ),
    (Interrupted, _interrupted),
    (
        GatewayError,
        lambda e: (ExitCode.FATAL_GATEWAY, f"unexpected gateway error: {e}; run again later"),
    ),
)
