"""The probe's IPv4-only path and its reading of /proc/net/tcp, found by mutation testing of
``_probe``: each case holds a real socket and checks what the kernel's table says."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from conftest import free_window, host_has_ipv6

from pytest_portlease import _probe

TCP_TABLES = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
LISTEN = "0A"  # include/net/tcp_states.h: TCP_LISTEN


def test_a_host_without_ipv6_probes_ipv4_only(monkeypatch: pytest.MonkeyPatch) -> None:
    if not host_has_ipv6():
        pytest.skip("::1 does not bind on this host")
    port = free_window(1).low
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind(("::", port))
        holder.listen(1)
        assert not _probe.four_sockets_free(port)  # this host has IPv6: the holder is seen
        # Where the host has no IPv6 there is no such holder; the probe then binds IPv4 only.
        monkeypatch.setattr(_probe, "has_ipv6", lambda: False)
        assert _probe.four_sockets_free(port)


def test_the_tcp_tables_are_read_where_the_kernel_has_them() -> None:
    if not TCP_TABLES[0].exists():
        pytest.skip("no /proc/net/tcp on this host")
    assert _probe.tcp_states() is not None


@pytest.mark.parametrize(("family", "address"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_a_listener_of_either_family_is_in_the_tables(family: int, address: str) -> None:
    if family == socket.AF_INET6 and not (host_has_ipv6() and TCP_TABLES[1].exists()):
        pytest.skip("no IPv6, or no /proc/net/tcp6, on this host")
    if not TCP_TABLES[0].exists():
        pytest.skip("no /proc/net/tcp on this host")
    with socket.socket(family, socket.SOCK_STREAM) as holder:
        if family == socket.AF_INET6:
            holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind((address, 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        states = _probe.tcp_states()
        assert states is not None and LISTEN in states[port]


def test_a_port_the_tables_do_not_show_only_in_time_wait_is_not_taken() -> None:
    port = free_window(1).low
    assert not _probe.only_in_time_wait(port, {})
    assert not _probe.only_in_time_wait(port, {port: {LISTEN}})
    assert not _probe.only_in_time_wait(port, {port: {"06", LISTEN}})
    assert not _probe.only_in_time_wait(port, {port + 1: {"06"}})
    assert _probe.only_in_time_wait(port, {port: {"06"}})  # free, so it binds: the table decides


def test_a_time_wait_port_with_a_udp_holder_is_not_taken() -> None:
    port = free_window(1).low
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("0.0.0.0", port))
        assert not _probe.only_in_time_wait(port, {port: {"06"}})
    assert _probe.only_in_time_wait(port, {port: {"06"}})


def test_an_unprivileged_process_gets_the_same_dual_stack_answer() -> None:
    # The check binds ports of the kernel's choosing (port 0), which any user may bind.
    if os.geteuid() != 0:
        pytest.skip("dropping to another uid needs root")
    as_root = _probe.dual_stack_sees_ipv4()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, b"yes" if _probe.dual_stack_sees_ipv4() else b"no")
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == (b"yes" if as_root else b"no")
