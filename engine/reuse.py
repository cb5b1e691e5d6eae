"""Reuse of stored answers: a call is never spent on a question already answered.

Two cases, both free of calls:

* a file **unchanged** since an earlier run (same path, size and mtime: the quick check rsync
  makes; for an object on S3, the same size, modification time and ETag) whose stored answer
  is fresh skips even preprocessing;
* a photo whose **bytes** (SHA-256) were searched with the same request key, by any run, within
  the TTL, takes that answer after preprocessing.

Answers stored by the current run are always reusable, whatever the TTL: they answer
duplicates found later in the same run.
"""

from __future__ import annotations

import json
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

    def key_for(self, keyword: str | None) -> str:
        """The request key of a search that sends ``keyword`` (a catalogue title) too: the
        same bytes with another keyword are another question."""
        if keyword is None:
            return self.request_key
        return json.dumps(json.loads(self.request_key) | {"keyword": keyword}, sort_keys=True)

    def answer(self, sha256: str, keyword: str | None = None) -> StoredResponse | None:
        """The newest fresh answer to these bytes and this request key (with ``keyword``)."""
        return self.state.fresh_response(sha256, self.key_for(keyword), self.since)

    def reuse_unchanged(self, candidate: Candidate, keyword: str | None = None) -> bool:
        """Record ``candidate`` as ``fetched`` from a fresh answer if it is unchanged since an
        earlier run; returns whether it was. A photo on the web is never taken as unchanged
        here: only its download tells (:mod:`engine.download` revalidates it)."""
        if candidate.is_url:
            return False
        run_id, path = self.run.run_id, candidate.id
        previous = self.state.previous_image(
            run_id, path, candidate.size, candidate.mtime_ns, candidate.etag
        )
        if previous is None or previous.sha256 is None:
            return False
        if previous.query_path != str(candidate.path):
            return False  # a catalogue row whose SKU now names another image
        stored = self.answer(previous.sha256, keyword)
        if stored is None:
            return False
        self.state.reused_unchanged(
            run_id,
            path,
            candidate.size,
            candidate.mtime_ns,
            previous,
            stored.id,
            candidate.etag,
            source=candidate.source,
            sku=candidate.sku,
            title=candidate.title,
        )
        return True

    def reuse_same_bytes(self, path: str, sha256: str, keyword: str | None = None) -> bool:
        """Record ``path`` as ``fetched`` from a fresh answer to the same bytes (and keyword),
        if there is one; returns whether there was."""
        stored = self.answer(sha256, keyword)
        if stored is None:
            return False
        self.state.reused(self.run.run_id, path, stored.id)
        return True
