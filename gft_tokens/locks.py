"""An advisory lock on a run directory, so that two trainers never write into one ``--out`` at once.

``run_lock(out)`` takes an exclusive, non-blocking ``fcntl.flock`` on ``out/.lock`` (the file records the holder's
pid) for as long as the context is open; a second trainer is refused in one sentence. The kernel drops the lock
when the holder exits, however it exits (``kill -9`` too), so a stale lock file never blocks anyone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from .errors import GFTError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise GFTError(f"{directory} is in use: a trainer (pid {holder}) is writing into it; wait for it to "
                           f"finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
