"""Engine benchmarks: quota use, overhead over preprocessing, memory at scale, resume latency.

Every job runs against the sandbox gateway on loopback. Figures printed:

1. quota: a job under ``10/2s`` against a sandbox enforcing the same window (60 images, ``seed``
   protocol, 60 calls): share of the allowed calls used, rate-limit answers, and the most calls
   the sandbox admitted in any 2 s window;
2. overhead: images/s of a whole job (``ocean``, 2 calls per image, no effective rate limit)
   over 300 buyer photos, against images/s of the bare :class:`~engine.pool.PreprocessPool`
   with as many workers on the same photos; the CPU the job's own process spends per photo;
   the same job once more with the sandbox's matcher on;
3. memory: peak RSS of the engine's process for a job over 1,000 and over 10,000 small photos,
   each in a fresh process (the pool's worker processes are not included);
4. resume: a 10,000-photo job stopped at 9,000 (``limit``), started again: time from calling
   :func:`~engine.runner.run_job` to the first call reaching the gateway.

Where the engine alone is measured (2 to 4) the sandbox ranks its catalogue in a fixed order
instead of matching the photo: its matcher costs about 17 ms of CPU per query in this process,
which would compete with the engine for the cores and hide what the engine costs. Job outputs
go to ``build/bench/engine-runs/``, emptied at each start.

Corpora are generated once into ``build/bench/`` and reused. Run: ``python -m bench.engine``.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from engine.credentials import FIELDS, TOKEN_FILE_ENV, Credentials, load_credentials
from engine.jobfile import Job, parse_job
from engine.pool import PreprocessPool
from engine.ratelimit import Rate, most_in_window
from engine.runner import run_job
from engine.sandbox import Sandbox, SandboxConfig
from engine.sandbox.catalogue import DEFAULT_CATALOGUE, Catalogue, Match
from tools.samplegen import write_corpus

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "build" / "bench"
RUNS = CACHE / "engine-runs"
CORPUS_COUNT = 300
QUOTA = Rate(10, 2.0)
QUOTA_IMAGES = 60
UNLIMITED = "100000/1s"
SMALL_SIDE = 64
SMALL_COUNT = 10_000
SMALL_FOLDER = 1_000  # photos per subfolder; the 1,000-photo job reads the first one
RESUME_DONE = 9_000
SMALL_PAGE_SIZE = 5  # offers per answer in the memory and resume jobs: bounds their run time
QUIET = 3600.0  # progress interval: the benchmark prints its own lines


class _FixedRanking(Catalogue):
    """The catalogue's products in catalogue order, whatever the photo: a gateway at no cost."""

    def __init__(self, catalogue: Catalogue) -> None:
        # No descriptors: search never compares images.
        self.products = catalogue.products
        count = len(catalogue.products)
        self._ranking = tuple(Match(p, 1.0 - i / count) for i, p in enumerate(self.products))

    def search(self, image: bytes) -> list[Match]:
        return list(self._ranking)


def _note(text: str) -> None:
    print(f"[bench.engine] {text}", file=sys.stderr, flush=True)


def _figure(label: str, value: str) -> None:
    print(f"   {label:<38}: {value}", flush=True)


def _credentials(config: SandboxConfig) -> Credentials:
    return Credentials(
        app_key=config.app_key,
        app_secret=config.app_secret,
        access_token=config.access_token,
        refresh_token=config.refresh_token,
    )


def _job_data(
    inputs: list[Path],
    out: Path,
    url: str,
    *,
    protocol: str,
    rate: str,
    page_size: int = 20,
    **engine: float,
) -> dict[str, Any]:
    """A job mapping as read from TOML (see :func:`engine.jobfile.parse_job`)."""
    return {
        "inputs": {"paths": [str(p) for p in inputs]},
        "output": {"dir": str(out)},
        "gateway": {
            "protocol": protocol,
            "endpoint": url,
            "rate": rate,
            "page_size": page_size,
            "attempts": 6,
            "backoff_base": 0.05,
            "backoff_max": 1.0,
            "timeout": 10,
        },
        "engine": {"searches": 4, **engine},
        # The pipeline's own cost is measured: offer evidence has its own bench (bench.evidence).
        "evidence": {"enabled": False},
    }


def _job(data: Mapping[str, Any]) -> Job:
    return parse_job(data, base=RUNS)


@contextmanager
def _private_token_store() -> Iterator[None]:
    """Keep refreshed sandbox tokens out of the user's token store."""
    previous = os.environ.get(TOKEN_FILE_ENV)
    os.environ[TOKEN_FILE_ENV] = str(RUNS / "tokens.json")
    try:
        yield
    finally:
        if previous is None:
            del os.environ[TOKEN_FILE_ENV]
        else:
            os.environ[TOKEN_FILE_ENV] = previous


