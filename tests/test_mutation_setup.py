"""The mutation run's test order and time limits (``tests/conftest.py``, under mutmut)."""

from __future__ import annotations

import json
import shutil
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
