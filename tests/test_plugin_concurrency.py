"""The plugin under concurrency: xdist workers, separate pytest processes, a session longer than
its TTL. Every nested run is a real process (runpytest_subprocess or Popen), reaped here."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_portlease import PortLeaser, PortUnavailable
from pytest_portlease._config import PortRange

WAIT_FOR = """
import pathlib, time

def wait_for(condition, what):
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
"""


def wait_for(path: Path, procs: list[subprocess.Popen[str]], count: int = 1) -> None:
    """Wait until ``count`` files match ``path`` (a glob in its parent), or a process ended."""
    deadline = time.monotonic() + 30
    while len(list(path.parent.glob(path.name))) < count:
        ended = [p for p in procs if p.poll() is not None]
        assert not ended, ended[0].communicate()[0]
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.01)


def renewed(lease_dir: Path, base: int, expires: float) -> bool:
    return any(i.base == base and i.expires > expires for i in PortLeaser(lease_dir).status())


def nested_suite(pytester: pytest.Pytester, tmp_path: Path, tests: str) -> Path:
    """A nested test file with ``wait_for`` and ``OUT``, the directory it reports through."""
    out = tmp_path / "out"
    out.mkdir()
    pytester.makepyfile(WAIT_FOR + f"OUT = pathlib.Path({str(out)!r})\n" + tests)
    return out


def popen_pytest(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", *args], cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def reap(procs: list[subprocess.Popen[str]]) -> list[str]:
    """Wait for every process (killing any still running after the timeout); their output."""
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=60)[0])
        except subprocess.TimeoutExpired:
            proc.kill()
            outputs.append(proc.communicate()[0])
    return outputs


@pytest.mark.parametrize("xdist", [["-n", "4"], ["-p", "no:xdist"]], ids=["n4", "no-xdist"])
def test_forty_tests_get_disjoint_blocks_they_can_bind(
    pytester: pytest.Pytester,
    portlease_args: list[str],
    port_range: PortRange,
    tmp_path: Path,
    xdist: list[str],
) -> None:
    out = tmp_path / "blocks"
    out.mkdir()
    pytester.makepyfile(
        f"""
        import pathlib, socket, time
        import pytest

        @pytest.mark.parametrize("i", range(40))
        def test_block(port_block, i):
            block = port_block(3)
            socks = [socket.socket() for _ in block]
            try:
                for sock, port in zip(socks, block):
                    sock.bind(("127.0.0.1", port))  # fails if another worker holds the port
                    sock.listen()
                time.sleep(0.01)
            finally:
                for sock in socks:
                    sock.close()
            pathlib.Path({str(out)!r}, str(i)).write_text(" ".join(map(str, block)))
        """
    )
    result = pytester.runpytest_subprocess(*portlease_args, *xdist, "-W", "error")
    result.assert_outcomes(passed=40)
    workers = " over 4 workers" if "-n" in xdist else ""
    result.stdout.fnmatch_lines([f"portlease: 40 blocks, 120 ports leased{workers} in *"])
    ports = [int(p) for f in out.iterdir() for p in f.read_text().split()]
    assert len(ports) == 120
    assert len(set(ports)) == 120, "two tests got overlapping blocks"
    assert all(port in port_range for port in ports)


def test_two_pytest_processes_started_together_get_disjoint_blocks(
    pytester: pytest.Pytester, portlease_args: list[str], tmp_path: Path
) -> None:
    out = nested_suite(pytester, tmp_path, """
import os

def test_lease(port_block):
    (OUT / f"ready-{os.getpid()}").touch()
    wait_for((OUT / "go").exists, "the start signal")
    blocks = [port_block(3) for _ in range(10)]
    (OUT / f"blocks-{os.getpid()}").write_text(" ".join(" ".join(map(str, b)) for b in blocks))
    # Hold them until the other process has leased all of its own.
    wait_for(lambda: len(list(OUT.glob("blocks-*"))) == 2, "the other process")
""")
    procs = [popen_pytest(pytester.path, *portlease_args, "-p", "no:xdist") for _ in range(2)]
    try:
        wait_for(out / "ready-*", procs, count=2)
        (out / "go").touch()
    finally:
        outputs = reap(procs)
    assert [p.returncode for p in procs] == [0, 0], outputs
    first, second = (set(f.read_text().split()) for f in out.glob("blocks-*"))
    assert len(first) == len(second) == 30
    assert not first & second


def test_session_longer_than_its_ttl_keeps_its_leases(
    pytester: pytest.Pytester,
    portlease_args: list[str],
    lease_dir: Path,
    port_range: PortRange,
    tmp_path: Path,
) -> None:
    out = nested_suite(pytester, tmp_path, """
def test_hold(port_block):
    (OUT / "block").write_text(str(port_block(3).base))
    wait_for((OUT / "done").exists, "the other side")
""")
    ttl = 2
    proc = popen_pytest(pytester.path, *portlease_args, f"--portlease-ttl={ttl}", "-p", "no:xdist")
    try:
        wait_for(out / "block", [proc])
        base = int((out / "block").read_text())
        (first,) = [i for i in PortLeaser(lease_dir).status() if i.base == base]
        # The event itself, not a guessed time: a renewal written after the first expiry, by the
        # session's own clock (with expires = ceil(now + ttl), ttl + 1 s more means now was past it).
        deadline = time.monotonic() + 30
        while not renewed(lease_dir, base, first.expires + ttl):
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "no renewal came"
            time.sleep(0.01)
        with PortLeaser(lease_dir, port_range=str(port_range)) as rival:
            for port, size in ((base, 3), (base + 2, 1)):
                with pytest.raises(PortUnavailable, match=r"::test_hold.*\(pid \d+@"):
                    rival.lease(size, port=port)
            (info,) = [i for i in rival.status() if i.base == base]
            assert (info.size, info.pid) == (first.size, first.pid)
    finally:
        (out / "done").touch()
        (output,) = reap([proc])
    assert proc.returncode == 0, output
    # Released at the end of the session (asserted on the state, not by binding the ports, which
    # another test's server may hold for a moment).
    assert [i for i in PortLeaser(lease_dir).status() if i.base == base] == []
