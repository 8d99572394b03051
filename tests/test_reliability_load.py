"""Load: many processes lease, bind, hold, release, fork and die at once, and the lock file is
removed under them; no port is ever shared.

The scale is small by default so that the suite stays quick; ``PORTLEASE_LOAD_PROCS`` and
``PORTLEASE_LOAD_LEASES`` raise it (``benchmarks/bench_lease.py`` runs 16 x 200).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
from _reliability import check_state_bytes, child_argv, run_load

from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME
from pytest_portlease._store import LOCK_NAME

pytestmark = pytest.mark.reliability


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw else default


def test_load_no_overlap_no_loss(
    lease_dir: Path, port_range: PortRange, capsys: pytest.CaptureFixture[str]
) -> None:
    procs = _env_int("PORTLEASE_LOAD_PROCS", 12)
    leases = _env_int("PORTLEASE_LOAD_LEASES", 60)
    seed = _env_int("PORTLEASE_LOAD_SEED", random.randrange(1_000_000))
    report = run_load(
        lease_dir, (port_range.low, port_range.high), procs=procs, leases=leases, seed=seed,
        forks=2, lock_events=("remove",),
    )
    with capsys.disabled():  # the totals belong in the CI log, passed or not
        print(f"\n{report.summary()} (PORTLEASE_LOAD_SEED={seed})")

    assert report.worker_errors == []
    assert report.overlaps == []
    assert report.unbindable == []
    assert report.state_errors == []
    # Every worker made all its leases, except those killed on the way.
    survivors = procs - len(report.killed)
    assert len(report.grants) >= survivors * leases
    assert report.state_reads > 0
    if procs >= 4:
        assert report.killed, "the harness meant to kill some workers"
    assert report.lock_events == ("remove",)
    assert report.forked == 2 and {g.proc for g in report.grants if g.proc >= 1000}


def test_the_lock_file_removed_and_replaced_under_running_leasers(
    lease_dir: Path, port_range: PortRange, capsys: pytest.CaptureFixture[str]
) -> None:
    # `rm <dir>/lock` (advice for a "stale" lock) and a replacement by a new file while leasers
    # run: long-lived ones keep a descriptor of the old inode, late ones lock the new one. A
    # small window makes the two groups meet on every port if they no longer exclude each other.
    seed = _env_int("PORTLEASE_LOAD_SEED", random.randrange(1_000_000))
    report = run_load(
        lease_dir, (port_range.low, port_range.high), procs=6, leases=80, seed=seed, kill=False,
        window=30, late=3, lock_events=("remove", "replace"), timeout=120,
    )
    with capsys.disabled():
        print(f"\n{report.summary()} (PORTLEASE_LOAD_SEED={seed})")
    assert report.lock_events == ("remove", "replace")
    assert report.worker_errors == []
    assert report.overlaps == []
    assert report.unbindable == []
    assert report.state_errors == []
    assert len(report.grants) == 6 * 80


def test_a_lock_file_removed_just_before_a_write_never_grants_twice(
    lease_dir: Path, port_range: PortRange
) -> None:
    # The writer checked that its lock is still the one the path names, then the lock file is
    # removed, and a second process locks the new file and reads the state before the first
    # one's write lands: both would grant the same ports, and the second write would erase the
    # first grant. The first writer must find out after its write, and lease again.
    rng = [port_range.low + 800, port_range.low + 801]
    argv = child_argv("hold-lock", directory=os.fspath(lease_dir), port_range=rng, at="before-replace")
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as first:
        assert first.stdin is not None and first.stdout is not None
        try:
            assert first.stdout.readline().strip() == "locked"  # its new state is written, not yet in place
            (lease_dir / LOCK_NAME).unlink()
            second = json.loads(subprocess.run(
                child_argv("lease", directory=os.fspath(lease_dir), port_range=rng, size=2),
                capture_output=True, text=True, check=True, timeout=60,
            ).stdout)
        finally:
            out, err = first.communicate("\n", timeout=60)
    assert second == {"base": rng[0], "size": 2}
    # The whole window is the second's: the first, leasing again, finds nothing left.
    assert first.returncode != 0 and "PortRangeExhausted" in err, (out, err)
    keys = check_state_bytes((lease_dir / STATE_NAME).read_bytes())["keys"]
    assert {k: v["size"] for k, v in keys.items()} == {str(rng[0]): 2}


def test_a_write_over_ours_from_a_new_lock_file_is_seen(lease_dir: Path, port_range: PortRange) -> None:
    # The other order: the first writer's state lands, then the second (which read the state
    # before it, under the new lock file) would write over it. It must not: it leases again.
    rng = [port_range.low + 810, port_range.low + 811]
    lock = lease_dir / LOCK_NAME

    def paused() -> subprocess.Popen[str]:
        argv = child_argv("hold-lock", directory=os.fspath(lease_dir), port_range=rng, at="before-replace")
        child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        return child

    first = paused()
    try:
        lock.unlink()
        second = paused()  # it locked the new file and read the state without the first's grant
        try:
            out1, err1 = first.communicate("\n", timeout=60)  # its write lands first
        finally:
            out2, err2 = second.communicate("\n", timeout=60)
    finally:
        if first.returncode is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0 and json.loads(out1) == {"base": rng[0], "size": 2}, err1
    assert second.returncode != 0 and "PortRangeExhausted" in err2, (out2, err2)
    keys = check_state_bytes((lease_dir / STATE_NAME).read_bytes())["keys"]
    assert {k: v["size"] for k, v in keys.items()} == {str(rng[0]): 2}
