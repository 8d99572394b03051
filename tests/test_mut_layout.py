"""The incremental reader's own paths: each ordinary edit is patched line by line (never left to
the full parser, which would read the same state but pay for every line), a line read once is
read from the cache, and a line of two ranges is never half applied."""

from __future__ import annotations

import pytest

from pytest_portlease import _layout
from pytest_portlease._layout import Lines
from pytest_portlease._parse import parse_tolerant
from pytest_portlease._state import Entry, State

FAR = 4_000_000_000


def encoded(*bases: int) -> bytes:
    return State(0, {b: Entry(b, 2, FAR + b) for b in bases}, {}).encode()


def ranges(state: State) -> list[tuple[int, int, int]]:
    return sorted((e.base, e.size, e.expires) for e in state.entries.values())


EDITS = {
    "append one": ((100, 200), (100, 200, 300)),
    "append two": ((100,), (100, 200, 300)),
    "drop the last": ((100, 200, 300), (100, 200)),
    "drop two at the end": ((100, 200, 300), (100,)),
    "change the middle": ((100, 200, 300), (100, 250, 300)),
    "prepend one": ((200, 300), (100, 200, 300)),
    "drop the first": ((100, 200, 300), (200, 300)),
    "the same": ((100, 200), (100, 200)),
    "from none": ((), (100, 200)),
    "to none": ((100, 200), ()),
    "one for another": ((100,), (200,)),
}


@pytest.mark.parametrize(("before", "after"), EDITS.values(), ids=EDITS.keys())
def test_each_ordinary_edit_is_patched_to_what_the_full_parser_reads(
    before: tuple[int, ...], after: tuple[int, ...]
) -> None:
    lines = Lines()
    old = encoded(*before)
    known = lines.read(old)
    assert known is not None and ranges(known) == [(b, 2, FAR + b) for b in before]
    new = encoded(*after)
    patched = lines.read(new, (old, known))
    assert patched is not None, "left to the full parser"
    assert ranges(patched) == ranges(parse_tolerant(new).state) == [(b, 2, FAR + b) for b in after]


def test_a_line_read_once_is_taken_from_the_cache() -> None:
    lines = Lines()
    raw = encoded(100).split(b"\n")[1]
    first = lines.entry(raw)
    assert first is not None and (first.base, first.size) == (100, 2)
    assert lines.entry(raw) is first
    assert lines.entry(b'"5": nonsense') is None


def test_the_cache_never_holds_more_than_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_layout, "CACHE_MAX", 3)
    lines = Lines()
    raws = encoded(100, 200, 300, 400).split(b"\n")[1:5]
    for raw in raws:
        assert lines.entry(raw.rstrip(b",")) is not None
        assert len(lines._read) <= 3  # a long run sees ever new lines: the cache starts over
    assert len(lines._read) == 1


def test_a_line_of_two_ranges_is_never_half_applied() -> None:
    # Another writer's head and one of our lines, behind a range of its own on the same line: valid
    # JSON, three ranges. The line's tail is our old line whole, so the common end starts at a line
    # start in the old bytes only.
    lines = Lines()
    old = encoded(100, 200)
    known = lines.read(old)
    assert known is not None
    head, first, second, tail = old.split(b"\n", 3)
    new = b"\n".join([head, first, b'"150": {"size": 1, "expires": 7}, ' + second, tail])
    full = parse_tolerant(new).state
    assert ranges(full) == [(100, 2, FAR + 100), (150, 1, 7), (200, 2, FAR + 200)]
    patched = lines.read(new, (old, known))
    assert patched is None or ranges(patched) == ranges(full)
