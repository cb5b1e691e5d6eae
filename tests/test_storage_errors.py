"""A disk or a checkpoint file the engine cannot use ends a run with exit 5 and a clear message.

The tests run as root in CI, so file modes prove nothing. The failures are real where they can
be: a directory where the database should be, a file that is not a database, and a file-size
limit (``RLIMIT_FSIZE``) that makes SQLite's writes fail midway through a run. A read-only or
full disk under a Parquet part is injected at the write (``break_part_write``).
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from engine.cli import main
from engine.jobfile import load_job
from engine.outcome import ExitCode
from engine.runner import run_job
from engine.state import STATE_FILE
from tests.job_kit import image_statuses
from tests.paths import REPO

FILE_SIZE_LIMIT = 256 * 1024
"""Bytes a file may reach under the limit: more than opening the database writes, far less than
the sample run's checkpoints do."""


@pytest.fixture
def job(query_dir: Path, tmp_path: Path, write_job: Callable[..., Path]) -> Path:
    return write_job(
        inputs={"paths": [str(query_dir)]},
        output={"dir": str(tmp_path / "out")},
        gateway={"endpoint": "sandbox", "rate": "1000/1s"},
        engine={"part_images": 4, "flush_seconds": 0.5},
    )


@pytest.mark.parametrize(
    ("spoil", "code"),
    [
        (lambda path: path.mkdir(), "SQLITE_CANTOPEN"),
        (lambda path: path.write_bytes(b"not a database, " * 512), "SQLITE_NOTADB"),
    ],
)
def test_an_unusable_checkpoint_file_exits_5(
    spoil: Callable[[Path], object],
    code: str,
    job: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    spoil(out / STATE_FILE)

    exit_code = main(["run", str(job)])

    err = capsys.readouterr().err
    assert exit_code == ExitCode.STORAGE == 5
    assert "cannot open checkpoint database" in err and code in err
    assert "Traceback" not in err and not (out / "_SUCCESS").exists()


def _limit_file_size() -> None:
    # Past the limit a write fails with EFBIG instead of killing the process with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def _run(job: Path, tmp_path: Path, *, limited: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "IMG1688_TOKEN_FILE": str(tmp_path / "t.json")}
    return subprocess.run(
        [sys.executable, "-m", "engine", "run", str(job)],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size if limited else None,
        timeout=300,
        check=False,
    )


def test_a_disk_that_fails_midway_exits_5_and_the_next_run_finishes(
    job: Path, query_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    failed = _run(job, tmp_path, limited=True)

    assert failed.returncode == ExitCode.STORAGE, failed.stderr
    assert "checkpoint database write failed" in failed.stderr
    assert "SQLITE_IOERR" in failed.stderr and "nothing committed was lost" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert (out / STATE_FILE).exists() and not (out / "_SUCCESS").exists()

    finished = _run(job, tmp_path, limited=False)

    assert finished.returncode == ExitCode.OK, finished.stderr
    images = ds.dataset(out / "images", format="parquet", partitioning="hive").to_table()
    photos = sorted(str(p) for p in query_dir.rglob("*") if p.is_file())
    assert sorted(images.column("query_path").to_pylist()) == photos
    assert set(images.column("status").to_pylist()) == {"ok"}


@pytest.mark.parametrize(
    ("code", "says"),
    [(errno.EROFS, "Read-only file system"), (errno.ENOSPC, "No space left on device")],
)
async def test_a_part_the_disk_refuses_exits_5_and_the_next_run_finishes(
    code: int,
    says: str,
    query_dir: Path,
    tmp_path: Path,
    write_job: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    break_part_write: Callable[..., list[Path]],
) -> None:
    photos = tmp_path / "eight"
    photos.mkdir()
    for source in sorted(query_dir.glob("q0*.jpg"))[:8]:
        shutil.copy(source, photos / source.name)
    out = tmp_path / "out"
    job = load_job(
        write_job(
            inputs={"paths": [str(photos)]},
            output={"dir": str(out)},
            gateway={"endpoint": "sandbox", "rate": "1000/1s"},
            engine={"part_images": 4, "flush_seconds": 60},  # two parts, by count
        )
    )
    with monkeypatch.context():
        asked = break_part_write(code, 3)  # the second part's ``matches`` file

        failed = await run_job(job)

    assert len(asked) == 3
    assert failed.exit_code == ExitCode.STORAGE == 5
    assert failed.message.startswith(f"cannot write {out / 'matches'}")
    assert failed.message.endswith(f"{says}; nothing committed was lost")
    assert not (out / "_SUCCESS").exists()
    # What was committed before the failure is in the feed, and only that: the first part.
    assert image_statuses(out)["exported"] == 4
    assert ds.dataset(out / "images", partitioning="hive").count_rows() == 4

    finished = await run_job(job)

    assert finished.exit_code == ExitCode.OK, finished.message
    assert finished.run_id == failed.run_id
    images = ds.dataset(out / "images", format="parquet", partitioning="hive").to_table()
    assert sorted(images.column("query_path").to_pylist()) == sorted(map(str, photos.iterdir()))
