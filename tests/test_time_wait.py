"""Ports held only in TIME_WAIT, in small pinned ranges: taken when nothing else is free (with a
warning), and counted in the PortRangeExhausted message. A per-call range is named as such.

TIME_WAIT is made for real: a listener on P accepts a connection and closes its side first, so
the server's end (local port P) is the actively closing side and stays in TIME_WAIT for 60 s
(Linux TCP_TIMEWAIT_LEN). The oracle is /proc/net/tcp, read here independently of the engine.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from conftest import free_window

from pytest_portlease import PortLeaser, PortleaseWarning, PortRangeExhausted, PortUnavailable

pytestmark = [
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp as the oracle"),
    pytest.mark.filterwarnings("ignore:port range .* overlaps this host's ephemeral range"),
]


def tcp_states(port: int) -> list[str]:
    """The TCP states (hex, as the kernel prints them) of every socket on local port ``port``."""
    states = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                states.append(fields[3])
    return states


def leave_in_time_wait(port: int, *, reuse: bool) -> None:
    """Leave the server side of a connection on ``port`` in TIME_WAIT. ``reuse``: the listener
    set SO_REUSEADDR, which its TIME_WAIT keeps (so a server with SO_REUSEADDR may bind over it)."""
    with socket.socket() as listener:
        if reuse:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(1)
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server closes first: its side goes to TIME_WAIT
            assert client.recv(1) == b""  # the FIN arrived: the client's close completes it
    assert tcp_states(port) == ["06"], f"port {port} is not (only) in TIME_WAIT"


def server_with_reuseaddr_binds(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            s.listen(1)
        except OSError:
            return False
    return True


def test_a_pinned_range_takes_a_port_only_in_time_wait(lease_dir: Path) -> None:
    port = free_window(1).low
    leave_in_time_wait(port, reuse=True)
    with PortLeaser(lease_dir, port_range=f"{port}-{port}") as leaser:
        with pytest.warns(PortleaseWarning, match=rf"port {port} .*only in TIME_WAIT"):
            block = leaser.lease(1)
        assert block.base == port
    assert server_with_reuseaddr_binds(port)  # what a PostgreSQL or Redis server does


def test_free_ports_come_first(lease_dir: Path) -> None:
    window = free_window(2)
    leave_in_time_wait(window.low, reuse=True)
    with PortLeaser(lease_dir, port_range=str(window)) as leaser:
        bases = [leaser.lease(1, port_range=str(window)).base]  # no warning: filterwarnings=error
        with pytest.warns(PortleaseWarning, match="TIME_WAIT"):
            bases.append(leaser.lease(1).base)
    assert sorted(bases) == [window.low, window.high] and bases[0] == window.high


def test_an_exact_port_only_in_time_wait_is_leased(lease_dir: Path) -> None:
    port = free_window(1).low
    leave_in_time_wait(port, reuse=True)
    with PortLeaser(lease_dir) as leaser, pytest.warns(PortleaseWarning, match="TIME_WAIT"):
        assert leaser.lease(1, port=port).base == port


def test_a_time_wait_no_server_can_bind_over_is_counted_not_taken(lease_dir: Path) -> None:
    # Without SO_REUSEADDR on the closed socket, Linux refuses even an SO_REUSEADDR bind over
    # its TIME_WAIT (inet_bind_conflict needs sk_reuse on both sides).
    port = free_window(1).low
    leave_in_time_wait(port, reuse=False)
    assert not server_with_reuseaddr_binds(port)  # the oracle agrees: nobody can use it yet
    with PortLeaser(lease_dir, port_range=f"{port}-{port}") as leaser:
        with pytest.raises(PortRangeExhausted) as caught:
            leaser.lease(1)
        message = str(caught.value)
        assert "1 of them only in TIME_WAIT" in message, message
        with pytest.raises(PortUnavailable, match="only in TIME_WAIT"):
            leaser.lease(1, port=port)


def test_a_listener_is_never_mistaken_for_time_wait(lease_dir: Path) -> None:
    port = free_window(1).low
    leave_in_time_wait(port, reuse=True)
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(1)
        with PortLeaser(lease_dir, port_range=f"{port}-{port}") as leaser, \
                pytest.raises(PortRangeExhausted, match=r"\(0 of them only in TIME_WAIT"):
            leaser.lease(1)


def test_a_per_call_range_is_named_as_the_argument(lease_dir: Path) -> None:
    port = free_window(1).low
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen(1)
        with PortLeaser(lease_dir) as leaser, pytest.raises(PortRangeExhausted) as caught:
            leaser.lease(1, port_range=(port, port))
    message = str(caught.value)
    assert f"range {port}-{port} (argument)" in message and "(default)" not in message, message


if sys.platform != "linux":  # pragma: no cover
    pytestmark.append(pytest.mark.skip(reason="TIME_WAIT semantics checked are Linux's"))
