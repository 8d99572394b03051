"""The state's index and layout, found by mutation testing of ``_state``: the overlap checks at
one port, the counters of owning processes, what a line says, the cursors' bound, warn-once."""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings

import pytest

from pytest_portlease import PortleaseWarning, _state
from pytest_portlease._owner import Owner, Process
from pytest_portlease._state import MAX_CURSORS, OURS, U64_MAX, Entry, State

FAR = 4_000_000_000
#: Under mutmut, a trampoline of its own (outside the package) sits between each of our functions
#: and its caller, so no warning can point at the test there: where it points is checked outside it.
UNDER_MUTMUT = "MUTANT_UNDER_TEST" in os.environ


def owner(pid: int | None, label: str = "") -> Owner:
    return Owner(pid, 7, "host", "ns", label)


def state(*entries: Entry, next_port: int = 0) -> State:
    return State(next_port, {e.base: e for e in entries}, {})


def line_value(entry: Entry) -> object:
    return json.loads(b"{" + entry.line + b"}")[str(entry.base)]


# -- Entry ----------------------------------------------------------------------------------------


def test_a_range_ends_at_its_last_port_and_size_zero_holds_its_base() -> None:
    assert Entry(100, 1, FAR).end == 100
    assert Entry(100, 3, FAR).end == 102
    assert Entry(100, 0, FAR).end == 100


def test_the_processes_that_hold_a_range() -> None:
    assert Entry(1, 1, FAR).process is None
    assert Entry(1, 1, FAR).processes == []
    assert Entry(1, 1, FAR, owner(None)).processes == []  # an owner without a pid: TTL only
    a, b = owner(11), owner(12)
    assert Entry(1, 1, FAR, a).process == Process(11, 7, "host", "ns")
    assert Entry(1, 1, FAR, a, co_owners=(b,)).processes == [a.process, b.process]
    assert Entry(1, 1, FAR, None, co_owners=(b, owner(None))).processes == [b.process]


def test_a_line_writes_every_field_and_clamps_expires_to_a_u64() -> None:
    assert line_value(Entry(100, 2, -5)) == {"size": 2, "expires": 0}
    assert line_value(Entry(100, 2, float(U64_MAX) * 4)) == {"size": 2, "expires": U64_MAX}
    assert line_value(Entry(100, 2, U64_MAX)) == {"size": 2, "expires": U64_MAX}
    assert line_value(Entry(100, 2, 0.1)) == {"size": 2, "expires": 1}
    a, b = owner(11, "mine"), owner(12)
    entry = Entry(100, 2, 10, a, (("note", "x"),), (b,))
    assert line_value(entry) == {
        "size": 2,
        "expires": 10,
        "note": "x",
        "owner": a.to_json(),
        "co_owners": [b.to_json()],
    }
    assert entry.line.startswith(b'"100": {"size": 2, "expires": 10, "note": "x", "owner": ')


def test_an_entry_read_with_its_line_is_the_entry_of_its_fields_with_that_line() -> None:
    a = owner(11, "mine")
    read = Entry.with_line(b"the line", 100, 2, 10, a)
    built = Entry(100, 2, 10, a)
    # Built without the dataclass's __init__: every field is there, as __init__ would set it.
    assert vars(read) == {**vars(built), "line": b"the line"}
    assert (read, hash(read)) == (built, hash(built))
    assert Entry.with_line(b"x", 100, 2, 10, None).owner is None


# -- State: the overlap index ---------------------------------------------------------------------


def test_overlap_at_one_shared_port_and_not_at_adjacent_ranges() -> None:
    assert not state(Entry(100, 5, FAR), Entry(105, 1, FAR)).overlapping
    assert state(Entry(100, 5, FAR), Entry(104, 1, FAR)).overlapping
    assert not state(Entry(100, 0, FAR), Entry(101, 1, FAR)).overlapping
    assert state(Entry(99, 2, FAR), Entry(100, 0, FAR)).overlapping
    assert not state(Entry(0, 1, FAR), Entry(1, 1, FAR)).overlapping
    assert state(Entry(0, 2, FAR), Entry(1, 1, FAR)).overlapping  # from port 0, at port 1
    # A long first range reaching past a short second one still overlaps the third.
    assert state(Entry(100, 10, FAR), Entry(101, 1, FAR)).overlapping
    assert state(Entry(100, 10, FAR), Entry(102, 1, FAR), Entry(109, 1, FAR)).overlapping
    assert not state().overlapping and not state(Entry(0, 0, FAR)).overlapping


def test_a_nested_range_does_not_shorten_the_reach_of_the_one_around_it() -> None:
    # 100-109 holds 101; 108 overlaps 100-109 only, not 101: the reach must stay at 109.
    s = state(Entry(100, 10, FAR), Entry(103, 1, FAR), Entry(108, 1, FAR))
    assert s._find_overlap() is not None
    s = state(Entry(100, 10, FAR), Entry(200, 1, FAR))
    assert s._find_overlap() is None


def test_conflict_below_every_range_and_above_every_range() -> None:
    s = state(Entry(100, 5, FAR))
    assert s.conflict(10, 20) is None  # no base <= high: nothing, not the last range
    assert s.conflict(10, 99) is None
    assert s.conflict(10, 100) is s.entries[100]
    assert s.conflict(104, 104) is s.entries[100]
    assert s.conflict(105, 65534) is None
    assert state().conflict(0, 65534) is None


def test_conflict_among_overlapping_ranges_is_the_one_reaching_furthest() -> None:
    s = state(Entry(100, 10, FAR), Entry(102, 1, FAR), Entry(300, 2, FAR))
    assert s.overlapping
    assert s.conflict(50, 99) is None
    assert s.conflict(102, 102) is s.entries[100]
    assert s.conflict(109, 109) is s.entries[100]
    assert s.conflict(110, 299) is None
    assert s.conflict(301, 400) is s.entries[300]
    assert s.conflict(302, 400) is None
    assert s.conflict(0, 65534) is s.entries[300]


