"""Load: many processes lease, bind, hold, release, fork and die at once, and the lock file is
removed under them; no port is ever shared.

The scale is small by default so that the suite stays quick; ``PORTLEASE_LOAD_PROCS`` and
``PORTLEASE_LOAD_LEASES`` raise it (``benchmarks/bench_lease.py`` runs 16 x 200).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from _reliability import run_load

from pytest_portlease._config import PortRange

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
