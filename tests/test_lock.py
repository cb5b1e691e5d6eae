"""One img1688 process per output directory, and a killed holder never leaves it locked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import StorageError
from engine.lock import LOCK_FILE, OutputLock
from engine.shard import Shard
from engine.state import StateStore

HOLD = """
import sys
from pathlib import Path
from engine.lock import OutputLock
lock = OutputLock(Path(sys.argv[1]))
print("held", flush=True)
sys.stdin.read()
"""


def test_a_second_lock_on_the_same_directory_is_refused_until_released(tmp_path: Path) -> None:
    first = OutputLock(tmp_path / "out")
    with pytest.raises(StorageError, match="in use by another img1688 process"):
        OutputLock(tmp_path / "out")
    first.release()
    first.release()  # idempotent
    assert not first.held
    OutputLock(tmp_path / "out").release()


def test_the_refusal_names_the_holding_process_and_a_kill_releases_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"  # wait for the state, not a sleep
        with pytest.raises(StorageError, match=rf"\(pid {holder.pid}\)"):
            OutputLock(out)
    finally:
        holder.kill()
        holder.wait()
    OutputLock(out).release()  # a kill -9 leaves nothing stale
    assert (out / LOCK_FILE).exists()


def test_an_output_directory_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StorageError, match="cannot use output directory"):
        OutputLock(tmp_path / "file" / "out")


def test_the_state_store_holds_the_lock_until_closed(tmp_path: Path) -> None:
    with StateStore(tmp_path), pytest.raises(StorageError, match="in use by another img1688"):
        StateStore(tmp_path)
    StateStore(tmp_path).close()  # released with the first


def test_each_shard_locks_only_its_own_part_of_the_directory(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first, second = OutputLock(out, Shard(0, 2)), OutputLock(out, Shard(1, 2))
    with pytest.raises(StorageError, match=r"shard 0/2 of output directory .* in use by another"):
        OutputLock(out, Shard(0, 2))
    assert (out / ".lock-shard-0-of-2").exists() and (out / ".lock-shard-1-of-2").exists()
    first.release()
    second.release()
    OutputLock(out, Shard(0, 2)).release()
