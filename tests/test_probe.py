"""The probe sees every kind of holder as busy, whichever way it probes (two dual-stack sockets or
four per-family ones), and gives the verdict of an independent bind check on each of them."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Callable, Iterator

import pytest
from conftest import kernel_ephemeral_range

from pytest_portlease import _probe
from pytest_portlease._config import PortRange

STREAM, DGRAM = socket.SOCK_STREAM, socket.SOCK_DGRAM


def _binds_v6_loopback() -> bool:
    """The test's own look at IPv6 (not the code under test's): does ::1 bind?"""
    try:
        with socket.socket(socket.AF_INET6, DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _route_source(family: int, target: str) -> str | None:
    """This host's own address on the route to ``target`` (a UDP connect sends nothing)."""
    try:
        with socket.socket(family, DGRAM) as s:
            s.connect((target, 9))
            address = str(s.getsockname()[0])
    except OSError:
        return None
    return None if address in ("127.0.0.1", "::1", "0.0.0.0", "::") else address


HAS_V6 = _binds_v6_loopback()
HOST_V4 = _route_source(socket.AF_INET, "192.0.2.1")  # TEST-NET-1: routed, never reached
HOST_V6 = _route_source(socket.AF_INET6, "2001:db8::1") if HAS_V6 else None


def oracle_free(port: int) -> bool:
    """The verdict a server would meet: TCP (listening) and UDP on 0.0.0.0, and on [::] (V6ONLY)
    where the host has IPv6, without SO_REUSEADDR. Written here, apart from the engine's probe."""
    wildcards = [(socket.AF_INET, "0.0.0.0")] + ([(socket.AF_INET6, "::")] if HAS_V6 else [])
    for family, address in wildcards:
        for kind in (STREAM, DGRAM):
            with socket.socket(family, kind) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((address, port))
                    if kind == STREAM:
                        s.listen(1)
                except OSError as e:
                    if e.errno == errno.EADDRINUSE:
                        return False
                    raise
    return True


PROBES: list[Callable[[int], bool]] = [_probe.two_sockets_free, _probe.four_sockets_free]
PROBE_IDS = ["two-sockets", "four-sockets"]


def free_port_in(port_range: PortRange) -> int:
    for port in range(port_range.high - 500, port_range.high):
        if oracle_free(port) and _probe.port_is_free(port):
            return port
    raise AssertionError("no free port to test with")


# -- holders ---------------------------------------------------------------------------------

Build = Callable[[contextlib.ExitStack, int], None]


def _sock(stack: contextlib.ExitStack, family: int, kind: int) -> socket.socket:
    return stack.enter_context(socket.socket(family, kind))


