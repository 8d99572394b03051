"""A benchmark prints its table and exits 0 whatever the figures; ``--check`` judges the targets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Each run starts a dozen interpreters: long on a loaded host, so with the long suites.
pytestmark = pytest.mark.reliability

BENCH_STATUS = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_status.py"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(BENCH_STATUS), "--leases", "10", "--runs", "1", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def test_a_missed_target_is_reported_and_exits_0() -> None:
    done = _run("--target-ms", "0.001")  # no process starts in a microsecond: a sure miss
    assert done.returncode == 0, done.stderr
    assert "misses the 0.001 ms target" in done.stdout


def test_check_turns_a_missed_target_into_exit_1() -> None:
    done = _run("--target-ms", "0.001", "--check")
    assert done.returncode == 1, done.stderr
    assert "misses the 0.001 ms target" in done.stdout
