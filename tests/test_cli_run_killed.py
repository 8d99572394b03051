"""``portlease run`` killed with SIGKILL (the OOM killer, a CI timeout that kills the wrapper):
while CMD lives nobody else is granted its ports, and CMD dies with ``run`` where Linux allows.

CMD is a real server (``python -m http.server {port0}``) on the first of two leased ports; the
second stays unbound, so that only the lease, not the bind probe, can keep it from a new leaser.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pytest_portlease import LeaseInfo, PortLeaser, PortRangeExhausted, PortUnavailable
from pytest_portlease._config import PortRange

SCRIPT = Path(sys.executable).parent / "portlease"

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux 5.3)")


def wait_exit(pid: int, timeout: float) -> bool:
    """True once ``pid`` has exited (pidfd readable: it is a zombie or gone), False at timeout.

    An event, not a poll of /proc: the kernel wakes us when the process exits.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def serves(port: int) -> bool:
    # Reset on close (SO_LINGER 0), so the server's side leaves no TIME_WAIT on the leased port.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
            return s.recv(12).startswith(b"HTTP/1.0 200")
    except OSError:
        return False


def status(lease_dir: Path) -> list[LeaseInfo]:
    return PortLeaser(lease_dir).status() if lease_dir.exists() else []


Start = Callable[..., tuple[subprocess.Popen[bytes], LeaseInfo]]


def _serving(lease_dir: Path) -> LeaseInfo | None:
    leases = status(lease_dir)
    return leases[0] if len(leases) == 1 and serves(leases[0].base) else None


@pytest.fixture
def server_run(lease_dir: Path, port_range: PortRange, tmp_path: Path) -> Iterator[Start]:
    """Start ``portlease run`` with a real HTTP server as CMD, told its port by a placeholder."""
    procs: list[subprocess.Popen[bytes]] = []
    cmd_pids: list[int] = []

    def start(*options: str) -> tuple[subprocess.Popen[bytes], LeaseInfo]:
        run = subprocess.Popen(
            [os.fspath(SCRIPT), "--dir", os.fspath(lease_dir), "--range", str(port_range), "run",
             "-n", "2", "--ttl", "600", *options, "--",
             sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory",
             os.fspath(tmp_path), "{port0}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(run)
        # The server answering is the event we wait for (no pipe can tell when it listens).
        deadline = time.monotonic() + 30
        while (lease := _serving(lease_dir)) is None:
            assert run.poll() is None and time.monotonic() < deadline, "the server never served"
            time.sleep(0.02)
        assert lease.pid is not None
        cmd_pids.append(lease.pid)
        return run, lease

    yield start
    for run in procs:
        if run.poll() is None:
            run.kill()
        run.wait()
    for pid in cmd_pids:  # orphaned CMDs: init reaps them once they exit
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        assert wait_exit(pid, 30)


def test_cmd_dies_with_a_killed_run_and_its_lease_is_reclaimed(
    server_run: Start, lease_dir: Path
) -> None:
    run, lease = server_run()
    assert lease.pid is not None and lease.pid != run.pid  # CMD owns the lease, not run
    run.kill()
    run.wait()
    # PR_SET_PDEATHSIG: the kernel sends CMD SIGTERM when run dies.
    assert wait_exit(lease.pid, 30), "CMD outlived the killed run"
    assert [x.state for x in status(lease_dir)] == ["dead owner"]
    with PortLeaser(lease_dir, ttl=5) as leaser:
        again = leaser.lease(2, port=lease.base)  # reclaimed, and the server's port is free again
        assert again.base == lease.base


def test_while_cmd_lives_its_ports_are_never_granted(
    server_run: Start, lease_dir: Path, port_range: PortRange
) -> None:
    run, lease = server_run("--keep-cmd-alive")
    run.kill()
    run.wait()
    assert lease.pid is not None and not wait_exit(lease.pid, 0)  # CMD lives on, as asked
    assert serves(lease.base)
    (info,) = status(lease_dir)
    assert (info.state, info.pid) == ("live", lease.pid)
    with PortLeaser(lease_dir, port_range=port_range, ttl=5) as leaser:
        # The unbound second port: only the lease keeps it from us.
        with pytest.raises(PortUnavailable, match="is held by lease"):
            leaser.lease(1, port=lease.base + 1)
        # Nor does a scan of a range that holds only that port grant it.
        with pytest.raises(PortRangeExhausted, match="1 live lease"):
            leaser.lease(1, port_range=(lease.base + 1, lease.base + 1))
    assert serves(lease.base)
    os.kill(lease.pid, signal.SIGTERM)
    assert wait_exit(lease.pid, 30)
    assert [x.state for x in status(lease_dir)] == ["dead owner"]  # and now it is reclaimable
