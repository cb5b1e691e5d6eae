"""Start-up time of the light commands: ``img1688 --help``, ``status`` and ``sign``.

These are what a person types to look around, and what scripts poll, so they must answer at
once: they import argparse, SQLite and hashlib, never pyarrow, Pillow, aiohttp, numpy or the
runner (``tests/test_cli.py`` pins that without timing). Each command runs ``RUNS`` times in a
fresh process, as a shell would start it (the ``img1688`` console script when installed, else
``python -m engine``); figures printed per command: the median and the fastest wall time, and
the median as a share of the :data:`TARGET_SECONDS` target.

``status`` reads a checkpoint database made by :class:`engine.state.StateStore` (a run with a
few photos in each state it can show) in ``build/bench/startup/``. Run:
``python -m bench.startup``.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from engine.state import NewAnswer, StateStore, utc_now

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "bench" / "startup"
RUNS = 10
TARGET_SECONDS = 0.3
PHOTOS = 20


def command() -> list[str]:
    """How a user starts img1688 with this interpreter."""
    script = Path(sys.executable).with_name("img1688")
    return [str(script)] if script.exists() else [sys.executable, "-m", "engine"]


def make_output(out: Path) -> Path:
    """An output directory whose checkpoints hold one unfinished run, as ``status`` shows."""
    shutil.rmtree(out, ignore_errors=True)
    with StateStore(out) as state:
        run = state.start_run("bench", "2024-01-01", "{}")
        for index in range(PHOTOS):
            path = f"/photos/{index:03d}.jpg"
            state.discovered(run.run_id, path, size=1000 + index, mtime_ns=index)
            if index % 2:
                answer = NewAnswer(
                    sha256=f"{index:064x}",
                    request_key="{}",
                    protocol="seed",
                    raw_body="{}",
                    searched_at=utc_now(),
                    calls=1,
                )
                state.fetched(run.run_id, [path], answer, run_calls=index)
    return out


def wall_times(argv: list[str], runs: int = RUNS) -> list[float]:
    """Wall time of ``runs`` fresh processes of ``argv``; raises if one fails."""
    times: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    out = make_output(OUT / "out")
    base = command()
    cases = {
        "img1688 --help": ["--help"],
        "img1688 status OUT": ["status", str(out)],
        "img1688 sign ocean ...": [
            "sign",
            "ocean",
            "--secret",
            "bench-secret",
            "--path",
            "param2/1/system/currentTime/1000000",
            "b=2",
            "a=1",
        ],
    }
    print(f"   {RUNS} fresh processes each, target {TARGET_SECONDS} s", flush=True)
    wall_times([*base, "--help"], runs=2)  # warm the page cache and the bytecode
    for label, args in cases.items():
        times = wall_times([*base, *args])
        median = statistics.median(times)
        print(
            f"   {label:<24}: median {median * 1000:6.0f} ms, fastest {min(times) * 1000:6.0f} ms,"
            f" {median / TARGET_SECONDS:.2f} x target",
            flush=True,
        )


if __name__ == "__main__":
    main()
