"""Helpers for the tests that run whole jobs against the sandbox on loopback.

In-process jobs (``run_job``): :func:`make_job`, :func:`creds`, the feed read back with
:func:`read_table`, its rows checked with :func:`assert_every_photo_once`. The engine as a real
subprocess (``python -m engine run``): :func:`engine_env` and :func:`start_engine`, and its
checkpoint database read beside it (:func:`image_statuses`), a state to wait for with
:func:`tests.waiting.wait_for`; run to its end, crashed at a named point by the crash kit or
not, with :func:`invoke`.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow.dataset as ds

from engine.credentials import Credentials
from engine.jobfile import Job, parse_job
from engine.sandbox import Sandbox, SandboxConfig
from engine.state import STATE_FILE
from tests.paths import REPO
from tests.waiting import wait_for


def creds(config: SandboxConfig, **overrides: str) -> Credentials:
    """The credentials of the sandbox's first app, with ``overrides`` (e.g. a wrong secret)."""
    values = {
        "app_key": config.app_key,
        "app_secret": config.app_secret,
        "access_token": config.access_token,
        "refresh_token": config.refresh_token,
    }
    values.update(overrides)
    return Credentials(**values)  # type: ignore[arg-type]


def make_job(
    photos: Path | str,
    out: Path | str,
    url: str,
    *,
    protocol: str = "ocean",
    base: Path | None = None,
    **sections: dict[str, Any],
) -> Job:
    """A job over ``photos`` into ``out`` (folders, or ``s3://`` URLs) against the gateway at
    ``url``: fast retries, four searches, small parts, no offer evidence; ``sections`` update
    its tables key by key. Relative paths are read against ``base``, by default the folder
    ``out`` is in (an ``out`` URL needs one)."""
    data: dict[str, Any] = {
        "inputs": {"paths": [str(photos)]},
        "output": {"dir": str(out)},
        "gateway": {
            "protocol": protocol,
            "endpoint": url,
            "rate": "1000/1s",
            "attempts": 6,
            "backoff_base": 0.01,
            "backoff_max": 0.05,
            "timeout": 5,
        },
        "engine": {"searches": 4, "flush_seconds": 0.5, "part_images": 8},
        # Off unless a test turns it on: seconds of image work that only evidence tests need.
        "evidence": {"enabled": False},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    if base is None:
        assert isinstance(out, Path), "an output URL has no parent folder: give a base"
        base = out.parent
    return parse_job(data, base=base)


def read_table(out: Path, table: str) -> ds.Dataset:
    """The ``matches`` or ``images`` table of the feed in ``out``, as a reader sees it."""
    return ds.dataset(out / table, format="parquet", partitioning="hive")


def image_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted: the photos a job over it discovers."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def assert_every_photo_once(
    images: list[dict[str, Any]], matches: list[dict[str, Any]], photos: Path
) -> None:
    """The ``images`` and ``matches`` rows of one feed over the photos under ``photos``: one
    ``images`` row per photo, each offer once per photo, and as many ``matches`` rows per photo
    as its ``offers_kept`` says."""
    assert Counter(r["query_path"] for r in images) == Counter(map(str, image_files(photos)))
    assert len({(r["query_path"], r["item_id"]) for r in matches}) == len(matches)
    per_photo = Counter(r["query_path"] for r in matches)
    assert all(per_photo[r["query_path"]] == r["offers_kept"] for r in images)


# --- the engine as a subprocess -----------------------------------------------------------


def engine_env(config: SandboxConfig, tmp_path: Path, *pythonpath: Path) -> dict[str, str]:
    """The environment of ``python -m engine run`` with the sandbox's first app as credentials
    and a private token store; ``pythonpath`` folders go before the checkout (a
    ``sitecustomize`` that injects a fault, say)."""
    env = dict(os.environ)
    env.update(
        IMG1688_APP_KEY=config.app_key,
        IMG1688_APP_SECRET=config.app_secret,
        IMG1688_ACCESS_TOKEN=config.access_token,
        IMG1688_REFRESH_TOKEN=config.refresh_token or "",
        IMG1688_TOKEN_FILE=str(tmp_path / "tokens.json"),
        PYTHONPATH=os.pathsep.join(str(p) for p in (*pythonpath, REPO)),
    )
    return env


async def start_engine(job: Path, env: dict[str, str], *extra: str) -> asyncio.subprocess.Process:
    """``python -m engine run JOB`` as a subprocess; its stderr is piped, its stdout dropped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine",
        "run",
        str(job),
        *extra,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def kill_rounds(
    job: Path,
    env: dict[str, str],
    sandbox: Sandbox,
    rng: random.Random,
    *,
    rounds: int,
    most_calls: int,
) -> int:
    """Start the engine ``rounds`` times, each killed with SIGKILL once the gateway has seen
    a random number (1 to ``most_calls``) of that round's calls: mid-run whatever the start-up
    takes, at a different point of the pipeline each round. Returns the kills made."""
    kills = 0
    for _ in range(rounds):
        process = await start_engine(job, env)
        target = sandbox.stats()["total_calls"] + rng.randint(1, most_calls)
        await wait_for(
            lambda: sandbox.stats()["total_calls"] >= target,  # noqa: B023
            f"call {target} at the gateway",
            process=process,
        )
        process.send_signal(signal.SIGKILL)
        kills += 1
        await process.wait()
    return kills


# --- the engine crashed at a named point (tests/crash_kit/sitecustomize.py) -----------------

KIT = Path(__file__).parent / "crash_kit"
CRASH_VARIABLE = "IMG1688_CRASH_AT"
CRASH_EXIT = 137
"""The status of a process the kit ended at its point (``os._exit(137)``)."""
SUBPROCESS_TIMEOUT = 300  # a hang guard only: every wait is for the process to end


class Invocation(NamedTuple):
    code: int
    stderr: str


def invoke(*args: str, crash_at: str | None = None) -> Invocation:
    """``python -m engine ARGS`` to its end; with ``crash_at`` (``point:nth``, comma-separated),
    armed by the crash kit."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_VARIABLE}
    path = [str(KIT), str(REPO)] if crash_at is not None else [str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(path)
    if crash_at is not None:
        env[CRASH_VARIABLE] = crash_at
    # A file, not a pipe: the pool's workers outlive a crash for a moment, and a pipe would
    # keep the wait open until they noticed.
    with tempfile.TemporaryFile() as err:
        done = subprocess.run(
            [sys.executable, "-m", "engine", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
        err.seek(0)
        return Invocation(done.returncode, err.read().decode(errors="replace"))


# --- the checkpoint database, as another process reads it --------------------------------


def image_statuses(out: Path) -> Counter[str]:
    """Images of every run by checkpoint status, read as another process would (read-only,
    beside a running engine: WAL readers never block it); empty before the database exists."""
    path = out / STATE_FILE
    if not path.exists():
        return Counter()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return Counter(dict(db.execute("SELECT status, count(*) FROM images GROUP BY status")))
    except sqlite3.OperationalError:  # the schema is not written yet
        return Counter()
    finally:
        db.close()
