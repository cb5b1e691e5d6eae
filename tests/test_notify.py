"""Alerts: which events fire, what the notice says, how it is delivered, and that the webhook's
URL stays secret. Webhooks go to an aiohttp receiver on loopback; whole runs are real
``img1688 run`` processes against the sandbox."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest
from aiohttp import web

from engine.cli import main
from engine.client.fixes import USAGE_FIX
from engine.errors import ConfigError
from engine.jobfile import Job, parse_job
from engine.notify import SCHEMA, build_notice, notify, outcome_event
from engine.outcome import ExitCode, RunOutcome
from engine.ratelimit import Rate
from engine.sandbox import Sandbox, SandboxConfig
from tests.paths import REPO, SAMPLES

TOKEN = "hook-t0ken-5ecret-9913"
"""The webhook's secret part: it must reach the receiver and nothing else."""
SUMMARY: dict[str, object] = {
    "run_id": "r1",
    "images": 10,
    "failures": {"not_an_image": 2, "truncated": 1},
    "calls_this_run": 14,
    "calls_this_invocation": 6,
    "reused_answers": 3,
    "searched": 4,
}
QUOTA = {
    "calls_today": 480,
    "left_today": 20,
    "package_left": 900,
    "run_out": "2026-02-01",
    "low": True,
    "message": "900 calls left, about 2 days at the current pace",
}


class Receiver:
    """A webhook on loopback: records each POST (path, notice) and answers with the next of
    ``statuses`` (the last one repeats); ``None`` never answers until the test ends."""

    def __init__(self, statuses: tuple[int | None, ...]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, json.loads(await request.read())))
        self.arrived.set()
        status = self.statuses[min(len(self.requests), len(self.statuses)) - 1]
        if status is None:
            await self.release.wait()
            status = 200
        return web.Response(status=status)


StartReceiver = Callable[..., Awaitable[Receiver]]


