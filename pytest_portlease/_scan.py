"""Where a block comes from: one next-fit cursor per range, a random start, the scan.

fedimint-portalloc keeps one cursor, ``next``, and resets it to 10000 only once it passes 32000.
A shared cursor would drag each allocator into the other's ranges, so ours live in a field of
ours, one per range (``State.cursors``), and ``next`` moves only for a block inside fedimint's
window. A range without a cursor starts at a random point: separate registries on one host (two
users, two containers, two ``--portlease-dir``) would otherwise hand out the same ports in the
same order, with only the probe between them.
"""

from __future__ import annotations

import bisect
import logging
import random

from . import _probe
from ._config import LAST_PORT, PortRange
from ._state import State

log = logging.getLogger("pytest_portlease")

#: fedimint-portalloc's range: ``next`` is written only for blocks inside it.
FEDIMINT_WINDOW = PortRange(10000, 32000)

# The OS's entropy, not the ``random`` module's state: a test suite seeds that (pytest-randomly
# does, with one seed for every worker), and forked children share it.
_random = random.SystemRandom()


def usable(rng: PortRange) -> PortRange:
    """``rng`` without port 65535, which no block may include (fedimint adds in u16)."""
    return PortRange(rng.low, min(rng.high, LAST_PORT))


def cursor_of(state: State, rng: PortRange) -> int | None:
    """The range's cursor, or fedimint's ``next`` where it points into the range (fedimint
    rewrote the file and dropped ours, or the range shares its ports); None for neither."""
    cursor = state.cursor(str(rng))
    if cursor is None and rng.low <= state.next <= rng.high:
        cursor = state.next
    return cursor


def start(state: State, rng: PortRange, size: int) -> int:
    """The base the scan starts at: the range's cursor; else (a fresh state, a cursor outside
    the range) a random base of the range."""
    cursor = cursor_of(state, rng)
    rng = usable(rng)
    if cursor is not None and rng.low <= cursor <= rng.high - size + 1:
        return cursor
    return _random.randrange(rng.low, rng.high - size + 2)


def advance(state: State, rng: PortRange, base: int, size: int) -> None:
    """Move the range's cursor past the granted block, and ``next`` only inside fedimint's window."""
    key, rng = str(rng), usable(rng)
    after = base + size
    state.set_cursor(key, after if after <= rng.high else rng.low)
    if FEDIMINT_WINDOW.low <= base and after - 1 <= FEDIMINT_WINDOW.high:
        state.next = after


def _first_in(sorted_ports: tuple[int, ...], low: int, high: int) -> int | None:
    i = bisect.bisect_left(sorted_ports, low)
    return sorted_ports[i] if i < len(sorted_ports) and sorted_ports[i] <= high else None


def next_fit(state: State, rng: PortRange, size: int, avoided: tuple[int, ...] = ()) -> int | None:
    """The first free block of ``size`` ports from the cursor, wrapping once; None when there is
    none. ``avoided``: sorted ports no block may include, skipped like a lease (the well-known
    service ports of the default range). Every jump moves strictly forward, so one full cycle
    probes each port at most once and the scan always ends."""
    first = start(state, rng, size)
    rng = usable(rng)
    base, wrapped = first, False
    while True:
        if base + size - 1 > rng.high:
            if wrapped:
                return None
            base, wrapped = rng.low, True
        if wrapped and base >= first:
            return None
        if (entry := state.conflict(base, base + size - 1)) is not None:
            base = max(entry.end + 1, base + 1)
            continue
        if avoided and (hit := _first_in(avoided, base, base + size - 1)) is not None:
            base = hit + 1
            continue
        busy = _probe.first_busy(range(base, base + size))
        if busy is None:
            log.debug("probed %d-%d: free", base, base + size - 1)
            return base
        log.debug("probed %d-%d: port %d is bound outside portlease", base, base + size - 1, busy)
        base = busy + 1
