"""The lock: filelock's native (flock) lock on a descriptor, waited for in the kernel's queue.

The lock file is never unlinked or truncated: another process, fedimint-portalloc included, may
be blocked on that very inode. Others do unlink it (``rm <dir>/lock`` is common advice for a
"stale" lock, and so are cache cleaners): a lock taken on an inode that the path no longer names
excludes nobody, so every acquisition checks that it locked the file the path names.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

from . import _owner
from .errors import LockTimeout, PortleaseError


class Replaced(PortleaseError):
    """The lock file was replaced while we held the old one, and the state changed meanwhile:
    nothing was written, and the transaction may be run again."""


def try_lock(fd: int) -> bool:
    import filelock  # here, not at the top: a pytest run that leases nothing never pays for it

    return filelock.lock_descriptor(fd, blocking=False)


def unlock(fd: int) -> None:
    import filelock

    filelock.unlock_descriptor(fd)


def poll_lock(fd: int, timeout: float) -> bool:
    """Take the lock on ``fd`` within ``timeout`` seconds, polling every millisecond."""
    deadline = time.monotonic() + timeout
    while not try_lock(fd):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True


def close_quietly(fd: int, pid: int) -> None:
    if pid == os.getpid():  # a forked child's copy of the descriptor is not ours to close
        with contextlib.suppress(OSError):
            os.close(fd)


class _Waiter:
    """A blocking flock on a descriptor of its own, in a thread, so that the caller can give up.

    Polling loses every turn to a process blocked in flock(2) (fedimint-portalloc is): on unlock
    the kernel wakes the blocked waiters, and one of them has the lock before our next poll.
    filelock's blocking mode polls too (``lock_descriptor`` sleeps ``poll_interval``), so the
    wait itself is fcntl.flock, the very primitive filelock takes on POSIX. A waiter abandoned
    at the deadline still gets the lock in the end: it unlocks and closes at once, so nothing
    stays locked.
    """

    def __init__(self, fd: int, pending: set[_Waiter]) -> None:
        self.fd = fd  # -1 once closed: a forked child closes its copy only while it is open
        self._pending = pending
        pending.add(self)
        self._guard = threading.Lock()
        self._granted = threading.Event()
        self._abandoned = False
        self.error: OSError | None = None
        threading.Thread(target=self._run, name="portlease-lock-waiter", daemon=True).start()

    def _run(self) -> None:
        import fcntl

        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)  # EINTR is retried by Python (PEP 475)
        except OSError as e:
            self.error = e
        with self._guard:
            if self._abandoned:
                fd, self.fd = self.fd, -1
                if self.error is None:
                    unlock(fd)
                os.close(fd)
            else:
                self._granted.set()
            self._pending.discard(self)

    def wait(self, timeout: float) -> bool:
        """True when the lock is ours on ``fd``; False (and the waiter abandoned) at timeout."""
        self._granted.wait(max(timeout, 0.0))
        with self._guard:
            if not self._granted.is_set():
                self._abandoned = True
                return False
        if self.error is not None:
            fd, self.fd = self.fd, -1
            os.close(fd)
            raise self.error
        return True


def _blocking_wait_available() -> bool:
    try:
        import fcntl  # noqa: F401  # POSIX only
    except ImportError:
        return False
    return True


class DirLock:
    """A leaser's hold on the lease directory's lock file, kept open across transactions.

    ``open_lock`` opens (creating if needed) the lock file; ``prepare`` makes the directory ready
    again after the lock file was found removed or replaced.
    """

    def __init__(self, path: Path, open_lock: Callable[[], int], prepare: Callable[[], None]) -> None:
        self.path = path
        self._open = open_lock
        self._prepare = prepare
        self._fd: int | None = None
        self._closer: weakref.finalize[[int, int], DirLock] | None = None
        self._waiters: set[_Waiter] = set()  # waiter threads not finished yet

    def acquire(self, timeout: float) -> bool:
        """Lock the file the path names, within ``timeout`` seconds; raise ``LockTimeout``.

        True when the lock file was not the one locked last time (removed or replaced): what the
        caller cached from the directory may have been written by processes it did not exclude.
        """
        started = time.monotonic()
        deadline = started + timeout
        replaced = False
        while True:
            if self._fd is None:
                self._adopt(self._open())
            fd = self._fd
            assert fd is not None
            if not try_lock(fd) and (locked := self._wait(fd, deadline, started, timeout)) != fd:
                self._adopt(locked)
            if self.is_current():
                return replaced
            # Locked an inode the path no longer names: it excludes nobody who opens the path
            # now. Closing drops that flock; the next turn opens (or creates) what the path names.
            self._drop()
            replaced = True
            self._prepare()
            if time.monotonic() >= deadline:
                raise self._timeout(timeout, time.monotonic() - started)

    def _wait(self, fd: int, deadline: float, started: float, timeout: float) -> int:
        """A new descriptor of the lock file, holding the lock."""
        if not _blocking_wait_available():
            if poll_lock(fd, deadline - time.monotonic()):
                return fd
            raise self._timeout(timeout, time.monotonic() - started)
        # Its own open file description: flock(2) locks per description, and an abandoned
        # waiter must never lock (or unlock) the one we keep.
        waiter = _Waiter(self._open(), self._waiters)
        if waiter.wait(deadline - time.monotonic()):
            return waiter.fd
        raise self._timeout(timeout, time.monotonic() - started)

    def _timeout(self, timeout: float, waited: float) -> LockTimeout:
        holder, waiters = _owner.lock_holders(self.path)
        others = len(set(waiters) - {os.getpid()})  # a process may wait from several threads
        process = _owner.describe_process(holder) if holder is not None else None
        return LockTimeout(os.fspath(self.path), timeout, holder, waited, others, process)

    def is_current(self) -> bool:
        """Whether our descriptor is the file the path names now (same device and inode)."""
        if self._fd is None:
            return False
        try:
            named = os.stat(self.path, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        mine = os.fstat(self._fd)
        return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)

    def try_acquire(self) -> bool:
        """Lock the file we already have open, if that is free right now and still the lock."""
        if self._fd is None or not try_lock(self._fd):
            return False
        if self.is_current():
            return True
        unlock(self._fd)
        return False

    def release(self) -> None:
        if self._fd is not None:
            unlock(self._fd)

    def _adopt(self, fd: int) -> None:
        self._drop()
        self._fd = fd
        # A leaser dropped without close() must not leak its descriptor.
        self._closer = weakref.finalize(self, close_quietly, fd, os.getpid())

    def _drop(self) -> None:
        if self._closer is not None:
            self._closer()  # closes the descriptor, which drops any flock it holds
        self._closer = None
        self._fd = None

    def close(self) -> None:
        self._drop()

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's descriptors without unlocking them.

        flock(2) locks belong to the open file description, which the child shares: LOCK_UN
        here would unlock the parent's lock. Closing our copies is safe (a lock is dropped only
        with the last descriptor of its description) and keeps a lock of the parent's from
        outliving the parent in us.
        """
        for fd in [self._fd, *(w.fd for w in list(self._waiters))]:
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._closer is not None:
            self._closer.detach()
        self._closer = None
        self._fd = None
        self._waiters = set()


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
