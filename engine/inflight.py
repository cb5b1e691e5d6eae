"""Searches queued or in flight, so that photos with the same bytes pay for one search.

The first photo with a given SHA-256 starts a :class:`Search`; every later photo with the same
bytes rides along on it until it is finished. The runner then stores the one answer for every
path of the search in one transaction. Finishing takes the entry out *before* the answer is
stored, with no ``await`` in between: a duplicate that arrives afterwards finds the stored
answer instead of a finished search, so no photo is ever left waiting on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.preprocess import PreparedImage


@dataclass(frozen=True)
class Search:
    """One photo to search, and every path that carries the same bytes."""

    prepared: PreparedImage
    paths: list[str] = field(default_factory=list)
    keyword: str | None = None
    """The catalogue title sent with the photo (``gateway.send_title``), if any."""

    @property
    def sha256(self) -> str:
        return self.prepared.sha256

    @property
    def question(self) -> str:
        """What the gateway is asked: the bytes, and the keyword sent with them."""
        return question(self.sha256, self.keyword)


def question(sha256: str, keyword: str | None) -> str:
    """The key of a search: photos ride along only on a search that asks the same."""
    return sha256 if keyword is None else f"{sha256}\n{keyword}"


class InFlightSearches:
    """The searches started and not yet finished, by their question (photo bytes, keyword)."""

    def __init__(self) -> None:
        self._searches: dict[str, Search] = {}

    def __len__(self) -> int:
        return len(self._searches)

    def ride_along(self, sha256: str, path: str, keyword: str | None = None) -> bool:
        """Add ``path`` to the unfinished search of the same bytes (and keyword), if there is
        one."""
        search = self._searches.get(question(sha256, keyword))
        if search is None:
            return False
        search.paths.append(path)
        return True

    def start(self, prepared: PreparedImage, path: str, keyword: str | None = None) -> Search:
        """A new search for ``prepared`` (with ``keyword``), which later photos with the same
        bytes and keyword can join."""
        search = Search(prepared, [path], keyword)
        if search.question in self._searches:
            raise ValueError(f"a search for {prepared.sha256} is already in flight")
        self._searches[search.question] = search
        return search

    def finish(self, search: Search) -> None:
        """No photo can join ``search`` any more (it was answered, failed or left pending)."""
        if self._searches.get(search.question) is search:
            del self._searches[search.question]