@pytest.fixture
async def start_receiver() -> AsyncIterator[StartReceiver]:
    started: list[tuple[Receiver, web.AppRunner]] = []

    async def start(*statuses: int | None) -> Receiver:
        receiver = Receiver(statuses or (200,))
        app = web.Application()
        app.router.add_post("/{tail:.*}", receiver.handle)
        runner = web.AppRunner(app, access_log=None)  # the receiver's log would show the URL
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        started.append((receiver, runner))
        return receiver

    yield start
    for receiver, runner in started:
        receiver.release.set()
        await runner.cleanup()


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries after 10 ms, not 0.5 s: what is tested is how many, not how long."""
    monkeypatch.setattr("engine.notify.BACKOFF_SECONDS", 0.01)


def job_with(tmp_path: Path, environ: dict[str, str] | None = None, **notify: object) -> Job:
    data = {
        "inputs": {"paths": [str(tmp_path)]},
        "output": {"dir": str(tmp_path / "out")},
        "gateway": {"endpoint": "sandbox"},
        "notify": notify,
    }
    return parse_job(data, base=tmp_path, environ=environ or {})


def outcome(
    code: ExitCode = ExitCode.FATAL_GATEWAY, *, fix: str | None = "buy more", **summary: object
) -> RunOutcome:
    return RunOutcome(code, "r1", "the gateway refused the job", SUMMARY | summary, fix=fix)


# --- events ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "event"),
    [
        (ExitCode.OK, "complete"),
        (ExitCode.DONE_WITH_FAILURES, "failure"),
        (ExitCode.CONFIG, "fatal"),
        (ExitCode.FATAL_GATEWAY, "fatal"),
        (ExitCode.STOPPED_EARLY, "failure"),
        (ExitCode.STORAGE, "failure"),
        (ExitCode.INTERRUPTED, "failure"),
        (ExitCode.TERMINATED, "failure"),
    ],
)
def test_every_exit_code_is_one_event(code: ExitCode, event: str) -> None:
    assert outcome_event(code) == event


def test_on_filters_events_and_leaves_complete_out_by_default(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "pass"]
    default = job_with(tmp_path, command=command)
    assert default.notify.on == ("failure", "fatal", "quota_low")
    assert build_notice(default, outcome(ExitCode.OK)) is None
    assert build_notice(default, outcome(ExitCode.STOPPED_EARLY))["event"] == "failure"
    only_complete = job_with(tmp_path, command=command, on=["complete"])
    assert build_notice(only_complete, outcome(ExitCode.FATAL_GATEWAY)) is None
    assert build_notice(only_complete, outcome(ExitCode.OK))["event"] == "complete"


def test_quota_low_fires_from_the_summary_alone_or_beside_the_outcome(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "pass"]
    quota_only = job_with(tmp_path, command=command, on=["quota_low"])
    notice = build_notice(quota_only, outcome(ExitCode.OK, quota=QUOTA))
    assert notice is not None
    assert (notice["event"], notice["events"], notice["quota"]) == (
        "quota_low",
        ["quota_low"],
        QUOTA,
    )
    not_low = outcome(ExitCode.OK, quota=QUOTA | {"low": False})
    assert build_notice(quota_only, not_low) is None
    assert build_notice(quota_only, outcome(ExitCode.OK)) is None  # no ledger: no quota block

    both = build_notice(job_with(tmp_path, command=command), outcome(quota=QUOTA))
    assert both is not None
    assert (both["event"], both["events"]) == ("fatal", ["fatal", "quota_low"])


def test_the_notice_says_what_happened_and_where_the_feed_is(tmp_path: Path) -> None:
    job = job_with(tmp_path, command=[sys.executable, "-c", "pass"])
    job.out.mkdir()
    (job.out / "manifest.json").write_text(json.dumps({"run_id": "r0"}))
    (job.out / "report.html").write_text("<html></html>")

    notice = build_notice(job, outcome())

    assert notice is not None
    assert json.loads(json.dumps(notice)) == notice  # plain JSON
    assert notice["schema"] == SCHEMA == 1
    assert (notice["job"], notice["run_id"], notice["exit_code"]) == (job.name, "r1", 3)
    assert (notice["event"], notice["fix"]) == ("fatal", "buy more")
    assert notice["counts"] == {
        "photos": 10,
        "searched": 4,
        "reused": 3,
        "failed": 3,
        "failed_by_reason": {"not_an_image": 2, "truncated": 1},
        "calls": 14,
        "calls_this_invocation": 6,
    }
    assert notice["feed"] == {
        "output": str(job.out),
        "manifest": str(job.out / "manifest.json"),
        "manifest_run_id": "r0",  # an earlier run's: this one stopped
        "shard": None,
    }
    assert notice["report"] == str(job.out / "report.html")
    assert notice["quota"] is None
    assert set(notice) >= {"engine_version", "sent_at", "host", "message"}


def test_a_stop_before_the_run_began_has_no_counts(tmp_path: Path) -> None:
    job = job_with(tmp_path, command=[sys.executable, "-c", "pass"])
    early = RunOutcome(ExitCode.CONFIG, None, "inputs.paths: /mnt/share does not exist")
    notice = build_notice(job, early)
    assert notice is not None
    assert (notice["event"], notice["run_id"], notice["counts"]) == ("fatal", None, None)
    assert (notice["feed"]["manifest"], notice["report"]) == (None, None)


# --- the webhook ----------------------------------------------------------------------------


async def test_the_webhook_gets_the_notice_and_its_token_goes_nowhere_else(
    tmp_path: Path, start_receiver: StartReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = await start_receiver(200)
    environ = {"HOOK_TOKEN": TOKEN}
    job = job_with(tmp_path, environ, webhook=receiver.url + "/hook/${HOOK_TOKEN}?k=${HOOK_TOKEN}")
    caplog.set_level("DEBUG")

    await notify(job, outcome(), environ=environ)

    [(path, notice)] = receiver.requests
    assert path == f"/hook/{TOKEN}"
    assert notice["event"] == "fatal" and notice["fix"] == "buy more"
    assert TOKEN not in json.dumps(notice)
    assert "notice 'fatal' delivered to 127.0.0.1 (HTTP 200)" in caplog.text
    assert TOKEN not in caplog.text and "/hook" not in caplog.text
    assert TOKEN not in repr(job)


@pytest.mark.parametrize(
    ("statuses", "attempts", "logged"),
    [
        ((503, 429, 200), 3, "notice 'fatal' delivered to 127.0.0.1 (HTTP 200)"),
        ((500,), 3, "not delivered to 127.0.0.1 after 3 attempt(s): HTTP 500"),
        ((404,), 1, "not delivered to 127.0.0.1 after 1 attempt(s): HTTP 404"),
    ],
)
@pytest.mark.usefixtures("quick_backoff")
async def test_busy_answers_are_retried_a_bounded_number_of_times_and_refusals_not(
    tmp_path: Path,
    start_receiver: StartReceiver,
    caplog: pytest.LogCaptureFixture,
    statuses: tuple[int, ...],
    attempts: int,
    logged: str,
) -> None:
    receiver = await start_receiver(*statuses)
    environ = {"HOOK_URL": f"{receiver.url}/services/{TOKEN}"}
    job = job_with(tmp_path, environ, webhook_env="HOOK_URL")
    caplog.set_level("DEBUG")

    await notify(job, outcome(), environ=environ)

    assert len(receiver.requests) == attempts
    assert logged in caplog.text
    assert TOKEN not in caplog.text


@pytest.mark.usefixtures("quick_backoff")
async def test_an_unreachable_webhook_is_logged_by_its_host_alone(
    tmp_path: Path, refusing_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    environ = {"HOOK_URL": f"{refusing_url}/services/{TOKEN}"}
    job = job_with(tmp_path, environ, webhook_env="HOOK_URL")
    caplog.set_level("DEBUG")

    await notify(job, outcome(), environ=environ)  # returns: no exception escapes

    assert "not delivered to 127.0.0.1 after 3 attempt(s): ClientConnectorError" in caplog.text
    assert TOKEN not in caplog.text and refusing_url not in caplog.text


async def test_a_variable_gone_since_the_job_was_read_is_logged_by_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job = job_with(tmp_path, {"HOOK_URL": "https://hooks.example/x"}, webhook_env="HOOK_URL")
    await notify(job, outcome(), environ={})
    assert "the environment variable HOOK_URL is not set" in caplog.text


# --- the command ----------------------------------------------------------------------------


async def test_a_command_gets_the_notice_on_its_stdin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    got = tmp_path / "notice.json"
    copy = "import sys; open(sys.argv[1], 'w').write(sys.stdin.read())"
    job = job_with(tmp_path, command=[sys.executable, "-c", copy, str(got)], on=["complete"])
    caplog.set_level("INFO")

    await notify(job, outcome(ExitCode.OK, fix=None))

    notice = json.loads(got.read_text())
    assert (notice["event"], notice["exit_code"], notice["fix"]) == ("complete", 0, None)
    assert f"notice 'complete' given to {Path(sys.executable).name} (exit status 0)" in caplog.text


async def test_a_failing_command_is_logged_with_its_exit_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    script = "import sys; sys.stdin.read(); sys.exit(7)"
    job = job_with(tmp_path, command=[sys.executable, "-c", script])

    await notify(job, outcome())

    assert f"notice 'fatal': {Path(sys.executable).name} exited with status 7" in caplog.text


async def test_a_stuck_command_is_killed_after_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pid_file = tmp_path / "pid"
    script = (
        "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid()));"
        " sys.stdin.read(); time.sleep(600)"
    )
    job = job_with(tmp_path, command=[sys.executable, "-c", script, str(pid_file)], timeout=0.5)

    await notify(job, outcome())

    assert "did not finish within 0.5 s and was killed" in caplog.text
    with pytest.raises(ProcessLookupError):  # killed and reaped: no orphan left behind
        os.kill(int(pid_file.read_text()), 0)


# --- the job file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("notify_table", "named"),
    [
        ({}, "notify: give notify.webhook"),
        ({"webhook": "ftp://hooks.example/x"}, "notify.webhook: must be an http:// or https://"),
        (
            {"webhook": "https://hooks.example/${NOT_SET}"},
            "notify.webhook: the environment variable NOT_SET",
        ),
        (
            {"webhook": "https://hooks.example/$HOOK"},
            "notify.webhook: write environment variables as ${NAME}",
        ),
        ({"webhook": "${HOOK_TOKEN}"}, "notify.webhook: must be an http:// or https://"),
        ({"webhook_env": "NOT_SET"}, "notify.webhook_env: the environment variable NOT_SET"),
        ({"webhook_env": "HOOK_TOKEN"}, "notify.webhook_env: the URL, once expanded, is not"),
        ({"webhook_env": "not a name"}, "notify.webhook_env: 'not a name' is not a variable"),
        (
            {"webhook": "https://h.example", "webhook_env": "X"},
            "notify.webhook: give notify.webhook or",
        ),
        ({"command": []}, "notify.command: give a program"),
        ({"command": ["no-such-program-1688"]}, "notify.command[0]: 'no-such-program-1688' is not"),
        ({"command": ["./missing.sh"]}, "notify.command[0]: './missing.sh' is not an executable"),
        ({"command": [sys.executable, 3]}, "notify.command[1]: expected a string"),
        ({"command": [sys.executable], "on": ["sometimes"]}, "notify.on: give one or more of"),
        ({"command": [sys.executable], "on": []}, "notify.on: give one or more of"),
        ({"command": [sys.executable], "timeout": 0}, "notify.timeout: must be in (0, 60]"),
        ({"command": [sys.executable], "retries": 3}, "notify.retries: unknown key"),
    ],
)
def test_a_bad_notify_table_is_an_error_naming_the_key(
    tmp_path: Path, notify_table: dict[str, object], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        job_with(tmp_path, {"HOOK_TOKEN": TOKEN}, **notify_table)
    assert str(caught.value).startswith(named)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    "webhook",
    [
        f"https://hooks.example/notify?token={TOKEN}",
        f"https://user:{TOKEN}@hooks.example/notify",
    ],
)
def test_a_token_written_into_the_file_is_refused_without_being_echoed(
    tmp_path: Path, webhook: str
) -> None:
    with pytest.raises(ConfigError, match=r"^notify\.webhook: .* must come from the environment"):
        job_with(tmp_path, webhook=webhook)
    with pytest.raises(ConfigError) as caught:
        job_with(tmp_path, webhook=webhook)
    assert TOKEN not in str(caught.value)


def test_placeholders_for_the_secret_parts_are_accepted(tmp_path: Path) -> None:
    environ = {"HOOK_USER": "u", "HOOK_PASSWORD": TOKEN, "HOOK_TOKEN": TOKEN}
    job = job_with(
        tmp_path,
        environ,
        webhook="https://${HOOK_USER}:${HOOK_PASSWORD}@hooks.example/n?token=${HOOK_TOKEN}&x=",
        on=["fatal", "complete", "fatal"],
    )
    assert job.notify.on == ("complete", "fatal")
    assert job.notify.webhook_url(environ) == f"https://u:{TOKEN}@hooks.example/n?token={TOKEN}&x="


def test_a_missing_variable_is_exit_2_before_anything_is_written(
    tmp_path: Path, write_job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMG1688_WEBHOOK_URL", raising=False)
    job = write_job(
        inputs={"paths": [str(SAMPLES / "queries")]},
        output={"dir": str(tmp_path / "out")},
        gateway={"endpoint": "sandbox"},
        notify={"webhook_env": "IMG1688_WEBHOOK_URL"},
    )
    assert main(["run", str(job)]) == ExitCode.CONFIG
    assert not (tmp_path / "out").exists()


# --- whole runs -----------------------------------------------------------------------------


async def run_command_line(job: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    """``img1688 run JOB`` in a process of its own, so that this test's event loop serves the
    receiver (and the sandbox) meanwhile."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine",
        "run",
        str(job),
        cwd=REPO,
        env=os.environ | env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def few_photos(tmp_path: Path) -> Path:
    photos = tmp_path / "few"
    photos.mkdir()
    for name in ("q001.jpg", "q002.jpg", "q003.jpg"):
        shutil.copy(SAMPLES / "queries" / name, photos / name)
    return photos


