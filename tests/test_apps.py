"""Several apps in one job: each keeps its own window, a refused app is taken out, and the job
stops only when no app is left. The sandbox on loopback knows every app; real SQLite, Parquet
read back."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from engine.apps import app_specific
from engine.client.fixes import (
    APP_KEY_FIX,
    CLOCK_FIX,
    IP_FIX,
    PARAM_FIX,
    SIGNATURE_FIX,
    TOKEN_FIX,
    UNREACHABLE_FIX,
    USAGE_FIX,
    acl_fix,
    unknown_fix,
    unsupported_fix,
)
from engine.credentials import Credentials
from engine.errors import FatalGatewayError
from engine.jobfile import Job, parse_job
from engine.outcome import ExitCode
from engine.protocol import OCEAN_QUERY, OCEAN_UPLOAD, SEED_API
from engine.ratelimit import Rate, most_in_window
from engine.runner import run_job
from engine.sandbox import Sandbox, SandboxApp, SandboxConfig

FIRST = SandboxApp("first-app-1688", "first-secret-51", "first-token-52", "first-refresh-53")
SECOND = SandboxApp("second-app-1688", "second-secret-61", "second-token-62", "second-refresh-63")
SECRETS = ("first-secret-51", "first-token-52", "second-secret-61", "second-token-62")


def sandbox_config(**changes: Any) -> SandboxConfig:
    """A sandbox that knows both apps, at a rate that never binds unless changed."""
    values: dict[str, Any] = {
        "rate": Rate(1000, 1.0),
        "app_key": FIRST.app_key,
        "app_secret": FIRST.app_secret,
        "access_token": FIRST.access_token,
        "refresh_token": FIRST.refresh_token,
        "extra_apps": (SECOND,),
    }
    return SandboxConfig(**{**values, **changes})


def creds(app: SandboxApp, secret: str | None = None) -> Credentials:
    return Credentials(app.app_key, secret or app.app_secret, app.access_token, app.refresh_token)


def job_for(photos: Path, out: Path, url: str, protocol: str, **gateway: object) -> Job:
    settings = {"protocol": protocol, "endpoint": url, "rate": "1000/1s", "attempts": 3}
    settings.update({"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 10, **gateway})
    if "rates" in gateway:
        del settings["rate"]
    data = {
        "inputs": {"paths": [str(photos)]},
        "output": {"dir": str(out)},
        "gateway": settings,
        "engine": {"searches": 4, "flush_seconds": 0.5},
    }
    return parse_job(data, base=out.parent)


def unique_photos(folder: Path) -> int:
    return len({p.read_bytes() for p in folder.rglob("*.jpg")})


def exported_paths(out: Path) -> list[str]:
    images = ds.dataset(out / "images", format="parquet", partitioning="hive").to_table()
    return sorted(images.column("query_path").to_pylist())


def test_refusals_that_concern_one_app_and_those_that_stop_the_job() -> None:
    def refusal(fix: str) -> FatalGatewayError:
        return FatalGatewayError("code", "message", fix=fix)

    for fix in (SIGNATURE_FIX, APP_KEY_FIX, USAGE_FIX, TOKEN_FIX):
        assert app_specific(refusal(fix)), fix
    for api in (OCEAN_UPLOAD, OCEAN_QUERY, SEED_API):
        assert app_specific(refusal(acl_fix(api)))
    job_wide = (IP_FIX, CLOCK_FIX, PARAM_FIX, UNREACHABLE_FIX, unsupported_fix(SEED_API))
    for fix in (*job_wide, unknown_fix(418)):
        assert not app_specific(refusal(fix)), fix


async def test_two_apps_each_keep_their_window_and_share_the_work(
    query_dir: Path, tmp_path: Path
) -> None:
    rate = Rate(10, 2.0)
    config = sandbox_config(rate=rate)
    out = tmp_path / "out"
    async with Sandbox(config) as sandbox:
        job = job_for(query_dir, out, sandbox.url, "seed", rate="10/2s")
        outcome = await run_job(job, credentials=[creds(FIRST), creds(SECOND)])
        stats = sandbox.stats()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert stats["rate_limited"] == 0
    per_app = [stats["apps"][app.app_key]["arrivals"] for app in (FIRST, SECOND)]
    calls = [len(arrivals) for arrivals in per_app]
    assert sum(calls) == stats["total_calls"] == unique_photos(query_dir)
    # Each app within its own window, and the work split about evenly between them ...
    assert all(most_in_window(arrivals, rate.period) <= rate.calls for arrivals in per_app)
    assert min(calls) >= 0.4 * sum(calls)
    # ... both at once: more calls reached the gateway in one window than one app may make.
    assert most_in_window(per_app[0] + per_app[1], rate.period) > rate.calls
    assert outcome.summary["rate"] == "10/2s per app, 2 apps"
    assert outcome.summary["calls_this_run"] == sum(calls)


@pytest.mark.parametrize("refused_by", ["wrong secret", "no usage left"])
async def test_a_refused_app_is_taken_out_and_the_other_finishes_the_job(
    query_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, refused_by: str
) -> None:
    second = replace(SECOND, usage_limit=0) if refused_by == "no usage left" else SECOND
    config = sandbox_config(extra_apps=(second,))
    wrong = "not-the-second-secret" if refused_by == "wrong secret" else None
    out = tmp_path / "out"
    async with Sandbox(config) as sandbox:
        job = job_for(query_dir, out, sandbox.url, "ocean")
        with caplog.at_level(logging.WARNING, logger="engine.apps"):
            outcome = await run_job(job, credentials=[creds(FIRST), creds(SECOND, wrong)])
        stats = sandbox.stats()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert exported_paths(out) == sorted(str(p) for p in query_dir.rglob("*.jpg"))
    refused, kept = stats["apps"][SECOND.app_key], stats["apps"][FIRST.app_key]
    # Only the searches sent before its first refusal came back ever tried the refused app.
    assert 1 <= refused["total_calls"] <= job.engine.searches and refused["arrivals"] == []
    assert len(kept["arrivals"]) == 2 * unique_photos(query_dir)
    taken_out = [r.getMessage() for r in caplog.records if "taken out" in r.getMessage()]
    assert len(taken_out) == 1 and "se***88" in taken_out[0]
    code = "gw.SignatureInvalid" if refused_by == "wrong secret" else "gw.NoUsageLeftError"
    assert code in taken_out[0] and "1 app(s) left" in taken_out[0]
    for secret in (*SECRETS, "not-the-second-secret"):
        assert secret not in caplog.text


async def test_the_job_stops_when_every_app_is_refused(query_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    async with Sandbox(sandbox_config()) as sandbox:
        job = job_for(query_dir, out, sandbox.url, "seed")
        wrong = [creds(app, f"wrong-{i}-secret") for i, app in enumerate((FIRST, SECOND))]
        outcome = await run_job(job, credentials=wrong)
        stats = sandbox.stats()
    assert outcome.exit_code == ExitCode.FATAL_GATEWAY
    message = outcome.message
    assert "every app was refused" in message
    assert "app fi***88: 25" in message and "app se***88: 25" in message
    assert "IMG1688_APP_SECRET" in message  # the fix
    assert all(secret not in message for secret in (*SECRETS, "wrong-0-secret", "wrong-1-secret"))
    assert stats["statuses"] == {"200": stats["total_calls"]} and stats["arrivals"] == []
    assert stats["total_calls"] <= 2 * job.engine.searches
    assert not (out / "_SUCCESS").exists()


async def test_per_api_windows_are_each_respected_and_used_together(
    query_dir: Path, tmp_path: Path
) -> None:
    window = Rate(4, 1.0)
    photos = tmp_path / "subset"
    photos.mkdir()
    for path in sorted(query_dir.glob("q0*.jpg"))[:10]:  # ten distinct photos
        shutil.copy(path, photos / path.name)
    config = SandboxConfig(
        rate=Rate(1, 60.0), api_rates={OCEAN_UPLOAD: window, OCEAN_QUERY: window}
    )
    async with Sandbox(config) as sandbox:
        rates = {"upload": "4/1s", "query": "4/1s"}
        job = job_for(photos, tmp_path / "out", sandbox.url, "ocean", rates=rates)
        outcome = await run_job(job, credentials=creds(config.apps[0]))
        stats = sandbox.stats()
    assert outcome.exit_code == ExitCode.OK, outcome.message
    assert stats["rate_limited"] == 0
    by_api = stats["apps"][config.app_key]["api_arrivals"]
    assert len(by_api[OCEAN_UPLOAD]) == len(by_api[OCEAN_QUERY]) == 10
    assert all(most_in_window(by_api[api], 1.0) <= 4 for api in (OCEAN_UPLOAD, OCEAN_QUERY))
    assert most_in_window(stats["arrivals"], 1.0) > 4
    assert outcome.summary["rate"] == "upload 4/1s, query 4/1s"
