"""The default range skips a short list of ports that developers' local services use; a range
someone chose, and an exact port, are taken as given."""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import pytest

from pytest_portlease import PortLeaser, PortleaseWarning, PortRangeExhausted
from pytest_portlease._config import WELL_KNOWN_PORTS, PortRange, Resolved, resolve_range


def port_is_free(port: int) -> bool:
    """Our own oracle, not the probe under test: TCP and UDP bind on the IPv4 wildcard."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


# Windows of the default range around memcached's 11211 and MongoDB's 27017-27019.
WINDOWS = [PortRange(11206, 11216), PortRange(27012, 27024)]


def granted(leaser: PortLeaser) -> set[int]:
    """Every port a full scan grants, one lease at a time until the range is exhausted."""
    ports: set[int] = set()
    for _ in range(100):
        try:
            with warnings.catch_warnings():
                # The window lies in a slice of this suite's ports: another test's connection may
                # leave a port in TIME_WAIT, which a full scan then grants last, with a warning.
                warnings.filterwarnings("ignore", "port .* was only in TIME_WAIT", PortleaseWarning)
                ports.add(leaser.lease(1).base)
        except PortRangeExhausted:
            return ports
    raise AssertionError("the scan never ended")


def test_the_list_is_inside_the_default_range_and_short() -> None:
    default = resolve_range().value
    assert all(port in default for port in WELL_KNOWN_PORTS)
    assert len(WELL_KNOWN_PORTS) <= 20


@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_the_default_range_skips_well_known_ports(lease_dir: Path, window: PortRange) -> None:
    # The window stands for the default range: what the scan looks at is where the range came from.
    with PortLeaser(lease_dir, port_range=Resolved(window, "default")) as leaser:
        ports = granted(leaser)
    known = {p for p in WELL_KNOWN_PORTS if p in window}
    assert known and not ports & known
    free = {p for p in range(window.low, window.high + 1) if port_is_free(p)} - known
    assert free <= ports  # every other free port of the window was granted


@pytest.mark.parametrize("window", WINDOWS, ids=str)
def test_a_chosen_range_or_an_exact_port_is_taken_as_given(lease_dir: Path, window: PortRange) -> None:
    known = sorted(p for p in WELL_KNOWN_PORTS if p in window)
    if not all(port_is_free(p) for p in known):
        pytest.skip(f"a service holds one of {known} on this host")
    with PortLeaser(lease_dir, port_range=str(window)) as leaser:
        assert set(known) <= granted(leaser)
    with PortLeaser(lease_dir, port_range=Resolved(window, "default")) as leaser:
        assert leaser.lease(1, port=known[0]).base == known[0]
