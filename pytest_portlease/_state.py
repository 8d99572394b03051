"""The JSON state: fedimint-portalloc's schema and our one-range-per-line layout.

The file is fedimint-portalloc's ``{"next": N, "keys": {"<base>": {"size": S, "expires": T}}}``
plus our optional ``owner`` and our cursors (``"portlease": {"cursors": {"LOW-HIGH": N}}``). We
write one range per line, sorted by base, so that a reader can reuse the ranges it already parsed
(see ``_store.Store``). Reading any bytes tolerantly is ``_parse``'s job.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import os
import sys
import threading
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ._owner import Owner, Process
from .errors import PortleaseWarning

STATE_NAME = "fm-portalloc.json"
#: fedimint-portalloc reads ``expires`` as a u64: a larger number is not one it can parse.
U64_MAX = 2**64 - 1
#: Our field at the top level; fedimint-portalloc ignores it and drops it when it rewrites the file.
OURS = "portlease"
#: Cursors kept at most: a caller that leases from ever new ranges must not grow the file for ever.
MAX_CURSORS = 64


@dataclass(frozen=True)
class Entry:
    """One leased range: ``base`` .. ``base + size - 1``, live while now < ``expires``."""

    base: int
    size: int
    expires: float
    owner: Owner | None = None
    extra: tuple[tuple[str, Any], ...] = field(default=(), compare=False)
    #: Owners of other copies of this range (a duplicate or zero-padded key, merged by the
    #: parser): any of them provably alive holds the range whatever ``expires`` says, and a dead
    #: one frees nothing. Each has a pid; written as our field ``co_owners``.
    co_owners: tuple[Owner, ...] = ()

    @property
    def end(self) -> int:
        """The last port. A range of size 0 (fedimint's schema allows it) is taken to hold its
        base: a block granted there would have to replace it, and it is kept as written."""
        return self.base + max(self.size, 1) - 1

    @property
    def process(self) -> Process | None:
        return None if self.owner is None else self.owner.process

    @property
    def processes(self) -> list[Process]:
        """Every process whose liveness can hold the range: the owner's and the co-owners'."""
        found = [] if self.owner is None or self.owner.process is None else [self.owner.process]
        return found + [p for o in self.co_owners if (p := o.process)]

    @classmethod
    def with_line(cls, line: bytes, base: int, size: int, expires: float, owner: Owner | None) -> Entry:
        """The entry of these fields, whose line is known to be ``line`` (a reader that found it
        written exactly as ``line`` would write it): the first save encodes nothing again."""
        # A reader makes one a range: its fields set at once, not one ``object.__setattr__``
        # each as a frozen dataclass's __init__ does (a third of a cold read of 20,000 ranges).
        entry = object.__new__(cls)
        entry.__dict__.update(base=base, size=size, expires=expires, owner=owner, extra=(), co_owners=(), line=line)
        return entry

    @cached_property
    def line(self) -> bytes:
        """The entry as one line of our layout: ``json_line``, written without a JSON encoder
        for the usual range (an owner with a pid, strings that need no escape, nothing else)."""
        owner = self.owner
        if self.extra or self.co_owners or (owner is not None and not owner.plain):
            return self.json_line()
        head = f'"{self.base}": {{"size": {self.size}, "expires": {_expires(self.expires)}'
        if owner is None:
            return f"{head}}}".encode("ascii")
        run = f', "run": "{owner.run}"' if owner.run else ""
        return (
            f'{head}, "owner": {{"pid": {owner.pid}, "start": {owner.start}, "host": "{owner.host}", '
            f'"ns": "{owner.ns}", "label": "{owner.label}"{run}}}}}'
        ).encode("ascii")

    def json_line(self) -> bytes:
        """The entry as one line of our layout, through the JSON encoder."""
        value: dict[str, Any] = {"size": self.size, "expires": _expires(self.expires)}
        value.update(self.extra)
        if self.owner is not None:
            value["owner"] = self.owner.to_json()
        if self.co_owners:
            value["co_owners"] = [o.to_json() for o in self.co_owners]
        return f'"{self.base}": {json.dumps(value)}'.encode("ascii")


def _expires(expires: float) -> int:
    """``expires`` as we write it: fedimint reads a u64, so an int within it (a negative one
    reads as expired either way)."""
    return min(max(math.ceil(expires), 0), U64_MAX)


class State:
    """The ranges of the state file, indexed by base for O(log n) overlap checks."""

    def __init__(
        self,
        next_port: int,
        entries: dict[int, Entry],
        extra: dict[str, Any],
        cursors: dict[str, int] | None = None,
    ) -> None:
        self.next = next_port  # fedimint-portalloc's cursor
        self.cursors: dict[str, int] = {} if cursors is None else cursors  # ours: range -> next base
        self.entries = entries
        self.extra = extra
        self.bases = sorted(entries)
        self.overlapping = self._find_overlap() is not None
        self.dirty = False  # changed since loaded: the transaction saves it
        # What reclaim needs without a pass over every range: the owning processes (with how
        # many ranges each holds), and a bound no range expires before.
        self.processes: Counter[Process] = Counter(p for e in entries.values() if (p := e.process))
        for entry in entries.values():
            if entry.co_owners:
                self.processes.update(o.process for o in entry.co_owners if o.process)
        self.soonest = min((e.expires for e in entries.values()), default=math.inf)

    def _find_overlap(self) -> tuple[Entry, Entry] | None:
        # Runs on every state loaded that another writer changed: at 1,000 ranges the plain
        # version (``Entry.end`` through the property, twice a range) cost a quarter of a lease.
        reach: Entry | None = None
        reach_end = -1
        entries = self.entries
        for base in self.bases:
            entry = entries[base]
            if reach is not None and base <= reach_end:
                return reach, entry
            end = base + max(entry.size, 1) - 1  # Entry.end, without the property's cost
            if end > reach_end:
                reach, reach_end = entry, end
        return None

    def add(self, entry: Entry) -> None:
        if entry.base in self.entries:
            self._forget(self.entries[entry.base])
        else:
            bisect.insort(self.bases, entry.base)
        self.entries[entry.base] = entry
        self.processes.update(entry.processes)
        self.soonest = min(self.soonest, entry.expires)
        self.dirty = True

    def remove(self, base: int) -> Entry | None:
        entry = self.entries.pop(base, None)
        if entry is not None:
            del self.bases[bisect.bisect_left(self.bases, base)]
            self._forget(entry)
            self.dirty = True
            if self.overlapping:
                self.overlapping = self._find_overlap() is not None
        return entry

    def _forget(self, entry: Entry) -> None:
        for process in entry.processes:
            if left := self.processes[process] - 1:
                self.processes[process] = left
            else:
                del self.processes[process]

    def conflict(self, low: int, high: int) -> Entry | None:
        """An entry overlapping ``low..high``: the one reaching furthest, so a scan may jump past it."""
        i = bisect.bisect_right(self.bases, high)
        if not self.overlapping:
            # Without overlaps, ends grow with bases: only the last base <= high can reach low.
            if i and (entry := self.entries[self.bases[i - 1]]).end >= low:
                return entry
            return None
        hits = [e for e in (self.entries[b] for b in self.bases[:i]) if e.end >= low]
        return max(hits, key=lambda e: e.end, default=None)

    def lines(self) -> list[bytes]:
        """The ranges as lines of our layout, by base."""
        entries = self.entries
        return [entries[b].line for b in self.bases]

    def cursor(self, key: str) -> int | None:
        return self.cursors.get(key)

    def set_cursor(self, key: str, base: int) -> None:
        self.cursors.pop(key, None)  # re-inserted last: the oldest cursors are the ones dropped
        self.cursors[key] = base
        while len(self.cursors) > MAX_CURSORS:
            del self.cursors[next(iter(self.cursors))]
        self.dirty = True

    def encode(self, lines: list[bytes] | None = None) -> bytes:
        top = {"next": self.next, **self.extra}
        if self.cursors:
            top[OURS] = {"cursors": self.cursors}
        head = json.dumps(top)[:-1] + ', "keys": {'
        lines = self.lines() if lines is None else lines
        parts = [head.encode("ascii"), b",\n".join(lines), b"}}\n"] if lines else [head.encode("ascii"), b"}}\n"]
        return b"\n".join(parts)


_warned: set[str] = set()
_thread = threading.local()


def log_warnings_in_this_thread() -> None:
    """Make ``_warn_once`` log instead of warn in the calling (background) thread."""
    _thread.log = True


def _warn_once(problem: str, detail: str = "") -> None:
    """Warn once per process for each distinct problem (the detail may differ between times)."""
    if getattr(_thread, "log", False):
        logging.getLogger("pytest_portlease").warning("%s%s", problem, detail)
        return  # not marked as warned: the next lease in the foreground still warns
    if problem in _warned:
        return
    _warned.add(problem)
    warnings.warn(f"{problem}{detail}", PortleaseWarning, stacklevel=outside_package())


def outside_package() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside this package (and
    outside contextlib, whose context managers the engine runs in)."""
    package = os.path.dirname(__file__)
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(package) or frame.f_code.co_filename == contextlib.__file__
    ):
        frame, level = frame.f_back, level + 1
    return level
