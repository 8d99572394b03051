"""Two copies of one range (a duplicate key, a zero-padded "0<base>") never free a range that
either copy holds (issue #9, item 6).

A copy holds its range while its owner is provably alive, or while it has not expired and its
owner is not provably dead. The union of two copies must hold the range while either copy
would: a provably alive owner keeps it whatever the other copy says, and a dead owner in one
copy never frees a copy that its TTL still holds.

Every test runs real processes: a holder that leases and waits on its stdin, a state file
edited as a careless admin (or a hostile writer) would, and another process that tries to lease
inside the range.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _reliability import check_state_bytes, holding
from conftest import child_clock_env, free_window

from pytest_portlease import PortleaseWarning
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME, _warned
from pytest_portlease._status import read_status

pytestmark = pytest.mark.reliability

SIZE = 3
STEP = 3600  # an hour: far past any TTL here


@pytest.fixture
def window() -> PortRange:
    """Exactly one block's ports, all free now: a holder of the block leaves nothing to grant."""
    return free_window(SIZE)


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    _warned.clear()


def _doc(lease_dir: Path) -> dict[str, Any]:
    return check_state_bytes((lease_dir / STATE_NAME).read_bytes())


def _lease(lease_dir: Path, rng: PortRange, *, port: int | None = None, now: float | None = None) -> dict[str, Any]:
    """Lease one port (exactly ``port``, or any of ``rng``) in a child process, whose engine
    clock reads ``now`` if given; its base, or the class name of its error."""
    code = textwrap.dedent(f"""
        import json, warnings
        from pytest_portlease import PortleaseError, PortLeaser
        warnings.simplefilter("ignore")  # the duplicate is warned about: not what is tested here
        try:
            leaser = PortLeaser({os.fspath(lease_dir)!r}, port_range={str(rng)!r}, ttl=30, owner_pid=None)
            block = leaser.lease(1, port={port!r})
            leaser.detach(block)
            leaser.close()
            print(json.dumps({{"base": block.base}}))
        except PortleaseError as e:
            print(json.dumps({{"error": type(e).__name__}}))
    """)
    env = child_clock_env(now) if now is not None else None
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.fixture
def holder(lease_dir: Path, window: PortRange) -> Iterator[tuple[int, int]]:
    """A child holding the whole window (no heartbeat) until its stdin closes: (pid, base)."""
    with holding(lease_dir, window, size=SIZE, ttl=600) as (proc, base):
        yield proc.pid, base


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    with subprocess.Popen([sys.executable, "-c", "pass"]) as proc:
        pass
    return proc.pid


def _write_copies(lease_dir: Path, base: int, first: dict[str, Any], second: dict[str, Any], form: str) -> None:
    """A state of two copies of ``base``: under a zero-padded key, or the same key twice."""
    other_key = f"0{base}" if form == "zero-padded" else str(base)
    keys = f'"{base}": {json.dumps(first)}, "{other_key}": {json.dumps(second)}'
    (lease_dir / STATE_NAME).write_text(f'{{"next": {base + SIZE}, "keys": {{{keys}}}}}')


@pytest.mark.parametrize("form", ["zero-padded", "duplicate"])
@pytest.mark.parametrize("other", ["no owner", "dead owner"])
def test_an_alive_owners_expired_copy_beside_a_dup_keeps_the_range(
    lease_dir: Path, window: PortRange, holder: tuple[int, int], form: str, other: str
) -> None:
    pid, base = holder
    mine = _doc(lease_dir)["keys"][str(base)]
    past = math.floor(time.time()) - 100
    # The holder's copy expired by its TTL (a clock step, a suspend, no heartbeat); its owner runs.
    first = {**mine, "expires": past}
    second: dict[str, Any] = {"size": SIZE, "expires": past}
    if other == "dead owner":
        second["owner"] = {**mine["owner"], "pid": _dead_pid(), "label": "gone"}
    # Either order: the alive copy may come first or last in the file.
    for copies in ((first, second), (second, first)):
        _write_copies(lease_dir, base, *copies, form)
        assert _lease(lease_dir, window, port=base + 1) == {"error": "PortUnavailable"}
        assert _lease(lease_dir, window) == {"error": "PortRangeExhausted"}

    # The state written back keeps what holds the range: the alive owner, and a later expiry.
    (value,) = _doc(lease_dir)["keys"].values()
    assert value["size"] == SIZE and value["expires"] > time.time()
    assert pid in [o["pid"] for o in [value.get("owner", {}), *value.get("co_owners", [])] if o]
    # Read later, past that expiry too, it is still held: its owner still runs.
    later = time.time() + STEP
    assert _lease(lease_dir, window, port=base + 1, now=later) == {"error": "PortUnavailable"}
    (info,) = read_status(lease_dir)
    assert (info.state, info.pid) == ("live", pid)


@pytest.mark.parametrize("form", ["zero-padded", "duplicate"])
def test_a_dead_owners_copy_beside_a_dup_ttl_copy_keeps_the_range_for_its_ttl(
    lease_dir: Path, window: PortRange, form: str
) -> None:
    # A child leases and exits without releasing: its copy's owner is provably dead.
    code = textwrap.dedent(f"""
        import os
        from pytest_portlease import PortLeaser
        print(PortLeaser({os.fspath(lease_dir)!r}, port_range={str(window)!r}, ttl=600).lease({SIZE}).base, flush=True)
        os._exit(0)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    base = int(done.stdout)
    dead = _doc(lease_dir)["keys"][str(base)]
    expires = math.ceil(time.time()) + 600
    ttl_copy = {"size": SIZE, "expires": expires}  # fedimint-portalloc's: only its TTL ends it
    for copies in ((dead, ttl_copy), (ttl_copy, dead)):
        _write_copies(lease_dir, base, *copies, form)
        assert _lease(lease_dir, window, port=base + 1) == {"error": "PortUnavailable"}
    with pytest.warns(PortleaseWarning):  # nothing changed, so nothing was written back
        (info,) = read_status(lease_dir)
    assert (info.state, info.expires) == ("foreign", expires)
    # Once the TTL copy has expired, nobody holds the range.
    assert _lease(lease_dir, window, port=base + 1, now=expires + 1) == {"base": base + 1}
