"""Clean and store: turn finished images (stored answers or failures) into Parquet parts.

Used by the running engine for each batch, and by ``img1688 reclean`` to rebuild a finished
run's feed from the stored answers with today's cleaning rules, without a single call.

The running engine exports off the event loop: cleaning, Parquet encoding and the durable write
(fsync, rename) of a batch take long enough to stall the call gate, so they run in a worker
thread. The checkpoint database stays on the caller's thread (a sqlite3 connection is used by
the thread that opened it only): the stored answers are read before, the parts registered after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine import __version__
from engine.clean import CleanResult, WholesaleFilters, parse_response
from engine.feed import Feed, last_seq
from engine.schema import (
    ImageRow,
    Lineage,
    MatchRow,
    OfferEvidence,
    images_table,
    matches_table,
)
from engine.state import ImageRecord, PartRecord, Run, StateStore, StoredResponse

if TYPE_CHECKING:
    from engine.evidence.judge import EvidenceJudge

_READ_SLICE = 200
"""Checkpoint reads between two yields to the event loop: a batch of thousands of photos takes
tens of milliseconds to read, which would hold up the call gate."""


@dataclass(frozen=True)
class BatchResult:
    images_ok: int
    images_failed: int
    reused: int
    match_rows: int


@dataclass(frozen=True)
class Finished:
    """A finished image and its stored answer (``None`` for a failed one), read from the
    checkpoints: everything cleaning it needs, so that it can be cleaned in another thread."""

    record: ImageRecord
    answer: StoredResponse | None


class Exporter:
    """Writes batches of one run's finished images as Parquet parts, durably registered.

    With a ``judge``, each kept offer carries its evidence (:mod:`engine.evidence.judge`), and
    the offer-image clusters the judge assigns are registered with the parts that name them.
    """

    def __init__(
        self,
        state: StateStore,
        feed: Feed,
        run: Run,
        filters: WholesaleFilters,
        protocol: str,
        judge: EvidenceJudge | None = None,
    ) -> None:
        self.state = state
        self.feed = feed
        self.run = run
        self.filters = filters
        self.protocol = protocol
        self.judge = judge
        if judge is not None:
            judge.restore(state.clusters(run.run_id))
        self._seq = last_seq(state.parts(run.run_id))

    async def export_finished(self, paths: Sequence[str]) -> BatchResult | None:
        """Export the photos of ``paths`` not exported yet; ``None`` when there were none.

        A path queued twice (named twice in the inputs, say) is exported once: the status in
        the checkpoint database, not the queue, decides.
        """
        run_id = self.run.run_id
        unique = list(dict.fromkeys(paths))
        records: list[ImageRecord] = []
        for start in range(0, len(unique), _READ_SLICE):
            records += [
                r
                for p in unique[start : start + _READ_SLICE]
                if (r := self.state.image(run_id, p)) and r.status != "exported"
            ]
            await asyncio.sleep(0)
        return await self.export(records) if records else None

    async def export(self, records: Sequence[ImageRecord]) -> BatchResult:
        """Write one matches part and one images part for ``records``; then, in one transaction,
        register them and mark the images exported.

        Call it from the event loop's thread, which owns the checkpoint database. The parts are
        cleaned, encoded and made durable under their final names in a worker thread, and only
        then registered: a kill before that commit leaves orphans, deleted on the next start.
        One batch is in memory at a time as long as the caller awaits each export.

        Raises:
            StorageError: a part could not be written (nothing is registered).
        """
        finished: list[Finished] = []
        for start in range(0, len(records), _READ_SLICE):
            finished += self.read(records[start : start + _READ_SLICE])
            await asyncio.sleep(0)
        seq = self._next_seq()
        parts, result = await asyncio.to_thread(self._write, finished, seq)
        run_id = self.run.run_id
        self.state.exported(
            parts, [(run_id, r.path) for r in records], clusters=self.new_clusters()
        )
        return result

    def new_clusters(self) -> dict[str, str]:
        """The offer-image clusters the parts written since the last call name first: to
        register in the same transaction as those parts."""
        return self.judge.take_new_clusters() if self.judge is not None else {}

    def write(self, records: Sequence[ImageRecord]) -> tuple[list[PartRecord], BatchResult]:
        """Write the parts for ``records`` on this thread without registering them: until the
        caller commits them they are orphans, which the next start deletes."""
        return self._write(self.read(records), self._next_seq())

    def read(self, records: Sequence[ImageRecord]) -> list[Finished]:
        """The stored answers of ``records``, from the checkpoint database (its thread only)."""
        return [Finished(record, self._answer(record)) for record in records]

    def _answer(self, record: ImageRecord) -> StoredResponse | None:
        # A failed image has no answer to clean: it gets an images row and no offers.
        if record.status == "failed" or record.response_id is None:
            return None
        return self.state.response(record.response_id)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _write(
        self, finished: Sequence[Finished], seq: int
    ) -> tuple[list[PartRecord], BatchResult]:
        """Clean, encode and durably write part ``seq``. Touches neither the checkpoint database
        nor this exporter's state, so it may run in a worker thread."""
        match_rows: list[MatchRow] = []
        image_rows: list[ImageRow] = []
        for item in finished:
            image_row, offers = self.clean(item)
            image_rows.append(image_row)
            match_rows.extend(offers)
        run_id, run_date = self.run.run_id, self.run.run_date
        parts = [
            self.feed.write_part("matches", run_id, run_date, seq, matches_table(match_rows)),
            self.feed.write_part("images", run_id, run_date, seq, images_table(image_rows)),
        ]
        records = [item.record for item in finished]
        failed = sum(r.status == "failed" for r in records)
        return parts, BatchResult(
            images_ok=len(records) - failed,
            images_failed=failed,
            reused=sum(r.reused for r in records if r.status != "failed"),
            match_rows=len(match_rows),
        )

    def clean(self, finished: Finished) -> tuple[ImageRow, list[MatchRow]]:
        """One finished image as its images row and its matches rows."""
        record, stored = finished.record, finished.answer
        if stored is None:
            failed = ImageRow(
                query_path=record.query_path,
                query_sha256=record.sha256,
                run_id=record.run_id,
                protocol=self.protocol,
                searched_at=None,
                engine_version=__version__,
                status="failed",
                failure_reason=record.reason or "unknown",
                failure_message=record.message,
                calls=record.calls,
                width=record.width,
                height=record.height,
                preprocess_steps=record.steps,
                sku=record.sku,
                sku_title=record.title,
            )
            return failed, []
        cleaned = parse_response(stored.protocol, stored.raw_body, self.filters)
        lineage = Lineage(
            query_path=record.query_path,
            query_sha256=record.sha256 or stored.sha256,
            run_id=record.run_id,
            protocol=stored.protocol,
            searched_at=stored.searched_at,
            engine_version=__version__,
            sku=record.sku,
            sku_title=record.title,
        )
        if self.judge is None:
            return self._image_row(record, lineage, cleaned), [
                (lineage, offer) for offer in cleaned.offers
            ]
        # A photo on the web or on S3 has no local file to fall back on.
        local = None if "://" in record.query_path else record.query_path
        offers, evidence = self.judge.judge(
            lineage.query_sha256, local, stored.protocol, cleaned.offers
        )
        row = self._image_row(record, lineage, cleaned, evidence)
        return row, [(lineage, o, e) for o, e in zip(offers, evidence, strict=True)]

    @staticmethod
    def _image_row(
        record: ImageRecord,
        lineage: Lineage,
        cleaned: CleanResult,
        evidence: Sequence[OfferEvidence] | None = None,
    ) -> ImageRow:
        return ImageRow.from_result(
            lineage,
            cleaned,
            calls=record.calls,
            reused=record.reused,
            width=record.width,
            height=record.height,
            preprocess_steps=record.steps,
            evidence=evidence,
        )
