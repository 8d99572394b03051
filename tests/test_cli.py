"""The ``portlease`` console script, in-process through ``main()`` and as the installed script."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import SteppedClock, child_clock_env

from pytest_portlease import PortLeaser, __version__
from pytest_portlease._config import PortRange
from pytest_portlease._owner import hostname, owner_for
from pytest_portlease._probe import port_is_free
from pytest_portlease._state import STATE_NAME
from pytest_portlease.cli import main

SCRIPT = Path(sys.executable).parent / "portlease"


class Result(NamedTuple):
    code: int
    out: str
    err: str


Portlease = Callable[..., Result]


def run_script(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> Result:
    done = subprocess.run(
        [os.fspath(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture(params=["in-process", "script"])
def portlease(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], lease_dir: Path,
    port_range: PortRange, clock: SteppedClock,
) -> Portlease:
    """Run the CLI on the test's lease directory and port range, both ways, on the test's clock
    (the script's too): what the CLI computes from the time is exact, however slow the call."""
    common = ["--dir", os.fspath(lease_dir), "--range", str(port_range)]
    if request.param == "script":
        return lambda *args: run_script(*common, *args, env=child_clock_env(clock.now))

    def in_process(*args: str) -> Result:
        capsys.readouterr()
        code = main([*common, *args])
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return in_process


@pytest.fixture
def dead_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(["sleep", "60"])
    yield child
    child.kill()
    child.wait()


def free_ports(port_range: PortRange, count: int) -> int:
    """The base of ``count`` ports that bind now, from the top of the range down.

    Other tests in this process leave ports of the range bound or in TIME_WAIT for a while.
    """
    for base in range(port_range.high - count + 1, port_range.low, -count):
        if all(port_is_free(p) for p in range(base, base + count)):
            return base
    raise AssertionError(f"no {count} free ports in {port_range}")


def write_mixed_state(lease_dir: Path, port_range: PortRange, now: float) -> dict[str, int]:
    """A fedimint-style state file with one lease in each state; returns base by state.

    Written the way fedimint-portalloc writes it (compact, no owner) plus our owners, so the
    status is read through the full tolerant parser. Its ports bind now, for ``check``.
    """
    low = free_ports(port_range, 40)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = owner_for(child.pid, "dead one").to_json()
    finally:
        child.kill()
        child.wait()
    live = owner_for(os.getpid(), "live one").to_json()
    elsewhere = {**owner_for(os.getpid(), "expired one").to_json(), "host": "another-host"}
    keys = {
        str(low): {"size": 2, "expires": math.ceil(now + 300), "owner": live},
        # Expired, and of an owner that cannot be checked: an alive owner would keep it.
        str(low + 10): {"size": 3, "expires": math.floor(now - 30), "owner": elsewhere},
        str(low + 20): {"size": 1, "expires": math.ceil(now + 300), "owner": dead},
        str(low + 30): {"size": 4, "expires": math.ceil(now + 90)},  # fedimint's: no owner
    }
    lease_dir.mkdir(mode=0o700)
    (lease_dir / "lock").touch()
    text = json.dumps({"next": low + 34, "keys": keys}, separators=(",", ":"))
    (lease_dir / STATE_NAME).write_text(text)
    return {"live": low, "expired": low + 10, "dead owner": low + 20, "foreign": low + 30}


def snapshot_files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def leases(lease_dir: Path) -> dict[int, str]:
    """base -> state of every lease in the directory, read as the library reads it."""
    return {info.base: info.state for info in PortLeaser(lease_dir).status()}


# -- status ------------------------------------------------------------------------------------


def test_status_of_a_missing_directory_is_friendly_and_creates_nothing(
    portlease: Portlease, lease_dir: Path
) -> None:
    result = portlease("status")
    assert result.code == 0, result.err
    assert f"no lease directory at {lease_dir} (from --dir)" in result.out
    assert result.err == ""
    assert not lease_dir.exists()


def test_status_json_of_a_missing_directory(portlease: Portlease, lease_dir: Path) -> None:
    result = portlease("--json", "status")
    doc = json.loads(result.out)
    assert (result.code, doc["exists"], doc["leases"], doc["cursor"]) == (0, False, [], None)
    assert not lease_dir.exists()


def test_status_of_an_empty_directory(portlease: Portlease, lease_dir: Path) -> None:
    lease_dir.mkdir()
    result = portlease("status")
    assert result.code == 0
    assert "no leases" in result.out
    assert "missing" in result.out  # the state file
    assert list(lease_dir.iterdir()) == []


def test_status_table_shows_every_state_and_changes_nothing(
    portlease: Portlease, lease_dir: Path, port_range: PortRange, clock: SteppedClock
) -> None:
    bases = write_mixed_state(lease_dir, port_range, clock.now)
    before = snapshot_files(lease_dir)
    result = portlease("status")
    assert result.code == 0, result.err
    assert snapshot_files(lease_dir) == before  # byte-identical, not even rewritten

    lines = result.out.splitlines()
    assert lines[0] == f"directory   {lease_dir} (from --dir)"
    assert lines[2] == f"range       {port_range} (from --range)"
    assert lines[3] == f"cursor      {bases['live'] + 34}"
    assert lines[4] == "leases      4 (1 live, 1 foreign, 1 expired, 1 dead owner)"
    # Only live and foreign leases hold ports: 2 + 4 of the range.
    assert lines[5].startswith(f"in range    6 of {port_range.high - port_range.low + 1} ports")
    map_line = lines[6].split()
    assert map_line[1:] == [str(port_range.low), map_line[2], str(port_range.high)]
    assert len(map_line[2]) == 64 and set(map_line[2]) <= {".", "+", "#"}
    assert "+" in map_line[2] and "#" not in map_line[2]

    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("BASE"))
    assert lines[header].split() == ["BASE", "END", "SIZE", "EXPIRES", "IN", "OWNER", "STATE", "LABEL"]
    rows = lines[header + 1 :]
    assert [int(row.split()[0]) for row in rows] == sorted(bases.values())
    by_base = {int(row.split()[0]): row for row in rows}
    live = by_base[bases["live"]].split()
    assert live[1:3] == [str(bases["live"] + 1), "2"]
    assert live[3] == "5m00s"  # 300.5 s left on the test's clock: whole seconds, rounded down
    assert live[4] == f"{os.getpid()}@{hostname()}"
    assert live[5:] == ["live", "live", "one"]
    assert by_base[bases["expired"]].split()[3] == "-30s"
    assert "expired" in by_base[bases["expired"]]
    assert "dead owner" in by_base[bases["dead owner"]]
    foreign = by_base[bases["foreign"]].split()
    assert foreign[3:] == [foreign[3], "-", "foreign"]  # no owner, no label
    assert foreign[3] == "1m30s"


