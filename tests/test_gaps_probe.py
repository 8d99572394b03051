"""The probe's own decisions, found by mutation testing: IPv6 detection, the ephemeral reader,
and which bind errors mean "busy"."""

from __future__ import annotations

import errno
import socket
import types

import pytest
from conftest import free_window, host_has_ipv6, kernel_ephemeral_range

from pytest_portlease import _probe
from pytest_portlease._config import PortRange


def test_ipv6_detection_agrees_with_a_direct_bind_of_loopback() -> None:
    assert _probe.has_ipv6() is host_has_ipv6()


def test_the_ephemeral_reader_agrees_with_the_proc_file() -> None:
    assert _probe.ephemeral_range() == kernel_ephemeral_range()


def test_ephemeral_overlap_at_its_edges() -> None:
    eph = kernel_ephemeral_range()
    assert _probe.ephemeral_overlap(PortRange(eph.high, eph.high + 1 if eph.high < 65535 else eph.high)) == PortRange(
        eph.high, eph.high
    )
    assert _probe.ephemeral_overlap(PortRange(eph.low - 1, eph.low)) == PortRange(eph.low, eph.low)
    assert _probe.ephemeral_overlap(eph) == eph
    assert _probe.ephemeral_overlap(PortRange(eph.low - 5, eph.low - 1)) is None


def test_an_ipv6_only_holder_is_busy() -> None:
    if not host_has_ipv6():
        pytest.skip("::1 does not bind on this host")
    port = free_window(10).low
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as holder:
        holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        holder.bind(("::", port))
        holder.listen(1)
        assert not _probe.port_is_free(port)
    assert _probe.port_is_free(port)


# Errors a real bind gives only under resource exhaustion or misuse: injected at the one call.
class FailingSocket:
    """A stand-in for _socket.socket whose bind fails with one errno."""

    closed = 0

    def __init__(self, code: int) -> None:
        self.code = code

    def __call__(self, family: int, kind: int) -> FailingSocket:
        return self

    def setsockopt(self, *args: object) -> None:
        pass

    def bind(self, address: object) -> None:
        raise OSError(self.code, "injected")

    def listen(self, backlog: int) -> None:  # pragma: no cover - bind always fails
        pass

    def close(self) -> None:
        FailingSocket.closed += 1


def inject_socket(monkeypatch: pytest.MonkeyPatch, fake: FailingSocket) -> None:
    """``fake`` as the probe's ``_socket.socket``, for the probe alone.

    The probe's module gets a stand-in namespace: patching the real ``_socket`` module would
    reach every socket of the process (``socket.socket.__init__`` calls ``_socket.socket``).
    The probe's cached facts (IPv6, the dual-stack check behind the chosen probe) are learnt
    from the real host first, or they would be learnt from the fake and kept for the process.
    """
    _probe.has_ipv6()
    _probe.port_is_free(free_window(1).low)
    monkeypatch.setattr(_probe, "_socket", types.SimpleNamespace(socket=fake))


@pytest.mark.parametrize("code", [errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL])
def test_bind_errors_that_mean_unusable_count_as_busy(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    inject_socket(monkeypatch, FailingSocket(code))
    FailingSocket.closed = 0
    assert _probe.port_is_free(40000) is False
    assert FailingSocket.closed == 1  # the socket is closed on failure too


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENOBUFS, errno.EINVAL])
def test_any_other_bind_error_is_raised_not_counted_as_free(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    inject_socket(monkeypatch, FailingSocket(code))
    with pytest.raises(OSError, match="injected") as info:
        _probe.port_is_free(40000)
    assert info.value.errno == code


def test_first_busy_names_the_first_busy_port() -> None:
    low = free_window(10).low
    assert _probe.first_busy(range(low, low + 5)) is None
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", low + 3))
        assert _probe.first_busy(range(low, low + 5)) == low + 3
        assert _probe.first_busy(range(low + 4, low + 5)) is None
