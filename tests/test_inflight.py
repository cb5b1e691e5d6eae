"""Photos with the same bytes share one search until it is finished."""

from __future__ import annotations

import pytest

from engine.inflight import InFlightSearches
from engine.preprocess import PreparedImage


def prepared(sha256: str) -> PreparedImage:
    return PreparedImage(
        jpeg=b"\xff\xd8jpeg",
        width=10,
        height=10,
        sha256=sha256,
        source_bytes=100,
        source_format="JPEG",
        source_mode="RGB",
        source_size=(10, 10),
        quality=85,
        steps=(),
        elapsed_ms=1.0,
    )


def test_same_bytes_ride_along_on_the_first_search() -> None:
    searches = InFlightSearches()
    assert not searches.ride_along("aa", "a.jpg")  # nothing to join yet
    first = searches.start(prepared("aa"), "a.jpg")
    assert searches.ride_along("aa", "copy.jpg")
    assert searches.ride_along("aa", "other/copy.jpg")
    assert not searches.ride_along("bb", "b.jpg")  # other bytes start their own
    assert first.paths == ["a.jpg", "copy.jpg", "other/copy.jpg"]
    assert first.sha256 == "aa"
    assert len(searches) == 1


def test_a_finished_search_takes_no_more_riders() -> None:
    searches = InFlightSearches()
    search = searches.start(prepared("aa"), "a.jpg")
    searches.finish(search)
    assert not searches.ride_along("aa", "late.jpg")
    assert search.paths == ["a.jpg"]
    assert len(searches) == 0
    again = searches.start(prepared("aa"), "late.jpg")  # the same bytes may be searched anew
    assert again.paths == ["late.jpg"]


def test_finishing_an_old_search_leaves_a_newer_one_of_the_same_bytes() -> None:
    searches = InFlightSearches()
    old = searches.start(prepared("aa"), "a.jpg")
    searches.finish(old)
    new = searches.start(prepared("aa"), "b.jpg")
    searches.finish(old)  # finishing twice must not drop the new search
    assert searches.ride_along("aa", "c.jpg")
    assert new.paths == ["b.jpg", "c.jpg"]


def test_starting_a_second_search_for_the_same_bytes_is_a_bug() -> None:
    searches = InFlightSearches()
    searches.start(prepared("aa"), "a.jpg")
    with pytest.raises(ValueError, match="already in flight"):
        searches.start(prepared("aa"), "b.jpg")
