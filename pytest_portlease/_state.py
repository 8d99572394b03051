"""The JSON state: fedimint-portalloc's schema, our one-range-per-line layout, tolerant parsing.

The file is fedimint-portalloc's ``{"next": N, "keys": {"<base>": {"size": S, "expires": T}}}``
plus our optional ``owner``. We write one range per line, sorted by base, so that a reader can
reuse the ranges it already parsed (see ``_store.Store``). Any other layout (fedimint's, a hand
edit) goes through the full tolerant parser, which keeps every valid range and names the rest.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import math
import os
import re
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


@dataclass(frozen=True)
class Entry:
    """One leased range: ``base`` .. ``base + size - 1``, live while now < ``expires``."""

    base: int
    size: int
    expires: float
    owner: Owner | None = None
    extra: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    @property
    def end(self) -> int:
        return self.base + self.size - 1

    @property
    def process(self) -> Process | None:
        return None if self.owner is None else self.owner.process

    @cached_property
    def line(self) -> bytes:
        """The entry as one line of our layout. fedimint reads ``expires`` as a u64: write an int."""
        value: dict[str, Any] = {"size": self.size, "expires": math.ceil(self.expires)}
        value.update(self.extra)
        if self.owner is not None:
            value["owner"] = self.owner.to_json()
        return f'"{self.base}": {json.dumps(value)}'.encode("ascii")


class State:
    """The ranges of the state file, indexed by base for O(log n) overlap checks."""

    def __init__(self, next_port: int, entries: dict[int, Entry], extra: dict[str, Any]) -> None:
        self.next = next_port
        self.entries = entries
        self.extra = extra
        self.bases = sorted(entries)
        self.overlapping = self._find_overlap() is not None
        self.dirty = False  # changed since loaded: the transaction saves it
        # What reclaim needs without a pass over every range: the owning processes (with how
        # many ranges each holds), and a bound no range expires before.
        self.processes: Counter[Process] = Counter(p for e in entries.values() if (p := e.process))
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
            end = base + entry.size - 1
            if end > reach_end:
                reach, reach_end = entry, end
        return None

    def add(self, entry: Entry) -> None:
        if entry.base in self.entries:
            self._forget(self.entries[entry.base])
        else:
            bisect.insort(self.bases, entry.base)
        self.entries[entry.base] = entry
        if entry.process:
            self.processes[entry.process] += 1
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
        if entry.process and (left := self.processes[entry.process] - 1):
            self.processes[entry.process] = left
        elif entry.process:
            del self.processes[entry.process]

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

    def encode(self, lines: list[bytes] | None = None) -> bytes:
        head = json.dumps({"next": self.next, **self.extra})[:-1] + ', "keys": {'
        lines = self.lines() if lines is None else lines
        parts = [head.encode("ascii"), b",\n".join(lines), b"}}\n"] if lines else [head.encode("ascii"), b"}}\n"]
        return b"\n".join(parts)


@dataclass
class Loaded:
    state: State
    problems: list[str]
    lossy: bool  # something was dropped or changed: the original bytes deserve a backup
    size: int = 0  # of the bytes parsed


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(key: object, value: object, problems: list[str]) -> Entry | None:
    if not (isinstance(key, str) and key.isascii() and key.isdecimal() and 1 <= int(key) <= 65535):
        problems.append(f"dropped range {key!r}: the key is not a port number from 1 to 65535")
        return None
    base = int(key)
    if not isinstance(value, dict):
        problems.append(f"dropped range {key}: expected an object, found {type(value).__name__}")
        return None
    size, expires = value.get("size"), value.get("expires")
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 65536 - base:
        problems.append(f"dropped range {key}: size {size!r} is not a whole number of ports that fits")
        return None
    if not isinstance(expires, int | float) or isinstance(expires, bool) or not math.isfinite(expires):
        problems.append(f"dropped range {key}: expires {expires!r} is not a number of unix seconds")
        return None
    owner = None
    if "owner" in value:
        owner = Owner.from_json(value["owner"])
        if owner is None:
            problems.append(f"range {key}: malformed owner {value['owner']!r} removed, range kept")
    extra = tuple((k, v) for k, v in value.items() if k not in ("size", "expires", "owner"))
    if extra and not _is_json(dict(extra)):
        problems.append(f"range {key}: fields that are not JSON (NaN, Infinity) removed, range kept")
        extra = tuple((k, v) for k, v in extra if _is_json(v))
    return Entry(base, size, expires, owner, extra)


def _is_json(value: object) -> bool:
    # Python's json reads NaN and Infinity, serde_json (fedimint-portalloc) refuses the whole
    # file: never write them back.
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, RecursionError):
        return False
    return True


_SALVAGE_KEY = re.compile(r'"(\d{1,5})"\s*:\s*(?=\{)')
_SALVAGE_NEXT = re.compile(r'"next"\s*:\s*(\d{1,5})\b')


def _salvage(text: str) -> dict[str, Any]:
    """Recover what ranges we can from a file that is not JSON (truncated, torn, hand-mangled)."""
    decoder = json.JSONDecoder()
    keys: dict[str, Any] = {}
    for match in _SALVAGE_KEY.finditer(text):
        with contextlib.suppress(ValueError, RecursionError):
            keys[match.group(1)] = decoder.raw_decode(text, match.end())[0]
    doc: dict[str, Any] = {"keys": keys}
    if found := _SALVAGE_NEXT.search(text):
        doc["next"] = int(found.group(1))
    return doc


def parse_tolerant(data: bytes) -> Loaded:
    """Parse any bytes; keep every valid range and describe everything that was not."""
    loaded = _parse_tolerant(data)
    loaded.size = len(data)
    return loaded


def _parse_tolerant(data: bytes) -> Loaded:
    problems: list[str] = []
    if not data.strip():
        return Loaded(State(0, {}, {}), problems, lossy=False)
    try:
        doc: Any = json.loads(data)
    # UnicodeDecodeError is a ValueError too; RecursionError: thousands of nested brackets.
    except (ValueError, RecursionError) as e:
        doc = _salvage(data.decode("utf-8", "replace"))
        problems.append(f"not valid JSON ({e}); salvaged {len(doc['keys'])} range(s)")
    if not isinstance(doc, dict):
        problems.append(f"the top level is {type(doc).__name__}, not an object")
        doc = {}
    next_port = doc.get("next", 0)
    if not _is_int(next_port) or not 0 <= next_port <= 65535:
        problems.append(f"'next' {next_port!r} is not a port number; reset")
        next_port = 0
    keys = doc.get("keys", {})
    if not isinstance(keys, dict):
        problems.append(f"'keys' is {type(keys).__name__}, not an object; no range could be read")
        keys = {}
    entries: dict[int, Entry] = {}
    for key, value in keys.items():
        if (entry := _entry(key, value, problems)) is not None:
            entries[entry.base] = entry
    extra = {k: v for k, v in doc.items() if k not in ("next", "keys")}
    if extra and not _is_json(extra):
        problems.append("top-level fields that are not JSON (NaN, Infinity) removed")
        extra = {k: v for k, v in extra.items() if _is_json(v)}
    lossy = bool(problems)
    state = State(next_port, entries, extra)
    if (pair := state._find_overlap()) is not None:
        a, b = pair
        problems.append(f"ranges {a.base}-{a.end} and {b.base}-{b.end} overlap; both are kept")
    return Loaded(state, problems, lossy)


def _split_layout(data: bytes) -> tuple[dict[str, Any], list[bytes]] | None:
    """The head (``next`` and any other top-level fields) and the range lines of our layout:
    ``{"next": N, "keys": {`` / one ``"base": {...}`` per line, comma-terminated but the last /
    ``}}``. None for any other layout."""
    head_end = data.find(b"\n")
    if head_end < 0 or not data.endswith(b"\n}}\n") or not data[:head_end].endswith(b'"keys": {'):
        return None
    try:
        head = json.loads(data[:head_end] + b"}}")
    except (ValueError, RecursionError):
        return None
    next_port = head.get("next")
    if head.pop("keys", None) != {} or not _is_int(next_port) or not 0 <= next_port <= 65535:
        return None
    if len(head) > 1 and not _is_json(head):
        return None  # NaN or Infinity among the other fields: the full parser drops them
    inner = data[head_end + 1 : -4]
    if not inner:
        return head, []
    # A raw newline cannot occur inside a JSON string: every one here ends a line.
    raws = inner.split(b",\n")
    return (head, raws) if inner.count(b"\n") == len(raws) - 1 else None


def parse_line(raw: bytes) -> Entry | None:
    """One line of our layout, ``"base": {...}``, as a valid range; None for anything else."""
    try:
        member = json.loads(b"{" + raw + b"}")
    except (ValueError, RecursionError):
        return None
    if not isinstance(member, dict) or len(member) != 1:
        return None
    problems: list[str] = []
    ((key, value),) = member.items()
    entry = _entry(key, value, problems)
    return None if problems else entry


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
