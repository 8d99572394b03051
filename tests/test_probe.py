"""The strict probe sees every kind of holder DESIGN.md lists, and TIME_WAIT, as busy."""

from __future__ import annotations

import socket

import pytest
from conftest import host_has_ipv6, kernel_ephemeral_range

from pytest_portlease import _probe
from pytest_portlease._config import PortRange


def free_port_in(port_range: PortRange) -> int:
    for port in range(port_range.high - 500, port_range.high):
        if _probe.port_is_free(port):
            return port
    raise AssertionError("no free port to test with")


# The oracle is a direct bind of ::1, not _probe.has_ipv6(): were that detection to break, the
# IPv6 cases must fail, not skip.
V6 = pytest.mark.skipif(not host_has_ipv6(), reason="::1 does not bind on this host")

HOLDERS = [
    pytest.param("tcp", "127.0.0.1", True, False, id="tcp-listen-127.0.0.1"),
    pytest.param("tcp", "0.0.0.0", True, False, id="tcp-listen-0.0.0.0"),
    pytest.param("tcp", "::1", True, False, id="tcp-listen-::1", marks=V6),
    pytest.param("tcp", "::", True, False, id="tcp-listen-::", marks=V6),
    pytest.param("tcp", "127.0.0.1", False, False, id="tcp-bound-127.0.0.1"),
    pytest.param("tcp", "127.0.0.1", False, True, id="tcp-bound-127.0.0.1-reuseaddr"),
    pytest.param("tcp", "0.0.0.0", False, True, id="tcp-bound-0.0.0.0-reuseaddr"),
    pytest.param("tcp", "::1", False, True, id="tcp-bound-::1-reuseaddr", marks=V6),
    pytest.param("tcp", "127.0.0.1", True, True, id="tcp-listen-127.0.0.1-reuseaddr"),
    pytest.param("udp", "127.0.0.1", False, False, id="udp-127.0.0.1"),
    pytest.param("udp", "0.0.0.0", False, False, id="udp-0.0.0.0"),
    pytest.param("udp", "::1", False, False, id="udp-::1", marks=V6),
    pytest.param("udp", "127.0.0.1", False, True, id="udp-127.0.0.1-reuseaddr"),
    pytest.param("udp", "0.0.0.0", False, True, id="udp-0.0.0.0-reuseaddr"),
    pytest.param("udp", "::1", False, True, id="udp-::1-reuseaddr", marks=V6),
]


@pytest.fixture
def port(port_range: PortRange) -> int:
    return free_port_in(port_range)


@pytest.mark.parametrize(("proto", "address", "listen", "reuse"), HOLDERS)
def test_every_holder_is_seen_as_busy(
    port: int, proto: str, address: str, listen: bool, reuse: bool
) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    assert _probe.port_is_free(port)
    with socket.socket(family, kind) as holder:
        if reuse:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((address, port))
        if listen:
            holder.listen(1)
        assert not _probe.port_is_free(port)
        assert _probe.first_busy(range(port, port + 2)) == port
    assert _probe.port_is_free(port)


@pytest.fixture
def time_wait_port(port_range: PortRange) -> int:
    """A port whose only trace is a TCP connection in TIME_WAIT (the side that closed first)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = free_port_in(port_range)
        client = socket.socket()
        client.bind(("127.0.0.1", port))
        client.connect(server.getsockname())
        accepted, _ = server.accept()
        client.close()  # the active closer enters TIME_WAIT on its local port
        accepted.close()
    return port


def test_a_port_in_time_wait_counts_as_busy(time_wait_port: int) -> None:
    assert not _probe.port_is_free(time_wait_port)


def test_the_probe_leaves_no_trace(port: int) -> None:
    # Probing must not itself make the port busy (no TIME_WAIT, no lingering socket).
    for _ in range(3):
        assert _probe.port_is_free(port)
    with socket.create_server(("127.0.0.1", port)):
        pass


def test_ephemeral_overlap_reads_the_kernel_range() -> None:
    eph = kernel_ephemeral_range()
    assert _probe.ephemeral_range() == eph
    assert _probe.ephemeral_overlap(PortRange(eph.low - 10, eph.low + 5)) == PortRange(eph.low, eph.low + 5)
    assert _probe.ephemeral_overlap(PortRange(eph.low - 10, eph.low - 1)) is None
