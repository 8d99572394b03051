"""The incremental load reads exactly what the full parser reads.

``Store.load`` applies only the lines of our layout that changed since its last read; that is a
shortcut, never another reading. Over random sequences of edits to a state file (ranges added,
removed and changed, keys escaped, zero-padded or repeated, fields repeated, lines reordered,
whitespace moved, a torn tail, our own saves in between), each load must yield the state and the
warnings that ``parse_tolerant`` yields for the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_portlease import PortleaseWarning, _state
from pytest_portlease._layout import Lines
from pytest_portlease._owner import Owner
from pytest_portlease._parse import parse_tolerant, split_head
from pytest_portlease._state import Entry, State
from pytest_portlease._store import Store

FAR = 4_000_000_000
# Few bases, close together: edits collide, replace and overlap one another.
BASES = [0, 100, 101, 102, 104, 110, 20005, 65535]
COLONS = [": ", ":", " : ", ":\t"]
# Whitespace moved between tokens: the same range, written otherwise.
RESPACE = [(b"", b" "), (b'": ', b'" : '), (b", ", b" ,  "), (b": {", b": { "), (b"}", b" }")]


@st.composite
def range_lines(draw: st.DrawFn) -> bytes:
    digits = str(draw(st.sampled_from(BASES)))
    form = draw(st.sampled_from(["plain", "plain", "escaped", "zero", "space"]))
    if form == "escaped":  # valid JSON for the same key, as serde reads it too
        digits = "".join(f"\\u{ord(c):04x}" if draw(st.booleans()) else c for c in digits)
    key = {"zero": f'"0{digits}"', "space": f' "{digits}"'}.get(form, f'"{digits}"')
    fields = [
        ("size", str(draw(st.integers(0, 4)))),
        ("expires", draw(st.sampled_from(["0", "5.5", str(FAR), str(FAR + 1)]))),
    ]
    if draw(st.booleans()):
        pid = draw(st.sampled_from(["1", "2", '"x"']))  # "x": a malformed owner
        fields.append(("owner", f'{{"pid": {pid}, "start": 1, "host": "h"}}'))
    if draw(st.booleans()):  # our field of merged copies; "[1]": malformed
        fields.append(("co_owners", draw(st.sampled_from(['[{"pid": 3, "start": 1, "host": "h"}]', "[1]"]))))
    if draw(st.booleans()):
        fields.append(("x", "[1]"))
    if draw(st.booleans()):  # a field given twice
        fields.append(draw(st.sampled_from(fields[:2])))
        fields.append(("size", str(draw(st.integers(0, 4)))))
    value = ", ".join(
        f'"{name}"{draw(st.sampled_from(COLONS))}{text}' for name, text in draw(st.permutations(fields))
    )
    return f"{key}: {{{value}}}".encode()


# Strings as a writer may leave them: plain (first, most often), then escaped as json.dumps
# escapes, raw UTF-8.
PLAIN = [b"h", b"", b"gw0 t.py::t[a-1]", b"ns/1"]
ESCAPED = [b'q\\"x', b"\\u00e9", "é".encode(), b"a\\\\b"]


@st.composite
def owned_lines(draw: st.DrawFn) -> bytes:
    """Lines in ``Entry.line``'s own form (which is read without a JSON parser), and near it:
    numbers at and past their bounds, a pid of 0, an empty run, escaped and non-ASCII strings."""

    def pick(usual: list[bytes], rare: list[bytes]) -> bytes:
        return draw(st.sampled_from(usual if draw(st.integers(0, 3)) else rare))

    base = pick([b"100", b"101", b"65535"], [b"65536", b"0100"])
    size = pick([b"1", b"3", b"65535"], [b"0", b"65536", b"01"])
    expires = pick([b"%d" % FAR, b"0", b"%d" % (2**64 - 1)], [b"%d" % 2**64, b"1.5"])
    line = b'"%s": {"size": %s, "expires": %s' % (base, size, expires)
    if draw(st.integers(0, 3)):
        pid = pick([b"1", b"2", b"99999999"], [b"0"])
        host, ns, label = (pick(PLAIN, ESCAPED) for _ in range(3))
        line += b', "owner": {"pid": %s, "start": 1, "host": "%s", "ns": "%s", "label": "%s"' % (pid, host, ns, label)
        run = draw(st.sampled_from([None, b"r", b""]))
        line += b"}" if run is None else b', "run": "%s"}' % run
    return line + b"}"


def any_lines() -> st.SearchStrategy[bytes]:
    return st.one_of(range_lines(), owned_lines())


def render(next_port: int, lines: list[bytes]) -> bytes:
    head = b'{"next": %d, "keys": {' % next_port
    return b"\n".join([head, b",\n".join(lines), b"}}\n"] if lines else [head, b"}}\n"])


def summary(state: State) -> dict[str, Any]:
    # Our save writes ``expires`` rounded up to a whole second (Entry.line) and keeps the value
    # it was given in memory: ranges are compared to the whole second.
    return {
        "entries": {
            base: (replace(entry, expires=math.ceil(entry.expires)), entry.extra)
            for base, entry in state.entries.items()
        },
        "next": state.next,
        "cursors": state.cursors,
        "extra": state.extra,
        "processes": dict(state.processes),
    }


def check_load(store: Store, data: bytes, unchanged: bool) -> None:
    store.state_path.write_bytes(data)
    _state._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = store.load(repair=False)
    full = parse_tolerant(data)
    assert summary(state) == summary(full.state), data
    assert state.bases == sorted(state.entries)
    # A flag that picks the slow overlap check: set without an overlap it only costs time.
    assert state.overlapping or not full.state.overlapping, data
    assert state.soonest <= full.state.soonest  # a bound no range expires before
    if not unchanged:  # unchanged bytes are the cached state: its warnings were given already
        got = {str(w.message) for w in caught if issubclass(w.category, PortleaseWarning)}
        assert got == {f"{store.state_path}: {problem}" for problem in full.problems}, data


EDITS = ["add", "add", "remove", "change", "swap", "respace", "repeat", "join", "torn", "uncomma", "save", "next"]


@settings(
    deadline=None,
    max_examples=int(os.environ.get("PORTLEASE_HYPOTHESIS_EXAMPLES", "200")),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(any_lines(), max_size=5), st.data())
def test_each_incremental_load_reads_what_a_full_parse_reads(lines: list[bytes], data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = Store(Path(directory), "argument")
        store.prepare()
        next_port, last = 0, b""
        for _ in range(data.draw(st.integers(1, 12), label="edits")):
            edit = data.draw(st.sampled_from(EDITS), label="edit")
            at = data.draw(st.integers(0, max(len(lines) - 1, 0)), label="at")
            if edit == "add":
                lines.insert(at, data.draw(any_lines()))
            elif edit == "next":
                next_port = data.draw(st.sampled_from([0, 100, 30000]))
            elif edit == "save":
                store.save(store.load(repair=False))
                saved = store.state_path.read_bytes()
                head = split_head(saved)
                assert head is not None, saved
                next_port, body = head[0].next, saved[head[1] : -4]
                lines = body.split(b",\n") if body else []
                check_load(store, saved, unchanged=True)
                last = saved
                continue
            elif lines and edit == "remove":
                del lines[at]
            elif lines and edit == "change":
                lines[at] = data.draw(any_lines())
            elif lines and edit == "swap":
                other = data.draw(st.integers(0, len(lines) - 1))
                lines[at], lines[other] = lines[other], lines[at]
            elif lines and edit == "respace":
                old, new = data.draw(st.sampled_from(RESPACE))
                lines[at] = new + lines[at] if not old else lines[at].replace(old, new, 1)
            elif lines and edit == "repeat":
                lines.insert(at, lines[at])
            elif len(lines) > at + 1 and edit == "join":  # two ranges on one line: valid JSON
                lines[at : at + 2] = [lines[at] + b", " + lines[at + 1]]
            text = render(next_port, lines)
            if edit == "torn":  # this read only: a foreign writer caught mid-write
                text = text[: data.draw(st.integers(0, len(text) - 1))]
            elif edit == "uncomma" and b",\n" in text:  # this read only: a line without its comma
                cut = data.draw(st.sampled_from([i for i in range(len(text)) if text.startswith(b",\n", i)]))
                text = text[:cut] + text[cut + 1 :]
            check_load(store, text, unchanged=text == last)
            last = text



def test_a_key_spaced_from_its_line_start_and_a_field_repeated_after_a_space(tmp_path: Path) -> None:
    # What the property found: the base read back from the raw line (' "200"' has none), and a
    # repeat hidden from the count of '":' by a space before its colon.
    store = Store(tmp_path, "argument")
    store.prepare()
    live = b'"100": {"size": 4, "expires": %d}' % FAR
    check_load(store, render(0, [b' "200": {"size": 1, "expires": 0}', live]), unchanged=False)
    check_load(store, render(0, [live]), unchanged=False)
    check_load(store, render(0, [live.replace(b"4,", b'4, "size" : 1,')]), unchanged=False)
    assert store.load().entries[100].size == 4


@st.composite
def sound_line(draw: st.DrawFn, base: int) -> bytes:
    label = draw(st.sampled_from(["", "a", "gw0 t.py::t[x]", "y" * 40]))
    owner = {"pid": draw(st.integers(1, 3)), "start": 1, "host": "h", "ns": "n", "label": label}
    expires = draw(st.sampled_from([FAR, FAR + 7, 0]))
    size = draw(st.sampled_from([1, 2, 3, 12]))  # 12: over the next ranges
    text = f'"{base}": {{"size": {size}, "expires": {expires}, "owner": {json.dumps(owner)}}}'
    return text.encode()


@settings(
    deadline=None,
    max_examples=int(os.environ.get("PORTLEASE_HYPOTHESIS_EXAMPLES", "200")),
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.data())
def test_changes_to_sound_lines_anywhere_are_applied_as_a_full_parse_reads_them(data: st.DataObject) -> None:
    # Every line sound and every base apart: each load after the first applies only the lines
    # between the shared start and end of the two versions, wherever the edits fall, one or
    # several at once (the first and the last line changed: everything between is re-read).
    bases = data.draw(st.lists(st.sampled_from(range(0, 400, 10)), unique=True, max_size=12), label="bases")
    lines = {base: data.draw(sound_line(base)) for base in bases}
    with tempfile.TemporaryDirectory() as directory:
        store = Store(Path(directory), "argument")
        store.prepare()
        last = render(0, [lines[b] for b in sorted(lines)])
        check_load(store, last, unchanged=False)
        for _ in range(data.draw(st.integers(1, 8), label="loads")):
            for _ in range(data.draw(st.integers(1, 3), label="edits")):
                base = data.draw(st.sampled_from(range(0, 400, 10)), label="base")
                if base in lines and data.draw(st.booleans(), label="remove"):
                    del lines[base]
                else:
                    lines[base] = data.draw(sound_line(base))
            if data.draw(st.booleans(), label="save"):
                store.save(store.load(repair=False))
                last = store.state_path.read_bytes()
                continue
            next_port = data.draw(st.sampled_from([0, 5, 30000]), label="next")
            text = [lines[b] for b in sorted(lines)]
            if text and data.draw(st.integers(0, 5), label="repeat") == 0:  # a base on two lines
                text.insert(data.draw(st.integers(0, len(text))), data.draw(st.sampled_from(text)))
            check_load(store, render(next_port, text), unchanged=render(next_port, text) == last)
            last = render(next_port, text)


class Counting(Lines):
    """Lines that records which range lines it was asked to read."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[bytes] = []

    def entry(self, raw: bytes) -> Entry | None:
        self.asked.append(raw)
        return super().entry(raw)


