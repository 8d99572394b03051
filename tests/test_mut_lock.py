"""The lock's waiter thread and a forked child's letting go, each checked against the kernel.

A waiter is a thread blocked in flock(2) on a description of its own: it is known to its lock
while it waits, named, a daemon (a process that gave up must still exit), and it lets go of
what it is granted once abandoned. A forked child closes its copies of the parent's
descriptors, descriptor 0 included, without unlocking the parent's lock, and can lock afresh.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _reliability import lock_is_held

from pytest_portlease import LockTimeout, _lock, _owner


def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@contextlib.contextmanager
def _held(path: Path) -> Iterator[None]:
    """The lock held, until the block ends, by a description of the test's own."""
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def _waiter_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "portlease-lock-waiter"}


def _blocked_waiter(path: Path, pending: set[_lock._Waiter]) -> tuple[_lock._Waiter, threading.Thread]:
    """A waiter on a description of its own, once the kernel shows it blocked, and its thread."""
    others = _waiter_threads()  # left by other tests, if any
    waiter = _lock._Waiter(os.open(path, os.O_RDWR), pending)
    _until(lambda: os.getpid() in _owner.lock_holders(path)[1], "the waiter to block in flock")
    [thread] = _waiter_threads() - others
    return waiter, thread


@pytest.fixture
def lock(tmp_path: Path) -> Path:
    path = tmp_path / "lock"
    path.touch()
    return path


def test_a_waiter_is_a_named_daemon_known_to_its_lock_until_it_is_granted(lock: Path) -> None:
    pending: set[_lock._Waiter] = set()
    with _held(lock):
        waiter, thread = _blocked_waiter(lock, pending)
        assert thread.daemon  # a process that gave up waiting must not hang at exit
        assert pending == {waiter}
    assert waiter.wait(30)
    thread.join(30)
    assert pending == set()
    assert lock_is_held(lock)  # the waiter's descriptor holds it
    os.close(waiter.fd)
    assert not lock_is_held(lock)


def test_an_abandoned_waiter_lets_go_of_what_it_is_granted(lock: Path) -> None:
    pending: set[_lock._Waiter] = set()
    with _held(lock):
        waiter, thread = _blocked_waiter(lock, pending)
        fd = waiter.fd
        assert not waiter.wait(0.0)
    thread.join(30)
    assert not thread.is_alive() and pending == set()
    assert waiter.fd == -1  # closed: a forked child must not close that number again
    with pytest.raises(OSError, match="Bad file descriptor") as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF
    assert not lock_is_held(lock)


def test_a_waiter_whose_flock_fails_raises_that_error(lock: Path) -> None:
    fd = os.open(lock, os.O_RDWR)
    os.close(fd)  # flock(2) on it fails with EBADF
    others = _waiter_threads()
    waiter = _lock._Waiter(fd, set())
    with pytest.raises(OSError, match="Bad file descriptor") as info:
        waiter.wait(30)
    assert info.value.errno == errno.EBADF
    assert waiter.fd == -1  # closed: a forked child must not close that number again
    for thread in _waiter_threads() - others:
        thread.join(30)


_GIVE_UP = """
import os, sys
from pathlib import Path
from pytest_portlease import LockTimeout
from pytest_portlease._lock import DirLock

path = Path(sys.argv[1])
lock = DirLock(path, lambda: os.open(path, os.O_RDWR | os.O_CLOEXEC), lambda: None)
try:
    lock.acquire(0.05)
except LockTimeout:
    print("gave up", flush=True)
"""


def test_a_process_that_gave_up_waiting_exits_while_the_lock_is_still_held(lock: Path) -> None:
    with _held(lock):
        # Its waiter thread is still blocked in flock(2) when the interpreter exits.
        argv = [sys.executable, "-c", _GIVE_UP, os.fspath(lock)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert (done.returncode, done.stdout, done.stderr) == (0, "gave up\n", "")
        assert lock_is_held(lock)


_FORK = """
import errno, os, sys
from pathlib import Path
from pytest_portlease import LockTimeout
from pytest_portlease._lock import DirLock

path = Path(sys.argv[1])
def opener():
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)

os.close(0)  # a process started with stdin closed: the lock opens on descriptor 0
held = DirLock(path, opener, lambda: None)
held.acquire(5)
waiting = DirLock(path, opener, lambda: None)
try:
    waiting.acquire(0.05)
except LockTimeout:
    pass
[waiter] = waiting._waiters  # abandoned, still blocked in flock(2)
copies = [held._fd, waiting._fd, waiter.fd]
assert copies[0] == 0, copies
never = DirLock(path, opener, lambda: None)  # opened nothing yet
os.close(waiting._fd)  # one copy closed already, as by a child that closed its descriptors
pid = os.fork()
if pid == 0:
    code = 1
    try:
        for lock in (held, waiting, never):
            lock.forget_after_fork()
        for fd in copies:
            try:
                os.fstat(fd)
            except OSError as e:
                assert e.errno == errno.EBADF
            else:
                raise AssertionError(f"descriptor {fd} is still open in the child")
        try:
            held.acquire(0.05)  # the parent still holds it: the child did not unlock it
        except LockTimeout:
            pass
        else:
            raise AssertionError("the child took the parent's lock")
        held.close()
        never.close()
        code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert held.is_current() and os.fstat(0)  # the parent's copy is open, and locked still
print("ok", flush=True)
"""


def test_a_forked_child_lets_go_of_its_copies_without_unlocking_and_locks_again(lock: Path) -> None:
    never = _lock.DirLock(lock, lambda: os.open(lock, os.O_RDWR), lambda: None)
    never.forget_after_fork()  # here too: a lock that opened nothing has nothing to let go of
    assert not never.is_current()
    done = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", textwrap.dedent(_FORK), os.fspath(lock)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")
    assert not lock_is_held(lock)  # the parent exited, and its abandoned waiter let go


