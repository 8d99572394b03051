"""Shared fixtures: an isolated environment, a private lease directory, a per-worker port range."""

from __future__ import annotations

import json
import os
import random
import socket
import tempfile
import time
from pathlib import Path

import pytest

from pytest_portlease._config import PortRange

# Each xdist worker of this test suite leases from its own slice of ports, so that tests running
# at the same time in different lease directories never probe or bind each other's ports.
_SLICE = 4000
_FIRST = 20000


def worker_range() -> PortRange:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker[2:]) if worker[2:].isdigit() else 0
    low = _FIRST + (n % 8) * _SLICE
    return PortRange(low, low + _SLICE - 1)


def free_window(size: int = 200) -> PortRange:
    """A window of this worker's slice whose every port probes free now.

    Tests that expect exact bases (the range's first ports) use it: an earlier test may have left
    a port of the slice in TIME_WAIT, or a server on it that a fixture is still stopping.
    """
    from pytest_portlease import _probe

    rng = worker_range()
    starts = list(range(rng.low, rng.high - size + 2, size))
    random.shuffle(starts)
    for low in starts:
        if _probe.first_busy(range(low, low + size)) is None:
            return PortRange(low, low + size - 1)
    raise AssertionError(f"no window of {size} free ports in {rng}")


# -- independent oracles: what the host has, found without the code under test ----------------

EPHEMERAL_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def host_has_ipv6() -> bool:
    """Whether ::1 binds here, tried directly (the probe's own ``has_ipv6()`` is under test)."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def kernel_ephemeral_range() -> PortRange:
    """The kernel's ephemeral range, read here rather than through ``_probe.ephemeral_range()``.
    Skips only where the host has no such file (not Linux); where it exists, a test that needs
    the range runs, so an engine reader that returns None fails it."""
    if not EPHEMERAL_FILE.exists():
        pytest.skip(f"{EPHEMERAL_FILE} does not exist on this host")
    low, high = (int(x) for x in EPHEMERAL_FILE.read_text(encoding="ascii").split())
    return PortRange(low, high)


class SteppedClock:
    """The engine's clock (``_clock.now``) held still at a whole second and a half, stepped by
    the test: expiry is decided by the test, not by how fast the machine runs it."""

    def __init__(self) -> None:
        self.now = int(time.time()) + 0.5

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


CHILD_CLOCK = Path(__file__).parent / "child_clock"


def child_clock_env(now: float) -> dict[str, str]:
    """The environment of a child Python whose engine clock reads ``now`` (its sitecustomize)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.fspath(CHILD_CLOCK), *filter(None, [env.get("PYTHONPATH")])])
    env["PORTLEASE_TEST_NOW"] = repr(now)
    return env


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SteppedClock:
    from pytest_portlease import _clock

    stepped = SteppedClock()
    monkeypatch.setattr(_clock, "now", stepped)
    return stepped


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("PORTLEASE_DIR", "PORTLEASE_RANGE", "PORTLEASE_TTL", "FM_PORTALLOC_DATA_DIR",
                "PORTLEASE_PATCH_PORT_FOR", "PORTLEASE_PATCH"):
        monkeypatch.delenv(var, raising=False)
    # platformdirs' default must never point at the developer's real cache from a test.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@pytest.fixture
def lease_dir(tmp_path: Path) -> Path:
    """A lease directory of the test's own (not created: the engine creates it)."""
    return tmp_path / "leases"


@pytest.fixture
def port_range() -> PortRange:
    """The slice of ports this xdist worker of the test suite may lease from."""
    return worker_range()


# Plugins of this venv that cost about a second of start-up per nested pytest run and play no
# part in the plugin's tests.
NESTED_FAST = (
    "-p", "no:hypothesispytest", "-p", "no:pytest_postgresql", "-p", "no:pytest_redis", "-p", "no:pytest_mysql",
    "-p", "no:cacheprovider", "-p", "no:asyncio", "-p", "no:django", "-p", "no:flask", "-p", "no:xprocess",
    # Nested suites are written in order (a function-scoped lease, then the check that it ended).
    "-p", "no:randomly",
)


