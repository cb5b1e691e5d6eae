"""The output-directory lock: one img1688 process per output directory.

Two processes appending to one feed and one checkpoint database would each believe it owns the
run. ``OUT`` is the job's local folder, where its checkpoints are: the output directory, or, for
a feed on object storage, its ``output.state_dir`` (an ``flock`` cannot live on S3). The lock is
an ``flock`` on ``OUT/.lock``, which the kernel releases when the process dies,
so a kill -9 never leaves a directory locked; the holder's pid is written into the file only to
name it in the refusal. Each shard of a sharded job (:mod:`engine.shard`) locks only its own
part of the directory, ``OUT/.lock-shard-I-of-N``, so the N shards run at once; moments that
touch every shard's files (publishing the dataset's ``_SUCCESS``) take :func:`dataset_lock`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.errors import StorageError
from engine.shard import UNSHARDED, Shard

LOCK_FILE = ".lock"
DATASET_LOCK_FILE = ".lock-dataset"


class OutputLock:
    """An exclusive lock on one output directory (or on one shard's part of it), taken at
    construction (the directory is created if missing).

    Raises:
        StorageError: the directory cannot be created or opened, or another process holds it.
    """

    def __init__(self, out: Path, shard: Shard = UNSHARDED) -> None:
        self.out = out
        self.shard = shard
        fd = _open_lock_file(out, shard.file_name(LOCK_FILE))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            whose = f"shard {shard} of output directory" if shard.sharded else "output directory"
            raise StorageError(
                f"{whose} {out} is in use by another img1688 process"
                f"{f' (pid {holder})' if holder else ''}; wait for it or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the directory up (closing the descriptor releases the flock). Idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextmanager
def dataset_lock(out: Path) -> Iterator[None]:
    """Hold ``OUT/.lock-dataset`` (waiting for it) while checking or changing files every shard
    shares, so that two shards finishing at once cannot both miss, or both half-write, the
    dataset's ``_SUCCESS``. Held for a few file operations only.

    Raises:
        StorageError: the directory cannot be created or the lock file opened.
    """
    with exclusive(_open_lock_file(out, DATASET_LOCK_FILE)):
        yield


@contextmanager
def exclusive(fd: int) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the open lock file ``fd`` (waiting for it), then close
    ``fd``, which releases it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _open_lock_file(out: Path, name: str) -> int:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return os.open(out / name, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot use output directory {out}: {exc.strerror}") from None


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
