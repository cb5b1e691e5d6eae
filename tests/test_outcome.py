"""Exit codes: every expected stop maps to the code the README promises, the most telling first."""

from __future__ import annotations

import signal

import pytest

from engine.errors import FatalGatewayError, StorageError, TransientError
from engine.outcome import (
    ExitCode,
    GatewayFailing,
    Interrupted,
    completed_outcome,
    stop_outcome,
)


def test_exit_codes_are_the_documented_numbers() -> None:
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "DONE_WITH_FAILURES": 1,
        "CONFIG": 2,
        "FATAL_GATEWAY": 3,
        "STOPPED_EARLY": 4,
        "STORAGE": 5,
        "INTERRUPTED": 130,
        "TERMINATED": 143,
    }


def test_a_fatal_refusal_says_what_to_fix_and_that_the_job_resumes() -> None:
    error = FatalGatewayError("gw.IpNotInWhiteList", "ip denied", fix="add the IP")
    code, message, fix = stop_outcome(error)
    assert code == ExitCode.FATAL_GATEWAY
    assert "add the IP" in message
    assert "resumes where it stopped" in message
    assert fix == "add the IP"  # alone, for alerts


def test_an_outage_is_exit_3_and_says_to_run_again_later() -> None:
    code, message, fix = stop_outcome(
        GatewayFailing("10 searches in a row exhausted their retries")
    )
    assert code == ExitCode.FATAL_GATEWAY
    assert message.startswith("10 searches in a row")
    assert "looks down" in message
    assert fix is None  # an outage has no fix sentence: nothing to change but to wait


@pytest.mark.parametrize(
    ("signum", "expected"),
    [(signal.SIGINT, ExitCode.INTERRUPTED), (signal.SIGTERM, ExitCode.TERMINATED)],
)
def test_signals_map_to_130_and_143(signum: int, expected: ExitCode) -> None:
    assert stop_outcome(Interrupted(signum))[0] == expected


def test_in_a_group_a_full_disk_wins_over_a_refusal_and_a_signal() -> None:
    group = ExceptionGroup(
        "stages",
        [
            Interrupted(signal.SIGTERM),
            ExceptionGroup("inner", [FatalGatewayError("gw.AppKeyNotFound", "no", fix="key")]),
            StorageError("cannot write out/part: No space left on device"),
        ],
    )
    code, message, fix = stop_outcome(group)
    assert code == ExitCode.STORAGE
    assert "No space left" in message and "nothing committed was lost" in message
    assert fix is None  # the refusal lost: its fix is not the stop's


def test_a_refusal_wins_over_a_signal_and_a_plain_gateway_error() -> None:
    group = ExceptionGroup(
        "stages",
        [
            TransientError("timeout", "no answer"),
            Interrupted(signal.SIGINT),
            FatalGatewayError("gw.NoUsageLeftError", "used up", fix="buy more"),
        ],
    )
    assert stop_outcome(group)[0] == ExitCode.FATAL_GATEWAY
    assert "buy more" in stop_outcome(group)[1]
    assert stop_outcome(group).fix == "buy more"


def test_an_unexpected_exception_is_raised_again_not_hidden_behind_an_exit_code() -> None:
    bug = ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        stop_outcome(bug)
    with pytest.raises(ExceptionGroup):
        stop_outcome(ExceptionGroup("stages", [KeyError("k")]))


def test_a_completed_run_is_0_without_failures_and_1_with_them() -> None:
    clean = completed_outcome("r1", {}, {"images": 3})
    assert (clean.exit_code, clean.message, clean.summary) == (
        ExitCode.OK,
        "run complete",
        {"images": 3},
    )
    failed = completed_outcome("r1", {"not_an_image": 2, "truncated": 1}, {})
    assert failed.exit_code == ExitCode.DONE_WITH_FAILURES
    assert failed.message == "run complete with 3 failed image(s)"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interruption_names_its_signal_and_says_how_to_resume(signum: int) -> None:
    assert str(Interrupted(signum)) == f"stopped by signal {signum}"
    stop = stop_outcome(Interrupted(signum))
    assert (stop.message, stop.fix) == ("interrupted; run the same command again to continue", None)


def test_a_completed_outcome_is_the_runs_it_completed() -> None:
    assert completed_outcome("r7", {}, {}).run_id == "r7"
