"""How big the checkpoint database grows over a year of nightly runs, and what keeping it small
costs each night.

A job of :data:`PHOTOS` unchanged photos runs every night for :data:`NIGHTS` nights with
``engine.reuse_ttl_days`` = :data:`TTL_DAYS`: each night a photo whose stored answer is fresh is
reused (:class:`engine.reuse.AnswerReuse`, as the engine decides), and the others are searched
again, each answer a realistic ocean body of :data:`OFFERS` offers (the sandbox's own format).
Each night ends as a completed run does, with
:meth:`engine.state.StateStore.prune` at the run's reuse horizon; a second database keeps
every answer and every image record, as before that step existed. Both go through the real
:class:`engine.state.StateStore` under ``build/bench/checkpoints/``.

Printed: answers kept and database size at the end for both, and the nightly prune's time
(median and worst). Run: ``python -m bench.checkpoints``.
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.reuse import AnswerReuse
from engine.sandbox.catalogue import DEFAULT_CATALOGUE, Catalogue
from engine.sandbox.formats import ocean_offer, ocean_success
from engine.state import STATE_FILE, NewAnswer, StateStore

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench" / "checkpoints"
PHOTOS = 200
NIGHTS = 365
TTL_DAYS = 7.0
OFFERS = 20
KEY = "{}"
FIRST_NIGHT = datetime(2026, 1, 1, 2, tzinfo=UTC)


def _night(state: StateStore, night: int, body: str, prune: bool) -> float | None:
    """One nightly run over every photo; the prune's seconds when ``prune``."""
    now = FIRST_NIGHT + timedelta(days=night)
    run = state.start_run(f"night-{night:03d}", now.date().isoformat(), "{}")
    run = replace(run, started_at=now.isoformat())  # the night's, not the bench's clock
    reuse = AnswerReuse(state, run, KEY, TTL_DAYS, now=now)
    for index in range(PHOTOS):
        path, sha = f"/photos/{index:04d}.jpg", f"{index:064x}"
        state.discovered(run.run_id, path, 1, 1)
        state.prepared(run.run_id, path, sha, 800, 800, ())
        if not reuse.reuse_same_bytes(path, sha):
            state.fetched(run.run_id, [path], NewAnswer(sha, KEY, "ocean", body, now, 2), 2)
    state.complete_run(run.run_id)
    if not prune:
        return None
    started = time.perf_counter()
    state.prune(run.run_id, reuse.since)
    return time.perf_counter() - started


def _year(name: str, body: str, prune: bool) -> tuple[int, int, list[float]]:
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    prunes: list[float] = []
    with StateStore(out) as state:
        for night in range(NIGHTS):
            took = _night(state, night, body, prune)
            if took is not None:
                prunes.append(took)
        answers = int(state.db.execute("SELECT count(*) FROM responses").fetchone()[0])
        state.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return answers, (out / STATE_FILE).stat().st_size, prunes


def main() -> None:
    products = Catalogue.load(DEFAULT_CATALOGUE).products
    offers = [ocean_offer(products[k % len(products)]) for k in range(OFFERS)]
    page = {"totalRecords": OFFERS, "totalPage": 1, "pageSize": OFFERS, "currentPage": 1}
    body = ocean_success(page | {"data": offers}).text()
    print(
        f"{PHOTOS} photos a night for {NIGHTS} nights, reuse TTL {TTL_DAYS:g} days,"
        f" answers of {len(body.encode()):,} bytes"
    )
    kept, kept_size, _ = _year("keep-all", body, prune=False)
    pruned, pruned_size, prunes = _year("prune", body, prune=True)
    print(f"{'':28}{'answers':>10}{'database':>12}")
    print(f"{'everything kept':28}{kept:>10,}{kept_size / 1e6:>10.1f} MB")
    print(f"{'pruned at each completion':28}{pruned:>10,}{pruned_size / 1e6:>10.1f} MB")
    print(
        f"database {kept_size / pruned_size:.0f}x smaller; nightly prune median"
        f" {statistics.median(prunes) * 1000:.1f} ms, worst {max(prunes) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
