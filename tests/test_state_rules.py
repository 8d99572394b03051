"""The reading rules of DESIGN.md "The lease directory": what fedimint wrote is kept as written,
duplicates are read as their union, nothing malformed is fatal, and problems come grouped."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _reliability import check_state_bytes
from conftest import free_window

from pytest_portlease import PortLeaser, PortleaseWarning, PortUnavailable
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME, _warned
from pytest_portlease._status import read_status
from pytest_portlease._store import BACKUP_PREFIX

pytestmark = pytest.mark.usefixtures("low_start")  # exact bases from a fresh state

FUTURE = int(time.time()) + 3600
PAST = int(time.time()) - 3600


@pytest.fixture
def port_range() -> PortRange:
    return free_window()


@pytest.fixture(autouse=True)
def _fresh_warnings() -> None:
    _warned.clear()


def write(directory: Path, data: str | bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_NAME
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def backups(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{BACKUP_PREFIX}*"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_portlease", *args], capture_output=True, text=True, timeout=60, check=False
    )


# -- 9.6: duplicate and non-canonical keys --------------------------------------------------------


def _live(size: int = 5) -> str:
    return json.dumps({"size": size, "expires": FUTURE})


def _dead() -> str:
    return json.dumps({"size": 1, "expires": PAST})


@pytest.mark.parametrize(
    "template",
    [
        '{{"next": {low}, "keys": {{"{low}": {live}, "0{low}": {dead}}}}}',
        '{{"next": {low}, "keys": {{"{low}": {live}, "{low}": {dead}}}}}',
        '{{"next": {low}, "keys": {{"{low}": {live}}}, "keys": {{"{low}": {dead}}}}}',
        # Our own layout, which the fast line parser reads.
        '{{"next": {low}, "keys": {{\n"{low}": {live},\n"{low}": {dead}\n}}}}\n',
        '{{"next": {low}, "keys": {{\n"{low}": {{"size": 5, "expires": {future}, "expires": {past}}}\n}}}}\n',
    ],
    ids=["non-canonical", "duplicate", "two-keys-objects", "duplicate-lines", "duplicate-field"],
)
def test_a_repeated_key_never_hides_a_live_range(lease_dir: Path, port_range: PortRange, template: str) -> None:
    low = port_range.low
    text = template.format(low=low, live=_live(), dead=_dead(), future=FUTURE, past=PAST)
    write(lease_dir, text)
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        with pytest.warns(PortleaseWarning) as record:
            blocks = [leaser.lease(1) for _ in range(5)]
        assert any(re.search(r"union|larger value", str(w.message)) for w in record)
        assert all(not low <= b.base <= low + 4 for b in blocks), blocks
        with pytest.raises(PortUnavailable):
            leaser.lease(1, port=low + 1)
    (backup,) = backups(lease_dir)
    assert backup.read_bytes() == text.encode()
    keys = check_state_bytes((lease_dir / STATE_NAME).read_bytes())["keys"]
    assert keys[str(low)]["size"] == 5 and keys[str(low)]["expires"] == FUTURE


def test_the_union_keeps_the_larger_size_and_the_later_expiry(lease_dir: Path, port_range: PortRange) -> None:
    low = port_range.low
    text = (
        f'{{"keys": {{"{low}": {{"size": 2, "expires": {FUTURE + 60}}}, '
        f'"00{low}": {{"size": 8, "expires": {FUTURE}}}}}}}'
    )
    write(lease_dir, text)
    with PortLeaser(lease_dir, port_range=port_range) as leaser, pytest.warns(PortleaseWarning):
        block = leaser.lease(1)
    assert block.base == low + 8
    keys = json.loads((lease_dir / STATE_NAME).read_text())["keys"]
    assert keys[str(low)]["size"] == 8 and keys[str(low)]["expires"] == FUTURE + 60


# -- 10.3: what fedimint could parse is kept as written -------------------------------------------


def test_a_fresh_fedimint_state_is_kept_without_warning_or_backup(lease_dir: Path, port_range: PortRange) -> None:
    # fedimint-portalloc's Default state has next = 0, so its first grant is port 0.
    fedimint = {"next": 3, "keys": {"0": {"size": 3, "expires": FUTURE}}}
    write(lease_dir, json.dumps(fedimint, indent=2))
    with PortLeaser(lease_dir, port_range=port_range) as leaser:  # a warning would be an error here
        leaser.lease(1)
    assert backups(lease_dir) == []
    assert json.loads((lease_dir / STATE_NAME).read_text())["keys"]["0"] == {"size": 3, "expires": FUTURE}


def test_entries_valid_for_fedimint_are_kept_exactly_and_never_granted(
    lease_dir: Path, port_range: PortRange
) -> None:
    low = port_range.low
    kept: dict[str, Any] = {
        "0": {"size": 1, "expires": FUTURE},
        "80": {"size": 2, "expires": FUTURE, "note": "below 1024"},
        str(low): {"size": 0, "expires": FUTURE},  # holds no port
        str(low + 1): {"size": 3, "expires": FUTURE},
        str(low + 2): {"size": 1, "expires": FUTURE, "who": ["x", 1]},  # overlaps the one before
        "65530": {"size": 10, "expires": 2**64 - 1},  # past 65535, and the largest u64
        str(low - 50): {"size": 4, "expires": FUTURE},  # outside our range
    }
    write(lease_dir, json.dumps({"next": 0, "keys": kept}))
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        # The range of size 0 at low is kept: nothing is granted at its base.
        assert leaser.lease(1).base == low + 4
        assert leaser.lease(1).base == low + 5
        for port in (80, 81, low, low + 1, low + 3, 65530, 65534, low - 48):
            with pytest.raises(PortUnavailable):
                leaser.lease(1, port=port)
    assert backups(lease_dir) == []
    keys = json.loads((lease_dir / STATE_NAME).read_text())["keys"]
    assert {k: keys[k] for k in kept} == kept


# -- 9.8: malformed is never fatal, and the next write heals it -----------------------------------


def _hostile(low: int) -> bytes:
    return (
        b'{"next": %d, "keys": {"%d": {"size": 2, "expires": 1%s}, "%s": {"size": 1, "expires": 1}, '
        b'"%d": {"size": 1, "expires": %d}}}' % (low, low, b"0" * 400, b"7" * 5000, low + 5, FUTURE)
    )


def test_huge_numbers_in_the_state_are_not_fatal_and_are_healed(lease_dir: Path, port_range: PortRange) -> None:
    low = port_range.low
    write(lease_dir, _hostile(low))
    with pytest.warns(PortleaseWarning):
        infos = {i.base: i for i in read_status(lease_dir)}
    assert infos[low].state in ("live", "foreign") and low + 5 in infos
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        with pytest.warns(PortleaseWarning) as record:
            block = leaser.lease(1)
        assert any("largest u64" in str(w.message) for w in record)
        assert block.base == low + 2  # 10**400 expires far in the future: still held
        with pytest.raises(PortUnavailable):
            leaser.lease(1, port=low + 5)
        healed = check_state_bytes((lease_dir / STATE_NAME).read_bytes())
    assert healed["keys"][str(low)]["expires"] == 2**64 - 1
    assert backups(lease_dir)


def test_huge_numbers_do_not_stop_the_command_line(lease_dir: Path, port_range: PortRange) -> None:
    low = port_range.low
    write(lease_dir, _hostile(low))
    common = ["--dir", os.fspath(lease_dir), "--range", str(port_range)]
    for args in (["status"], ["--json", "status"], ["check", str(low)], ["reclaim"], ["check", str(low + 9)]):
        done = cli(*common, *args)
        assert "Traceback" not in done.stderr, (args, done.stderr)
        assert done.returncode in (0, 1), (args, done.returncode, done.stderr)
    assert cli(*common, "check", str(low)).returncode == 1  # held by the 10**400 range
    done = cli(*common, "lease", "1")
    assert done.returncode == 0, done.stderr
    check_state_bytes((lease_dir / STATE_NAME).read_bytes())


NAMED_TEST = """
def test_named(port_block):
    assert port_block(2, name="pg").size == 2
