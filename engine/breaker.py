"""The outage breaker: tells a gateway that is down from photos that really failed.

A search that exhausts its retries could be the photo's bad luck or the gateway's outage; only
what happens next tells. So the photos of such searches are *held back* from the feed while the
failures run in a row:

* a search that gets an answer (or a verdict on its image) ends the streak: the held-back photos
  really failed, and are released to the feed as ``retries_exhausted``;
* ``threshold`` failed searches in a row trip the breaker (:class:`GatewayFailing`): the job
  stops, and the next invocation searches those photos again instead of publishing failures
  that only say the gateway was down.
"""

from __future__ import annotations

from engine.outcome import GatewayFailing


class OutageBreaker:
    """Counts searches in a row that exhausted their retries, holding their photos back.

    Args:
        threshold: failed searches in a row that mean "the gateway is down" (at least 1).
    """

    def __init__(self, threshold: int) -> None:
        if threshold < 1:
            raise ValueError("threshold must be at least 1")
        self.threshold = threshold
        self._held: list[str] = []
        self._searches = 0

    @property
    def held(self) -> tuple[str, ...]:
        """Photos held back from the feed, oldest first."""
        return tuple(self._held)

    def failed(self, paths: list[str], error: Exception) -> None:
        """One more search (for ``paths``) exhausted its retries with ``error``.

        Raises:
            GatewayFailing: this is the ``threshold``-th in a row. The photos stay held back.
        """
        self._held.extend(paths)
        self._searches += 1
        if self._searches >= self.threshold:
            raise GatewayFailing(
                f"{self._searches} searches in a row exhausted their retries; last error: {error}"
            ) from None

    def answered(self) -> list[str]:
        """The gateway answered again: end the streak and return the photos it held back,
        which really failed and now go to the feed."""
        held, self._held, self._searches = self._held, [], 0
        return held
