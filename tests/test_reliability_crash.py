"""Crash at every point of the critical section: SIGKILL through the engine's fault seam.

A child leases (or releases) with ``_store.fault`` set to kill it at one named point. The test
then checks that the next leaser proceeds at once, that the state parses, that every valid live
lease is still there, and that the dead child's leftovers (its lease, its temp file) go away.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _reliability import check_state_bytes, child_argv, lock_is_held

from pytest_portlease import PortLeaser
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME
from pytest_portlease._store import LOCK_NAME, TEMP_PREFIX

pytestmark = pytest.mark.reliability

POINTS = ["before-lock", "locked", "temp-written", "before-replace", "after-replace"]


def _seed_state(lease_dir: Path, rng: PortRange, leaser: PortLeaser) -> dict[str, dict[str, int]]:
    """Live leases that must survive any crash: ours (a live owner) and a fedimint-style one."""
    for size in (2, 5):
        leaser.lease(size)
    doc = check_state_bytes((lease_dir / STATE_NAME).read_bytes())
    # fedimint-portalloc writes no owner: only the TTL ends it.
    foreign = rng.low + 100
    doc["keys"][str(foreign)] = {"size": 3, "expires": math.ceil(time.time()) + 600}
    (lease_dir / STATE_NAME).write_text(json.dumps(doc))
    return {k: {"size": v["size"]} for k, v in doc["keys"].items()}


def _run_crasher(lease_dir: Path, rng: PortRange, op: str, point: str, exchange: bool) -> str:
    argv = child_argv(
        "crash",
        directory=os.fspath(lease_dir),
        port_range=[rng.low, rng.high],
        op=op,
        point=point,
        exchange=exchange,
    )
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        out, err = child.communicate(timeout=60)
    # Killed by the seam at that very point: a child that exits 0 never reached it.
    assert child.returncode == -signal.SIGKILL, err.decode()
    return out.decode()


# Leases and releases over renameat2's exchange; leases over the os.replace fallback too (the
# release path writes the same way, so once is enough there).
CASES = [
    pytest.param(exchange, op, point, id=f"{'renameat2' if exchange else 'os.replace'}-{op}-{point}")
    for exchange, op in ((True, "lease"), (True, "release"), (False, "lease"))
    for point in POINTS
]


@pytest.mark.parametrize(("exchange", "op", "point"), CASES)
def test_crash_at_every_point(
    lease_dir: Path, port_range: PortRange, exchange: bool, op: str, point: str
) -> None:
    rng = PortRange(port_range.low, port_range.low + 199)
    with PortLeaser(lease_dir, port_range=rng, label="survivor", lock_timeout=5) as survivor:
        live = _seed_state(lease_dir, rng, survivor)
        out = _run_crasher(lease_dir, rng, op, point, exchange)

        # The state parses, untouched by a reader, and every valid live lease is in it.
        doc = check_state_bytes((lease_dir / STATE_NAME).read_bytes())
        for base, value in live.items():
            assert doc["keys"][base]["size"] == value["size"], (base, doc)
        if op == "release":
            # The child's lease is either still there (it died before its write landed) or
            # gone; it must not be half of anything.
            mine = json.loads(out)
            entry = doc["keys"].get(str(mine["base"]))
            assert entry is None or entry["size"] == mine["size"]

        # The next leaser proceeds at once: a dead holder's flock dies with it, as a descriptor
        # of our own shows without waiting. It then reclaims the dead child's lease.
        assert not lock_is_held(lease_dir / LOCK_NAME)
        block = survivor.lease(4)
        doc = check_state_bytes((lease_dir / STATE_NAME).read_bytes())
        for base, value in live.items():
            assert doc["keys"][base]["size"] == value["size"]
        assert str(block.base) in doc["keys"]
        pids = {v.get("owner", {}).get("pid") for v in doc["keys"].values()}
        assert pids <= {os.getpid(), None}, "the dead child's lease was not reclaimed"
        # No port of a live lease was handed out again.
        taken = {p for b, v in live.items() for p in range(int(b), int(b) + v["size"])}
        assert taken.isdisjoint(block.ports)

        # A writer sweeps dead writers' temp files at its first write (then every few seconds).
        with PortLeaser(lease_dir, port_range=rng, lock_timeout=5) as fresh:
            fresh.lease(1)
        assert [p.name for p in lease_dir.iterdir() if p.name.startswith(TEMP_PREFIX)] == []


@pytest.mark.parametrize("point", ["temp-written", "before-replace", "after-replace"])
def test_crash_on_the_very_first_write(lease_dir: Path, port_range: PortRange, point: str) -> None:
    # With no state file yet there is nothing to exchange with: the first write renames.
    rng = PortRange(port_range.low, port_range.low + 99)
    _run_crasher(lease_dir, rng, "lease", point, exchange=True)
    check_state_bytes(
        (lease_dir / STATE_NAME).read_bytes() if (lease_dir / STATE_NAME).exists() else b""
    )
    with PortLeaser(lease_dir, port_range=rng, lock_timeout=5) as leaser:
        block = leaser.lease(3)
        doc = check_state_bytes((lease_dir / STATE_NAME).read_bytes())
        assert list(doc["keys"]) == [str(block.base)]
    assert [p.name for p in lease_dir.iterdir() if p.name.startswith(TEMP_PREFIX)] == []
