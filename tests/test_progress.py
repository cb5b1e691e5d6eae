"""Progress lines: what a person watching a run reads."""

from __future__ import annotations

import contextlib
import io
import logging

import pytest

from engine.progress import Counters, Progress
from engine.ratelimit import CallBudget, CallGate, Rate


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_the_line_shows_counts_the_window_and_an_eta() -> None:
    gate = CallGate(Rate(1000, 60.0))
    for _ in range(3):
        await gate.acquire()
    counters = Counters(already_done=5, discovered=20, exported_ok=4, exported_failed=1)

    line = Progress(counters, gate, stream=io.StringIO()).line()

    assert line.startswith("done 9 | failed 1 | pending 10 |")
    assert "calls 3/1000 per 60s (spent 3)" in line
    assert "ETA -" not in line  # five photos finished: the rate is known


def test_a_terminal_gets_a_bar_rewritten_in_place_and_logs_get_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = CallGate(Rate(10, 60.0))
    counters = Counters(discovered=4, exported_ok=2)
    terminal = FakeTerminal()

    Progress(counters, gate, stream=terminal).show()
    with caplog.at_level(logging.INFO, logger="engine.progress"):
        Progress(counters, gate, stream=io.StringIO()).show()

    assert terminal.getvalue().startswith("\r\x1b[2K[##########----------] done 2")
    assert "done 2 | failed 0 | pending 2" in caplog.text
    assert "[#" not in caplog.text


def test_by_default_the_bar_goes_to_stderr_as_it_is_when_the_run_starts() -> None:
    with contextlib.redirect_stderr(FakeTerminal()) as terminal:
        Progress(Counters(discovered=2, exported_ok=1), CallGate(Rate(10, 60.0))).show()
    assert terminal.getvalue().startswith("\r\x1b[2K[##########----------] done 1")


async def test_the_window_use_of_several_apps_adds_up() -> None:
    budget = CallBudget()
    gates = [CallGate(Rate(10, 2.0), budget=budget) for _ in range(2)]
    await gates[0].acquire()
    await gates[1].acquire()
    line = Progress(Counters(), gates, stream=io.StringIO()).line()
    assert "calls 2/20 per 2s (spent 2)" in line
    per_api = [CallGate(Rate(5, 1.0), budget=budget), CallGate(Rate(3, 60.0), budget=budget)]
    line = Progress(Counters(), gates + per_api, budget=budget, stream=io.StringIO()).line()
    assert "calls 2/20 per 2s + 0/5 per 1s + 0/3 per 60s (spent 2)" in line
