"""What a user meets first: a bad lease directory stops pytest once, before any test, and a frozen
lock costs one timeout per session, not one per test; the summary's figures add up."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from _users import PYTEST_PACKAGES, as_nobody, world_dir

from pytest_portlease import PortLeaser
from pytest_portlease._config import PortRange

# -- 11.1: a bad --portlease-dir ---------------------------------------------------------------

TESTS = "def test_plain(): pass\ndef test_leases(free_port): pass\ndef test_more(free_port): pass\n"


def _one_error(result: pytest.RunResult) -> str:
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.outlines
    errors = [line for line in result.errlines if line.startswith("ERROR:")]
    assert len(errors) == 1, result.errlines
    assert "Traceback" not in result.stdout.str() + result.stderr.str()
    assert "passed" not in result.stdout.str() and "collected" not in result.stdout.str()
    return errors[0]


@pytest.mark.parametrize("case", ["file", "below-a-file", "dangling-symlink"])
def test_a_bad_directory_stops_pytest_once_creating_nothing(
    pytester: pytest.Pytester, portlease_args: list[str], tmp_path: Path, case: str
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    target = {"file": a_file, "below-a-file": a_file / "leases", "dangling-symlink": tmp_path / "link"}[case]
    if case == "dangling-symlink":
        target.symlink_to(tmp_path / "missing")
    pytester.makepyfile(TESTS)
    before = sorted(tmp_path.rglob("*"))
    result = pytester.runpytest_subprocess(*portlease_args, f"--portlease-dir={target}")
    error = _one_error(result)
    assert error.startswith(f"ERROR: lease directory {target} from --portlease-dir ")
    assert "set --portlease-dir to a directory you can write in" in error
    assert sorted(tmp_path.rglob("*")) == before  # found by reads alone
    assert a_file.read_text() == "not a directory"


def test_a_bad_directory_from_the_environment_names_it(
    pytester: pytest.Pytester, portlease_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    monkeypatch.setenv("PORTLEASE_DIR", os.fspath(a_file))
    pytester.makepyfile(TESTS)
    args = [a for a in portlease_args if not a.startswith("--portlease-dir=")]
    error = _one_error(pytester.runpytest_subprocess(*args))
    assert error == (
        f"ERROR: lease directory {a_file} from PORTLEASE_DIR is not a directory: set PORTLEASE_DIR "
        f"to a directory you can write in, or pass --portlease-dir=DIR"
    )


def test_an_explicit_empty_directory_is_a_usage_error(
    pytester: pytest.Pytester, portlease_args: list[str]
) -> None:
    pytester.makepyfile(TESTS)
    args = [a for a in portlease_args if not a.startswith("--portlease-dir=")]
    error = _one_error(pytester.runpytest_subprocess(*args, "--portlease-dir="))
    assert error == (
        "ERROR: invalid --portlease-dir '' from --portlease-dir: expected a directory path; "
        "leave --portlease-dir out to use the default"
    )


def test_an_unwritable_directory_as_another_user(port_range: PortRange) -> None:
    with world_dir() as world:
        leases = world / "leases"
        leases.mkdir(mode=0o755)  # root's: nobody may enter it, not create anything in it
        (world / "test_x.py").write_text(TESTS)
        (world / "test_x.py").chmod(0o644)
        for target, expected in [
            (leases, f"lease directory {leases} from --portlease-dir is not writable by uid 65534"),
            (leases / "below", f"lease directory {leases / 'below'} from --portlease-dir cannot be "
                               f"created: {leases} is not writable by uid 65534"),
        ]:
            done = as_nobody(
                ["-m", "pytest", "-p", "pytest_portlease.plugin", "-p", "no:cacheprovider",
                 f"--portlease-dir={target}", f"--portlease-range={port_range}", "test_x.py"],
                PYTEST_PACKAGES, cwd=os.fspath(world),
            )
            assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR:")]
            assert errors == [f"ERROR: {expected}: set --portlease-dir to a directory you can write in"]
            assert "Traceback" not in done.stdout + done.stderr
        assert list(leases.iterdir()) == []


# -- 11.2: the lock timeout, and one timeout per session ---------------------------------------

HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


class Holder(NamedTuple):
    pid: int
    cmd: str  # its command line as the test started it: what the error must say it is


@pytest.fixture
def held_lock(lease_dir: Path, port_range: PortRange, tmp_path: Path) -> Iterator[Holder]:
    """The lease directory's lock, held by another process until the test ends."""
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        leaser.release(leaser.lease(1))  # creates the directory and the lock file
    (tmp_path / "hold.py").write_text(HOLD)
    # Relative paths keep the command line short enough to be shown whole (120 characters).
    argv = [sys.executable, "hold.py", os.fspath((lease_dir / "lock").relative_to(tmp_path))]
    with subprocess.Popen(argv, cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        try:
            yield Holder(holder.pid, " ".join(argv))
        finally:
            holder.communicate("")


def _lock_timeouts(result: pytest.RunResult, holder: Holder, count: int) -> None:
    """``count`` tests failed with one and the same LockTimeout, which names the holder's pid
    and what it is."""
    timeouts = [line for line in result.outlines if line.startswith("E ") and "LockTimeout" in line]
    assert len(timeouts) == count, result.outlines
    assert len({line.partition("LockTimeout")[2] for line in timeouts}) == 1, timeouts  # the same message
    assert f"; held by pid {holder.pid} ({holder.cmd}), which is sleeping" in timeouts[0], timeouts[0]


@pytest.mark.parametrize("how", ["option", "ini", "env"])
def test_after_one_lock_timeout_later_leases_fail_at_once(
    pytester: pytest.Pytester, portlease_args: list[str], monkeypatch: pytest.MonkeyPatch,
    held_lock: Holder, how: str,
) -> None:
    pytester.makepyfile(
        "def test_a(free_port): pass\ndef test_b(free_port): pass\ndef test_c(port_block): port_block(2)\n"
    )
    args = list(portlease_args)
    source = {"option": "--portlease-lock-timeout", "ini": "ini portlease_lock_timeout",
              "env": "PORTLEASE_LOCK_TIMEOUT"}[how]
    if how == "option":
        args.append("--portlease-lock-timeout=1")
    elif how == "ini":
        pytester.makeini("[pytest]\nportlease_lock_timeout = 1\n")
    else:
        monkeypatch.setenv("PORTLEASE_LOCK_TIMEOUT", "1")
    result = pytester.runpytest_subprocess(*args, "-p", "no:xdist")
    result.assert_outcomes(passed=0, errors=2, failed=1)
    assert f"lock timeout 1s (from {source})" in result.stdout.str()
    _lock_timeouts(result, held_lock, 3)
    # The first waited; the other two were refused at once (counted, not timed).
    result.stdout.fnmatch_lines([
        "portlease: the lock timed out; 2 later leases failed at once with the same error "
        "instead of waiting again"
    ])


# Every way a session leases, after the first LockTimeout: the patched tools, the port_leaser
# fixture, the plugin's own fixtures. The nested conftest counts, through the engine's test seam,
# how often the session went to wait for the lock: once, whichever way came first.
EVERY_WAY = """
import port_for, portpicker

def test_port_for():
    port_for.get_port(None)

def test_select_random():
    port_for.select_random()

def test_portpicker():
    portpicker.pick_unused_port()

def test_unused_tcp_port(unused_tcp_port):
    pass

def test_port_leaser(port_leaser):
    port_leaser.lease(1)

def test_port_block(port_block):
    port_block(1)

def test_free_port(free_port):
    pass
"""
FIRST = {
    "port_block": "def test_first(port_block):\n    port_block(2)\n",
    "port_for": "import port_for\n\ndef test_first():\n    port_for.get_port(None)\n",
    "port_leaser": "def test_first(port_leaser):\n    port_leaser.lease(2)\n",
}
COUNT_WAITS = """
from pytest_portlease import _store

waits = 0

def _count(point):
    global waits
    if point == "preread":  # the last step before the lock is waited for
        waits += 1

_store.fault = _count

def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"lock waits: {waits}")
"""


@pytest.mark.parametrize("first", sorted(FIRST))
def test_one_lock_timeout_per_session_whichever_way_leases(
    pytester: pytest.Pytester, portlease_args: list[str], held_lock: Holder, first: str
) -> None:
    pytester.makeconftest(COUNT_WAITS)
    pytester.makepyfile(test_0_first=FIRST[first], test_1_every_way=EVERY_WAY)
    result = pytester.runpytest_subprocess(
        *portlease_args, "-p", "no:xdist", "-W", "error", "--portlease-patch=all", "--portlease-lock-timeout=1"
    )
    result.assert_outcomes(failed=6, errors=2)  # the fixtures' leases fail at setup
    _lock_timeouts(result, held_lock, 8)
    assert "lock waits: 1" in result.outlines
    result.stdout.fnmatch_lines([
        "portlease: the lock timed out; 7 later leases failed at once with the same error "
        "instead of waiting again"
    ])


def test_bad_lock_timeout_is_a_usage_error(pytester: pytest.Pytester, portlease_args: list[str]) -> None:
    pytester.makepyfile(TESTS)
    result = pytester.runpytest_subprocess(*portlease_args, "--portlease-lock-timeout=-1")
    assert _one_error(result) == (
        "ERROR: invalid --portlease-lock-timeout '-1' from --portlease-lock-timeout: expected a "
        "number of seconds from 0 to 86400, such as 30 (0 fails at once when the lock is held)"
    )


def test_portleaser_reads_the_lock_timeout_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, lease_dir: Path
) -> None:
    monkeypatch.setenv("PORTLEASE_LOCK_TIMEOUT", "2.5")
    leaser = PortLeaser(lease_dir)
    assert (leaser.lock_timeout, leaser.lock_timeout_setting.source) == (2.5, "PORTLEASE_LOCK_TIMEOUT")
    assert PortLeaser(lease_dir, lock_timeout=4).lock_timeout == 4


# -- 11.3: the summary's two figures are over the same calls -----------------------------------


def test_lock_wait_counts_only_the_leases_it_is_part_of(lease_dir: Path, port_range: PortRange) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        block = leaser.lease(2)
        after_lease = (leaser.stats.seconds, leaser.stats.lock_wait)
        assert 0 < after_lease[1] <= after_lease[0]
        for _ in range(20):
            leaser.renew()  # each takes the lock; none is a lease
        leaser.release(block)
        assert (leaser.stats.seconds, leaser.stats.lock_wait) == after_lease


def test_summary_says_of_which(pytester: pytest.Pytester, portlease_args: list[str]) -> None:
    pytester.makepyfile("def test_a(port_block): port_block(3); port_block(1)\n")
    result = pytester.runpytest_subprocess(*portlease_args, "-p", "no:xdist")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["portlease: 2 blocks, 4 ports leased in *s of leasing, of which *s waiting for the lock"]
    )