def _dir_lock(path: Path, prepared: list[Path] | None = None) -> _lock.DirLock:
    """A DirLock on ``path`` that creates it when missing; each prepare() is noted in ``prepared``."""
    made = [] if prepared is None else prepared

    def opener() -> int:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    return _lock.DirLock(path, opener, lambda: made.append(path))


@pytest.mark.parametrize("blocking", [True, False], ids=["kernel-queue", "polling"])
def test_a_lock_timeout_reports_the_time_actually_waited(
    lock: Path, blocking: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_lock, "_blocking_wait_available", lambda: blocking)
    others = _waiter_threads()
    waiting = _dir_lock(lock)
    try:
        with _held(lock), pytest.raises(LockTimeout) as info:
            waiting.acquire(0.0)  # gives up at once, after the time it took to try
    finally:
        waiting.close()
    for thread in _waiter_threads() - others:
        thread.join(30)
    assert info.value.timeout == 0.0
    assert 0.0 < info.value.waited < 30
    assert info.value.holder_pid == os.getpid()
    assert f"(waited {info.value.waited:.1f}s); held by pid {os.getpid()}" in str(info.value)


def test_a_removed_lock_file_is_made_again_and_reported_replaced(lock: Path) -> None:
    prepared: list[Path] = []
    dir_lock = _dir_lock(lock, prepared)
    try:
        assert not dir_lock.is_current()  # no descriptor yet
        assert dir_lock.acquire(5) is False
        dir_lock.release()
        lock.unlink()  # `rm <dir>/lock`, as advice for a "stale" lock has it
        assert dir_lock.acquire(5) is True  # what was cached may have been written unexcluded
        assert prepared == [lock]
        assert dir_lock.is_current() and lock.exists()
        assert lock_is_held(lock)
        dir_lock.release()
        assert dir_lock.acquire(5) is False and prepared == [lock]
    finally:
        dir_lock.close()
    assert not dir_lock.is_current()


def test_try_acquire_takes_only_a_free_lock_that_the_path_still_names(lock: Path) -> None:
    dir_lock = _dir_lock(lock)
    try:
        assert dir_lock.try_acquire() is False  # nothing open yet: it does not open or wait
        dir_lock.acquire(5)
        dir_lock.release()
        assert dir_lock.try_acquire() is True
        assert lock_is_held(lock)
        dir_lock.release()
        with _held(lock):
            assert dir_lock.try_acquire() is False  # busy
        lock.unlink()
        assert dir_lock.try_acquire() is False  # free, but the path names no file of ours
        lock.touch()
        assert not lock_is_held(lock)
    finally:
        dir_lock.close()


def test_a_symlink_planted_at_the_lock_path_is_not_the_lock_file(lock: Path) -> None:
    dir_lock = _dir_lock(lock)
    try:
        dir_lock.acquire(5)
        assert dir_lock.is_current()
        lock.rename(lock.with_name("lock.real"))
        lock.symlink_to("lock.real")  # names our very inode, through a link we never open
        assert not dir_lock.is_current()
    finally:
        dir_lock.close()


def test_a_lock_file_replaced_at_every_turn_times_out_saying_what_it_waited(lock: Path, tmp_path: Path) -> None:
    # The descriptor it locks is never the file the path names (as if the file were replaced
    # after each open): every turn ends in prepare(), until the deadline.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.touch()
    prepared: list[Path] = []
    turns = _lock.DirLock(lock, lambda: os.open(elsewhere, os.O_RDWR), lambda: prepared.append(lock))
    try:
        with pytest.raises(LockTimeout) as info:
            turns.acquire(0.0)
    finally:
        turns.close()
    assert prepared == [lock]  # one turn: the deadline had passed
    assert info.value.timeout == 0.0
    assert 0.0 < info.value.waited < 30
    assert str(info.value).startswith(f"could not lock {lock} within 0s (waited ")


def test_closing_a_lock_whose_descriptor_was_closed_behind_its_back(lock: Path) -> None:
    dir_lock = _dir_lock(lock)
    dir_lock.acquire(5)
    assert dir_lock.is_current()
    for name in os.listdir("/proc/self/fd"):  # as a daemonizing library closes every descriptor
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone already
            if os.path.samefile(f"/proc/self/fd/{name}", lock):
                os.close(int(name))
    dir_lock.close()  # nothing to close any more: no error
    assert not lock_is_held(lock)