"""


@pytest.mark.parametrize(
    "names",
    [
        b'{"version": 1, "blocks": {"k": {"base": 1%s, "size": 2, "used": 1%s}}}' % (b"0" * 400, b"0" * 400),
        b'{"version": 1, "blocks": {"k": {"base": 1, "used": 1%s}}}' % (b"0" * 5000),
        b'{"version": 1, "blocks": %s}' % (b"[" * 100_000),
        b'{"version": 1, "blocks": {"k": {"used": NaN}, "j": {"used": 1e999}}}',
    ],
    ids=["huge-ints", "too-many-digits", "deep-nesting", "nan"],
)
def test_a_mangled_names_file_is_not_fatal(
    pytester: pytest.Pytester, portlease_args: list[str], lease_dir: Path, names: bytes
) -> None:
    lease_dir.mkdir()
    (lease_dir / "portlease-names.json").write_bytes(names)
    pytester.makepyfile(NAMED_TEST)
    result = pytester.runpytest_subprocess(*portlease_args, "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    healed = json.loads((lease_dir / "portlease-names.json").read_text())
    assert list(healed["blocks"].values())[-1]["size"] == 2


def test_a_huge_state_does_not_stop_a_pytest_run(
    pytester: pytest.Pytester, portlease_args: list[str], lease_dir: Path, port_range: PortRange
) -> None:
    write(lease_dir, _hostile(port_range.low))
    pytester.makepyfile(NAMED_TEST)
    result = pytester.runpytest_subprocess(*portlease_args, "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*largest u64*recorded while leasing*"])


# -- 11.8 and 9.14: one consistent, grouped description --------------------------------------------


def test_a_torn_file_is_described_once_and_consistently(lease_dir: Path, port_range: PortRange) -> None:
    low = port_range.low
    text = f'{{"next": {low}, "keys": {{"{low}": {{"size": 1, "expires": {FUTURE}}}, "{low + 5}": {{"size": "x"'
    write(lease_dir, text + ', "expires": 1}, "junk')  # torn
    with PortLeaser(lease_dir, port_range=port_range) as leaser, pytest.warns(PortleaseWarning) as record:
        leaser.lease(1)
    (message,) = [str(w.message) for w in record if STATE_NAME in str(w.message)]
    assert "not valid JSON" in message and "1 range recovered, 1 dropped" in message
    assert f"{low + 5} (size 'x')" in message


def test_forty_thousand_bad_keys_make_a_few_grouped_warnings(lease_dir: Path, port_range: PortRange) -> None:
    keys = {f"bad{i}": {"size": 1, "expires": FUTURE} for i in range(20_000)}
    keys.update({str(100_000 + i): {"size": 1, "expires": FUTURE} for i in range(20_000)})
    write(lease_dir, json.dumps({"next": 0, "keys": keys}))
    with PortLeaser(lease_dir, port_range=port_range) as leaser, pytest.warns(PortleaseWarning) as record:
        leaser.lease(1)
    messages = [str(w.message) for w in record]
    assert len(messages) <= 3, messages
    (message,) = messages
    assert "dropped 40000 ranges (the key is not a port number" in message
    assert "'bad0', 'bad1', 'bad2' and 39997 more" in message


def test_forty_thousand_bad_keys_make_a_short_pytest_summary(
    pytester: pytest.Pytester, portlease_args: list[str], lease_dir: Path
) -> None:
    keys = {f"bad{i}": {"size": i % 7, "expires": "x" * (i % 3)} for i in range(40_000)}
    write(lease_dir, json.dumps({"next": 0, "keys": keys}))
    pytester.makepyfile("def test_one(free_port):\n    assert free_port\n")
    result = pytester.runpytest_subprocess(*portlease_args, "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    summary = [line for line in result.outlines if line.startswith("portlease: ")]
    assert 1 <= len(summary) <= 5, summary
    assert any("dropped 40000 ranges" in line for line in summary)



# -- 9.6: the union of two copies keeps every owner that can hold the range ----------------------


def _owner(pid: int) -> Any:
    from pytest_portlease._owner import Owner

    return Owner(pid, 1, "h", "ns", f"label {pid}")


def test_merge_keeps_an_owner_the_copies_agree_on() -> None:
    from pytest_portlease._parse import merge
    from pytest_portlease._state import Entry

    merged = merge(Entry(10, 3, PAST, _owner(1)), Entry(10, 2, FUTURE, _owner(1)))
    assert (merged.size, merged.expires, merged.owner, merged.co_owners) == (3, FUTURE, _owner(1), ())


@pytest.mark.parametrize("other", [None, 2])
def test_merge_of_differing_owners_leaves_the_ttl_and_every_owner_as_co_owner(other: int | None) -> None:
    from pytest_portlease._parse import merge, parse_line
    from pytest_portlease._state import Entry, State

    b = Entry(10, 3, PAST, None if other is None else _owner(other))
    for merged in (merge(Entry(10, 3, PAST, _owner(1)), b), merge(b, Entry(10, 3, PAST, _owner(1)))):
        assert merged.owner is None
        assert set(merged.co_owners) == {_owner(1), *([] if other is None else [_owner(other)])}
        # Written and read back, the co-owners survive, and the state counts their processes.
        assert parse_line(merged.line) == merged
        assert set(State(0, {10: merged}, {}).processes) == {o.process for o in merged.co_owners}


def test_a_malformed_co_owners_field_is_dropped_and_the_range_kept(lease_dir: Path, port_range: PortRange) -> None:
    from pytest_portlease._parse import parse_tolerant

    low = port_range.low
    loaded = parse_tolerant(json.dumps({"keys": {str(low): {"size": 1, "expires": FUTURE, "co_owners": 5}}}).encode())
    assert loaded.state.entries[low].co_owners == () and loaded.lossy
    assert any("co-owners" in p for p in loaded.problems)
