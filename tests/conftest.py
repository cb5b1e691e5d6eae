"""Shared fixtures: the sample set, job files, and the sandbox gateway on loopback."""

from __future__ import annotations

import asyncio
import atexit
import faulthandler
import gc
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

# The client and job tests' helpers assert too: rewrite them for pytest's messages, before the
# import.
pytest.register_assert_rewrite("tests.gateway_kit", "tests.job_kit")

from engine.outcome import RunOutcome  # noqa: E402
from engine.ratelimit import Rate  # noqa: E402
from engine.sandbox import Sandbox, SandboxConfig  # noqa: E402
from engine.sandbox.catalogue import Catalogue  # noqa: E402
from engine.state import StateStore  # noqa: E402
from engine.storage import finalize_s3  # noqa: E402
from tests.gateway_kit import StartSandbox, sandboxes, write_catalogue  # noqa: E402
from tests.paths import SAMPLES  # noqa: E402
from tests.s3_kit import S3Bucket  # noqa: E402

EXIT_GRACE = 60.0
"""Seconds the test process may take to exit once its exit handlers start (well under one)."""
EXIT_WATCH = 2 * EXIT_GRACE
"""Seconds from the start of the interpreter's shutdown after which the exit watchdog prints
the process's native stacks and kills it."""

EXIT_WATCHDOG = """
import os, shutil, signal, subprocess, sys, time
pid, watch = int(sys.argv[1]), float(sys.argv[2])
end = time.monotonic() + watch
while time.monotonic() < end:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(0)
    time.sleep(0.2)
print(f"conftest: the test process has not exited {watch:.0f} s after its shutdown began;"
      " its threads, then a kill:", file=sys.stderr, flush=True)
if shutil.which("gdb"):
    bt = ["gdb", "-q", "-batch", "-p", str(pid), "-ex", "thread apply all bt 25"]
    subprocess.run(bt, stdout=sys.stderr, stderr=subprocess.DEVNULL, timeout=120, check=False)
os.kill(pid, signal.SIGKILL)
"""


def pytest_unconfigure(config: pytest.Config) -> None:
    # At the process's real end, not here: a runner that calls pytest in its own process
    # (mutmut, tools/mutation.py) lives on after the session. Registered after pyarrow's
    # handler (pyarrow.fs is imported above), so it runs before it (atexit is last in, first out).
    atexit.unregister(_end_of_process)
    atexit.register(_end_of_process)
    if not _exit_watch:
        # Shutdown joins the non-daemon threads before any atexit handler runs, and native
        # libraries' teardown (Arrow's thread pools, the AWS SDK) comes after faulthandler is
        # gone: only another process can see a hang there. threading's own exit hook (what
        # concurrent.futures uses) runs at the start of shutdown.
        threading._register_atexit(_watch_the_exit)
        _exit_watch.append(True)


_exit_watch: list[bool] = []


def _watch_the_exit() -> None:
    subprocess.Popen(
        [sys.executable, "-c", EXIT_WATCHDOG, str(os.getpid()), str(EXIT_WATCH)],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _end_of_process() -> None:
    # Exit handlers hang at times, pyarrow's S3 shutdown among them (storage.finalize_s3): a
    # hang here prints every thread's Python stack and ends the process (status 1) well before
    # the watchdog would.
    faulthandler.dump_traceback_later(EXIT_GRACE, exit=True)
    gc.collect()  # the S3 filesystems the tests dropped, before S3 goes
    finalize_s3()  # as the img1688 program does at its end


@pytest.fixture(autouse=True)
def private_token_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Refreshed tokens go to a file of the test's own, never to the user's token store, and
    no test sees another's tokens."""
    path = tmp_path / "tokens.json"
    monkeypatch.setenv("IMG1688_TOKEN_FILE", str(path))
    monkeypatch.delenv("IMG1688_CREDENTIALS", raising=False)
    return path


@pytest.fixture(scope="session", autouse=True)
def session_image_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Module- and session-scoped fixtures run jobs too, before any test's own cache below:
    they get one of the session's, never the user's ``~/.cache``."""
    path = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(path))
        yield path


@pytest.fixture(autouse=True)
def private_image_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The image cache (offer images, downloaded photos, fingerprints) defaults to one under
    ``$XDG_CACHE_HOME``: each test gets its own, never the user's."""
    path = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(path))
    return path / "img1688" / "images"


@pytest.fixture
def query_dir(tmp_path: Path) -> Path:
    """A private copy of the sample buyer photos (tests may add, change or delete files)."""
    target = tmp_path / "photos"
    shutil.copytree(SAMPLES / "queries", target)
    return target


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job file; ``sections`` maps table name -> {key: value}. Offer evidence is off
    unless ``evidence`` is given: it adds seconds of image work per run that only the tests of
    evidence are about (tests/test_catalogue_run.py, tests/test_evidence_*.py)."""

    def write(name: str = "job.toml", **sections: dict[str, object]) -> Path:
        sections.setdefault("evidence", {"enabled": False})
        lines: list[str] = []
        for table, values in sections.items():
            lines.append(f"[{table}]")
            lines.extend(f"{key} = {_toml(value)}" for key, value in values.items())
            lines.append("")
        path = tmp_path / name
        path.write_text("\n".join(lines), encoding="utf-8")
        return path

    return write


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    """A real checkpoint database in a private output directory, closed after the test."""
    with StateStore(tmp_path / "out") as store:
        yield store


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """An http URL on loopback whose port refuses connections: bound, but never listening, so
    no other process can take the port while the test runs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# --- the client against the sandbox (helpers in tests/gateway_kit.py) ---------------------


