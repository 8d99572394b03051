"""Waiting for the lock: in the kernel's queue (fair turns with fedimint-portalloc, which blocks in
flock), ``lock_timeout`` honoured with nothing left locked, and a LockTimeout that says what is
known of the holder and the other waiters."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _reliability import child_argv

from pytest_portlease import LockTimeout, PortLeaser, _lock
from pytest_portlease._config import PortRange
from pytest_portlease._store import LOCK_NAME

pytestmark = pytest.mark.reliability


def _proc_locks(lock: Path) -> tuple[list[int], list[int]]:
    """Holders and blocked waiters of ``lock`` by pid, read from /proc/locks (the kernel's view)."""
    st = os.stat(lock)
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holders, waiters = [], []
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            blocked = parts[1] == "->"
            fields = parts[2:] if blocked else parts[1:]
            if fields[0] == "FLOCK" and fields[4] == want:
                (waiters if blocked else holders).append(int(fields[3]))
    return holders, waiters


def _state_letter(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _until(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def holder(lease_dir: Path, port_range: PortRange) -> Iterator[subprocess.Popen[str]]:
    """A process stopped inside the lock (it printed ``locked``) until it reads a line."""
    rng = [port_range.low + 700, port_range.low + 799]
    with subprocess.Popen(
        child_argv("hold-lock", directory=os.fspath(lease_dir), port_range=rng),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "locked"
            yield proc
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
            proc.communicate("\n", timeout=60)
        assert proc.returncode == 0


def _join_abandoned_waiters() -> None:
    for thread in threading.enumerate():
        if thread.name == "portlease-lock-waiter":
            thread.join(60)
            assert not thread.is_alive()


def test_a_waiting_leaser_is_in_the_kernels_queue(
    lease_dir: Path, port_range: PortRange, holder: subprocess.Popen[str]
) -> None:
    lock = lease_dir / LOCK_NAME
    result: dict[str, object] = {}
    with PortLeaser(lease_dir, port_range=port_range, lock_timeout=120) as leaser:
        thread = threading.Thread(target=lambda: result.update(block=leaser.lease(1)))
        thread.start()
        try:
            # Blocked in flock(2): the kernel lists the waiter, and wakes it on unlock, in turn
            # with fedimint-portalloc's blocked waiters, instead of a poll that comes too late.
            _until(lambda: os.getpid() in _proc_locks(lock)[1], "our pid among the lock's waiters")
        finally:
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
            thread.join()
        assert "block" in result


def test_a_timed_out_wait_says_what_is_known_and_leaves_the_lock_free(
    lease_dir: Path, port_range: PortRange, holder: subprocess.Popen[str]
) -> None:
    lock = lease_dir / LOCK_NAME
    # Another process blocked on the lock, as fedimint-portalloc would be.
    other = textwrap.dedent(f"""
        import fcntl, os
        fd = os.open({os.fspath(lock)!r}, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)
    """)
    with subprocess.Popen([sys.executable, "-c", other]) as waiter:
        try:
            _until(lambda: waiter.pid in _proc_locks(lock)[1], "the other waiter to block")
            leaser = PortLeaser(lease_dir, port_range=port_range, lock_timeout=0.3)
            with pytest.raises(LockTimeout) as info:
                leaser.lease(1)
            busy = str(info.value)
            os.kill(holder.pid, signal.SIGSTOP)
            _until(lambda: _state_letter(holder.pid) == "T", "the holder to stop")
            with pytest.raises(LockTimeout) as info:
                leaser.lease(1)
            stopped = info.value
        finally:
            os.kill(holder.pid, signal.SIGCONT)
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
            waiter.wait(timeout=60)  # it gets the lock once the holder lets go, and exits

    assert f"could not lock {lock} within 0.3s" in busy
    assert f"held by pid {holder.pid} (" in busy and "_reliability.py hold-lock" in busy
    assert "busy, not stopped" in busy
    assert "1 other process waited for it too" in busy
    assert "--portlease-lock-timeout" in busy and "PORTLEASE_LOCK_TIMEOUT" in busy
    assert "raise lock_timeout" not in busy
    assert f"stopped (SIGSTOP or Ctrl-Z): resume it with `kill -CONT {holder.pid}`" in str(stopped)
    assert stopped.holder_pid == holder.pid and stopped.holder_state == "T" and stopped.waiters == 1
    copy = pickle.loads(pickle.dumps(stopped))  # crosses xdist
    assert str(copy) == str(stopped) and copy.holder_state == "T"

    # Nothing stays locked: our abandoned waiters took the lock in their turn and let go at once.
    holder.wait(timeout=60)
    _join_abandoned_waiters()
    assert _proc_locks(lock) == ([], [])
    probe = "import fcntl, os, sys; fcntl.flock(os.open(sys.argv[1], os.O_RDWR), fcntl.LOCK_EX | fcntl.LOCK_NB)"
    assert subprocess.run([sys.executable, "-c", probe, os.fspath(lock)], timeout=60).returncode == 0
    leaser.close()


def test_without_flock_the_wait_polls_until_the_holder_lets_go(
    lease_dir: Path, port_range: PortRange, holder: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where fcntl is missing (not POSIX) the wait polls filelock's non-blocking lock: it must
    # still give up at the deadline, name the holder, and take the lock once it is free.
    monkeypatch.setattr(_lock, "_blocking_wait_available", lambda: False)
    with PortLeaser(lease_dir, port_range=port_range, lock_timeout=0.2) as leaser:
        with pytest.raises(LockTimeout) as info:
            leaser.lease(1)
        assert info.value.holder_pid == holder.pid
        assert info.value.timeout == 0.2
        assert info.value.waited >= 0.2
        assert not [t for t in threading.enumerate() if t.name == "portlease-lock-waiter"]
    assert holder.stdin is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    with PortLeaser(lease_dir, port_range=port_range, lock_timeout=120) as leaser:
        block = leaser.lease(1)  # polls until the holder, told to let go, has unlocked
        assert block.base in port_range
    assert not [t for t in threading.enumerate() if t.name == "portlease-lock-waiter"]


def test_poll_lock_gives_up_at_its_deadline_and_takes_a_free_lock(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    path.touch()
    mine = os.open(path, os.O_RDWR)
    other = os.open(path, os.O_RDWR)  # its own open file description: flock excludes it
    try:
        assert _lock.poll_lock(mine, 0.0)
        assert not _lock.poll_lock(other, 0.05)
        _lock.unlock(mine)
        assert _lock.poll_lock(other, 0.0)
    finally:
        os.close(mine)
        os.close(other)
