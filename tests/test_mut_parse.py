"""The tolerant parser's whole descriptions, found by mutation testing of ``_parse``: for each
kind of damage, what is kept, what is dropped, and the exact line a user reads about it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_portlease import PortleaseWarning, _state
from pytest_portlease._backups import BACKUP_PREFIX
from pytest_portlease._layout import Lines
from pytest_portlease._owner import Owner
from pytest_portlease._parse import (
    _keys_in,
    _short,
    has_duplicates,
    loads,
    merge,
    parse_line,
    parse_tolerant,
    port_key,
)
from pytest_portlease._state import STATE_NAME, U64_MAX, Entry, State
from pytest_portlease._store import Store

F = 4_000_000_000
OWNER = {"pid": 3, "host": "h", "ns": "n", "label": ""}


def doc(keys: object, **top: object) -> bytes:
    return json.dumps({"next": 0, "keys": keys, **top}).encode()


CASES: list[tuple[str, bytes, list[tuple[int, int, float]], list[str]]] = [
    ("top-level list", b"[1, 2]", [], ["the top level is list, not an object"]),
    ("keys a list", doc([1]), [], ["'keys' is list, not an object; no range could be read from it"]),
    (
        "two keys objects",
        b'{"next": 0, "keys": {"100": {"size": 1, "expires": 4000000000}}, "keys": {"200": {"size": 1, "expires": 5}}}',
        [(100, 1, F), (200, 1, 5)],
        ["the file has 2 'keys' objects; read as their union"],
    ),
    ("next too big", doc({}, next=65536), [], ["'next' 65536 is not a port number; reset"]),
    ("next a bool", doc({}, next=True), [], ["'next' True is not a port number; reset"]),
    ("next negative", doc({}, next=-1), [], ["'next' -1 is not a port number; reset"]),
    (
        "ours not an object",
        doc({}, portlease=5),
        [],
        ["'portlease' is not an object of cursors; the cursors start afresh"],
    ),
    (
        "cursors not an object",
        doc({}, portlease={"cursors": [1]}),
        [],
        ["'portlease' is not an object of cursors; the cursors start afresh"],
    ),
    (
        "bad cursors",
        doc({}, portlease={"cursors": {"1-9": 65536, "x": 3, "2-3": -1, "4-5": True, "6-7": 65535, "0-0": 0}}),
        [],
        ["4 cursor(s) are not a port of a range; dropped: '1-9', 'x', '2-3' and 1 more"],
    ),
    (
        "NaN at the top level",
        b'{"next": 0, "keys": {}, "x": NaN, "y": 1}',
        [],
        ["top-level fields that are not JSON (NaN, Infinity) removed"],
    ),
    (
        "NaN in a range",
        b'{"next": 0, "keys": {"100": {"size": 1, "expires": 4000000000, "z": NaN, "w": 2}}}',
        [(100, 1, F)],
        ["1 range(s) had fields that are not JSON (NaN, Infinity), removed (ranges kept): 100"],
    ),
    (
        "bad keys",
        doc({"65536": {"size": 1, "expires": F}, "abc": {"size": 1, "expires": F}, "-1": {}, "": {}}),
        [],
        ["dropped 4 ranges (the key is not a port number from 0 to 65535): 65536, 'abc', '-1' and 1 more"],
    ),
    ("not objects", doc({"100": 5, "200": [1]}), [], ["dropped 2 ranges (not an object): 100 (int), 200 (list)"]),
    (
        "bad sizes",
        doc(
            {
                "100": {"size": 65536, "expires": F},
                "200": {"size": -1, "expires": F},
                "300": {"size": True, "expires": F},
                "400": {"expires": F},
                "500": {"size": 1.0, "expires": F},
            }
        ),
        [],
        [
            "dropped 5 ranges (size is not a whole number of ports from 0 to 65535): 100 (size 65536), "
            "200 (size -1), 300 (size True) and 2 more"
        ],
    ),
    (
        "sizes at their bounds",
        doc({"0": {"size": 0, "expires": F}, "65535": {"size": 65535, "expires": F}}),
        [(0, 0, F), (65535, 65535, F)],
        [],
    ),
    (
        "bad expires",
        doc({"100": {"size": 1, "expires": "x"}, "200": {"size": 1}, "300": {"size": 1, "expires": True}}),
        [],
        [
            "dropped 3 ranges (expires is not a number of unix seconds): 100 (expires 'x'), "
            "200 (expires None), 300 (expires True)"
        ],
    ),
    (
        "infinite expires",
        b'{"next": 0, "keys": {"100": {"size": 1, "expires": Infinity}}}',
        [],
        ["dropped 1 range (expires is not a number of unix seconds): 100 (expires inf)"],
    ),
    (
        "expires past a u64",
        doc({"100": {"size": 1, "expires": U64_MAX + 1}}),
        [(100, 1, U64_MAX)],
        [f"1 range(s) expire past the largest u64; read as {U64_MAX}: 100"],
    ),
    ("expires at the largest u64", doc({"100": {"size": 1, "expires": U64_MAX}}), [(100, 1, U64_MAX)], []),
    ("expires a float", doc({"100": {"size": 1, "expires": 5.5}}), [(100, 1, 5.5)], []),
    (
        "malformed owner",
        doc({"100": {"size": 1, "expires": F, "owner": 5}}),
        [(100, 1, F)],
        ["1 range(s) kept without their malformed owner: range 100: malformed owner 5"],
    ),
    (
        "malformed co-owners",
        doc(
            {
                "100": {"size": 1, "expires": F, "co_owners": 5},
                "200": {"size": 1, "expires": F, "co_owners": [OWNER, 7]},
            }
        ),
        [(100, 1, F), (200, 1, F)],
        ["2 range(s) kept without their malformed co-owners: range 100, range 200"],
    ),
    (
        "a field given twice",
        b'{"next": 0, "keys": {"100": {"size": 1, "size": 3, "expires": 5, "expires": 4000000000}}}',
        [(100, 3, F)],
        ["2 range(s) give a field twice; read as the larger value: 100.size, 100.expires"],
    ),
    (
        "a key given twice",
        b'{"next": 0, "keys": {"100": {"size": 1, "expires": 4000000000}, "100": {"size": 3, "expires": 5}}}',
        [(100, 3, F)],
        ["1 port(s) have more than one range; read as their union: 100"],
    ),
    (
        "a zero-padded key",
        doc({"0100": {"size": 1, "expires": F}, "100": {"size": 2, "expires": 5}}),
        [(100, 2, F)],
        [
            "1 key(s) are not written as fedimint writes a port; read as that port: '0100'",
            "1 port(s) have more than one range; read as their union: 100",
        ],
    ),
    (
        "truncated, with a bad range in what was recovered",
        b'{"next": 5, "keys": {"100": {"size": 2, "expires": 4000000000}, "x": 1, "200": {"size": "a", "expires": 1},'
        b' "300": {"size": 1, "expires": 1}, "400": {"si',
        [(100, 2, F), (300, 1, 1)],
        [
            "not valid JSON (Unterminated string starting at: line 1 column 151 (char 150)); 2 ranges recovered, "
            "1 dropped (size is not a whole number of ports from 0 to 65535: 200 (size 'a'))"
        ],
    ),
    (
        "torn after the keys",
        b'{"keys": {"100": {"size": 1, "expires": 4000000000}}, "next": 77 ,,',
        [(100, 1, F)],
        [
            "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 67 (char 66)); "
            "1 range recovered, 0 dropped"
        ],
    ),
    (
        "truncated, with two kinds of bad range in what was recovered",
        b'{"next": 5, "keys": {"100": {"size": "a", "expires": 1}, "200": {"size": 1, "expires": "b"}, "300": {"si',
        [],
        [
            "not valid JSON (Unterminated string starting at: line 1 column 102 (char 101)); 0 ranges recovered, "
            "2 dropped (size is not a whole number of ports from 0 to 65535: 100 (size 'a'); "
            "expires is not a number of unix seconds: 200 (expires 'b'))"
        ],
    ),
    (
        "a six-digit key, and a key of four",
        doc({"123456": {}, "0123": {"size": "x"}}),
        [],
        [
            "dropped 1 range (the key is not a port number from 0 to 65535): '123456'",
            "dropped 1 range (size is not a whole number of ports from 0 to 65535): 0123 (size 'x')",
        ],
    ),
    (
        "truncated inside deep nesting, with a field given twice in what was recovered",
        b'{"next": 1, "keys": {"100": {"size": 1, "expires": 4000000000, "expires": 5}, "200": {"x": ' + b"[" * 100_000,
        [(100, 1, F)],
        [
            "not valid JSON (maximum recursion depth exceeded while decoding a JSON array from a unicode "
            "string); 1 range recovered, 0 dropped",
            "1 range(s) give a field twice; read as the larger value: 100.expires",
        ],
    ),
    (
        "not text",
        b"\xff\xfe",
        [],
        ["not valid JSON (Expecting value: line 1 column 1 (char 0)); 0 ranges recovered, 0 dropped"],
    ),
]


@pytest.mark.parametrize(("data", "ranges", "problems"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_what_a_damaged_file_keeps_and_says(
    data: bytes, ranges: list[tuple[int, int, float]], problems: list[str]
) -> None:
    loaded = parse_tolerant(data)
    assert sorted((b, e.size, e.expires) for b, e in loaded.state.entries.items()) == ranges
    assert loaded.problems == problems
    assert loaded.lossy is bool(problems)
    assert loaded.size == len(data)


def test_the_head_of_a_damaged_file_keeps_what_is_sound() -> None:
    loaded = parse_tolerant(doc({}, next=65535, portlease={"cursors": {"6-7": 65535, "0-0": 0, "x": 1}}, y=[1]))
    assert (loaded.state.next, loaded.state.cursors, loaded.state.extra) == (
        65535,
        {"6-7": 65535, "0-0": 0},
        {"y": [1]},
    )
    loaded = parse_tolerant(b'{"next": 0, "keys": {}, "x": NaN, "y": 1}')
    assert loaded.state.extra == {"y": 1}
    loaded = parse_tolerant(b'{"next": 0, "keys": {"1": {"size": 1, "expires": 2, "z": NaN, "w": 2}}}')
    assert loaded.state.entries[1].extra == (("w", 2),)
    for bad in (65536, -1, True, "1"):
        assert parse_tolerant(doc({}, next=bad)).state.next == 0  # reset to serde's default
    assert parse_tolerant(b'{"keys": {}}').state.next == 0  # serde's default, no problem
    assert parse_tolerant(b'{"keys": {}}').problems == []
    assert parse_tolerant(b'{"next": 9}').state.entries == {}
    truncated = parse_tolerant(b'{"next": 12345, "keys": {"100": {"size": 1')
    assert truncated.state.next == 12345


def test_empty_bytes_are_an_empty_state_without_a_problem() -> None:
    for data in (b"", b"  \n"):
        loaded = parse_tolerant(data)
        assert (loaded.state.entries, loaded.problems, loaded.lossy, loaded.state.next) == ({}, [], False, 0)


def test_owners_and_co_owners_are_read() -> None:
    other = {"pid": 4, "host": "h", "ns": "n", "label": "b"}
    loaded = parse_tolerant(doc({"100": {"size": 1, "expires": F, "owner": OWNER, "co_owners": [other, other]}}))
    entry = loaded.state.entries[100]
    assert entry.owner == Owner(3, None, "h", "n", "")
    assert entry.co_owners == (Owner(4, None, "h", "n", "b"),)  # a repeated co-owner once
    no_pid = {"host": "h", "ns": "n", "label": "c"}
    assert (
        parse_tolerant(doc({"100": {"size": 1, "expires": F, "co_owners": [no_pid]}})).state.entries[100].co_owners
        == ()
    )
    assert loaded.problems == []


def test_many_problems_of_one_kind_are_one_line_with_three_examples() -> None:
    loaded = parse_tolerant(doc({f"x{i}": {} for i in range(5)}))
    assert loaded.problems == [
        "dropped 5 ranges (the key is not a port number from 0 to 65535): 'x0', 'x1', 'x2' and 2 more"
    ]
    loaded = parse_tolerant(doc({f"x{i}": {} for i in range(3)}))
    assert loaded.problems == ["dropped 3 ranges (the key is not a port number from 0 to 65535): 'x0', 'x1', 'x2'"]


def test_short_names_a_value_in_forty_characters() -> None:
    assert _short("a" * 38) == repr("a" * 38)  # 40 with its quotes
    assert _short("a" * 39) == repr("a" * 38)[:39] + "…"
    assert len(_short("a" * 50)) == 40
    assert _short(10**5000) == "<int>"
    assert _short("x", limit=3) == "'x'"
    assert _short("xy", limit=3) == "'x…"


def test_port_keys() -> None:
    assert [port_key(k) for k in ("0", "1", "65535", "00065535", "000")] == [0, 1, 65535, 65535, 0]
    assert [port_key(k) for k in ("65536", "100000", "-1", "1.0", " 1", "", "١٢", 1)] == [None] * 8
    assert port_key("0" * 5000 + "7") == 7
    assert port_key("9" * 5000) is None


def test_duplicates_are_seen_at_any_depth() -> None:
    assert not has_duplicates(loads(b'{"a": [{"b": 1}], "c": {"d": 2}}'))
    assert has_duplicates(loads(b'{"a": 1, "a": 2}'))
    assert has_duplicates(loads(b'{"a": {"b": 1, "b": 2}}'))
    assert has_duplicates(loads(b'{"a": [1, {"b": 1, "b": 2}]}'))
    assert not has_duplicates(loads(b"[1, [2]]"))
    assert _keys_in(loads(b'{"a": [{"b": 1}, {"c": 1, "d": 2}], "e": {"f": 2}}')) == 6
    assert _keys_in(loads(b"[1, 2]")) == 0


def test_merge_keeps_the_larger_size_the_later_expiry_and_every_owner() -> None:
    a, b = Owner(1, 1, "h", "n", "a"), Owner(2, 2, "h", "n", "b")
    c = Owner(3, 3, "h", "n", "c")
    one = Entry(100, 5, 50, a, (("x", 1),))
    two = Entry(100, 2, 90, b, (("x", 2),), (c,))
    merged = merge(one, two)
    assert (merged.base, merged.size, merged.expires, merged.owner) == (100, 5, 90, None)
    assert merged.extra == (("x", 2),)  # the later copy's fields
    assert merged.co_owners == (a, b, c)
    same = merge(Entry(100, 1, 90, a), Entry(100, 3, 90, a, co_owners=(b,)))
    assert (same.size, same.owner, same.co_owners) == (3, a, (b,))
    assert merge(Entry(100, 1, 90, None, (("k", "first"),)), Entry(100, 1, 90, None, (("k", "second"),))).extra == (
        ("k", "first"),
    )  # equal expiry: the first copy
    no_pid = Owner(None, None, "h", "n", "cli")
    assert merge(Entry(100, 1, 5, no_pid), Entry(100, 1, 5, b)).co_owners == (b,)


# -- our layout, line by line ---------------------------------------------------------------------


def test_our_layout_reads_as_its_head_and_lines() -> None:
    data = State(3, {100: Entry(100, 1, 10), 200: Entry(200, 2, 20)}, {"y": 1}, {"1-9": 4}).encode()
    state = Lines().read(data)
    assert state is not None
    assert (state.next, state.cursors, state.extra) == (3, {"1-9": 4}, {"y": 1})
    assert state.entries == {100: Entry(100, 1, 10), 200: Entry(200, 2, 20)}
    empty = Lines().read(State(3, {}, {}).encode())
    assert empty is not None and empty.entries == {} and empty.next == 3
    one = Lines().read(State(3, {100: Entry(100, 1, 10)}, {}).encode())
    assert one is not None and one.entries == {100: Entry(100, 1, 10)}


@pytest.mark.parametrize(
    "data",
    [
        b'{"next": 3, "keys": {}}\n',  # one line: not our layout
        b'{"next": 3, "keys": {\n"100": {"size": 1, "expires": 10}\n}}',  # no final newline
        b'{"next": 3, "keys": [\n"100": {"size": 1, "expires": 10}\n}}\n',
        b'{"next": 3, "next": 4, "keys": {\n}}\n',  # a repeated head field
        b'{"next": 70000, "keys": {\n}}\n',  # a head with a problem
        b'{"next": 3 x, "keys": {\n}}\n',  # a head that is not JSON
        b'[1, "keys": {\n}}\n',
        b'{"next": 3, "keys": {\n"100": {"size": 1, "expires": 10}\n"200": {"size": 1, "expires": 10}\n}}\n',
    ],
)
def test_anything_else_is_left_to_the_full_parser(data: bytes) -> None:
    assert Lines().read(data) is None


@pytest.mark.parametrize(
    "raw",
    [
        b'"100": {"size": 1, "size": 2, "expires": 10}',
        b'"0100": {"size": 1, "expires": 10}',
        b'"100": 5',
        b'"100": {"size": 1, "expires": 10}, "200": {"size": 1, "expires": 10}',
        b'"100": {"size": 1, "expires": 10, "owner": 5}',
        b'"x": {"size": 1, "expires": 10}',
        b'"100": {"size": 1, "expires": 10',
        b"nonsense",
        b"",
    ],
)
def test_a_line_with_any_problem_is_left_to_the_full_parser(raw: bytes) -> None:
    assert parse_line(raw) is None


def test_a_sound_line_is_one_range() -> None:
    assert parse_line(b'"100": {"size": 1, "expires": 10}') == Entry(100, 1, 10)
    entry = parse_line(b'"100": {"size": 1, "expires": 10, "note": "a\\":"}')
    assert entry is not None and entry.extra == (("note", 'a":'),)
    # A string holding '":' makes the quick count disagree; the full look finds no repeat.
    entry = parse_line(b'"100": {"size": 1, "expires": 10, "a\\":": {"b\\":": 1}}')
    assert entry is not None and entry.extra == (('a":', {'b":': 1}),)
    assert parse_line(b'"100": {"size": 1, "expires": 10, "x": {"y": 1, "y": 2}}') is None


# -- through the store: what a reader of a real file gets -----------------------------------------


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setattr(_state, "_warned", set())
    store = Store(tmp_path, "argument")
    store.prepare()
    return store


def test_a_bad_next_alone_warns_and_keeps_a_backup(store: Store, tmp_path: Path) -> None:
    data = b'{"next": 70000, "keys": {\n"100": {"size": 1, "expires": 4000000000}\n}}\n'
    (tmp_path / STATE_NAME).write_bytes(data)
    with pytest.warns(PortleaseWarning, match=r"'next' 70000 is not a port number; reset; the original is kept as"):
        state = store.load()
    assert state.next == 0 and sorted(state.entries) == [100]
    assert [p.read_bytes() for p in tmp_path.glob(f"{BACKUP_PREFIX}*")] == [data]


def test_a_torn_line_in_our_layout_is_read_by_the_full_parser(store: Store, tmp_path: Path) -> None:
    good = State(0, {100: Entry(100, 1, F), 200: Entry(200, 2, F), 300: Entry(300, 1, F)}, {}).encode()
    (tmp_path / STATE_NAME).write_bytes(good)
    assert sorted(store.load().entries) == [100, 200, 300]  # read line by line, and remembered
    torn = good.replace(b'"200": {"size": 2, "expires": 4000000000}', b'"200": {"size": 2, "exp')
    (tmp_path / STATE_NAME).write_bytes(torn)
    with pytest.warns(PortleaseWarning, match="not valid JSON"):
        state = store.load()
    assert sorted(state.entries) == [100, 300]
    assert len(list(tmp_path.glob(f"{BACKUP_PREFIX}*"))) == 1
