"""Reuse of stored answers: a call is never spent on a question already answered.

Two cases, both free of calls:

* a file **unchanged** since an earlier run (same path, size and mtime: the quick check rsync
  makes) whose stored answer is fresh skips even preprocessing;
* a photo whose **bytes** (SHA-256) were searched with the same request key, by any run, within
  the TTL, takes that answer after preprocessing.

Answers stored by the current run are always reusable, whatever the TTL: they answer
duplicates found later in the same run.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from engine.discover import Candidate
from engine.state import Run, StateStore, StoredResponse, utc_now


class AnswerReuse:
    """Finds a fresh stored answer for a photo and records the photo as ``reused``.

    Args:
        state: the checkpoint database.
        run: the run being worked on.
        request_key: the canonical JSON of what was asked besides the image; answers to
            another request key are never reused.
        ttl_days: how old a stored answer may be.
        now: the current time (injectable for tests).
    """

    def __init__(
        self,
        state: StateStore,
        run: Run,
        request_key: str,
        ttl_days: float,
        *,
        now: datetime | None = None,
    ) -> None:
        self.state = state
        self.run = run
        self.request_key = request_key
        horizon = (now or utc_now()) - timedelta(days=ttl_days)
        self.since = min(horizon, datetime.fromisoformat(run.started_at))
        """Answers searched at or after this moment are fresh."""

    def answer(self, sha256: str) -> StoredResponse | None:
        """The newest fresh answer to these bytes and this request key."""
        return self.state.fresh_response(sha256, self.request_key, self.since)

    def reuse_unchanged(self, candidate: Candidate) -> bool:
        """Record ``candidate`` as ``fetched`` from a fresh answer if it is unchanged since an
        earlier run; returns whether it was."""
        run_id, path = self.run.run_id, str(candidate.path)
        previous = self.state.previous_image(run_id, path, candidate.size, candidate.mtime_ns)
        if previous is None or previous.sha256 is None:
            return False
        stored = self.answer(previous.sha256)
        if stored is None:
            return False
        self.state.reused_unchanged(
            run_id, path, candidate.size, candidate.mtime_ns, previous, stored.id
        )
        return True

    def reuse_same_bytes(self, path: str, sha256: str) -> bool:
        """Record ``path`` as ``fetched`` from a fresh answer to the same bytes, if there is
        one; returns whether there was."""
        stored = self.answer(sha256)
        if stored is None:
            return False
        self.state.reused(self.run.run_id, path, stored.id)
        return True
