"""An owner provably alive keeps its lease whatever the clock says; where /proc describes another
PID namespace no owner can be checked; an owner dropped by a fedimint rewrite comes back.

The clock is stepped in a child process by replacing ``time.time`` before the engine is imported:
every reader of the wall clock in that process sees the step, as after an NTP step or a resume
from suspend (the engine's own seam, ``_clock.now``, reads it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _reliability import holding, unshare_works
from conftest import free_window

from pytest_portlease import PortLeaser
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME

pytestmark = pytest.mark.reliability

STEP = 3600  # an hour: far past any TTL here


@pytest.fixture
def window() -> PortRange:
    """Two ports that probe free now: a holder of both leaves nothing else to grant."""
    return free_window(2)


def _keys(lease_dir: Path) -> dict[str, Any]:
    keys: dict[str, Any] = json.loads((lease_dir / STATE_NAME).read_text())["keys"]
    return keys


def _lease_code(lease_dir: Path, rng: PortRange, *, step: float = 0, size: int = 1, ttl: float = 30) -> str:
    """A child that leases ``size`` ports with its clock ``step`` seconds ahead, and prints the
    base or the error's class name."""
    return textwrap.dedent(f"""
        import json, time
        real = time.time
        time.time = lambda: real() + {step}
        from pytest_portlease import PortleaseError, PortLeaser
        try:
            block = PortLeaser({os.fspath(lease_dir)!r}, port_range={str(rng)!r}, ttl={ttl}).lease({size})
            print(json.dumps({{"base": block.base}}))
        except PortleaseError as e:
            print(json.dumps({{"error": type(e).__name__}}))
    """)


def _run(code: str, argv: list[str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [*(argv or []), sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.fixture
def holder(lease_dir: Path, window: PortRange) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A child holding both ports of the window (TTL 5 s, no heartbeat) until its stdin closes."""
    with holding(lease_dir, window, size=2, ttl=5) as held:
        yield held


def test_a_clock_step_does_not_take_an_alive_owners_ports(
    lease_dir: Path, window: PortRange, holder: tuple[subprocess.Popen[str], int]
) -> None:
    _, base = holder
    before = time.time()
    # Stepped an hour ahead, the holder's lease is long expired; its owner still runs.
    assert _run(_lease_code(lease_dir, window, step=STEP)) == {"error": "PortRangeExhausted"}
    entry = _keys(lease_dir)[str(base)]
    # Extended in the same write, so that fedimint-portalloc (TTL only) respects it too.
    assert entry["expires"] >= before + STEP + 30
    assert entry["owner"]["pid"] == holder[0].pid


def test_a_leaser_without_heartbeat_past_its_ttl_keeps_its_lease(lease_dir: Path, window: PortRange) -> None:
    with PortLeaser(lease_dir, port_range=window, ttl=1) as leaser:
        block = leaser.lease(2)
        before = time.time()
        assert _run(_lease_code(lease_dir, window, step=STEP)) == {"error": "PortRangeExhausted"}
        assert _keys(lease_dir)[str(block.base)]["expires"] >= before + STEP + 30  # the child's TTL
        assert [i.state for i in leaser.status()] == ["live"]
        assert leaser.release(block)


def test_a_dead_owners_expired_lease_is_still_reclaimed(lease_dir: Path, window: PortRange) -> None:
    first = _run(_lease_code(lease_dir, window, size=2, ttl=1))  # the child is gone now
    assert _run(_lease_code(lease_dir, window, size=2)) == first


def test_a_pid_namespace_that_sees_the_hosts_proc(lease_dir: Path, window: PortRange) -> None:
    if not unshare_works():
        pytest.skip("unshare --pid --fork is refused here")
    # Inside `unshare --pid --fork` without --mount-proc, pids count from 1 while /proc is the
    # host's. The holder is given an inside pid that names no host process, so to a leaser that
    # trusts /proc it looks dead; the other leaser then runs in the same namespace.
    inside = textwrap.dedent(f"""
        import json, os, subprocess, sys
        while True:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            if not os.path.exists(f"/proc/{{pid + 1}}"):
                break
        holder = subprocess.Popen([sys.executable, "-c", {_holder_code(lease_dir, window)!r}],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        print(holder.stdout.readline().strip(), flush=True)
        print(subprocess.run([sys.executable, "-c", {_lease_code(lease_dir, window)!r}],
                             capture_output=True, text=True).stdout.strip(), flush=True)
        sys.stdin.readline()
        holder.stdin.close()
        sys.exit(holder.wait())
    """)
    with subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", inside],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    ) as ns:
        assert ns.stdin is not None and ns.stdout is not None
        try:
            base = int(ns.stdout.readline())
            assert json.loads(ns.stdout.readline()) == {"error": "PortRangeExhausted"}  # inside
            assert _run(_lease_code(lease_dir, window)) == {"error": "PortRangeExhausted"}  # outside
            assert str(base) in _keys(lease_dir)
            ns.stdin.write("\n")
        finally:
            ns.stdin.close()
            ns.wait(timeout=60)
    assert ns.returncode == 0


def _holder_code(lease_dir: Path, rng: PortRange) -> str:
    return textwrap.dedent(f"""
        import sys
        from pytest_portlease import PortLeaser
        leaser = PortLeaser({os.fspath(lease_dir)!r}, port_range={str(rng)!r}, ttl=600)
        print(leaser.lease(2).base, flush=True)
        sys.stdin.read()
        leaser.close()
    """)


def test_a_fedimint_rewrite_loses_our_owner_until_our_next_transaction(
    lease_dir: Path, port_range: PortRange
) -> None:
    rng = free_window(20)
    with PortLeaser(lease_dir, port_range=rng, ttl=600) as leaser:
        held = leaser.lease(2)
        owner = _keys(lease_dir)[str(held.base)]["owner"]
        # fedimint-portalloc rewrites the file in its own layout, without our fields.
        doc = json.loads((lease_dir / STATE_NAME).read_text())
        for value in doc["keys"].values():
            del value["owner"]
        (lease_dir / STATE_NAME).write_text(json.dumps(doc, indent=2))
        other = leaser.lease(1)
        keys = _keys(lease_dir)
        assert keys[str(held.base)]["owner"] == owner
        assert keys[str(other.base)]["owner"]["pid"] == os.getpid()
