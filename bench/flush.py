"""How long a flush stalls the event loop: a part written on the loop against in a thread.

A batch of :data:`PHOTOS` fetched photos, each answered by a realistic seed answer of
:data:`OFFERS` offers (the sandbox's own answer formats over its built-in catalogue), is
exported twice into fresh output directories under ``build/bench/flush/``:

- on the loop: :meth:`engine.export.Exporter.write` then the registering commit, synchronously
  on the event loop's thread (how the engine flushed before);
- off the loop: ``await`` :meth:`engine.export.Exporter.export` (cleaning, Parquet encoding and
  the durable write in a worker thread; reads and the commit on the loop).

Meanwhile a coroutine asks to wake every millisecond; figures printed for each way: the flush's
wall time, the longest the loop kept that coroutine waiting beyond its millisecond, and how
many times it woke. The call gate lives on the same loop: the longest stall is how late a call
could be admitted. What stalls remain in a thread are moments the worker holds the GIL in one
C call (pyarrow converting the columns of the whole part at once, about 0.1 s for 40,000 offer
rows; a default part of 500 photos is a quarter of that), a garbage collection, and the
registering commit's fsync. Run: ``python -m bench.flush``.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from engine.clean import WholesaleFilters
from engine.export import Exporter
from engine.feed import Feed
from engine.sandbox.catalogue import DEFAULT_CATALOGUE, Catalogue, Match
from engine.sandbox.formats import seed_success
from engine.state import ImageRecord, NewAnswer, StateStore, utc_now

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench" / "flush"
PHOTOS = 2_000
OFFERS = 20
TICK = 0.001


def _fill(state: StateStore, catalogue: Catalogue) -> tuple[Exporter, list[ImageRecord]]:
    """A run of PHOTOS fetched photos, each with an answer of its own."""
    run = state.start_run("bench", "2024-01-01", "{}")
    products = catalogue.products
    records: list[ImageRecord] = []
    for index in range(PHOTOS):
        path = f"/photos/{index:05d}.jpg"
        state.discovered(run.run_id, path, size=1, mtime_ns=1)
        ranked = [products[(index + k) % len(products)] for k in range(OFFERS)]
        body = seed_success([Match(p, 0.99 - k / 100) for k, p in enumerate(ranked)], 50).text()
        answer = NewAnswer(f"{index:064x}", "{}", "seed", body, utc_now(), calls=1)
        state.fetched(run.run_id, [path], answer, run_calls=index + 1)
    for index in range(PHOTOS):
        record = state.image(run.run_id, f"/photos/{index:05d}.jpg")
        assert record is not None
        records.append(record)
    return Exporter(state, Feed(state.out), run, WholesaleFilters(), "seed"), records


Flush = Callable[[Exporter, list[ImageRecord]], Awaitable[object]]


async def _stalls(
    flush: Flush, exporter: Exporter, records: list[ImageRecord]
) -> tuple[float, float, int]:
    """Wall time of one flush, the longest extra wait of a 1 ms ticker meanwhile, its wakes."""
    worst, wakes, running = 0.0, 0, True

    async def tick() -> None:
        nonlocal worst, wakes
        while running:
            asked = time.perf_counter()
            await asyncio.sleep(TICK)
            worst = max(worst, time.perf_counter() - asked - TICK)
            wakes += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(TICK * 5)  # the ticker is in its stride
    worst, wakes = 0.0, 0
    started = time.perf_counter()
    await flush(exporter, records)
    elapsed = time.perf_counter() - started
    running = False
    await ticker
    return elapsed, worst, wakes


async def _on_the_loop(exporter: Exporter, records: list[ImageRecord]) -> None:
    parts, _ = exporter.write(records)
    exporter.state.exported(parts, [(r.run_id, r.path) for r in records])


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    ways: dict[str, Flush] = {
        "on the loop (before)": _on_the_loop,
        "in a thread (now)": lambda exporter, records: exporter.export(records),
    }
    print(f"   one flush of {PHOTOS:,} answers x {OFFERS} offers; a ticker asks every 1 ms")
    for label, way in ways.items():
        with StateStore(OUT / label.split(" (")[0].replace(" ", "-")) as state:
            exporter, records = _fill(state, catalogue)
            elapsed, worst, wakes = asyncio.run(_stalls(way, exporter, records))
        print(
            f"   {label:<22}: flush {elapsed:5.2f} s, longest stall {worst * 1000:7.1f} ms,"
            f" ticker woke {wakes} times",
            flush=True,
        )


if __name__ == "__main__":
    main()
