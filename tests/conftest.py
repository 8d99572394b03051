"""Shared fixtures: an isolated environment, a private lease directory, a per-worker port range."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for var in ("PORTLEASE_DIR", "PORTLEASE_RANGE", "PORTLEASE_TTL", "FM_PORTALLOC_DATA_DIR",
                "PORTLEASE_PATCH_PORT_FOR"):
        monkeypatch.delenv(var, raising=False)
    # platformdirs' default must never point at the developer's real cache from a test.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    yield


@pytest.fixture
def lease_dir(tmp_path: Path) -> Path:
    """A lease directory of the test's own (not created: the engine creates it)."""
    return tmp_path / "leases"


@pytest.fixture
def port_range() -> PortRange:
    """The slice of ports this xdist worker of the test suite may lease from."""
    return worker_range()