# -- corpora -----------------------------------------------------------------------------------


def ensure_corpus() -> list[Path]:
    """300 buyer photos of :mod:`tools.samplegen` (800 to 1,400 px), made once."""
    folder = CACHE / f"corpus{CORPUS_COUNT}"
    if len(list(folder.glob("*.jpg"))) < CORPUS_COUNT:
        _note(f"generating {CORPUS_COUNT} buyer photos into {folder} (once, ~1.5 min)")
        write_corpus(folder, CORPUS_COUNT, progress=False)
    return sorted(folder.glob("*.jpg"))[:CORPUS_COUNT]


def ensure_small() -> Path:
    """10,000 distinct 64x64 JPEGs in folders of 1,000, made once; returns the root folder.

    Each photo draws its own number: identical bytes would be searched once, not 10,000 times.
    """
    root = CACHE / f"small{SMALL_COUNT}"
    complete = root / ".complete"
    if complete.exists():
        return root
    _note(f"generating {SMALL_COUNT:,} small photos into {root} (once)")
    for index in range(SMALL_COUNT):
        folder = root / f"g{index // SMALL_FOLDER:02d}"
        if index % SMALL_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        background = (index * 37 % 256, index * 91 % 256, index * 53 % 256)
        image = Image.new("RGB", (SMALL_SIDE, SMALL_SIDE), background)
        draw = ImageDraw.Draw(image)
        x, y = index % 40, index // 40 % 40 + 14
        draw.rectangle((x, y, x + 20, y + 20), fill=(255 - background[0], index % 256, 128))
        # A label of its own colours: the number must show whatever the background.
        draw.rectangle((0, 0, 30, 12), fill=(0, 0, 0))
        draw.text((2, 1), str(index), fill=(255, 255, 255))
        image.save(folder / f"s{index:05d}.jpg", quality=85)
    complete.touch()
    return root


# -- 1. quota ----------------------------------------------------------------------------------


async def _quota(catalogue: Catalogue, paths: list[Path]) -> dict[str, Any]:
    config = SandboxConfig(rate=QUOTA)
    async with Sandbox(config, catalogue=catalogue) as sandbox:
        job = _job(
            _job_data(
                paths,
                RUNS / "quota",
                sandbox.url,
                protocol="seed",
                rate=f"{QUOTA.calls}/{QUOTA.period:g}s",
                flush_seconds=2.0,
                part_images=100,
            )
        )
        start = time.monotonic()
        outcome = await run_job(
            job, credentials=_credentials(config), fresh=True, progress_interval=QUIET
        )
        wall = time.monotonic() - start
        return {"outcome": outcome, "wall": wall, "stats": sandbox.stats()}


def quota(catalogue: Catalogue, corpus: list[Path]) -> None:
    _note(f"1/4 quota: {QUOTA_IMAGES} photos at {QUOTA} (~15 s)")
    result = asyncio.run(_quota(catalogue, corpus[:QUOTA_IMAGES]))
    stats, outcome = result["stats"], result["outcome"]
    arrivals = sorted(stats["arrivals"])
    calls = stats["total_calls"]
    if not arrivals:
        print(
            f"1. quota: no call reached the sandbox ({outcome.exit_code.name}: {outcome.message})"
        )
        return
    slot = QUOTA.period / QUOTA.calls
    # Each admitted call occupies one slot of the allowance: N calls span N slots, not N - 1.
    span = arrivals[-1] - arrivals[0] + slot
    windows = span / QUOTA.period
    share = calls / (windows * QUOTA.calls)
    wall_share = calls / (result["wall"] / QUOTA.period * QUOTA.calls)
    print(f"1. quota, rate {QUOTA} on both sides, {QUOTA_IMAGES} photos, seed protocol")
    _figure("job exit code", outcome.exit_code.name)
    _figure("calls made", str(calls))
    _figure(
        "elapsed, first call to last + 1 slot",
        f"{span:.2f} s = {windows:.2f} windows of {QUOTA.period:g} s",
    )
    _figure("share of allowed calls used", f"{share:.1%}   (target >= 95%)")
    _figure(
        "same over the job's wall time",
        f"{wall_share:.1%}   ({result['wall']:.2f} s, start-up and final flush included)",
    )
    _figure("rate-limit answers received", f"{stats['rate_limited']}   (target 0)")
    _figure(
        f"most calls in any {QUOTA.period:g} s window",
        f"{most_in_window(arrivals, QUOTA.period)}   (limit {QUOTA.calls})",
    )


