"""Reading a state of our layout by the lines that changed since the bytes last known.

A state we write has one range per line (``State.encode``). Another writer usually changes one
or two ranges among thousands, so a reader that holds the state of the bytes it last saw
compares the new bytes with those: only the lines between their common start and their common
end are read and applied; the rest is never split, hashed or parsed. The result is what the
full parser reads (``tests/test_incremental_load.py`` checks it over random edit sequences).
What it cannot decide line by line (a line it cannot read, two lines for one base, overlapping
ranges, another layout) it leaves to the full parser, by returning None.
"""

from __future__ import annotations

from ._parse import parse_line, split_head
from ._state import Entry, State

#: Lines read and remembered at most: a long run sees ever new lines from other writers.
CACHE_MAX = 50_000
#: Bytes compared at a time when looking for where two versions start and stop differing.
_CHUNK = 4096


def _shared_start(a: bytes, i: int, b: bytes, j: int, n: int) -> int:
    """How many bytes ``a[i:]`` and ``b[j:]`` share at their start, at most ``n``."""
    lo = 0
    while lo < n:
        hi = min(lo + _CHUNK, n)
        if a[i + lo : i + hi] != b[j + lo : j + hi]:
            break
        lo = hi
    else:
        return n
    while hi - lo > 1:  # the first difference lies in lo .. hi - 1
        mid = (lo + hi) // 2
        if a[i + lo : i + mid] == b[j + lo : j + mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _shared_end(a: bytes, i: int, b: bytes, j: int, n: int) -> int:
    """How many bytes ``a[:i]`` and ``b[:j]`` share at their end, at most ``n``."""
    lo = 0
    while lo < n:
        hi = min(lo + _CHUNK, n)
        if a[i - hi : i - lo] != b[j - hi : j - lo]:
            break
        lo = hi
    else:
        return n
    while hi - lo > 1:  # the last difference lies lo .. hi - 1 bytes before the end
        mid = (lo + hi) // 2
        if a[i - mid : i - lo] == b[j - mid : j - lo]:
            lo = mid
        else:
            hi = mid
    return lo


def _split(lines: bytes, *, last: bool) -> list[bytes] | None:
    """The range lines of a run of whole lines: each ends in ``,\\n`` but the file's last one
    (``last``). None when a newline is not the end of a line and its comma."""
    if not lines:
        return []
    raws = lines.split(b",\n")
    # A raw newline cannot occur inside a JSON string: in our layout every one ends a line, and
    # the widening of a difference to whole lines relies on it.
    if lines.count(b"\n") != len(raws) - 1:
        return None
    return raws if last else raws[:-1]  # the run ends in ",\n": the split leaves b"" last


class Lines:
    """Reads states of our layout, reusing every line it has read before."""

    def __init__(self) -> None:
        self._read: dict[bytes, Entry] = {}

    def entry(self, raw: bytes) -> Entry | None:
        entry = self._read.get(raw)
        if entry is None and (entry := parse_line(raw)) is not None:
            if len(self._read) >= CACHE_MAX:
                self._read.clear()
            self._read[raw] = entry
        return entry

    def read(self, data: bytes, known: tuple[bytes, State] | None = None) -> State | None:
        """The state of ``data``; None for another layout or anything the full parser must decide.

        ``known``: bytes of our layout and the state that is exactly their lines. That state is
        then changed in place into the new one (and left half-changed when None is returned:
        the caller must drop it).
        """
        head = split_head(data)
        if head is None:
            return None
        top, start = head
        end = max(start, len(data) - 4)  # the lines end before "\n}}\n"
        if known is not None:
            state = self._patch(known, data, start, end)
        elif (raws := _split(data[start:end], last=True)) is not None:
            state = self._build(raws)
        else:
            return None
        if state is not None:
            state.next, state.cursors, state.extra = top.next, top.cursors, top.extra
            state.dirty = False
        return state

    def _build(self, raws: list[bytes]) -> State | None:
        entries: dict[int, Entry] = {}
        for raw in raws:
            if (entry := self.entry(raw)) is None or entry.base in entries:
                return None
            entries[entry.base] = entry
        return State(0, entries, {})

    def _patch(self, known: tuple[bytes, State], data: bytes, start: int, end: int) -> State | None:
        """Apply to the known state the lines where ``data`` differs from the known bytes."""
        old, state = known
        old_start = old.find(b"\n") + 1  # the known bytes are of our layout: its head is one line
        old_end = max(old_start, len(old) - 4)
        n = min(old_end - old_start, end - start)
        # The difference, widened to whole lines: back to the start of the line it begins in,
        # on to the start of a line where it ends. Every newline of the known bytes ends a line,
        # and one in the shared part is in both versions.
        same_start = _shared_start(old, old_start, data, start, n)
        if same_start == n and b",\n" in (old[old_start + n : old_start + n + 2], data[start + n : start + n + 2]):
            same_start += 2  # every line of the shorter version is shared, and so is the comma after it
        else:
            same_start = (old.rfind(b"\n", old_start, old_start + same_start) + 1 or old_start) - old_start
        same_end = _shared_end(old, old_end, data, end, max(n - same_start, 0))
        # (The byte before the lines is the head's newline.)
        if old[old_end - same_end - 1] != 10 or data[end - same_end - 1] != 10:  # not both at a line start
            same_end = old_end - (old.find(b"\n", old_end - same_end, old_end) + 1 or old_end)
        gone = _split(old[old_start + same_start : old_end - same_end], last=same_end == 0)
        came = _split(data[start + same_start : end - same_end], last=same_end == 0)
        assert gone is not None, "the known bytes are of our layout"
        if came is None:
            return None
        for raw in gone:
            # The base the line was read as, never one read back from its text: JSON allows a
            # key written with escapes ("\u0032...") or spaces around it.
            if (entry := self.entry(raw)) is None:
                return None
            state.remove(entry.base)
        for raw in came:
            if (entry := self.entry(raw)) is None or state.conflict(entry.base, entry.end) is not None:
                return None  # overlapping ranges (or two lines for one base): the full parser decides
            state.add(entry)
        return state
