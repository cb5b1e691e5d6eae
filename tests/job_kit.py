"""Helpers for the tests that run whole jobs against the sandbox on loopback.

In-process jobs (``run_job``): :func:`make_job`, :func:`creds`, the feed read back with
:func:`read_table`. The engine as a real subprocess (``python -m engine run``): :func:`engine_env`
and :func:`start_engine`, and its checkpoint database read beside it (:func:`image_statuses`),
a state to wait for with :func:`tests.waiting.wait_for`.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from engine.credentials import Credentials
from engine.jobfile import Job, parse_job
from engine.sandbox import SandboxConfig
from engine.state import STATE_FILE
from tests.paths import REPO


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
    inputs: Path, out: Path, url: str, *, protocol: str = "ocean", **sections: dict[str, Any]
) -> Job:
    """A job over ``inputs`` into ``out`` against the gateway at ``url``: fast retries, four
    searches, small parts; ``sections`` update its tables key by key."""
    data: dict[str, Any] = {
        "inputs": {"paths": [str(inputs)]},
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
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_job(data, base=out.parent)


def read_table(out: Path, table: str) -> ds.Dataset:
    """The ``matches`` or ``images`` table of the feed in ``out``, as a reader sees it."""
    return ds.dataset(out / table, format="parquet", partitioning="hive")


def image_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted: the photos a job over it discovers."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


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