# -- 2. overhead -------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    """CPU time of this process (every thread; not its worker processes)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _pool_rate(job: Job, paths: list[Path]) -> tuple[float, int, int]:
    """Images/s of the bare pool over ``paths`` (start-up included), failures, workers."""
    start = time.perf_counter()
    async with PreprocessPool(job.engine.preprocess_workers, job.preprocess) as pool:
        results = await asyncio.gather(*(pool.prepare(path) for path in paths))
        workers = pool.workers
    elapsed = time.perf_counter() - start
    return len(paths) / elapsed, sum(not r.ok for r in results), workers


async def _engine_rate(catalogue: Catalogue, paths: list[Path], name: str) -> dict[str, Any]:
    config = SandboxConfig(rate=Rate.parse(UNLIMITED))
    async with Sandbox(config, catalogue=catalogue) as sandbox:
        job = _job(
            _job_data(
                [paths[0].parent],
                RUNS / name,
                sandbox.url,
                protocol="ocean",
                rate=UNLIMITED,
                flush_seconds=5.0,
                part_images=100,
            )
        )
        pool_rate, pool_failed, workers = await _pool_rate(job, paths)
        cpu = _cpu_seconds()
        start = time.perf_counter()
        outcome = await run_job(
            job, credentials=_credentials(config), fresh=True, progress_interval=QUIET
        )
        elapsed = time.perf_counter() - start
        return {
            "outcome": outcome,
            "rate": len(paths) / elapsed,
            "cpu_ms": (_cpu_seconds() - cpu) / len(paths) * 1000,
            "calls": sandbox.stats()["total_calls"],
            "pool_rate": pool_rate,
            "pool_failed": pool_failed,
            "workers": workers,
        }


def overhead(catalogue: Catalogue, corpus: list[Path]) -> None:
    _note(f"2/4 overhead: {len(corpus)} photos, pool alone then whole job, twice (~1 min)")
    fixed = asyncio.run(_engine_rate(_FixedRanking(catalogue), corpus, "overhead"))
    matched = asyncio.run(_engine_rate(catalogue, corpus, "overhead-matcher"))
    print(
        f"2. engine overhead, {len(corpus)} buyer photos (800-1,400 px), ocean protocol,"
        f" rate {UNLIMITED}, {fixed['workers']} preprocessing workers"
    )
    _figure(
        "pure preprocessing (PreprocessPool)",
        f"{fixed['pool_rate']:7.2f} images/s   ({fixed['pool_failed']} failed)",
    )
    _figure(
        "whole job, end to end",
        f"{fixed['rate']:7.2f} images/s   ({fixed['outcome'].exit_code.name},"
        f" {fixed['calls']} calls)",
    )
    _figure("ratio engine / pure preprocessing", f"{fixed['rate'] / fixed['pool_rate']:.2f}")
    _figure(
        "CPU of the job's own process per photo",
        f"{fixed['cpu_ms']:.1f} ms   (event loop, SQLite, cleaning, Parquet, and the sandbox)",
    )
    _figure(
        "same job, sandbox's matcher on",
        f"{matched['rate']:7.2f} images/s   ({matched['outcome'].exit_code.name}; ratio"
        f" {matched['rate'] / matched['pool_rate']:.2f} to that run's pool,"
        f" {matched['pool_rate']:.2f} images/s)",
    )


# -- 3. memory ---------------------------------------------------------------------------------


