"""The write path creates no inode: the file an exchange takes out is rewritten by the next write,
unless a reader may be reading it; readers outside the lock never see a torn file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from _reliability import check_state_bytes

from pytest_portlease import PortLeaser, _store
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME
from pytest_portlease._store import TEMP_PREFIX, Store


def _ino(path: Path) -> int:
    return os.lstat(path).st_ino


def _small(port_range: PortRange) -> tuple[int, int]:
    return (port_range.low + 600, port_range.low + 699)


def test_a_write_creates_no_inode(lease_dir: Path, port_range: PortRange) -> None:
    state, temp = lease_dir / STATE_NAME, lease_dir / f"{TEMP_PREFIX}{os.getpid()}"
    with PortLeaser(lease_dir, port_range=_small(port_range)) as leaser:
        leaser.lease(1)  # the first write renames: nothing to swap with
        leaser.lease(1)  # swaps with the state: the old state stays under our temp name
        first, second = _ino(temp), _ino(state)
        assert check_state_bytes(temp.read_bytes())["keys"]  # the old state, whole
        for _ in range(4):
            leaser.lease(1)  # rewrites the kept file and swaps it back in: two inodes, ever
            first, second = second, first
            assert (_ino(state), _ino(temp)) == (second, first)
            assert os.lstat(state).st_nlink == 1
        assert len(check_state_bytes(state.read_bytes())["keys"]) == 6
    # A closed leaser writes no more: it leaves no temp file behind.
    assert sorted(p.name for p in lease_dir.iterdir()) == [STATE_NAME, "lock"]


def test_a_shorter_state_leaves_no_old_tail(lease_dir: Path, port_range: PortRange) -> None:
    with PortLeaser(lease_dir, port_range=_small(port_range), label="x" * 500) as leaser:
        blocks = [leaser.lease(1) for _ in range(5)]
        for block in blocks:
            leaser.release(block)  # each write is shorter than the file it rewrites
            check_state_bytes((lease_dir / STATE_NAME).read_bytes())
        assert check_state_bytes((lease_dir / STATE_NAME).read_bytes())["keys"] == {}


def test_a_file_a_reader_holds_is_never_rewritten(lease_dir: Path, port_range: PortRange) -> None:
    # Any reader outside the lock (cat, jq, a file manager) just opens the state and reads; it
    # takes no lock of ours. The writer's next writes must leave that file as it was, however
    # many there are, for as long as the reader holds it open.
    state = lease_dir / STATE_NAME
    with PortLeaser(lease_dir, port_range=_small(port_range)) as leaser:
        leaser.lease(1)
        leaser.lease(1)
        fd = os.open(state, os.O_RDONLY)
        try:
            held = os.pread(fd, 1 << 20, 0)
            for _ in range(4):
                leaser.lease(2)
            assert os.pread(fd, 1 << 20, 0) == held
            assert os.fstat(fd).st_size == len(held)
        finally:
            os.close(fd)
        assert len(check_state_bytes(state.read_bytes())["keys"]) == 6


def test_a_hard_link_to_the_state_is_never_rewritten(lease_dir: Path, port_range: PortRange) -> None:
    state = lease_dir / STATE_NAME
    with PortLeaser(lease_dir, port_range=_small(port_range)) as leaser:
        leaser.lease(1)
        os.link(state, lease_dir.parent / "backup.json")  # someone's copy of the state
        held = state.read_bytes()
        for _ in range(4):
            leaser.lease(1)
        assert (lease_dir.parent / "backup.json").read_bytes() == held


def test_an_unlocked_read_skips_a_file_torn_by_a_dead_writer(lease_dir: Path, port_range: PortRange) -> None:
    # The reader opened the state; before it took its flock the file was swapped out, and a
    # writer died half way through rewriting it. The reader must notice and read the state.
    state = lease_dir / STATE_NAME
    with PortLeaser(lease_dir, port_range=_small(port_range)) as leaser:
        leaser.lease(1)
        leaser.lease(1)
        reader = Store(lease_dir, "test")
        opened = os.open

        def open_then_tear(path: object, flags: int, *args: int) -> int:
            fd = opened(path, flags, *args)  # type: ignore[arg-type]
            if path == os.fsencode(state):
                os.open = opened  # once
                leaser.lease(1)  # the file we opened is now under the writer's temp name
                temp = lease_dir / f"{TEMP_PREFIX}{os.getpid()}"
                assert os.fstat(fd).st_ino == _ino(temp)
                with open(temp, "r+b") as f:
                    f.write(b'{"next": 1, "ke')  # a writer SIGKILLed mid-rewrite
            return fd

        os.open = open_then_tear  # type: ignore[assignment]
        try:
            data = reader.read_unlocked()
        finally:
            os.open = opened
        assert data == state.read_bytes()
        check_state_bytes(data)


def test_a_writer_without_renameat2_keeps_nothing(
    lease_dir: Path, port_range: PortRange, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_store, "_renameat2", False)
    with PortLeaser(lease_dir, port_range=_small(port_range)) as leaser:
        for _ in range(3):
            leaser.lease(1)
            assert sorted(p.name for p in lease_dir.iterdir()) == [STATE_NAME, "lock"]


def test_the_sweep_keeps_live_writers_temps_and_removes_dead_ones(lease_dir: Path, port_range: PortRange) -> None:
    lease_dir.mkdir()
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as live:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
        live_temp = lease_dir / f"{TEMP_PREFIX}{live.pid}"
        dead_temp = lease_dir / f"{TEMP_PREFIX}{int(dead.stdout)}"
        live_temp.write_bytes(b"{}")
        dead_temp.write_bytes(b'{"torn')
        try:
            with PortLeaser(lease_dir, port_range=_small(port_range)) as leaser:
                leaser.lease(1)
                assert live_temp.exists()
                assert not dead_temp.exists()
        finally:
            assert live.stdin is not None
            live.stdin.close()
            live.wait()


def test_a_forked_child_writes_through_its_own_temp(lease_dir: Path, port_range: PortRange) -> None:
    script = textwrap.dedent(f"""
        import os
        from pytest_portlease import PortLeaser
        leaser = PortLeaser({str(lease_dir)!r}, port_range={_small(port_range)!r})
        leaser.lease(1); leaser.lease(1)
        pid = os.fork()
        if pid == 0:
            leaser.lease(1); leaser.lease(1)
            names = sorted(os.listdir({str(lease_dir)!r}))
            os._exit(0 if f"{TEMP_PREFIX}{{os.getpid()}}" in names else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        leaser.lease(1)
        leaser.close()
    """)
    subprocess.run([sys.executable, "-c", script], check=True)


def _lease_breaking(ino: int) -> bool:
    """Whether /proc/locks shows a lease on inode ``ino`` that an opener is breaking."""
    with open("/proc/locks") as f:
        return any("LEASE" in line and "BREAKING" in line and f":{ino} " in line for line in f)


@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs Linux's /proc/locks")
def test_an_open_during_a_rewrite_waits_for_the_complete_file(lease_dir: Path, port_range: PortRange) -> None:
    # The writer is stopped in the middle of rewriting its kept file (at the seam after it made
    # sure nobody has the file open). A reader that opens the file then, by any name, must wait
    # until the file is complete again, and the writer must not die of the notice it receives.
    script = textwrap.dedent(f"""
        import sys
        from pytest_portlease import PortLeaser, _store
        leaser = PortLeaser({str(lease_dir)!r}, port_range={_small(port_range)!r})
        leaser.lease(1); leaser.lease(1)  # the second write keeps the file it swapped out

        def fault(point):
            if point == "rewrite-started":
                print("rewriting", flush=True)
                sys.stdin.readline()

        _store.fault = fault
        leaser.lease(1)
        _store.fault = None
        leaser.close()
    """)
    result: dict[str, bytes] = {}
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline() == b"rewriting\n"
            kept = lease_dir / f"{TEMP_PREFIX}{child.pid}"
            ino = _ino(kept)

            def read() -> None:
                result["data"] = kept.read_bytes()

            reader = threading.Thread(target=read)
            reader.start()
            deadline = time.monotonic() + 30
            while not _lease_breaking(ino):
                assert child.poll() is None, "the writer died while it rewrote the file"
                assert reader.is_alive(), "the open did not wait for the rewrite"
                assert time.monotonic() < deadline, "no lease on the kept file was broken"
                reader.join(0.001)
            assert reader.is_alive()
            child.stdin.write(b"go\n")
            child.stdin.close()
            reader.join()
            assert child.wait() == 0  # not killed by the lease-break signal
        finally:
            if child.poll() is None:
                child.kill()
    assert len(check_state_bytes(result["data"])["keys"]) == 3  # the rewritten file, whole


@pytest.mark.parametrize("handled", [False, True])
def test_a_process_that_handles_sigurg_writes_new_files(
    lease_dir: Path, port_range: PortRange, monkeypatch: pytest.MonkeyPatch, handled: bool
) -> None:
    # The notice of a waiting open would reach that handler: such a process takes no lease, so
    # it never rewrites a file in place; one that leaves SIGURG alone does.
    points: list[str] = []
    monkeypatch.setattr(_store, "fault", points.append)
    calls: list[int] = []
    previous = signal.signal(signal.SIGURG, calls.append if handled else signal.SIG_DFL)
    try:
        with PortLeaser(lease_dir, port_range=_small(port_range)) as leaser:
            for _ in range(4):
                leaser.lease(1)
    finally:
        signal.signal(signal.SIGURG, previous)
    # Five writes (four leases, then the release at close): the first renames, the second
    # swaps a new file in and keeps the old state, and each later one can rewrite what it kept.
    assert points.count("after-replace") == 5
    assert points.count("rewrite-started") == (0 if handled else 3)
    assert calls == []
