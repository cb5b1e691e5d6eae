"""The outage breaker holds failed photos back while failures run in a row."""

from __future__ import annotations

import pytest

from engine.breaker import OutageBreaker
from engine.errors import TransientError
from engine.outcome import GatewayFailing

ERROR = TransientError("http_503", "server error")


def test_it_trips_on_the_threshold_th_failed_search_in_a_row_not_before() -> None:
    breaker = OutageBreaker(3)
    breaker.failed(["a"], ERROR)
    breaker.failed(["b", "b2"], ERROR)
    with pytest.raises(GatewayFailing, match=r"3 searches in a row.*http_503"):
        breaker.failed(["c"], ERROR)
    # The photos of the streak stay held back: the next invocation searches them again.
    assert breaker.held == ("a", "b", "b2", "c")


def test_an_answer_ends_the_streak_and_releases_its_photos_as_real_failures() -> None:
    breaker = OutageBreaker(3)
    breaker.failed(["a"], ERROR)
    breaker.failed(["b"], ERROR)
    assert breaker.answered() == ["a", "b"]
    assert breaker.held == ()
    # The count starts again: two more failures do not trip a threshold of three.
    breaker.failed(["c"], ERROR)
    breaker.failed(["d"], ERROR)
    assert breaker.held == ("c", "d")


def test_an_answer_without_a_streak_releases_nothing() -> None:
    assert OutageBreaker(1).answered() == []


def test_a_threshold_of_one_trips_on_the_first_failure() -> None:
    with pytest.raises(GatewayFailing, match="1 searches in a row"):
        OutageBreaker(1).failed(["a"], ERROR)


def test_a_threshold_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OutageBreaker(0)