async def test_a_run_that_runs_out_of_usage_sends_the_fatal_notice_with_its_fix(
    tmp_path: Path, query_dir: Path, write_job: Callable[..., Path], start_receiver: StartReceiver
) -> None:
    receiver = await start_receiver(200)
    config = SandboxConfig(rate=Rate(1000, 1.0), usage_limit=2)  # one ocean search, no more
    async with Sandbox(config) as sandbox:
        job = write_job(
            inputs={"paths": [str(query_dir)]},
            output={"dir": str(tmp_path / "out")},
            gateway={"endpoint": sandbox.url, "rate": "1000/1s", "attempts": 2},
            engine={"searches": 1},
            notify={"webhook": receiver.url + "/hook/${HOOK_TOKEN}"},
        )
        env = {
            "HOOK_TOKEN": TOKEN,
            "IMG1688_APP_KEY": config.app_key,
            "IMG1688_APP_SECRET": config.app_secret,
            "IMG1688_ACCESS_TOKEN": config.access_token,
            "IMG1688_REFRESH_TOKEN": str(config.refresh_token),
        }
        process = await run_command_line(job, env)
        stdout, stderr = await process.communicate()

    assert process.returncode == ExitCode.FATAL_GATEWAY, stderr.decode()
    [(path, notice)] = receiver.requests
    assert path == f"/hook/{TOKEN}"
    assert (notice["event"], notice["exit_code"], notice["job"]) == ("fatal", 3, "job")
    assert notice["fix"] == USAGE_FIX
    assert "gw.NoUsageLeftError" in notice["message"]
    assert notice["counts"]["searched"] == 1 and notice["counts"]["calls"] >= 2
    assert notice["feed"]["output"] == str(tmp_path / "out")
    printed = (stdout + stderr).decode()
    assert "notice 'fatal' delivered to 127.0.0.1" in printed
    assert TOKEN not in printed and TOKEN not in json.dumps(notice)


