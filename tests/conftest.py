"""Shared fixtures: the sample set, job files, and the sandbox gateway on loopback."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

# The client tests' helpers assert too: rewrite them for pytest's messages, before the import.
pytest.register_assert_rewrite("tests.gateway_kit")

from engine.outcome import RunOutcome  # noqa: E402
from engine.sandbox import Sandbox  # noqa: E402
from engine.sandbox.catalogue import Catalogue  # noqa: E402
from engine.state import StateStore  # noqa: E402
from tests.gateway_kit import StartSandbox, sandboxes, write_catalogue  # noqa: E402
from tests.paths import SAMPLES  # noqa: E402


@pytest.fixture(autouse=True)
def private_token_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Refreshed tokens go to a file of the test's own, never to the user's token store, and
    no test sees another's tokens."""
    path = tmp_path / "tokens.json"
    monkeypatch.setenv("IMG1688_TOKEN_FILE", str(path))
    monkeypatch.delenv("IMG1688_CREDENTIALS", raising=False)
    return path


@pytest.fixture
def query_dir(tmp_path: Path) -> Path:
    """A private copy of the sample buyer photos (tests may add, change or delete files)."""
    target = tmp_path / "photos"
    shutil.copytree(SAMPLES / "queries", target)
    return target


@pytest.fixture
def write_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job file; ``sections`` maps table name -> {key: value}."""

    def write(name: str = "job.toml", **sections: dict[str, object]) -> Path:
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
