"""The mutation run's test order and time limits (``tests/conftest.py``, under mutmut)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MUTMUT_STATS, NESTED_FAST

_TESTS = '''
import json, os, pytest

@pytest.mark.parametrize("name", ["slow", "fast", "mid", "new"])
def test_it(name, request):
    marker = request.node.get_closest_marker("timeout")
    with open(os.environ["ORDER_FILE"], "a") as f:
        f.write(json.dumps([name, marker.args[0] if marker else None]) + "\\n")
'''


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, stats: dict[str, float] | None
) -> list[list[object]]:
    shutil.copy(Path(__file__).with_name("conftest.py"), pytester.path / "conftest.py")
    pytester.makepyfile(test_order=_TESTS)
    if stats is not None:
        durations = {f"test_order.py::test_it[{k}]": v for k, v in stats.items()}
        (pytester.path / MUTMUT_STATS).write_text(json.dumps({"duration_by_test": durations}))
    order = pytester.path / "order.jsonl"
    monkeypatch.setenv("ORDER_FILE", str(order))
    pytester.runpytest_subprocess(*NESTED_FAST).assert_outcomes(passed=4)
    return [json.loads(line) for line in order.read_text().splitlines()]


def test_under_mutmut_the_fastest_tests_run_first_each_with_ten_times_its_time(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = _run(pytester, monkeypatch, {"slow": 2.0, "fast": 0.01, "mid": 0.7})
    # A test the stats do not know (added since) comes last, limited as the slowest.
    assert got == [["fast", 5.0], ["mid", 7.0], ["slow", 20.0], ["new", 20.0]]


def test_without_mutmut_stats_the_order_and_the_limits_are_left_alone(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _run(pytester, monkeypatch, None) == [["slow", None], ["fast", None], ["mid", None], ["new", None]]


_SLICE_TEST = '''
import os

def test_slice():
    with open(os.environ["WORKER_FILE"], "w") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"])
    if os.environ.get("HOLD_FIFO"):
        with open(os.environ["HOLD_FIFO"]) as fifo:  # held until the other run has its slice
            fifo.read()
    elif os.environ.get("RELEASE_FIFO"):
        with open(os.environ["RELEASE_FIFO"], "w") as fifo:
            fifo.write("go")
'''


def test_mutant_runs_at_once_take_a_port_slice_each_and_free_it_at_the_end(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    shutil.copy(Path(__file__).with_name("conftest.py"), pytester.path / "conftest.py")
    pytester.makepyfile(test_slice=_SLICE_TEST)
    fifo = tmp_path / "hold"
    os.mkfifo(fifo)
    locks = tmp_path / "locks"
    locks.mkdir()

    def run(name: str, **env: str) -> subprocess.Popen[bytes]:
        full = {**os.environ, "TMPDIR": str(locks), "MUTANT_UNDER_TEST": f"mutant_{name}",
                "PYTEST_XDIST_WORKER": "gw7", "WORKER_FILE": str(tmp_path / name), **env}
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *NESTED_FAST, "test_slice.py"]
        return subprocess.Popen(argv, cwd=pytester.path, env=full, stdout=subprocess.DEVNULL)

    with run("a", HOLD_FIFO=str(fifo)) as a:
        with run("b", RELEASE_FIFO=str(fifo)) as b:
            assert b.wait(timeout=60) == 0
        assert a.wait(timeout=60) == 0
    # The first takes gw2, the other (started while gw2 was held) gw1.
    assert sorted((tmp_path / n).read_text() for n in "ab") == ["gw1", "gw2"]
    with run("c") as c:
        assert c.wait(timeout=60) == 0
    assert (tmp_path / "c").read_text() == "gw2"  # freed at the end of each run