def line_of(base: int, version: int) -> bytes:
    owner = Owner(7, 1, "h", "n", f"gw{version} t.py::test_{base}_{'v' * version}")
    return Entry(base, 2, FAR, owner).line


@given(st.integers(2, 90), st.data())  # up to 90 lines: several of the chunks compared at a time
def test_a_change_reads_only_the_lines_it_touched(count: int, data: st.DataObject) -> None:
    # The incremental read is worth its code only if it skips the lines that did not change:
    # one line changed, added or removed anywhere (the first, the last, one between) is the
    # only line read, and the ranges read are the new lines'.
    old = [line_of(10 * i, 0) for i in range(count)]
    at = data.draw(st.integers(0, count - 1), label="at")
    edit = data.draw(st.sampled_from(["change", "add", "remove"]), label="edit")
    new = list(old)
    if edit == "change":
        new[at], touched = line_of(10 * at, 1), [old[at], line_of(10 * at, 1)]
    elif edit == "add":
        new.insert(at, line_of(10 * at + 5, 1))
        touched = [new[at]]
    else:
        touched = [new.pop(at)]
    reader = Counting()
    before = render(0, old)
    state = reader.read(before)
    assert state is not None
    reader.asked.clear()
    after = render(data.draw(st.sampled_from([0, 7, 30000]), label="next"), new)
    state = reader.read(after, (before, state))
    assert state is not None
    assert sorted(reader.asked) == sorted(touched)
    assert summary(state) == summary(parse_tolerant(after).state)