def test_status_json_document(
    portlease: Portlease, lease_dir: Path, port_range: PortRange, clock: SteppedClock
) -> None:
    bases = write_mixed_state(lease_dir, port_range, clock.now)
    before = snapshot_files(lease_dir)
    result = portlease("status", "--json")  # the global option is accepted after the command too
    assert result.code == 0, result.err
    assert snapshot_files(lease_dir) == before
    doc = json.loads(result.out)
    assert doc["schema"] == 1
    assert (doc["directory"], doc["directory_source"], doc["exists"]) == (str(lease_dir), "--dir", True)
    assert doc["state_file"] == str(lease_dir / STATE_NAME)
    assert doc["state_file_bytes"] == len(before[STATE_NAME][0])
    assert doc["range"] == {"low": port_range.low, "high": port_range.high, "source": "--range"}
    assert doc["cursor"] == bases["live"] + 34
    assert doc["by_state"] == {"live": 1, "ttl-only": 0, "foreign": 1, "expired": 1, "dead owner": 1}
    assert doc["ports"] == {"in_range": port_range.high - port_range.low + 1, "leased_in_range": 6}
    assert len(doc["map"]["text"]) == 64
    assert doc["problems"] == []
    assert {x["state"]: x["base"] for x in doc["leases"]} == bases
    live = doc["leases"][0]
    assert live["owner"]["pid"] == os.getpid() and live["owner"]["host"] == hostname()
    assert (live["end"], live["size"], live["label"]) == (bases["live"] + 1, 2, "live one")
    assert live["expires_in"] == 300.5  # expires is rounded up to whole seconds
    assert doc["leases"][-1]["owner"] is None


