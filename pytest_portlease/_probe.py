"""Is this port free? The strict bind probe, and the host's ephemeral port range.

The probe must see every holder a test server could be (DESIGN.md, Allocation 4). On Linux a
bind without SO_REUSEADDR to a wildcard address conflicts with any socket bound to an address of
the same port that the wildcard covers, listening or not, with or without SO_REUSEADDR or
SO_REUSEPORT on the other side, and with a TCP connection in TIME_WAIT (inet_csk_bind_conflict,
udp_lib_lport_inuse). Two ways to cover both families:

* two sockets: TCP and UDP bound on ``[::]`` with IPV6_V6ONLY=0. A dual-stack wildcard covers
  every IPv4 address too (as v4-mapped) and the kernel checks the conflict against IPv4 holders
  (ipv6_rcv_saddr_equal, inet_rcv_saddr_any). Bound only, never listened: listen() adds nothing
  to the verdict of a socket without SO_REUSEADDR, whose conflicts are all found at bind time.
* four sockets: TCP (bound and listening) and UDP on ``0.0.0.0``, and on ``[::]`` with
  IPV6_V6ONLY=1; only the first two where the host has no IPv6.

Some kernels had bugs in exactly the dual-stack conflict check, so each process checks it once,
on a port it holds on 127.0.0.1 (``dual_stack_sees_ipv4``), and uses four sockets unless the
dual-stack bind is refused there, for TCP and for UDP; and where the host has no IPv6.
"""

from __future__ import annotations

import _socket
import errno
import socket
from collections.abc import Callable
from functools import cache

from ._config import PortRange

_KINDS = (socket.SOCK_STREAM, socket.SOCK_DGRAM)
# EACCES: a privileged port we may not bind is no use to us either.
_BUSY = (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL)


@cache
def has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


# (family, wildcard address, kind) of every bind the four-socket probe makes, in its order.
_V4 = [(socket.AF_INET, "0.0.0.0", kind) for kind in _KINDS]
_BOTH = _V4 + [(socket.AF_INET6, "::", kind) for kind in _KINDS]


def _binds(family: int, address: str, kind: int, port: int, *, v6only: int = 1, listen: bool = True) -> bool:
    # _socket.socket, not socket.socket: the wrapper's bookkeeping is a fifth of a probe's cost,
    # and a probe is most of a lease.
    s = _socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        s.bind((address, port))
        if listen and kind == socket.SOCK_STREAM:
            s.listen(1)
    except OSError as e:
        if e.errno in _BUSY:
            return False
        raise
    finally:
        s.close()
    return True


def _binds_dual(kind: int, port: int) -> bool:
    return _binds(socket.AF_INET6, "::", kind, port, v6only=0, listen=False)


def two_sockets_free(port: int) -> bool:
    """The dual-stack probe: TCP and UDP bound (not listening) on ``[::]`` with IPV6_V6ONLY=0."""
    return _binds_dual(socket.SOCK_STREAM, port) and _binds_dual(socket.SOCK_DGRAM, port)


def four_sockets_free(port: int) -> bool:
    """The per-family probe: TCP (listening) and UDP on each wildcard this host has."""
    for family, address, kind in _BOTH if has_ipv6() else _V4:  # noqa: SIM110  # a loop: all() and a genexpr cost ~1 us a port
        if not _binds(family, address, kind, port):
            return False
    return True


def dual_stack_sees_ipv4(binds_dual: Callable[[int, int], bool] = _binds_dual) -> bool:
    """Whether a dual-stack bind is refused on a port held on 127.0.0.1, for TCP and for UDP.

    ``binds_dual(kind, port)`` is the bind under check (a parameter so that a test can stand in
    a kernel that misses the conflict).
    """
    for kind in _KINDS:
        holder = _socket.socket(socket.AF_INET, kind)
        try:
            holder.bind(("127.0.0.1", 0))
            if binds_dual(kind, holder.getsockname()[1]):
                return False  # the kernel let [::] in beside 127.0.0.1: it misses v4 holders
        except OSError:
            return False  # no dual-stack socket at all (IPv6 disabled, or V6ONLY fixed to 1)
        finally:
            holder.close()
    return True


_port_is_free: Callable[[int], bool] | None = None


def choose_probe(
    ipv6: Callable[[], bool] = has_ipv6, sees_ipv4: Callable[[], bool] = dual_stack_sees_ipv4
) -> Callable[[int], bool]:
    """The probe this host can trust: two sockets where the dual-stack check holds, else four."""
    return two_sockets_free if ipv6() and sees_ipv4() else four_sockets_free


def port_is_free(port: int) -> bool:
    """True when ``port`` binds for TCP and UDP on every address family this host has."""
    global _port_is_free
    if _port_is_free is None:
        _port_is_free = choose_probe()  # once per process: the kernel does not change under us
    return _port_is_free(port)


def first_busy(ports: range) -> int | None:
    """The first port of ``ports`` that does not probe free, or None if all are free."""
    for port in ports:
        if not port_is_free(port):
            return port
    return None


@cache
def ephemeral_range() -> PortRange | None:
    """This host's ephemeral port range (Linux); None where it cannot be read."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            low, high = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return None
    return PortRange(low, high)


def ephemeral_overlap(port_range: PortRange) -> PortRange | None:
    """The part of ``port_range`` the kernel may hand out as ephemeral ports, if any."""
    eph = ephemeral_range()
    if eph is None:
        return None
    low, high = max(eph.low, port_range.low), min(eph.high, port_range.high)
    return PortRange(low, high) if low <= high else None


# -- ports held only in TIME_WAIT (the second pass of a scan that found nothing free) -----------

_TIME_WAIT = "06"  # include/net/tcp_states.h: TCP_TIME_WAIT, as /proc/net/tcp prints st


def tcp_states() -> dict[int, set[str]] | None:
    """Local port -> the states of the TCP sockets on it, from /proc/net/tcp and tcp6 (Linux);
    None where neither can be read. Sockets that are bound but neither listening nor connected
    are in no table the kernel prints here."""
    states: dict[int, set[str]] = {}
    read = False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        read = True
        for line in lines:
            fields = line.split()
            try:
                port = int(fields[1].rsplit(":", 1)[1], 16)
            except (IndexError, ValueError):
                continue
            states.setdefault(port, set()).add(fields[3])
    return states if read else None


def only_in_time_wait(port: int, states: dict[int, set[str]]) -> bool:
    """True when the kernel lists nothing but TIME_WAIT connections on ``port`` (``states`` from
    ``tcp_states()``), a server that sets SO_REUSEADDR can bind and listen on it, and UDP binds.

    Linux lets an SO_REUSEADDR bind through a TIME_WAIT only when the socket that closed had set
    SO_REUSEADDR too (inet_bind_conflict: sk_reuse on both sides; the TIME_WAIT keeps tw_reuse),
    so the bind itself is the test. A socket bound with SO_REUSEADDR but not listening would
    pass as well; it is in no /proc table, so only a port that also has a TIME_WAIT is asked.
    """
    if states.get(port) != {_TIME_WAIT}:
        return False
    families = [(socket.AF_INET, "0.0.0.0")]
    if has_ipv6():
        families.append((socket.AF_INET6, "::"))
    for family, address in families:
        if not _binds(family, address, socket.SOCK_DGRAM, port):
            return False
        s = _socket.socket(family, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((address, port))
            s.listen(1)
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
        finally:
            s.close()
    return True