@pytest.fixture(scope="session")
def client_catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    """Four products, one per colour of ``gateway_kit.COLOURS``, drawn once per session."""
    return write_catalogue(tmp_path_factory.mktemp("client-catalogue"))


@pytest.fixture
async def start_sandbox(client_catalogue: Catalogue) -> AsyncIterator[StartSandbox]:
    """``await start_sandbox(**config_changes)`` starts a sandbox that knows our app; every
    sandbox a test starts is stopped after it."""
    async with sandboxes(client_catalogue) as start:
        yield start


@pytest.fixture
async def shared_sandbox(client_catalogue: Catalogue) -> AsyncIterator[Sandbox]:
    """One sandbox for a whole test, such as every example of a property test."""
    async with sandboxes(client_catalogue) as start:
        yield await start()


@pytest.fixture
async def sandbox() -> AsyncIterator[Sandbox]:
    """The sandbox gateway on loopback with its built-in catalogue and an effectively unlimited
    rate (1000 calls a second), for a whole test."""
    async with Sandbox(SandboxConfig(rate=Rate(1000, 1.0))) as box:
        yield box


# --- a whole job against the sandbox, for tests that read a finished feed -----------------


@pytest.fixture(scope="session")
def run_sandbox_job() -> Callable[..., RunOutcome]:
    """``run_sandbox_job(inputs, out, catalogue_dir=None)``: run a job over the photos under
    ``inputs`` into ``out`` against a sandbox on loopback (its built-in catalogue, or the one in
    ``catalogue_dir``), in an event loop of its own, until it ends; returns the outcome. Made
    for module-scoped fixtures whose tests only read the feed."""

    def run(inputs: Path, out: Path, *, catalogue_dir: Path | None = None) -> RunOutcome:
        return asyncio.run(_run_sandbox_job(inputs, out, catalogue_dir))

    return run


async def _run_sandbox_job(inputs: Path, out: Path, catalogue_dir: Path | None) -> RunOutcome:
    from engine.credentials import Credentials
    from engine.jobfile import parse_job
    from engine.ratelimit import Rate
    from engine.runner import run_job
    from engine.sandbox import SandboxConfig

    config = SandboxConfig(rate=Rate(1000, 1.0))
    if catalogue_dir is not None:
        config = replace(config, catalogue_dir=catalogue_dir)
    async with Sandbox(config) as box:
        job = parse_job(
            {
                "inputs": {"paths": [str(inputs)]},
                "output": {"dir": str(out)},
                "gateway": {"protocol": "ocean", "endpoint": box.url, "rate": "1000/1s"},
                "engine": {"searches": 4, "flush_seconds": 0.5, "part_images": 8},
                "evidence": {"enabled": False},
            },
            base=out.parent,
        )
        keys = (config.app_key, config.app_secret, config.access_token, config.refresh_token)
        return await run_job(job, credentials=Credentials(*keys))


# --- a disk that refuses a Parquet part (the tests run as root: file modes prove nothing) ---


@pytest.fixture
def break_part_write(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[Path]]:
    """``break_part_write(errno_code, nth)``: the ``nth`` Parquet file written from now on (1
    for the next) fails with ``OSError(errno_code)``, as a read-only (``EROFS``) or full
    (``ENOSPC``) disk makes it fail, after creating the file; the others are written as usual.
    Returns the list of the paths it was asked to write, filled as they come."""
    import errno as errno_module
    import os

    import pyarrow.parquet as pq

    write_table = pq.write_table

    def arm(errno_code: int, nth: int = 1) -> list[Path]:
        assert errno_code in errno_module.errorcode
        asked: list[Path] = []

        def write(table: object, where: object, *args: object, **kwargs: object) -> None:
            asked.append(Path(str(where)))
            if len(asked) == nth:
                Path(str(where)).write_bytes(b"PAR1")  # a disk fails midway, not up front
                raise OSError(errno_code, os.strerror(errno_code), str(where))
            write_table(table, where, *args, **kwargs)

        monkeypatch.setattr(pq, "write_table", write)
        return asked

    return arm


# --- object storage: a real S3-protocol server on loopback (helpers in tests/s3_kit.py) ----


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, one per session: its endpoint URL."""
    from tests.s3_kit import s3_server

    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3Bucket:
    """A fresh bucket on the S3 server, and the environment a user sets to reach it
    (``AWS_ENDPOINT_URL``, the access keys, ``AWS_REGION``, ``AWS_ALLOW_HTTP``). The default
    state directory of an ``s3://`` feed (``$XDG_STATE_HOME/img1688/s3/...``) is the test's
    own, under ``tmp_path/state-home``."""
    from tests.s3_kit import aws_environment, new_bucket

    for name, value in aws_environment(s3_endpoint).items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state-home"))
    return new_bucket(s3_endpoint)
