"""Where blocks come from: a random start for a fresh range, one cursor per range, and
fedimint-portalloc's ``next`` moved only inside its window 10000-32000."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import free_window

from pytest_portlease import PortLeaser, _probe
from pytest_portlease._config import PortRange
from pytest_portlease._state import MAX_CURSORS, STATE_NAME


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