def test_status_reports_a_corrupt_state_without_touching_it(
    portlease: Portlease, lease_dir: Path, port_range: PortRange, clock: SteppedClock
) -> None:
    lease_dir.mkdir()
    good = f'"{port_range.low}": {{"size": 2, "expires": {int(clock.now) + 60}}}'
    (lease_dir / STATE_NAME).write_text('{"next": 1, "keys": {' + good + ', "x": 3, ')  # torn
    before = snapshot_files(lease_dir)
    result = portlease("status")
    assert result.code == 0, result.err
    assert "problem" in result.out and "not valid JSON" in result.out
    assert str(port_range.low) in result.out.splitlines()[-1]
    assert snapshot_files(lease_dir) == before  # no repair, no backup: status only reads


def test_status_escapes_hostile_labels(portlease: Portlease, lease_dir: Path, port_range: PortRange) -> None:
    with PortLeaser(lease_dir, port_range=str(port_range), label="") as leaser:
        leaser.lease(label="evil\x1b[2J\nlabel")
        result = portlease("status")
    assert "\x1b" not in result.out
    assert "evil?[2J?label" in result.out


# -- lease -------------------------------------------------------------------------------------


def test_lease_prints_the_base_port_and_outlives_the_command(
    portlease: Portlease, lease_dir: Path, port_range: PortRange, clock: SteppedClock
) -> None:
    result = portlease("lease", "3", "--ttl", "600", "--label", "pg")
    assert result.code == 0, result.err
    base = int(result.out)  # nothing else on stdout: PORT=$(portlease lease 3) must work
    assert result.out == f"{base}\n"
    assert port_range.low <= base <= port_range.high - 2
    (info,) = PortLeaser(lease_dir).status()
    assert (info.base, info.size, info.label, info.pid) == (base, 3, "pg", None)
    # Of this host, owned by no process: only its TTL ends it. Not "foreign", which is for
    # leases we cannot check (fedimint-portalloc's, another host's).
    assert info.state == "ttl-only"
    assert info.expires == math.ceil(clock.now + 600)
    table = portlease("status")
    (row,) = [line.split() for line in table.out.splitlines() if line.startswith(str(base))]
    assert row[4:6] == [hostname(), "ttl-only"]  # the host alone, not "@host"
    doc = json.loads(portlease("--json", "status").out)
    assert doc["leases"][0]["state"] == "ttl-only" and doc["by_state"]["ttl-only"] == 1
    assert doc["leases"][0]["owner"]["pid"] is None


def test_lease_in_process_leaks_no_descriptor(lease_dir: Path, port_range: PortRange) -> None:
    args = ["--dir", os.fspath(lease_dir), "--range", str(port_range), "lease"]
    assert main(args) == 0  # the first one creates the directory
    before = len(os.listdir("/proc/self/fd"))
    assert main(args) == 0
    assert len(os.listdir("/proc/self/fd")) == before
    assert len(PortLeaser(lease_dir).status()) == 2


def test_lease_json_gives_the_whole_block(portlease: Portlease, port_range: PortRange) -> None:
    result = portlease("--json", "lease", "2")
    doc = json.loads(result.out)
    assert doc["ports"] == [doc["base"], doc["base"] + 1]
    assert doc["env"]["PORTLEASE_PORTS"] == f"{doc['base']},{doc['base'] + 1}"
    assert (doc["size"], doc["label"], doc["owner_pid"]) == (2, "portlease lease", None)