def test_conflict_at_a_range_ending_at_65535() -> None:
    # Kept as written when read (fedimint's schema allows it), and never granted into.
    s = state(Entry(65530, 6, FAR))
    assert s.conflict(65535, 65535) is s.entries[65530]
    assert s.conflict(65529, 65529) is None


# -- State: add and remove keep the index, the owners and the soonest expiry ----------------------


def test_init_counts_owners_and_co_owners_and_the_soonest_expiry() -> None:
    a, b = owner(11), owner(12)
    s = state(Entry(100, 1, 50, a), Entry(200, 1, 40, a, co_owners=(b,)), Entry(300, 1, 60))
    assert s.processes == {a.process: 2, b.process: 1}
    assert s.soonest == 40
    assert state().soonest == float("inf")
    assert s.dirty is False and s.bases == [100, 200, 300]


def test_add_replaces_a_base_and_forgets_its_old_owners() -> None:
    a, b = owner(11), owner(12)
    s = state(Entry(100, 1, 50, a), Entry(200, 1, 60, a))
    s.add(Entry(100, 2, 70, b))
    assert s.bases == [100, 200] and s.entries[100].size == 2 and s.dirty
    assert s.processes == {a.process: 1, b.process: 1}
    assert s.soonest == 50  # a bound: no range expires before it
    s.add(Entry(150, 1, 30))
    assert s.bases == [100, 150, 200] and s.soonest == 30
    s.add(Entry(200, 1, 80, b))
    assert s.processes == {b.process: 2}


def test_remove_forgets_owners_and_reindexes_an_overlap() -> None:
    a, b = owner(11), owner(12)
    s = state(Entry(100, 10, FAR, a, co_owners=(b,)), Entry(105, 1, FAR, b), Entry(200, 1, FAR, a))
    assert s.overlapping
    assert s.remove(300) is None and not s.dirty
    assert s.remove(105) is not None
    assert s.dirty and not s.overlapping and s.bases == [100, 200]
    assert s.processes == {a.process: 2, b.process: 1}
    assert s.remove(100) is not None
    assert s.processes == {a.process: 1}
    assert s.remove(200) is not None and s.processes == {} and s.bases == []


def test_remove_of_one_overlap_among_two_keeps_the_state_overlapping() -> None:
    s = state(Entry(100, 10, FAR), Entry(102, 1, FAR), Entry(104, 1, FAR))
    s.remove(102)
    assert s.overlapping
    assert s.conflict(104, 104) is s.entries[100]


# -- cursors and the encoding ---------------------------------------------------------------------


def test_cursors_are_bounded_and_the_oldest_set_is_dropped() -> None:
    s = state()
    assert s.cursor("1-2") is None
    for i in range(MAX_CURSORS):
        s.set_cursor(f"{i}-{i}", i)
    assert len(s.cursors) == MAX_CURSORS and s.dirty is True
    s.set_cursor("0-0", 5)  # set again: now the newest
    s.set_cursor("new-new", 1)
    assert len(s.cursors) == MAX_CURSORS
    assert s.cursor("0-0") == 5 and s.cursor("1-1") is None and s.cursor("new-new") == 1
    assert list(s.cursors)[-2:] == ["0-0", "new-new"]


def test_encode_writes_the_cursors_in_our_field_and_nothing_when_there_are_none() -> None:
    s = State(3, {100: Entry(100, 1, 10)}, {"x": 1}, {"1-9": 4})
    doc = json.loads(s.encode())
    assert doc == {"next": 3, "x": 1, OURS: {"cursors": {"1-9": 4}}, "keys": {"100": {"size": 1, "expires": 10}}}
    assert OURS not in json.loads(State(3, {}, {}).encode())
    assert State(3, {}, {}).encode() == b'{"next": 3, "keys": {\n}}\n'
    assert s.encode([b'"7": {"size": 1, "expires": 1}']) == (
        b'{"next": 3, "x": 1, "portlease": {"cursors": {"1-9": 4}}, "keys": {\n"7": {"size": 1, "expires": 1}\n}}\n'
    )
    assert s.lines() == [Entry(100, 1, 10).line]


# -- warn once, and where the warning points ------------------------------------------------------


def test_warn_once_points_at_the_caller_outside_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_state, "_warned", set())
    with pytest.warns(PortleaseWarning, match="^problem: detail$") as caught:
        _state._warn_once("problem", ": detail")
    assert UNDER_MUTMUT or caught[0].filename == __file__
    with pytest.warns(PortleaseWarning, match="^no detail$") as caught:
        _state._warn_once("no detail")
    assert UNDER_MUTMUT or caught[0].filename == __file__


def test_a_background_thread_logs_instead_and_the_foreground_still_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_state, "_warned", set())

    def background() -> None:
        _state.log_warnings_in_this_thread()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _state._warn_once("from the heartbeat", ": once")
            _state._warn_once("from the heartbeat", ": twice")

    with caplog.at_level(logging.WARNING, logger="pytest_portlease"):
        thread = threading.Thread(target=background)
        thread.start()
        thread.join()
    assert [r.getMessage() for r in caplog.records] == ["from the heartbeat: once", "from the heartbeat: twice"]
    assert [r.name for r in caplog.records] == ["pytest_portlease", "pytest_portlease"]
    with pytest.warns(PortleaseWarning, match="from the heartbeat: now"):
        _state._warn_once("from the heartbeat", ": now")


def test_outside_package_counts_the_frames_inside_the_package() -> None:
    assert _state.outside_package() == 1  # called from here: this frame is already outside
