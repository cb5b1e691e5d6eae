"""Several apps: does a second app double the calls a job makes, within each app's window?

Two jobs run against one sandbox that knows two apps and enforces a strict ``10/2s`` window per
app (``seed`` protocol, one call per photo, the catalogue ranked in a fixed order so the
sandbox costs next to nothing): the first with one app over :data:`ONE_APP_PHOTOS` photos, the
second with both apps over twice as many. Figures printed:

* calls per second of each job, first arrival to last, and the second as a multiple of the
  first (target >= 1.9x);
* the most calls of any one app in any 2 s window (must be <= 10);
* rate-limit answers received (target 0).

The photos are small distinct JPEGs generated once into ``build/bench/``; job outputs go to
``build/bench/engine-runs/``. Run: ``python -m bench.apps`` (about 25 s).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from bench.engine import (
    CACHE,
    QUIET,
    RUNS,
    _figure,
    _FixedRanking,
    _job,
    _job_data,
    _private_token_store,
)
from engine.credentials import Credentials
from engine.ratelimit import Rate, most_in_window
from engine.runner import run_job
from engine.sandbox import Sandbox, SandboxApp, SandboxConfig
from engine.sandbox.catalogue import DEFAULT_CATALOGUE, Catalogue

RATE = Rate(10, 2.0)
ONE_APP_PHOTOS = 40
APPS = (
    SandboxApp("bench-app-one", "bench-secret-one", "bench-token-one"),
    SandboxApp("bench-app-two", "bench-secret-two", "bench-token-two"),
)


def _note(text: str) -> None:
    print(f"[bench.apps] {text}", file=sys.stderr, flush=True)


def ensure_photos(count: int) -> list[Path]:
    """``count`` distinct 96x96 JPEGs (each draws its own number), made once."""
    folder = CACHE / f"apps{count}"
    if len(list(folder.glob("*.jpg"))) < count:
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            image = Image.new("RGB", (96, 96), (index * 37 % 256, index * 91 % 256, 128))
            ImageDraw.Draw(image).text((4, 4), str(index), fill=(255, 255, 255))
            image.save(folder / f"a{index:04d}.jpg", quality=85)
    return sorted(folder.glob("*.jpg"))[:count]


def _credentials(app: SandboxApp) -> Credentials:
    return Credentials(app.app_key, app.app_secret, app.access_token, app.refresh_token)


async def _job_over(
    sandbox: Sandbox, photos: list[Path], apps: tuple[SandboxApp, ...], name: str
) -> dict[str, Any]:
    """Run one job over ``photos`` with ``apps``; the sandbox's arrivals per app after it."""
    folder = RUNS / f"{name}-photos"
    folder.mkdir(parents=True)
    for photo in photos:  # a folder of its own: the job walks folders
        (folder / photo.name).symlink_to(photo)
    sandbox.reset_stats()
    job = _job(
        _job_data([folder], RUNS / name, sandbox.url, protocol="seed", rate=str(RATE), page_size=5)
    )
    outcome = await run_job(
        job,
        credentials=[_credentials(app) for app in apps],
        fresh=True,
        progress_interval=QUIET,
    )
    stats = sandbox.stats()
    arrivals = {app.app_key: stats["apps"][app.app_key]["arrivals"] for app in apps}
    every = sorted(t for times in arrivals.values() for t in times)
    span = every[-1] - every[0] if len(every) > 1 else float("nan")
    return {
        "outcome": outcome,
        "calls": len(every),
        "per_second": (len(every) - 1) / span,
        "most_per_app": max(most_in_window(times, RATE.period) for times in arrivals.values()),
        "per_app": {key: len(times) for key, times in arrivals.items()},
        "rate_limited": stats["rate_limited"],
    }


async def _measure(photos: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    first, *extra = APPS
    config = SandboxConfig(
        rate=RATE,
        app_key=first.app_key,
        app_secret=first.app_secret,
        access_token=first.access_token,
        extra_apps=tuple(extra),
    )
    catalogue = _FixedRanking(Catalogue.load(DEFAULT_CATALOGUE))
    async with Sandbox(config, catalogue=catalogue) as sandbox:
        one = await _job_over(sandbox, photos[:ONE_APP_PHOTOS], APPS[:1], "apps-one")
        two = await _job_over(sandbox, photos, APPS, "apps-two")
    return one, two


def main() -> None:
    started = time.monotonic()
    RUNS.mkdir(parents=True, exist_ok=True)
    for name in ("apps-one", "apps-two", "apps-one-photos", "apps-two-photos"):
        shutil.rmtree(RUNS / name, ignore_errors=True)  # scratch; removes links, not photos
    photos = ensure_photos(ONE_APP_PHOTOS * len(APPS))
    _note(f"one app over {ONE_APP_PHOTOS} photos, then two apps over {len(photos)} (~25 s)")
    with _private_token_store():
        one, two = asyncio.run(_measure(photos))
    print(f"apps: {len(APPS)} apps at {RATE} each, a sandbox enforcing it per app, seed protocol")
    for label, result in (("one app", one), ("two apps", two)):
        _figure(
            f"{label}, calls per second",
            f"{result['per_second']:5.2f}   ({result['calls']} calls,"
            f" {result['outcome'].exit_code.name}, per app {result['per_app']})",
        )
    _figure(
        "two apps / one app", f"{two['per_second'] / one['per_second']:.2f}x   (target >= 1.9x)"
    )
    _figure(
        f"most calls of an app in any {RATE.period:g} s",
        f"{max(one['most_per_app'], two['most_per_app'])}   (limit {RATE.calls})",
    )
    _figure("rate-limit answers", f"{one['rate_limited'] + two['rate_limited']}   (target 0)")
    _note(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