@pytest.fixture
def nested_fast() -> tuple[str, ...]:
    """Options that spare a nested pytest run (pytester) the unrelated plugins' start-up."""
    return NESTED_FAST


@pytest.fixture
def portlease_args(
    monkeypatch: pytest.MonkeyPatch, lease_dir: Path, port_range: PortRange
) -> list[str]:
    """Options for a nested pytest run (pytester) that keep it in this test's lease directory and
    port slice. The ``=`` form matters: pytest finds the rootdir before plugin options are known,
    so ``--portlease-dir DIR`` would make an existing DIR count as a test path."""
    # A nested run is not this suite's xdist worker (port_range has read that already).
    for var in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID",
                "PYTEST_ADDOPTS"):
        monkeypatch.delenv(var, raising=False)
    return [f"--portlease-dir={lease_dir}", f"--portlease-range={port_range}", *NESTED_FAST]


class _LowStart:
    """Stands in for ``_scan._random``: every fresh range starts at its low end."""

    @staticmethod
    def randrange(low: int, stop: int) -> int:
        return low


@pytest.fixture
def low_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that expect exact bases from a fresh state: the random start (DESIGN.md, so that
    separate registries do not hand out ports in one order) becomes the range's low end."""
    from pytest_portlease import _scan

    monkeypatch.setattr(_scan, "_random", _LowStart())


# -- under mutmut: a port slice per mutant run, the fastest tests first, a limit for each -------

MUTMUT_STATS = "mutmut-stats.json"
#: The port slices (as xdist workers) that mutant runs take, one each: gw2 first, then gw1 (gw0
#: and gw1 are a plain ``-n 2`` run's); ``--max-children`` up to 2 never waits for one.
MUTMUT_SLICES = (2, 1)
_slice_lock: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    """mutmut runs several mutants at once (``--max-children``), each in a process of its own
    with the same environment: without a slice each, their tests lease and probe the same ports
    and fail one another, which mutmut counts as kills. The slice is held by an flock for the
    run's session."""
    global _slice_lock
    if "MUTANT_UNDER_TEST" not in os.environ:
        return
    import fcntl

    for i, n in enumerate(MUTMUT_SLICES):
        path = os.path.join(tempfile.gettempdir(), f"pytest-portlease-mutmut-gw{n}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            last = i == len(MUTMUT_SLICES) - 1
            fcntl.flock(fd, fcntl.LOCK_EX if last else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _slice_lock = fd
        os.environ["PYTEST_XDIST_WORKER"] = f"gw{n}"
        return


def pytest_unconfigure(config: pytest.Config) -> None:
    global _slice_lock
    if _slice_lock is not None:
        os.close(_slice_lock)
        _slice_lock = None


MUTANT_TEST_LIMIT_FLOOR = 5.0
MUTANT_TEST_LIMIT_FACTOR = 10.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under mutmut (which runs the tests from ``mutants/``, beside its stats file) a mutant's
    tests come in no set order and stop at the first failure (``-x``): run the fastest first, so
    that a killed mutant is found in the time of its fastest failing test, and give each test a
    time limit of its own (pytest-timeout), so that a mutant's endless loop fails its test in
    seconds rather than holding a worker until mutmut's limit for all of its tests."""
    stats = config.rootpath / MUTMUT_STATS
    if not stats.exists():
        return
    durations: dict[str, float] = json.loads(stats.read_text(encoding="utf-8"))["duration_by_test"]
    unknown = max(durations.values(), default=0.0)  # a test added since: last, limited as the slowest
    timed = sorted(((durations.get(item.nodeid, unknown), item) for item in items), key=lambda t: t[0])
    items[:] = [item for _, item in timed]
    if config.pluginmanager.hasplugin("timeout"):
        for seconds, item in timed:
            item.add_marker(pytest.mark.timeout(max(MUTANT_TEST_LIMIT_FLOOR, MUTANT_TEST_LIMIT_FACTOR * seconds)))
