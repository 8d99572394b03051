"""The lock: filelock's native (flock) lock on a descriptor, polled with a deadline.

The lock file is never unlinked or truncated: another process, fedimint-portalloc included, may
be blocked on that very inode.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path


def poll_lock(fd: int, timeout: float) -> bool:
    """Take filelock's native lock on ``fd`` within ``timeout`` seconds.

    Polled like filelock's FileLock, but every millisecond: a holder keeps it for ~100 us.
    """
    import filelock  # here, not at the top: a pytest run that leases nothing never pays for it

    deadline = time.monotonic() + timeout
    while not filelock.lock_descriptor(fd, blocking=False):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True


def close_quietly(fd: int, pid: int) -> None:
    if pid == os.getpid():  # a forked child's copy of the descriptor is not ours to close
        with contextlib.suppress(OSError):
            os.close(fd)


def unlock(fd: int) -> None:
    import filelock

    filelock.unlock_descriptor(fd)


@contextlib.contextmanager
def shared_lock(path: Path, timeout: float = 2.0) -> Iterator[None]:
    # A writer that rewrites in place (fedimint-portalloc) is only safe to read under its lock.
    # Take it on the existing file, read-only, without creating anything; give up after a short
    # while rather than hang a diagnostic command behind a stopped process.
    try:
        # O_NONBLOCK: a FIFO planted at the lock's name must not hang a diagnostic command.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        yield
        return
    try:
        poll_lock(fd, timeout)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops its flock
