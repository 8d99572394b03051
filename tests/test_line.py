"""A range's line of our layout: written without a JSON encoder, read without a JSON parser,
wherever that gives the bytes and the range the JSON way gives.

``Entry.line`` writes the usual range (an owner with a pid, strings that need no escape, nothing
else) by hand, and ``parse_line`` reads a line of exactly that form with one regular expression,
keeping its bytes as the range's line. Both are shortcuts, never another format: over any range,
the hand-written line is ``json_line``'s bytes, and reading it gives back the same range.
"""

from __future__ import annotations

import math
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_portlease._owner import Owner
from pytest_portlease._parse import _json_line, parse_line
from pytest_portlease._state import U64_MAX, Entry

# Any text, with the printable ASCII that needs no escape (the hand-written form) drawn most.
printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1)
texts = st.one_of(printable, printable, printable, st.text())
owners = st.builds(
    Owner,
    pid=st.one_of(st.integers(1, 2**31), st.integers(1, 9), st.none()),
    start=st.one_of(st.integers(0, 2**63), st.integers(0, 9), st.none()),
    host=texts,
    ns=texts,
    label=texts,
    run=texts,
)
entries = st.builds(
    Entry,
    base=st.integers(0, 65535),
    size=st.integers(0, 65535),
    expires=st.one_of(st.integers(-5, U64_MAX + 5), st.floats(-1e3, 2e19)),
    owner=st.one_of(owners, owners, st.none()),
    extra=st.one_of(st.just(()), st.just(()), st.just((("x", [1]),))),
    co_owners=st.one_of(st.just(()), st.just(()), owners.filter(lambda o: o.pid is not None).map(lambda o: (o,))),
)


@settings(max_examples=400)
@given(entries)
def test_the_hand_written_line_is_the_json_line(entry: Entry) -> None:
    assert entry.line == entry.json_line()


@settings(max_examples=400)
@given(entries)
def test_a_line_reads_back_as_its_range_with_its_bytes_as_its_line(entry: Entry) -> None:
    written = entry.json_line()
    read = parse_line(written)
    assert read == replace(entry, expires=min(max(math.ceil(entry.expires), 0), U64_MAX))
    assert read.extra == entry.extra
    assert read.line == written
    assert (read.owner and read.owner.process) == (entry.owner and entry.owner.process)  # who holds it
    assert read == _json_line(written)  # the shortcut reads what the JSON parser reads


def test_the_usual_range_is_read_without_the_json_parser() -> None:
    owner = Owner(7, 8, "vm", "boot/ns", "gw0 t.py::t[a-1]", "run-1")
    line = Entry(20000, 3, 2_000_000_000, owner).json_line()
    read = parse_line(line)
    assert read is not None
    assert read.__dict__.get("line") == line  # the bytes kept as read: nothing to encode again
    assert _json_line(line) == read and "line" not in _json_line(line).__dict__
