"""Shared fixtures: the sample set, job files, and the sandbox gateway on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_images"


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