def test_lease_with_owner_pid_ends_when_that_process_dies(
    portlease: Portlease, lease_dir: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    result = portlease("lease", "--owner-pid", str(sleeper.pid))
    assert result.code == 0, result.err
    base = int(result.out)
    assert leases(lease_dir) == {base: "live"}
    sleeper.kill()
    sleeper.wait()
    assert leases(lease_dir) == {base: "dead owner"}
    assert portlease("reclaim").out.startswith("reclaimed 1 lease\n")
    assert leases(lease_dir) == {}


def test_lease_rejects_an_owner_pid_that_is_not_running(portlease: Portlease, dead_pid: int) -> None:
    result = portlease("lease", "--owner-pid", str(dead_pid))
    assert result.code == 2
    assert result.err == (
        f"portlease: error: invalid --owner-pid {dead_pid}: no running process has that pid; "
        "pass the pid of the process that uses the ports, such as $$ in a shell\n"
    )


def test_lease_of_a_held_port_fails(portlease: Portlease, port_range: PortRange) -> None:
    port = free_ports(port_range, 2) + 1
    first = portlease("lease", "--port", str(port), "--label", "first")
    assert (first.code, first.out) == (0, f"{port}\n")
    again = portlease("lease", "2", "--port", str(port - 1))
    assert again.code == 1
    assert again.err.startswith(f"portlease: error: port {port - 1}-{port} ")
    assert "'first'" in again.err and again.err.endswith("or leave --port out\n")
    assert again.err.count("\n") == 1 and "Traceback" not in again.err


def test_lease_reports_an_exhausted_range(
    portlease: Portlease, lease_dir: Path, port_range: PortRange
) -> None:
    low = free_ports(port_range, 2)
    tiny = f"{low}-{low + 1}"
    assert portlease("--range", tiny, "lease", "2").code == 0
    result = portlease("--range", tiny, "lease", "1")
    assert result.code == 1
    assert f"no free block of 1 port(s) in range {tiny} (--range)" in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lease", "0"], "argument N: expected a number of ports >= 1, got '0'"),
        (["lease", "--ttl", "soon"], "invalid ttl 'soon' from --ttl"),
        (["lease", "--port", "70000"], "expected a port number from 1 to 65535"),
        (["--range", "9-2", "lease"], "invalid port range '9-2' from --range"),
        (["lease", "--owner-pid", "0"], "invalid --owner-pid 0"),
        (["bogus"], "invalid choice: 'bogus'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_usage_exits_2_with_one_line(portlease: Portlease, args: list[str], message: str) -> None:
    result = portlease(*args)
    assert result.code == 2
    assert message in result.err
    assert result.err.count("\n") == 1 and result.out == ""


def test_bad_setting_from_the_environment_names_it(monkeypatch: pytest.MonkeyPatch, lease_dir: Path) -> None:
    monkeypatch.setenv("PORTLEASE_RANGE", "2000")
    result = run_script("--dir", os.fspath(lease_dir), "status")
    assert result.code == 2
    assert "invalid port range '2000' from PORTLEASE_RANGE" in result.err


# -- renew -------------------------------------------------------------------------------------


def test_renew_extends_and_keeps_the_owner(
    portlease: Portlease, lease_dir: Path, sleeper: subprocess.Popen[bytes], clock: SteppedClock
) -> None:
    base = int(portlease("lease", "2", "--ttl", "5", "--owner-pid", str(sleeper.pid)).out)
    result = portlease("renew", str(base), "--ttl", "900")
    assert (result.code, result.out) == (0, f"renewed {base}-{base + 1} for 900s\n")
    (info,) = PortLeaser(lease_dir).status()
    assert info.pid == sleeper.pid and info.state == "live"
    assert info.expires == math.ceil(clock.now + 900)


def test_renew_fails_for_what_is_not_held(
    portlease: Portlease, lease_dir: Path, port_range: PortRange, clock: SteppedClock
) -> None:
    bases = write_mixed_state(lease_dir, port_range, clock.now)
    result = portlease("renew", str(bases["foreign"] + 1), str(bases["expired"]), str(bases["live"]))
    assert result.code == 1
    foreign = bases["foreign"]
    assert f"{foreign + 1} is inside lease {foreign}-{foreign + 3}: give its base, {foreign}" in result.err
    assert f"lease {bases['expired']} is expired" in result.err
    assert result.out.startswith(f"renewed {bases['live']}-")  # the one that is held is renewed
    assert portlease("renew", str(port_range.high)).code == 1


def test_renew_in_a_missing_directory_fails_and_creates_nothing(
    portlease: Portlease, lease_dir: Path, port_range: PortRange
) -> None:
    result = portlease("renew", str(port_range.low))
    assert result.code == 1 and "no lease starts at" in result.err
    assert not lease_dir.exists()


# -- release -----------------------------------------------------------------------------------


def test_release_by_base(portlease: Portlease, lease_dir: Path, port_range: PortRange, clock: SteppedClock) -> None:
    bases = write_mixed_state(lease_dir, port_range, clock.now)
    result = portlease("release", str(bases["foreign"]), str(bases["live"]))
    assert result.code == 0, result.err
    assert result.out.splitlines()[0].startswith(f"released {bases['live']}-{bases['live'] + 1} (live, ")
    assert set(leases(lease_dir)) == {bases["expired"], bases["dead owner"]}


def test_release_by_label_glob_and_by_pid(
    portlease: Portlease, lease_dir: Path, port_range: PortRange, sleeper: subprocess.Popen[bytes]
) -> None:
    for label in ("pg main", "pg replica", "redis"):
        portlease("lease", "--label", label)
    mine = int(portlease("lease", "--owner-pid", str(sleeper.pid)).out)
    result = portlease("release", "--label", "pg *")
    assert (result.code, result.out.count("released")) == (0, 2)
    assert portlease("release", "--pid", str(sleeper.pid)).code == 0
    assert [info.label for info in PortLeaser(lease_dir).status()] == ["redis"]
    assert mine not in leases(lease_dir)


def test_release_when_nothing_matches(portlease: Portlease, lease_dir: Path, port_range: PortRange) -> None:
    result = portlease("release", "--label", "nobody")
    assert result.code == 1
    assert result.err == (
        "portlease: error: no lease matched --label 'nobody': run `portlease status` to see the leases\n"
    )
    assert not lease_dir.exists()
    portlease("lease")
    assert portlease("release", str(port_range.high)).code == 1


@pytest.mark.parametrize("args", [[], ["20000", "--label", "x"], ["--pid", "1", "--label", "x"]])
def test_release_needs_exactly_one_selector(portlease: Portlease, args: list[str]) -> None:
    result = portlease("release", *args)
    assert result.code == 2
    assert "release takes exactly one of" in result.err


def test_verbose_shows_the_traceback(portlease: Portlease) -> None:
    quiet = portlease("release", "--label", "nobody")
    loud = portlease("-v", "release", "--label", "nobody")
    assert "Traceback" not in quiet.err
    assert "Traceback" in loud.err and loud.err.endswith(quiet.err)


# -- check -------------------------------------------------------------------------------------


def test_check_a_free_port(portlease: Portlease, lease_dir: Path, port_range: PortRange) -> None:
    port = free_ports(port_range, 1)
    result = portlease("check", str(port))
    assert (result.code, result.out) == (0, f"{port}: free: no lease holds it; it binds now\n")
    assert not lease_dir.exists()


def test_check_a_leased_port(portlease: Portlease, lease_dir: Path, port_range: PortRange, clock: SteppedClock) -> None:
    bases = write_mixed_state(lease_dir, port_range, clock.now)
    held = portlease("check", str(bases["live"] + 1))
    assert held.code == 1
    assert held.out.startswith(f"{bases['live'] + 1}: held by lease {bases['live']}-{bases['live'] + 1} (live, ")
    # A stale lease does not hold its ports: the next leaser reclaims it.
    stale = portlease("check", str(bases["expired"]))
    assert stale.code == 0, stale.out
    assert "will be reclaimed" in stale.out
    doc = json.loads(portlease("--json", "check", str(bases["foreign"] + 3)).out)
    assert (doc["free"], doc["held"], doc["binds"]) == (False, True, True)
    assert doc["leases"][0]["base"] == bases["foreign"]


def test_check_a_port_bound_by_a_foreign_process(portlease: Portlease, port_range: PortRange) -> None:
    port = free_ports(port_range, 1)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import socket, sys; s = socket.socket(); "
         f"s.bind(('127.0.0.1', {port})); s.listen(); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        result = portlease("check", str(port))
        assert result.code == 1
        assert result.out == f"{port}: bound outside portlease: no lease holds it; it does not bind now\n"
    finally:
        holder.communicate("")
    assert portlease("check", str(port)).code == 0


# -- reclaim -----------------------------------------------------------------------------------


def test_reclaim_drops_expired_and_dead_owner_leases(
    portlease: Portlease, lease_dir: Path, port_range: PortRange, clock: SteppedClock
) -> None:
    bases = write_mixed_state(lease_dir, port_range, clock.now)
    result = portlease("reclaim")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "reclaimed 2 leases"
    assert "(expired, " in lines[1] and "(dead owner, " in lines[2]
    assert leases(lease_dir) == {bases["live"]: "live", bases["foreign"]: "foreign"}
    again = json.loads(portlease("--json", "reclaim").out)
    assert again == {"reclaimed": 0, "leases": []}


def test_reclaim_in_a_missing_directory_creates_nothing(portlease: Portlease, lease_dir: Path) -> None:
    assert portlease("reclaim").out == "reclaimed 0 leases\n"
    assert not lease_dir.exists()


@pytest.mark.parametrize(
    "args", [["status"], ["check", "20000"], ["lease"], ["renew", "20000"], ["release", "20000"], ["reclaim"]]
)
def test_a_lease_directory_that_is_a_file_fails_every_command(
    portlease: Portlease, lease_dir: Path, args: list[str]
) -> None:
    lease_dir.write_text("not a directory")
    result = portlease(*args)
    assert result.code == 1
    assert result.err.startswith(f"portlease: error: lease directory {lease_dir} from --dir is not a directory")
    assert lease_dir.read_text() == "not a directory"


# -- the script itself -------------------------------------------------------------------------


def test_version(portlease: Portlease) -> None:
    result = portlease("--version")
    assert (result.code, result.out) == (0, f"portlease {__version__}\n")


def test_python_dash_m(lease_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_portlease", "--dir", os.fspath(lease_dir), "status"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0 and "no lease directory" in done.stdout


def test_the_default_directory_is_fedimints(tmp_path: Path) -> None:
    # conftest points XDG_CACHE_HOME into tmp_path: the default is <user cache dir>/fm-portalloc.
    doc = json.loads(run_script("--json", "status").out)
    assert doc["directory"] == str(tmp_path / "xdg-cache" / "fm-portalloc")
    assert doc["directory_source"] == "default"


def test_admin_commands_need_no_range_or_ttl(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], lease_dir: Path, port_range: PortRange,
    clock: SteppedClock,
) -> None:
    bases = write_mixed_state(lease_dir, port_range, clock.now)
    monkeypatch.setenv("PORTLEASE_TTL", "soon")
    monkeypatch.setenv("PORTLEASE_RANGE", "9-3")
    assert main(["--dir", os.fspath(lease_dir), "reclaim"]) == 0
    assert main(["--dir", os.fspath(lease_dir), "release", str(bases["live"])]) == 0
    assert capsys.readouterr().err == ""


def test_lease_help_does_not_promise_renewal() -> None:
    done = subprocess.run([os.fspath(SCRIPT), "lease", "--help"], capture_output=True, text=True, check=True)
    text = " ".join(done.stdout.split())
    assert "renewed every" not in text
    assert "never renewed unless you run `portlease renew`" in text


def test_lock_timeout_option_and_env(
    portlease: Portlease, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = portlease("--lock-timeout", "soon", "lease")
    assert result.code == 2
    assert "invalid lock timeout 'soon' from --lock-timeout: expected a number of seconds" in result.err
    monkeypatch.setenv("PORTLEASE_LOCK_TIMEOUT", "-3")
    result = portlease("lease")
    assert result.code == 2 and "invalid lock timeout '-3' from PORTLEASE_LOCK_TIMEOUT" in result.err


def test_an_explicit_empty_dir_is_bad_usage(portlease: Portlease) -> None:
    result = run_script("--dir", "", "status")
    assert result.code == 2
    assert "invalid lease directory '' from --dir: expected a directory path" in result.err
