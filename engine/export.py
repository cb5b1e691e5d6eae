"""Clean and store: turn finished images (stored answers or failures) into Parquet parts.

Used by the running engine for each batch, and by ``img1688 reclean`` to rebuild a finished
run's feed from the stored answers with today's cleaning rules, without a single call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine import __version__
from engine.clean import Offer, WholesaleFilters, parse_response
from engine.feed import Feed
from engine.schema import ImageRow, Lineage, images_table, matches_table
from engine.state import ImageRecord, PartRecord, Run, StateStore


@dataclass(frozen=True)
class BatchResult:
    images_ok: int
    images_failed: int
    reused: int
    match_rows: int


class Exporter:
    """Writes batches of one run's finished images as Parquet parts, durably registered."""

    def __init__(
        self, state: StateStore, feed: Feed, run: Run, filters: WholesaleFilters, protocol: str
    ) -> None:
        self.state = state
        self.feed = feed
        self.run = run
        self.filters = filters
        self.protocol = protocol
        self._seq = max((_seq_of(p.name) for p in state.parts(run.run_id)), default=0)

    def export_finished(self, paths: Sequence[str]) -> BatchResult | None:
        """Export the photos of ``paths`` not exported yet; ``None`` when there were none.

        A path queued twice (named twice in the inputs, say) is exported once: the status in
        the checkpoint database, not the queue, decides.
        """
        run_id = self.run.run_id
        records = [
            r
            for p in dict.fromkeys(paths)
            if (r := self.state.image(run_id, p)) and r.status != "exported"
        ]
        return self.export(records) if records else None

    def export(self, records: Sequence[ImageRecord]) -> BatchResult:
        """Write one matches part and one images part for ``records``; then, in one transaction,
        register them and mark the images exported."""
        parts, result = self.write(records)
        run_id = self.run.run_id
        self.state.exported(parts, [(run_id, r.path) for r in records])
        return result

    def write(self, records: Sequence[ImageRecord]) -> tuple[list[PartRecord], BatchResult]:
        """Write the parts for ``records`` without registering them: until the caller commits
        them they are orphans, which the next start deletes."""
        match_rows: list[tuple[Lineage, Offer]] = []
        image_rows: list[ImageRow] = []
        for record in records:
            image_row, offers = self.clean(record)
            image_rows.append(image_row)
            match_rows.extend(offers)
        self._seq += 1
        run_id, run_date = self.run.run_id, self.run.run_date
        parts = [
            self.feed.write_part("matches", run_id, run_date, self._seq, matches_table(match_rows)),
            self.feed.write_part("images", run_id, run_date, self._seq, images_table(image_rows)),
        ]
        failed = sum(r.status == "failed" for r in records)
        return parts, BatchResult(
            images_ok=len(records) - failed,
            images_failed=failed,
            reused=sum(r.reused for r in records if r.status != "failed"),
            match_rows=len(match_rows),
        )

    def clean(self, record: ImageRecord) -> tuple[ImageRow, list[tuple[Lineage, Offer]]]:
        """One finished image as its images row and its matches rows."""
        if record.status == "failed" or record.response_id is None:
            failed = ImageRow(
                query_path=record.path,
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
            )
            return failed, []
        stored = self.state.response(record.response_id)
        cleaned = parse_response(stored.protocol, stored.raw_body, self.filters)  # type: ignore[arg-type]
        lineage = Lineage(
            query_path=record.path,
            query_sha256=record.sha256 or stored.sha256,
            run_id=record.run_id,
            protocol=stored.protocol,
            searched_at=stored.searched_at,
            engine_version=__version__,
        )
        row = ImageRow.from_result(
            lineage,
            cleaned,
            calls=record.calls,
            reused=record.reused,
            width=record.width,
            height=record.height,
            preprocess_steps=record.steps,
        )
        return row, [(lineage, offer) for offer in cleaned.offers]


def _seq_of(part_name: str) -> int:
    # part-<run_id>-<seq>.parquet
    return int(part_name.rsplit("-", 1)[1].split(".", 1)[0])
