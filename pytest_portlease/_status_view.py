"""What ``portlease status`` and ``portlease check`` read and print.

Reading never creates or changes anything: the lock is taken briefly on the existing lock file,
read-only, and a missing directory or state file is simply reported.

``portlease --json status`` prints one JSON object, schema 1 (fields are only ever added):

``schema``            1
``directory``         the lease directory; ``directory_source`` says where it was set
``exists``            whether the directory exists (false: every later field is empty)
``state_file``        path of ``fm-portalloc.json``; ``state_file_bytes`` its size, or null
``range``             ``{"low", "high", "source"}``: the configured range
``cursor``            the next-fit cursor (``next``), or null without a state file
``now``               unix seconds at which the states were computed
``by_state``          ``{"live": n, "ttl-only": n, "foreign": n, "expired": n, "dead owner": n}``
``ports``             ``{"in_range": n, "leased_in_range": n}``; leased counts live, ttl-only
                      and foreign
``map``               ``{"text": "..##+..", "ports_per_char": x}``: the occupancy map
``problems``          what could not be read in the state file (empty when it is sound)
``lock``              ``{"held": false}`` when read under the lock; else ``{"held": true, "pid",
                      "command", "waited"}``: who held it, and the seconds waited before the
                      state was read without it
``leases``            by base: ``{"base", "end", "size", "expires", "expires_in", "state",
                      "label", "owner"}``, where ``owner`` is null or ``{"pid", "start",
                      "host", "ns", "run"}`` (``pid`` and ``start`` may be null; ``run`` is
                      pytest-xdist's run id, or "")
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _clock
from ._config import PortRange, Resolved
from ._scan import cursor_of
from ._state import STATE_NAME
from ._status import LeaseInfo, LockBusy, check_readable_directory, lease_infos, read_state_seen

SCHEMA = 1
STATES = ("live", "ttl-only", "foreign", "expired", "dead owner")
HOLDING = ("live", "ttl-only", "foreign")  # states whose ports nobody else may lease
MAP_WIDTH = 64


@dataclass(frozen=True)
class Snapshot:
    """The lease directory as read at one instant."""

    directory: Resolved[Path]
    port_range: Resolved[PortRange]
    exists: bool
    state_bytes: int | None
    cursor: int | None
    leases: list[LeaseInfo]
    problems: list[str]
    now: float
    #: Who held the lock when this was read without it; None when it was read under the lock.
    lock_busy: LockBusy | None = None

    @property
    def state_file(self) -> Path:
        return self.directory.value / STATE_NAME

    def by_state(self) -> dict[str, int]:
        counts = Counter(lease.state for lease in self.leases)
        return {state: counts[state] for state in STATES}

    def holding(self) -> list[LeaseInfo]:
        return [lease for lease in self.leases if lease.state in HOLDING]


def read_snapshot(directory: Resolved[Path], port_range: Resolved[PortRange]) -> Snapshot:
    path = directory.value
    if not check_readable_directory(path, directory.source):
        return Snapshot(directory, port_range, False, None, None, [], [], _clock.now())
    loaded, busy = read_state_seen(path, directory.source)
    now = _clock.now()
    if loaded is None:
        return Snapshot(directory, port_range, True, None, None, [], [], now, busy)
    leases = lease_infos(loaded.state, now)
    cursor = cursor_of(loaded.state, port_range.value)  # the range's own, or fedimint's `next`
    return Snapshot(
        directory, port_range, True, loaded.size, cursor, leases, loaded.problems, now, busy
    )


# -- pieces ------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """``45s``, ``1m52s``, ``2h03m``, ``3d04h``; negative (already past) as ``-12s``."""
    if seconds < 0:
        return "-" + duration(-seconds)
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def printable(text: str) -> str:
    # Labels and hosts come from a shared file anyone may write: never let them move the cursor
    # or inject escape sequences into a terminal.
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def owner_text(lease: LeaseInfo) -> str:
    """``pid@host``; the host alone for a lease without a pid; ``-`` without an owner."""
    if lease.pid is None:
        return printable(lease.host) or "-"
    return f"{lease.pid}@{printable(lease.host)}"


def lock_text(busy: LockBusy) -> str:
    """Who holds the lock, for a state read without it."""
    who = "an unknown process" if busy.pid is None else f"pid {busy.pid}"
    if busy.command:
        who += f" ({printable(busy.command)})"
    return (
        f"held by {who}; after waiting {busy.waited:.1f}s, read without it "
        f"(the last state written: a change in progress is not shown)"
    )


def span(base: int, end: int) -> str:
    return str(base) if base == end else f"{base}-{end}"


def describe(lease: LeaseInfo, now: float) -> str:
    """One lease in a sentence, for ``check``, ``release`` and ``reclaim``."""
    label = f", {printable(lease.label)!r}" if lease.label else ""
    left = lease.expires - now
    expires = f"expires in {duration(left)}" if left > 0 else f"expired {duration(-left)} ago"
    return f"{span(lease.base, lease.end)} ({lease.state}, {owner_text(lease)}{label}, {expires})"


def occupancy(leases: list[LeaseInfo], rng: PortRange, width: int = MAP_WIDTH) -> str:
    """One character per bucket of the range: ``#`` all leased, ``+`` partly, ``.`` free."""
    n = min(width, rng.size)
    starts = [rng.low + i * rng.size // n for i in range(n)] + [rng.high + 1]
    filled = [0] * n
    for lease in leases:
        lo, hi = max(lease.base, rng.low), min(lease.end, rng.high)
        if lo > hi:
            continue
        for i in range(bisect.bisect_right(starts, lo) - 1, bisect.bisect_right(starts, hi)):
            filled[i] += min(hi, starts[i + 1] - 1) - max(lo, starts[i]) + 1
    # Overlapping leases (a hand-edited file) may count a port twice: cap at the bucket's size.
    return "".join(
        "." if f == 0 else "#" if f >= starts[i + 1] - starts[i] else "+" for i, f in enumerate(filled)
    )


def leased_in_range(leases: list[LeaseInfo], rng: PortRange) -> int:
    ports = 0
    reach = rng.low - 1  # leases are sorted by base: count each port once even if ranges overlap
    for lease in leases:
        lo, hi = max(lease.base, rng.low, reach + 1), min(lease.end, rng.high)
        if lo <= hi:
            ports += hi - lo + 1
            reach = hi
    return ports


# -- the text view -----------------------------------------------------------------------------


def render(snap: Snapshot) -> str:
    d, rng = snap.directory, snap.port_range
    if not snap.exists:
        return f"no lease directory at {d.value} (from {d.source}): nothing has been leased there yet"
    holding = snap.holding()
    counts = ", ".join(f"{n} {state}" for state, n in snap.by_state().items() if n)
    leased = leased_in_range(holding, rng.value)
    size = "missing" if snap.state_bytes is None else f"{snap.state_bytes} bytes"
    per_char = rng.value.size / min(MAP_WIDTH, rng.value.size)
    head = [
        ("directory", f"{d.value} (from {d.source})"),
        ("state file", f"{snap.state_file} ({size})"),
        ("range", f"{rng.value} (from {rng.source})"),
        ("cursor", "-" if snap.cursor is None else str(snap.cursor)),
        *([("lock", lock_text(snap.lock_busy))] if snap.lock_busy is not None else []),
        ("leases", f"{len(snap.leases)}" + (f" ({counts})" if counts else "")),
        ("in range", f"{leased} of {rng.value.size} ports leased ({100 * leased / rng.value.size:.1f}%)"),
        ("map", f"{rng.value.low} {occupancy(holding, rng.value)} {rng.value.high}"),
        ("", f"1 char = {per_char:.3g} ports: # all leased, + partly, . free"),
    ]
    head += [("problem", printable(p)) for p in snap.problems]
    lines = [f"{key:<10}  {value}" for key, value in head]
    lines.append("")
    if not snap.leases:
        lines.append("no leases")
        return "\n".join(lines)
    columns = ("BASE", "END", "SIZE", "EXPIRES IN", "OWNER", "STATE", "LABEL")
    rows = [
        (str(x.base), str(x.end), str(x.size), duration(x.expires - snap.now), owner_text(x),
         x.state, printable(x.label))
        for x in snap.leases
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    right = {0, 1, 2}  # numbers read best right-aligned
    for row in (columns, *rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# -- the JSON view -----------------------------------------------------------------------------


def lease_doc(lease: LeaseInfo, now: float) -> dict[str, Any]:
    owner = None
    if lease.pid is not None or lease.host or lease.ns:
        owner = {"pid": lease.pid, "start": lease.start, "host": lease.host, "ns": lease.ns,
                 "run": lease.run}
    return {
        "base": lease.base,
        "end": lease.end,
        "size": lease.size,
        "expires": lease.expires,
        "expires_in": round(lease.expires - now, 3),
        "state": lease.state,
        "label": lease.label,
        "owner": owner,
    }


def to_json(snap: Snapshot) -> dict[str, Any]:
    rng = snap.port_range.value
    holding = snap.holding()
    return {
        "schema": SCHEMA,
        "directory": str(snap.directory.value),
        "directory_source": snap.directory.source,
        "exists": snap.exists,
        "state_file": str(snap.state_file),
        "state_file_bytes": snap.state_bytes,
        "range": {"low": rng.low, "high": rng.high, "source": snap.port_range.source},
        "cursor": snap.cursor,
        "now": snap.now,
        "by_state": snap.by_state(),
        "ports": {"in_range": rng.size, "leased_in_range": leased_in_range(holding, rng)},
        "map": {"text": occupancy(holding, rng), "ports_per_char": rng.size / min(MAP_WIDTH, rng.size)},
        "problems": snap.problems,
        "lock": _lock_doc(snap.lock_busy),
        "leases": [lease_doc(lease, snap.now) for lease in snap.leases],
    }


def _lock_doc(busy: LockBusy | None) -> dict[str, Any]:
    if busy is None:
        return {"held": False}
    return {"held": True, "pid": busy.pid, "command": busy.command, "waited": round(busy.waited, 3)}


def dumps(doc: dict[str, Any]) -> str:
    """Indented JSON with one line per lease: readable, and fast with thousands of leases.

    ``indent`` sends the json module down its pure-Python encoder, several times slower than the
    compact C one. ``leases``, when present, is the document's last key.
    """
    leases = doc.get("leases")
    if not leases or list(doc)[-1] != "leases":
        return json.dumps(doc, indent=2)
    head = json.dumps({**doc, "leases": []}, indent=2)
    body = ",\n".join(f"    {json.dumps(lease)}" for lease in leases)
    return f"{head[: head.rindex('[]')]}[\n{body}\n  ]\n}}"
