"""Is this port free? The strict bind probe, and the host's ephemeral port range.

The probe binds TCP (and listens) and UDP on the IPv4 wildcard and, where the host has IPv6, on
the IPv6 wildcard with IPV6_V6ONLY, all without SO_REUSEADDR. On Linux a wildcard bind without
SO_REUSEADDR conflicts with any socket bound to a specific address of the same family and port,
listening or not, with or without SO_REUSEADDR on the other side (inet_csk_bind_conflict), and
with a TCP connection in TIME_WAIT; so these four binds see every holder a test server could be.
"""

from __future__ import annotations

import _socket
import errno
import socket
from functools import cache

from ._config import PortRange

_KINDS = (socket.SOCK_STREAM, socket.SOCK_DGRAM)


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


# (family, wildcard address, kind) of every bind the probe makes, in the order it makes them.
_V4 = [(socket.AF_INET, "0.0.0.0", kind) for kind in _KINDS]
_BOTH = _V4 + [(socket.AF_INET6, "::", kind) for kind in _KINDS]


def _binds(family: int, address: str, kind: int, port: int) -> bool:
    # _socket.socket, not socket.socket: the wrapper's bookkeeping is a fifth of a probe's cost,
    # and a probe is most of a lease.
    s = _socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((address, port))
        if kind == socket.SOCK_STREAM:
            s.listen(1)
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            return False  # EACCES: a privileged port we may not bind is no use to us either
        raise
    finally:
        s.close()
    return True


def port_is_free(port: int) -> bool:
    """True when ``port`` binds for TCP and UDP on every address family this host has."""
    for family, address, kind in _BOTH if has_ipv6() else _V4:  # noqa: SIM110  # a loop: all() and a genexpr cost ~1 us a port
        if not _binds(family, address, kind, port):
            return False
    return True


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