def bound(kind: int, address: str, *, listen: bool = False, opt: str = "", v6only: int = 1) -> Build:
    """A socket bound to ``address``:PORT (and listening), with SO_REUSEADDR or SO_REUSEPORT."""

    def build(stack: contextlib.ExitStack, port: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        s = _sock(stack, family, kind)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        if opt == "reuseaddr":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        elif opt == "reuseport":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((address, port))
        if listen:
            s.listen(1)

    return build


def tcp_connection(address: str, *, holder_side: str, close: bool) -> Build:
    """A TCP connection whose ``client`` or ``server`` end sits on PORT; with ``close``, that end
    closes first (the active closer) and everything else closes too: only TIME_WAIT is left."""

    def build(stack: contextlib.ExitStack, port: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with contextlib.ExitStack() as local:
            target = stack if not close else local
            server = _sock(target, family, STREAM)
            server.bind((address, port if holder_side == "server" else 0))
            server.listen(1)
            client = _sock(target, family, STREAM)
            if holder_side == "client":
                client.bind((address, port))
            client.connect(server.getsockname()[:2])
            accepted, _ = server.accept()
            target.enter_context(accepted)
            if close:
                (client if holder_side == "client" else accepted).close()  # the active closer
                # Wait for the peer to see our FIN before closing it: then the active closer's
                # end is in TIME_WAIT and the other end closes cleanly (LAST_ACK, then gone).
                other = accepted if holder_side == "client" else client
                assert other.recv(1) == b""

    return build


def connected_udp(address: str) -> Build:
    def build(stack: contextlib.ExitStack, port: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        peer = _sock(stack, family, DGRAM)
        peer.bind((address, 0))
        s = _sock(stack, family, DGRAM)
        s.bind((address, port))
        s.connect(peer.getsockname()[:2])

    return build


V6 = pytest.mark.skipif(not HAS_V6, reason="::1 does not bind here")
NO_HOST_V4 = pytest.mark.skipif(HOST_V4 is None, reason="no IPv4 address with a route here")
NO_HOST_V6 = pytest.mark.skipif(HOST_V6 is None, reason="no IPv6 address with a route here")

# (id, address, marks): every address a holder may bind. "::/v6only" and "::/dual" are the IPv6
# wildcard with and without IPV6_V6ONLY; "::ffff:127.0.0.1" is IPv4 through a dual-stack socket.
ADDRESSES: list[tuple[str, str, int, list[pytest.MarkDecorator]]] = [
    ("127.0.0.1", "127.0.0.1", 1, []),
    ("127.0.0.2", "127.0.0.2", 1, []),  # Linux answers all of 127/8 on lo
    ("0.0.0.0", "0.0.0.0", 1, []),
    ("host-v4", HOST_V4 or "192.0.2.1", 1, [NO_HOST_V4]),
    ("::1", "::1", 1, [V6]),
    ("::/v6only", "::", 1, [V6]),
    ("::/dual", "::", 0, [V6]),
    ("::ffff:127.0.0.1", "::ffff:127.0.0.1", 0, [V6]),
    ("host-v6", HOST_V6 or "2001:db8::1", 1, [NO_HOST_V6]),
]


def _holders() -> Iterator[object]:
    for name, address, v6only, marks in ADDRESSES:
        for opt in ("", "reuseaddr", "reuseport"):
            suffix = f"-{opt}" if opt else ""
            yield pytest.param(bound(STREAM, address, listen=True, opt=opt, v6only=v6only),
                               id=f"tcp-listen-{name}{suffix}", marks=marks)
            yield pytest.param(bound(STREAM, address, opt=opt, v6only=v6only),
                               id=f"tcp-bound-{name}{suffix}", marks=marks)
            yield pytest.param(bound(DGRAM, address, opt=opt, v6only=v6only),
                               id=f"udp-{name}{suffix}", marks=marks)
    for name, address, marks in (("127.0.0.1", "127.0.0.1", []), ("::1", "::1", [V6])):
        for side in ("client", "server"):
            yield pytest.param(tcp_connection(address, holder_side=side, close=False),
                               id=f"tcp-established-{side}-{name}", marks=marks)
            yield pytest.param(tcp_connection(address, holder_side=side, close=True),
                               id=f"tcp-time-wait-{side}-{name}", marks=marks)
        yield pytest.param(connected_udp(address), id=f"udp-connected-{name}", marks=marks)


HOLDERS = list(_holders())


@pytest.fixture
def port(port_range: PortRange) -> int:
    return free_port_in(port_range)


@pytest.mark.parametrize("probe", PROBES, ids=PROBE_IDS)
@pytest.mark.parametrize("build", HOLDERS)
def test_every_holder_is_seen_as_busy(port: int, build: Build, probe: Callable[[int], bool]) -> None:
    with contextlib.ExitStack() as stack:
        build(stack, port)
        assert not oracle_free(port), "the holder does not hold the port: the test is wrong"
        assert probe(port) is False
        assert _probe.port_is_free(port) is False
        assert _probe.first_busy(range(port - 1, port + 2)) in (port - 1, port)


@pytest.mark.parametrize("probe", PROBES, ids=PROBE_IDS)
def test_a_free_port_probes_free_and_the_probe_leaves_no_trace(port: int, probe: Callable[[int], bool]) -> None:
    # Probing must not itself make the port busy (no TIME_WAIT, no lingering socket).
    for _ in range(3):
        assert probe(port) is True
    assert oracle_free(port)
    with socket.create_server(("127.0.0.1", port)):
        pass


def test_this_host_probes_with_two_sockets() -> None:
    # Where ::1 binds and the kernel sees the dual-stack conflict (every kernel of this decade),
    # the probe is the cheap one.
    if not HAS_V6:
        pytest.skip("::1 does not bind here: four sockets, v4 only")
    assert _probe.dual_stack_sees_ipv4()
    assert _probe.choose_probe() is _probe.two_sockets_free


def test_a_kernel_that_misses_the_dual_stack_conflict_gets_four_sockets() -> None:
    # A kernel with the bug lets the dual-stack bind in beside a 127.0.0.1 holder.
    def buggy(kind: int, port: int) -> bool:
        return True

    assert not _probe.dual_stack_sees_ipv4(buggy)
    assert _probe.choose_probe(sees_ipv4=lambda: _probe.dual_stack_sees_ipv4(buggy)) is _probe.four_sockets_free

    # Only UDP broken (the check covers both kinds).
    def udp_buggy(kind: int, port: int) -> bool:
        return kind == DGRAM or _probe._binds_dual(kind, port)

    assert not _probe.dual_stack_sees_ipv4(udp_buggy)


def test_no_ipv6_gets_four_sockets() -> None:
    assert _probe.choose_probe(ipv6=lambda: False) is _probe.four_sockets_free


def test_a_host_without_dual_stack_sockets_gets_four_sockets() -> None:
    def refused(kind: int, port: int) -> bool:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    assert not _probe.dual_stack_sees_ipv4(refused)


def test_ephemeral_overlap_reads_the_kernel_range() -> None:
    eph = kernel_ephemeral_range()
    assert _probe.ephemeral_range() == eph
    assert _probe.ephemeral_overlap(PortRange(eph.low - 10, eph.low + 5)) == PortRange(eph.low, eph.low + 5)
    assert _probe.ephemeral_overlap(PortRange(eph.low - 10, eph.low - 1)) is None