def _high_water_kib() -> int:
    """Peak RSS of this process's address space since it was exec'd (KiB).

    Not ``getrusage``: Linux carries ``ru_maxrss`` across ``exec``, so a child of a big process
    would report its parent's size.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure_child() -> None:
    """Child process entry: run the job given as JSON on stdin, print its peak RSS as JSON."""
    data = json.loads(sys.stdin.read())
    baseline = _high_water_kib()
    outcome = asyncio.run(
        run_job(_job(data), credentials=load_credentials(), fresh=True, progress_interval=QUIET)
    )
    print(
        json.dumps(
            {
                "exit_code": outcome.exit_code.name,
                "message": outcome.message,
                "baseline_kib": baseline,
                "peak_kib": _high_water_kib(),
                "elapsed": outcome.summary.get("elapsed_seconds"),
            }
        )
    )


async def _memory(catalogue: Catalogue, inputs: dict[int, Path]) -> dict[int, dict[str, Any]]:
    config = SandboxConfig(rate=Rate.parse(UNLIMITED))
    credentials = _credentials(config)
    env = dict(os.environ)
    for field, variable in FIELDS.items():
        env[variable] = getattr(credentials, field) or ""
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    results: dict[int, dict[str, Any]] = {}
    async with Sandbox(config, catalogue=catalogue) as sandbox:
        for count, folder in inputs.items():
            _note(f"3/4 memory: {count:,} photos in a fresh process")
            data = _job_data(
                [folder],
                RUNS / f"memory-{count}",
                sandbox.url,
                protocol="seed",
                rate=UNLIMITED,
                page_size=SMALL_PAGE_SIZE,
                flush_seconds=10.0,
                part_images=500,
            )
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from bench.engine import measure_child; measure_child()",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
            )
            out, _ = await child.communicate(json.dumps(data).encode())
            if child.returncode != 0:
                raise RuntimeError(f"the {count}-photo child failed (exit {child.returncode})")
            results[count] = json.loads(out.decode().strip().splitlines()[-1])
            results[count]["calls"] = sandbox.stats()["total_calls"]
            sandbox.reset_stats()
    return results


def memory(catalogue: Catalogue, small: Path) -> None:
    inputs = {SMALL_FOLDER: small / "g00", SMALL_COUNT: small}
    results = asyncio.run(_memory(_FixedRanking(catalogue), inputs))
    print(
        f"3. memory, {SMALL_SIDE}x{SMALL_SIDE} photos, seed protocol, page size"
        f" {SMALL_PAGE_SIZE}, part_images 500, each job in a fresh process"
    )
    for count, r in results.items():
        _figure(
            f"peak RSS, {count:,} photos",
            f"{r['peak_kib'] / 1024:6.1f} MiB   (after imports {r['baseline_kib'] / 1024:.1f} MiB;"
            f" {r['exit_code']}, {r['calls']:,} calls, {r['elapsed']} s)",
        )
    ratio = results[SMALL_COUNT]["peak_kib"] / results[SMALL_FOLDER]["peak_kib"]
    _figure(
        f"ratio {SMALL_COUNT:,} / {SMALL_FOLDER:,} photos",
        f"{ratio:.2f}   (goal: flat; the engine's process, not its preprocessing workers)",
    )


# -- 4. resume ---------------------------------------------------------------------------------


async def _resume(catalogue: Catalogue, small: Path) -> dict[str, Any]:
    config = SandboxConfig(rate=Rate.parse(UNLIMITED))
    async with Sandbox(config, catalogue=catalogue) as sandbox:
        job = _job(
            _job_data(
                [small],
                RUNS / "resume",
                sandbox.url,
                protocol="seed",
                rate=UNLIMITED,
                page_size=SMALL_PAGE_SIZE,
                flush_seconds=10.0,
                part_images=500,
            )
        )
        credentials = _credentials(config)
        first = await run_job(
            job.with_overrides(limit=RESUME_DONE),
            credentials=credentials,
            fresh=True,
            progress_interval=QUIET,
        )
        done_calls = sandbox.stats()["total_calls"]
        sandbox.reset_stats()
        # Arrivals are the sandbox's time.monotonic() at admission, in this very process.
        start = time.monotonic()
        second = await run_job(job, credentials=credentials, progress_interval=QUIET)
        end = time.monotonic()
        stats = sandbox.stats()
        return {
            "first": first,
            "done_calls": done_calls,
            "second": second,
            "to_first_call": min(stats["arrivals"]) - start if stats["arrivals"] else None,
            "resume_total": end - start,
            "resume_calls": stats["total_calls"],
        }


def resume(catalogue: Catalogue, small: Path) -> None:
    _note(f"4/4 resume: {RESUME_DONE:,} of {SMALL_COUNT:,} photos first, then the rest")
    r = asyncio.run(_resume(_FixedRanking(catalogue), small))
    done = r["first"].summary.get("status", {}).get("exported", 0)
    print(f"4. resume, {SMALL_COUNT:,}-photo job stopped by limit {RESUME_DONE:,}, started again")
    _figure(
        "first invocation",
        f"{r['first'].exit_code.name}, {r['done_calls']:,} calls, {done:,} photos exported",
    )
    first_call = r["to_first_call"]
    shown = "no call made" if first_call is None else f"{first_call:.3f} s"
    _figure("start of run_job to first new call", shown)
    _figure(
        "second invocation, whole",
        f"{r['resume_total']:.2f} s, {r['resume_calls']:,} calls, {r['second'].exit_code.name}",
    )


def main() -> None:
    # Job outputs are scratch: only the corpora are worth keeping between runs.
    shutil.rmtree(RUNS, ignore_errors=True)
    RUNS.mkdir(parents=True)
    started = time.monotonic()
    corpus = ensure_corpus()
    small = ensure_small()
    catalogue = Catalogue.load(DEFAULT_CATALOGUE)
    with _private_token_store():
        quota(catalogue, corpus)
        overhead(catalogue, corpus)
        memory(catalogue, small)
        resume(catalogue, small)
    _note(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
