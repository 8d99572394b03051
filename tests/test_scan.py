"""Where blocks come from: a random start for a fresh range, one cursor per range, and
fedimint-portalloc's ``next`` moved only inside its window 10000-32000; the scan's edges and the
block it hands out (found by mutation testing of ``_scan`` and ``_block``)."""

from __future__ import annotations

import json
import logging
import random
import socket
from pathlib import Path

import pytest
from conftest import free_window

from pytest_portlease import PortBlock, PortLeaser, _probe, _scan
from pytest_portlease._block import LeaseStats
from pytest_portlease._config import PortRange
from pytest_portlease._state import MAX_CURSORS, STATE_NAME, Entry, State


def doc(lease_dir: Path) -> dict[str, object]:
    data = json.loads((lease_dir / STATE_NAME).read_text())
    assert isinstance(data, dict)
    return data


def test_fresh_directories_start_at_random_points(tmp_path: Path) -> None:
    # Separate registries on one host must not hand out the same ports in the same order. The
    # `random` module's state plays no part: a suite seeds it (pytest-randomly, one seed for
    # every worker), so it is seeded alike before every fresh directory here.
    window = free_window(200)
    firsts = []
    for i in range(8):
        random.seed(1234)
        with PortLeaser(tmp_path / f"registry-{i}", port_range=window) as leaser:
            firsts.append(leaser.lease(1).base)
    # All eight equal by chance: probability 200**-7.
    assert len(set(firsts)) > 1, firsts
    assert all(window.low <= b <= window.high for b in firsts)


def test_a_cursor_outside_its_range_starts_at_a_random_point(tmp_path: Path) -> None:
    window = free_window(200)
    firsts = []
    for i in range(8):
        directory = tmp_path / f"registry-{i}"
        directory.mkdir()
        # fedimint's fresh `next` (0), and a cursor of ours that lies outside the range.
        state = {"next": 0, "portlease": {"cursors": {str(window): window.high + 5}}, "keys": {}}
        (directory / STATE_NAME).write_text(json.dumps(state))
        with PortLeaser(directory, port_range=window) as leaser:
            firsts.append(leaser.lease(1).base)
    assert len(set(firsts)) > 1, firsts


@pytest.mark.usefixtures("low_start")
def test_leasing_outside_fedimints_window_never_moves_next(lease_dir: Path) -> None:
    lease_dir.mkdir()
    (lease_dir / STATE_NAME).write_text(json.dumps({"next": 10015, "keys": {}}))
    low = next(p for p in range(5000, 9960, 40) if _probe.first_busy(range(p, p + 40)) is None)
    with PortLeaser(lease_dir, port_range=(low, low + 39)) as leaser:  # below fedimint's window
        for _ in range(10):
            leaser.lease(2)
            assert doc(lease_dir)["next"] == 10015
    inside = free_window(20)
    with PortLeaser(lease_dir, port_range=inside) as leaser:
        block = leaser.lease(2)
    assert doc(lease_dir)["next"] == block.base + 2  # inside the window: fedimint follows


@pytest.mark.usefixtures("low_start")
def test_a_pinned_range_has_its_own_cursor(lease_dir: Path) -> None:
    w = free_window(36)
    default, pinned, other = (PortRange(w.low + a, w.low + b) for a, b in ((0, 19), (20, 27), (28, 35)))
    with PortLeaser(lease_dir, port_range=default) as leaser:
        first = leaser.lease(1)
        pinned_bases = [leaser.lease(1, port_range=(pinned.low, pinned.high)).base]
        assert leaser.lease(1).base == first.base + 1  # the default range's cursor is unaffected
        pinned_bases += [leaser.lease(1, port_range=(pinned.low, pinned.high)).base for _ in range(3)]
        other_base = leaser.lease(1, port_range=(other.low, other.high)).base
        pinned_bases += [leaser.lease(1, port_range=(pinned.low, pinned.high)).base for _ in range(4)]
        assert leaser.lease(1).base == first.base + 2
    # Two pinned ranges keep their own cursors: each goes through its ports in order, and the
    # pinned one is never exhausted before its eight ports are used.
    assert pinned_bases == list(range(pinned.low, pinned.low + 8))
    assert other_base == other.low
    cursors = doc(lease_dir)["portlease"]
    assert isinstance(cursors, dict)
    assert set(cursors["cursors"]) == {str(default), str(pinned), str(other)}


@pytest.mark.usefixtures("low_start")
def test_fedimint_dropping_our_cursors_is_harmless(lease_dir: Path) -> None:
    window = free_window(20)
    with PortLeaser(lease_dir, port_range=window) as leaser:
        a = leaser.lease(1)
        data = doc(lease_dir)
        del data["portlease"]  # fedimint rewrites the file with only its own fields
        (lease_dir / STATE_NAME).write_text(json.dumps(data, indent=2))
        b = leaser.lease(1)  # `next` points into the range: next-fit goes on from it
    assert b.base == a.base + 1


