"""Preprocessing speed and memory: :mod:`engine.preprocess` against the seed's way.

The seed's way: full ``Image.open`` decode, ``convert("RGB")`` for RGBA/P, LANCZOS resize to a
long side of 800, JPEG quality 90, base64. Ours: :func:`~engine.preprocess.prepare_image`
(DCT-scaled decode, same output rules) plus base64.

Figures printed:

- images/s on one core over 12 buyer photos of 4240x4240 (18 MP JPEG), both ways, and the ratio;
- images/s through :class:`~engine.pool.PreprocessPool` with 1 worker and with every core;
- peak RSS of a fresh process preparing one 50 MP photo (7072x7072), both ways;
- whether the optional steps (``trim_border``, ``autocontrast``) help matching: top-1 hits of
  the sample photos against the sandbox catalogue with each combination (they stay off by
  default unless this shows they help).

The corpus (:mod:`tools.samplegen`) is generated once into ``build/bench/`` and reused.
Run: ``python -m bench.preprocess``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import multiprocessing
import resource
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from engine.pool import PreprocessPool
from engine.preprocess import PreparedImage, PreprocessOptions, prepare_image
from engine.sandbox.catalogue import DEFAULT_CATALOGUE, Catalogue
from tools.samplegen import write_corpus, write_large

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "bench"
SAMPLES = ROOT / "sample_images"
LARGE_COUNT = 12
HUGE_SIDE = 7072  # samplegen photos are square: 7072x7072 is 50 MP
MAX_SIDE = 800
POOL_ROUNDS = 3


def seed_way(path: Path) -> str:
    """The seed's preprocessing, as its code does it."""
    img: Image.Image = Image.open(path)
    if img.mode in ("RGBA", "P"):
        img = img.convert("RGB")
    width, height = img.size
    if max(width, height) > MAX_SIDE:
        factor = MAX_SIDE / max(width, height)
        img = img.resize((round(width * factor), round(height * factor)), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def our_way(path: Path) -> str:
    result = prepare_image(path)
    if not isinstance(result, PreparedImage):
        raise RuntimeError(f"{path}: {result.reason}: {result.message}")
    return result.base64()


def ensure_corpus() -> tuple[list[Path], Path]:
    """The large corpus and the 50 MP photo (buyer photos of :mod:`tools.samplegen`), made once."""
    large = CACHE / "large"
    if len(list(large.glob("*.jpg"))) < LARGE_COUNT:
        write_corpus(large, LARGE_COUNT, large=True, progress=False)
    huge = CACHE / "huge" / f"photo_{HUGE_SIDE}.jpg"
    if not huge.exists():
        write_large(huge, side=HUGE_SIDE)
    return sorted(large.glob("*.jpg"))[:LARGE_COUNT], huge


def one_core_rates(paths: list[Path]) -> tuple[float, float]:
    """Images/s of the seed's way and ours in this process, interleaved so load hits both."""
    seed_way(paths[0])
    our_way(paths[0])
    spent = {"seed": 0.0, "ours": 0.0}
    for path in paths:
        for name, way in (("seed", seed_way), ("ours", our_way)):
            start = time.perf_counter()
            way(path)
            spent[name] += time.perf_counter() - start
    return len(paths) / spent["seed"], len(paths) / spent["ours"]


async def pool_rate(paths: list[Path], workers: int) -> tuple[float, int]:
    """Images/s through a warmed-up pool over ``POOL_ROUNDS`` passes, and how many failed."""
    async with PreprocessPool(workers=workers) as pool:
        await asyncio.gather(*(pool.prepare(paths[i % len(paths)]) for i in range(workers)))
        batch = paths * POOL_ROUNDS
        start = time.perf_counter()
        results = await asyncio.gather(*(pool.prepare(path) for path in batch))
        elapsed = time.perf_counter() - start
    return len(batch) / elapsed, sum(not result.ok for result in results)


def _peak_rss_kib(way_name: str, path: Path) -> tuple[int, int]:
    """In a fresh process: peak RSS (KiB) after imports, and after preparing ``path``."""
    way: Callable[[Path], str] = {"seed": seed_way, "ours": our_way}[way_name]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    way(path)
    return before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss(way_name: str, path: Path) -> tuple[int, int]:
    # Not "spawn": Linux keeps the high-water mark across exec, so a spawned child would report
    # this (bigger) process's RSS. A child forked from the small forkserver starts clean.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        return executor.submit(_peak_rss_kib, way_name, path).result()


def optional_steps_hit_rates() -> None:
    """Whether trim_border / autocontrast help matching: top-1 hits of the sample photos
    against the sandbox catalogue, and the mean lead of the true product over the runner-up."""
    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    truth = json.loads((SAMPLES / "truth.json").read_text())
    print(f"optional steps, {len(truth)} sample photos against the sandbox catalogue:")
    for trim, contrast in ((False, False), (True, False), (False, True), (True, True)):
        options = PreprocessOptions(trim_border=trim, autocontrast=contrast)
        hits = tried = 0
        lead = 0.0
        for relative, offer_id in truth.items():
            prepared = prepare_image(SAMPLES / relative, options)
            if not isinstance(prepared, PreparedImage):
                continue
            ranked = catalogue.search(prepared.jpeg)
            tried += 1
            hits += ranked[0].product.offer_id == offer_id
            true = next(m.similarity for m in ranked if m.product.offer_id == offer_id)
            lead += true - max(m.similarity for m in ranked if m.product.offer_id != offer_id)
        print(
            f"  trim_border={trim!s:<5} autocontrast={contrast!s:<5}: top-1 {hits}/{tried},"
            f" mean lead {lead / tried:.3f}"
        )


def main() -> None:
    optional_steps_hit_rates()
    paths, huge = ensure_corpus()
    cores = PreprocessPool().workers  # its default: every core this process may use
    with Image.open(paths[0]) as first, Image.open(huge) as big:
        (width, height), huge_size = first.size, big.size
    print(f"preprocess: {len(paths)} JPEGs of {width}x{height} ({width * height / 1e6:.1f} MP)")

    seed_rate, our_rate = one_core_rates(paths)
    print(f"  one core, seed's way : {seed_rate:7.2f} images/s")
    print(f"  one core, ours       : {our_rate:7.2f} images/s   ({our_rate / seed_rate:.1f}x)")

    single, failed = asyncio.run(pool_rate(paths, 1))
    print(f"  pool, 1 worker       : {single:7.2f} images/s   ({failed} failed)")
    if cores > 1:
        full, failed = asyncio.run(pool_rate(paths, cores))
        print(
            f"  pool, {cores} workers      : {full:7.2f} images/s   ({failed} failed; "
            f"{full / single:.2f}x one worker, {full / our_rate:.2f}x one core in-process)"
        )

    huge_mp = huge_size[0] * huge_size[1] / 1e6
    print(f"peak RSS, fresh process, one {huge_size[0]}x{huge_size[1]} JPEG ({huge_mp:.0f} MP):")
    for name, label in (("seed", "seed's way"), ("ours", "ours      ")):
        before, after = peak_rss(name, huge)
        image = (after - before) / 1024
        print(f"  {label}: {after / 1024:7.1f} MiB peak ({image:6.1f} MiB for the image)")


if __name__ == "__main__":
    main()
