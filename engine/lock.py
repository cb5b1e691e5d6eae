"""The output-directory lock: one img1688 process per output directory.

Two processes appending to one feed and one checkpoint database would each believe it owns the
run. The lock is an ``flock`` on ``OUT/.lock``, which the kernel releases when the process dies,
so a kill -9 never leaves a directory locked; the holder's pid is written into the file only to
name it in the refusal.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from engine.errors import StorageError

LOCK_FILE = ".lock"


class OutputLock:
    """An exclusive lock on one output directory, taken at construction (created if missing).

    Raises:
        StorageError: the directory cannot be created or opened, or another process holds it.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        try:
            out.mkdir(parents=True, exist_ok=True)
            fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot use output directory {out}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StorageError(
                f"output directory {out} is in use by another img1688 process"
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


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