def test_the_cursors_are_bounded(lease_dir: Path) -> None:
    window = free_window(200)
    with PortLeaser(lease_dir, port_range=window) as leaser:
        for i in range(MAX_CURSORS + 10):
            leaser.release(leaser.lease(1, port_range=(window.low + i, window.high)))
    cursors = doc(lease_dir)["portlease"]
    assert isinstance(cursors, dict) and len(cursors["cursors"]) == MAX_CURSORS
    assert f"{window.low + MAX_CURSORS + 9}-{window.high}" in cursors["cursors"]  # the newest kept


def test_ranges_are_checked_against_65535() -> None:
    from pytest_portlease import InvalidArgument

    with pytest.raises(InvalidArgument, match="port 65535 is never leased"):
        PortLeaser(port_range="65535-65535")
    assert PortLeaser(port_range="65000-65535").port_range == PortRange(65000, 65535)


# -- the scan's edges, found by mutation testing ------------------------------------------------

FAR = 4_000_000_000


class Recorded:
    """Stands in for the scan's random source: records each ``randrange`` and answers its low end."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def randrange(self, low: int, stop: int) -> int:
        self.calls.append((low, stop))
        return low


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorded:
    source = Recorded()
    monkeypatch.setattr(_scan, "_random", source)
    return source


def state(*entries: Entry, next_port: int = 0, cursors: dict[str, int] | None = None) -> State:
    return State(next_port, {e.base: e for e in entries}, {}, cursors)


def test_usable_ranges_never_include_65535() -> None:
    assert _scan.usable(PortRange(1, 65535)) == PortRange(1, 65534)
    assert _scan.usable(PortRange(5, 5)) == PortRange(5, 5)
    assert _scan.usable(PortRange(65000, 65534)) == PortRange(65000, 65534)


def test_the_cursor_is_ours_or_fedimints_next_inside_the_range() -> None:
    rng = PortRange(100, 199)
    assert _scan.cursor_of(state(next_port=150, cursors={"100-199": 120}), rng) == 120
    assert _scan.cursor_of(state(next_port=150), rng) == 150
    assert _scan.cursor_of(state(next_port=100), rng) == 100
    assert _scan.cursor_of(state(next_port=199), rng) == 199
    assert _scan.cursor_of(state(next_port=99), rng) is None
    assert _scan.cursor_of(state(next_port=200), rng) is None


def test_a_scan_starts_at_a_cursor_that_leaves_room_for_the_block(recorded: Recorded) -> None:
    rng = PortRange(100, 199)
    assert _scan.start(state(cursors={"100-199": 190}), rng, 10) == 190  # 190-199 fits
    assert recorded.calls == []
    assert _scan.start(state(cursors={"100-199": 100}), rng, 10) == 100
    assert _scan.start(state(cursors={"100-199": 191}), rng, 10) == 100  # no room: random
    assert _scan.start(state(cursors={"100-199": 99}), rng, 10) == 100
    assert recorded.calls == [(100, 191), (100, 191)]  # any base from 100 to 190


def test_a_random_start_never_reaches_65535(recorded: Recorded) -> None:
    assert _scan.start(state(), PortRange(65530, 65535), 5) == 65530
    assert recorded.calls == [(65530, 65531)]  # 65530-65534 is the only block
    assert _scan.start(state(cursors={"65530-65535": 65531}), PortRange(65530, 65535), 1) == 65531


def test_advance_moves_the_cursor_past_the_block_and_wraps_at_the_end() -> None:
    s = state()
    _scan.advance(s, PortRange(100, 199), 150, 10)
    assert s.cursors == {"100-199": 160} and s.dirty
    _scan.advance(s, PortRange(100, 199), 189, 10)
    assert s.cursors["100-199"] == 199
    _scan.advance(s, PortRange(100, 199), 190, 10)
    assert s.cursors["100-199"] == 100  # the block ended at the last port: start over
    _scan.advance(s, PortRange(65530, 65535), 65530, 5)
    assert s.cursors["65530-65535"] == 65530  # 65535 is not a base
    assert s.next == 0  # outside fedimint's window


def test_next_moves_only_for_a_block_inside_fedimints_window() -> None:
    s = state(next_port=5)
    _scan.advance(s, PortRange(9000, 40000), 9999, 2)  # starts below 10000
    assert s.next == 5
    _scan.advance(s, PortRange(9000, 40000), 31999, 3)  # ends at 32001
    assert s.next == 5
    _scan.advance(s, PortRange(9000, 40000), 10000, 2)
    assert s.next == 10002
    _scan.advance(s, PortRange(9000, 40000), 31999, 2)  # ends at 32000, the window's last port
    assert s.next == 32001


def test_first_in_finds_the_first_avoided_port_of_a_block() -> None:
    avoided = (10, 20, 30)
    assert _scan._first_in(avoided, 10, 10) == 10
    assert _scan._first_in(avoided, 11, 20) == 20
    assert _scan._first_in(avoided, 11, 19) is None
    assert _scan._first_in(avoided, 31, 40) is None
    assert _scan._first_in((), 0, 65535) is None


def test_next_fit_skips_leases_and_avoided_ports_and_wraps_once(recorded: Recorded) -> None:
    rng = free_window(20)
    low = rng.low
    s = state(Entry(low, 3, FAR), cursors={str(rng): low})
    assert _scan.next_fit(s, rng, 2) == low + 3
    assert _scan.next_fit(s, rng, 2, avoided=(low + 3, low + 4)) == low + 5
    assert _scan.next_fit(s, rng, 2, avoided=(low + 4,)) == low + 5
    # From a cursor near the end, the block does not fit: wrap to the start, once.
    s = state(Entry(low, 3, FAR), cursors={str(rng): rng.high - 1})
    assert _scan.next_fit(s, rng, 3) == low + 3
    s = state(Entry(low, 20, FAR), cursors={str(rng): low + 5})
    assert _scan.next_fit(s, rng, 1) is None  # full: every base tried once
    s = state(Entry(low + 1, 19, FAR), cursors={str(rng): low + 5})
    assert _scan.next_fit(s, rng, 1) == low  # after the wrap, the one free port before the cursor
    assert _scan.next_fit(state(cursors={str(rng): low}), rng, 20) == low
    assert _scan.next_fit(state(cursors={str(rng): low}), rng, 21) is None


def test_next_fit_jumps_past_a_port_bound_outside_portlease(
    recorded: Recorded, caplog: pytest.LogCaptureFixture
) -> None:
    rng = free_window(10)
    low = rng.low
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", low + 2))
        s = state(cursors={str(rng): low})
        with caplog.at_level(logging.DEBUG, logger="pytest_portlease"):
            assert _scan.next_fit(s, rng, 3) == low + 3
        assert [r.getMessage() for r in caplog.records] == [
            f"probed {low}-{low + 2}: port {low + 2} is bound outside portlease",
            f"probed {low + 3}-{low + 5}: free",
        ]
        s = state(cursors={str(rng): low + 3})
        assert _scan.next_fit(s, rng, 8) is None  # every 8-port block holds low + 2 or passes the end


def test_next_fit_takes_a_block_that_ends_just_before_an_avoided_port(recorded: Recorded) -> None:
    rng = free_window(10)
    low = rng.low
    assert _scan.next_fit(state(cursors={str(rng): low}), rng, 2, avoided=(low + 2,)) == low
    assert _scan.next_fit(state(cursors={str(rng): low}), rng, 2, avoided=(low + 1,)) == low + 2


def test_next_fit_with_a_lease_nested_in_another(recorded: Recorded) -> None:
    rng = free_window(20)
    low = rng.low
    s = state(Entry(low, 10, FAR), Entry(low + 2, 1, FAR), cursors={str(rng): low + 1})
    assert _scan.next_fit(s, rng, 1) == low + 10


# -- PortBlock and LeaseStats ---------------------------------------------------------------------


def test_a_block_and_its_environment() -> None:
    block = PortBlock(20000, 3, "pg")
    assert block.ports == (20000, 20001, 20002) and list(block) == [20000, 20001, 20002]
    assert block[0] == 20000 and block[-1] == 20002 and len(block) == 3
    assert 20002 in block and 20003 not in block and 19999 not in block
    assert str(block) == "20000-20002" and str(PortBlock(20000, 1)) == "20000"
    assert block.env() == {
        "PORTLEASE_PORT": "20000",
        "PORTLEASE_PORT_0": "20000",
        "PORTLEASE_PORT_1": "20001",
        "PORTLEASE_PORT_2": "20002",
        "PORTLEASE_PORTS": "20000,20001,20002",
    }
    assert PortBlock(5, 1).env("PG") == {"PG_PORT": "5", "PG_PORT_0": "5", "PG_PORTS": "5"}


def test_lease_stats_add_up() -> None:
    stats = LeaseStats()
    stats.add(PortBlock(1, 3), 0.5, 0.25)
    stats.add(PortBlock(9, 2), 1.0)
    assert (stats.blocks, stats.ports, stats.seconds, stats.lock_wait) == (2, 5, 1.5, 0.25)
    assert (stats.lock_timeouts, stats.failed_at_once) == (0, 0)