async def test_a_webhook_that_never_answers_changes_nothing_but_a_log_line(
    tmp_path: Path, write_job: Callable[..., Path], start_receiver: StartReceiver
) -> None:
    receiver = await start_receiver(None)
    out = tmp_path / "out"
    job = write_job(
        inputs={"paths": [str(few_photos(tmp_path))]},
        output={"dir": str(out)},
        gateway={"endpoint": "sandbox", "rate": "100/1s"},
        notify={"webhook_env": "HOOK_URL", "on": ["complete"], "timeout": 0.2},
    )

    process = await run_command_line(job, {"HOOK_URL": f"{receiver.url}/services/{TOKEN}"})
    _, stderr = await process.communicate()

    assert process.returncode == ExitCode.OK, stderr.decode()
    assert len(receiver.requests) == 3
    log = stderr.decode()
    assert (
        "notice 'complete' not delivered to 127.0.0.1 after 3 attempt(s): no answer within 0.2 s"
        in log
    )
    assert TOKEN not in log
    assert (out / "_SUCCESS").exists()
    images = ds.dataset(out / "images", format="parquet", partitioning="hive").to_table()
    assert images.num_rows == 3 and set(images.column("status").to_pylist()) == {"ok"}


async def test_a_signal_during_the_notice_abandons_it_and_keeps_the_exit_code(
    tmp_path: Path, write_job: Callable[..., Path], start_receiver: StartReceiver
) -> None:
    receiver = await start_receiver(None)
    job = write_job(
        inputs={"paths": [str(few_photos(tmp_path))]},
        output={"dir": str(tmp_path / "out")},
        gateway={"endpoint": "sandbox", "rate": "100/1s"},
        notify={"webhook": receiver.url, "on": ["complete"], "timeout": 60},
    )

    process = await run_command_line(job, {})
    arrived = asyncio.create_task(receiver.arrived.wait())
    ended = asyncio.create_task(process.wait())
    await asyncio.wait({arrived, ended}, return_when=asyncio.FIRST_COMPLETED)
    assert arrived.done(), "the run ended without sending its notice"
    process.send_signal(signal.SIGTERM)  # the run is over and its notice is on the way
    _, stderr = await process.communicate()

    assert process.returncode == ExitCode.OK, stderr.decode()
    assert "notice abandoned on a signal" in stderr.decode()
