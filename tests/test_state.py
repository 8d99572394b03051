"""The state file: fedimint-portalloc's format both ways, tolerant loading, safe writing."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import free_window

from pytest_portlease import PortLeaser, PortleaseWarning
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME, _warned
from pytest_portlease._store import BACKUP_PREFIX, KEEP_BACKUPS, Store

# Exact bases from a fresh state: see conftest.low_start.
pytestmark = pytest.mark.usefixtures("low_start")


@pytest.fixture
def port_range() -> PortRange:
    """These tests expect exact bases: a window of the worker's ports that probes free now."""
    return free_window()


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    _warned.clear()  # warnings are once per process; each test wants to see its own


def write_state(directory: Path, content: str | bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_NAME
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def fedimint_schema_check(doc: Any) -> None:
    """What fedimint-portalloc's serde structs accept: RootData { next: u16, keys: BTreeMap<u16,
    RangeData { size: u16, expires: u64 }> }, unknown fields ignored."""
    assert isinstance(doc, dict) and set(doc) >= {"next", "keys"}
    assert type(doc["next"]) is int and 0 <= doc["next"] <= 65535
    for key, value in doc["keys"].items():
        assert key.isdecimal() and 0 <= int(key) <= 65535 and str(int(key)) == key
        assert type(value["size"]) is int and 0 <= value["size"] <= 65535
        assert type(value["expires"]) is int and value["expires"] >= 0


def backups(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{BACKUP_PREFIX}*"))


def test_a_fedimint_state_is_respected_and_stays_readable_by_fedimint(
    lease_dir: Path, port_range: PortRange
) -> None:
    future = int(time.time()) + 600
    low = port_range.low
    path = write_state(
        lease_dir,
        json.dumps({"next": low, "keys": {str(low): {"size": 3, "expires": future}}}),
    )
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        block = leaser.lease(2)
        assert block.base == low + 3  # the fedimint range low..low+2 is live: skipped
        doc = json.loads(path.read_text())
        fedimint_schema_check(doc)
        assert doc["keys"][str(low)] == {"size": 3, "expires": future}  # untouched, no owner added
        assert doc["keys"][str(low + 3)]["owner"]["pid"] == os.getpid()
        assert doc["next"] == low + 5
    assert json.loads(path.read_text())["keys"] == {str(low): {"size": 3, "expires": future}}
    assert backups(lease_dir) == []


def test_fedimint_dropping_our_owner_is_repaired_by_renewal(lease_dir: Path, port_range: PortRange) -> None:
    with PortLeaser(lease_dir, port_range=port_range, label="svc") as leaser:
        block = leaser.lease(3)
        path = lease_dir / STATE_NAME
        doc = json.loads(path.read_text())
        # fedimint-portalloc rewrites the file with its own fields only, in its compact layout.
        for value in doc["keys"].values():
            del value["owner"]
        path.write_text(json.dumps(doc, separators=(",", ":")))
        assert leaser.renew() == []
        entry = json.loads(path.read_text())["keys"][str(block.base)]
        assert entry["owner"]["label"] == "svc" and entry["owner"]["pid"] == os.getpid()
        assert leaser.release(block)
        assert json.loads(path.read_text())["keys"] == {}


def test_floats_and_unknown_fields_are_read_and_kept(lease_dir: Path, port_range: PortRange) -> None:
    low = port_range.low
    future = time.time() + 600.25
    path = write_state(
        lease_dir,
        json.dumps(
            {"next": low, "extra": [1], "keys": {str(low): {"size": 1, "expires": future, "note": "x"}}}
        ),
    )
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        assert leaser.lease(1).base == low + 1
        doc = json.loads(path.read_text())
    fedimint_schema_check(doc)
    assert doc["extra"] == [1]
    assert doc["keys"][str(low)]["note"] == "x"
    assert doc["keys"][str(low)]["expires"] == int(future) + 1  # written as an integer, never shorter


@pytest.mark.parametrize(
    "content",
    [
        b"\x00\xff garbage \x80",
        b"[1, 2, 3]",
        b'{"next": "soon", "keys": []}',
        b'{"next": 70000, "keys": 5}',
        b"null",
    ],
    ids=["bytes", "list", "wrong-types", "out-of-range", "null"],
)
def test_garbage_is_backed_up_warned_about_and_replaced(
    lease_dir: Path, port_range: PortRange, content: bytes
) -> None:
    path = write_state(lease_dir, content)
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        with pytest.warns(PortleaseWarning, match=STATE_NAME):
            block = leaser.lease(2)
        assert block.base == port_range.low
        fedimint_schema_check(json.loads(path.read_text()))
    (backup,) = backups(lease_dir)
    assert backup.read_bytes() == content


def test_truncated_json_keeps_every_range_it_can_salvage(lease_dir: Path, port_range: PortRange) -> None:
    low = port_range.low
    future = int(time.time()) + 600
    keys = {str(low + 10 * i): {"size": 2, "expires": future, "owner": {"pid": 1, "label": "x"}}
            for i in range(5)}
    text = json.dumps({"next": low, "keys": keys}, indent=2)
    path = write_state(lease_dir, text[: text.rindex(str(low + 40)) + 30])  # torn inside the last
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        with pytest.warns(PortleaseWarning, match=r"not valid JSON .*; 4 ranges recovered, 0 dropped"):
            blocks = [leaser.lease(8) for _ in range(4)]
        taken = {p for b in blocks for p in b}
        for i in range(4):
            assert not taken & {low + 10 * i, low + 10 * i + 1}
        kept = json.loads(path.read_text())["keys"]
        assert {str(low + 10 * i) for i in range(4)} <= set(kept)
    assert backups(lease_dir)[0].read_bytes() == text[: text.rindex(str(low + 40)) + 30].encode()


def test_bad_entries_are_dropped_one_by_one(lease_dir: Path, port_range: PortRange) -> None:
    low = port_range.low
    future = int(time.time()) + 600
    keys = {
        str(low): {"size": 2, "expires": future},
        "-5": {"size": 1, "expires": future},
        "abc": {"size": 1, "expires": future},
        "70000": {"size": 1, "expires": future},
        str(low + 5): {"size": 0, "expires": future},  # valid for fedimint: kept
        str(low + 6): {"size": True, "expires": future},
        str(low + 7): {"size": 1, "expires": "later"},
        str(low + 8): [1, 2],
        "65535": {"size": 2, "expires": future},  # valid for fedimint (u16 key and size): kept
        str(low + 3): {"size": 1, "expires": future, "owner": "me"},
    }
    write_state(lease_dir, json.dumps({"next": low, "keys": keys}))
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        with pytest.warns(PortleaseWarning) as record:
            leaser.lease(1)
        infos = {i.base: i for i in leaser.status()}
    messages = "\n".join(str(w.message) for w in record)
    assert "dropped 3 ranges (the key is not a port number from 0 to 65535): '-5', 'abc', 70000" in messages
    for bad in (f"{low + 6} (size True)", f"{low + 7} (expires 'later')", f"{low + 8} (list)"):
        assert bad in messages
    assert f"range {low + 3}: malformed owner" in messages
    assert f"{low + 5} (" not in messages and "65535 (" not in messages
    assert set(infos) >= {low, low + 3, low + 5, 65535}
    assert infos[low + 3].pid is None and infos[low + 3].state == "foreign"
    assert len(backups(lease_dir)) == 1


def test_overlapping_entries_are_both_kept_and_both_protected(
    lease_dir: Path, port_range: PortRange
) -> None:
    low = port_range.low
    future = int(time.time()) + 600
    keys = {
        str(low): {"size": 20, "expires": future},  # covers low..low+19
        str(low + 2): {"size": 1, "expires": future},  # nested inside it
        str(low + 25): {"size": 5, "expires": future},
        str(low + 27): {"size": 10, "expires": future},  # overlaps low+25..29, reaches low+36
    }
    write_state(lease_dir, json.dumps({"next": low + 5, "keys": keys}))
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        first = leaser.lease(5)  # valid for fedimint: kept as written, no warning
        second = leaser.lease(3)
    assert first.base == low + 20
    assert second.base == low + 37


def test_a_symlinked_state_file_is_replaced_not_written_through(
    lease_dir: Path, port_range: PortRange, tmp_path: Path
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lease_dir.mkdir()
    (lease_dir / STATE_NAME).symlink_to(victim)
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        with pytest.warns(PortleaseWarning, match="symbolic link"):
            leaser.lease(1)
        assert not (lease_dir / STATE_NAME).is_symlink()
    assert victim.read_text() == "precious"


def test_backups_are_pruned_to_the_newest_few(lease_dir: Path, port_range: PortRange) -> None:
    store = Store(lease_dir, "test")
    store.prepare()
    for i in range(KEEP_BACKUPS + 3):
        store.state_path.write_bytes(b"junk %d" % i)
        store.invalidate()
        with pytest.warns(PortleaseWarning):
            store.load()
        _warned.clear()
    kept = backups(lease_dir)
    assert len(kept) == KEEP_BACKUPS
    assert sorted(p.read_bytes() for p in kept) == sorted(b"junk %d" % i for i in range(3, KEEP_BACKUPS + 3))


def test_status_reads_without_creating_or_backing_up(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here"
    assert PortLeaser(missing).status() == []
    assert not missing.exists()
    write_state(missing, b"garbage")
    with pytest.warns(PortleaseWarning):
        assert PortLeaser(missing).status() == []
    assert sorted(p.name for p in missing.iterdir()) == [STATE_NAME]


def test_our_layout_is_parsed_incrementally_and_equals_a_full_parse(
    lease_dir: Path, port_range: PortRange
) -> None:
    with PortLeaser(lease_dir, port_range=port_range, label="a") as leaser:
        for size in (1, 2, 3):
            leaser.lease(size)
        data = (lease_dir / STATE_NAME).read_bytes()
        fresh = Store(lease_dir, "test")
        quick = fresh._parse_lines(data)
        assert quick is not None
        assert {b: (e.size, e.owner) for b, e in quick.entries.items()} == {
            int(k): (v["size"], leaser.store.load().entries[int(k)].owner)
            for k, v in json.loads(data)["keys"].items()
        }


def test_an_owner_with_an_impossible_pid_is_malformed(lease_dir: Path, port_range: PortRange) -> None:
    low = port_range.low
    future = int(time.time()) + 600
    owner = {"pid": 0, "start": 1, "host": "h", "ns": "n", "label": "x"}
    keys = {str(low): {"size": 1, "expires": future, "owner": owner}}
    write_state(lease_dir, json.dumps({"next": low, "keys": keys}))
    with PortLeaser(lease_dir, port_range=port_range) as leaser, pytest.warns(PortleaseWarning, match="malformed"):
        assert leaser.lease(1).base == low + 1  # kept as a range (TTL only), not reclaimed
