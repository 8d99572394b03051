"""What the registry says, found by mutation testing of ``_status``: each lease state against real
processes (ours, a reaped child, a recycled pid), reclaim's choices, and reading the state
without the lock while a real child holds it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_portlease import PortleaseError, PortleaseWarning, _owner, _status
from pytest_portlease._owner import Owner
from pytest_portlease._state import STATE_NAME, Entry, State
from pytest_portlease._status import LeaseInfo, lease_info, lease_infos, lease_state, reclaim

NOW = 1_000_000.5
#: Under mutmut, a trampoline of its own (outside the package) sits between each of our functions
#: and its caller, so no warning can point at the test there: where it points is checked outside it.
UNDER_MUTMUT = "MUTANT_UNDER_TEST" in os.environ


def alive(label: str = "me") -> Owner:
    owner = _owner.owner_for(os.getpid(), label)
    assert owner.start is not None, "this host's /proc names our own start time"
    return owner


@pytest.fixture(scope="module")
def gone_pid() -> int:
    """The pid of a child that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert child.wait() == 0
    return child.pid


def dead(pid: int, label: str = "gone") -> Owner:
    return Owner(pid, 12345, _owner.hostname(), _owner.namespace(), label)


def recycled() -> Owner:
    me = alive()
    assert me.start is not None
    return Owner(me.pid, me.start + 1, me.host, me.ns, "recycled")


def elsewhere(pid: int = 1) -> Owner:
    return Owner(pid, 1, "another-host", "x", "far")


def state(*entries: Entry) -> State:
    return State(0, {e.base: e for e in entries}, {})


# -- lease_state ----------------------------------------------------------------------------------


def test_each_state_of_a_lease(gone_pid: int) -> None:
    assert lease_state(Entry(1, 1, NOW + 1, alive()), NOW) == "live"
    assert lease_state(Entry(1, 1, NOW - 1, alive()), NOW) == "live"  # alive holds past expiry
    assert lease_state(Entry(1, 1, NOW + 1, dead(gone_pid)), NOW) == "dead owner"
    assert lease_state(Entry(1, 1, NOW + 1, recycled()), NOW) == "dead owner"
    assert lease_state(Entry(1, 1, NOW, dead(gone_pid)), NOW) == "expired"
    assert lease_state(Entry(1, 1, NOW + 1, elsewhere()), NOW) == "foreign"
    assert lease_state(Entry(1, 1, NOW, elsewhere()), NOW) == "expired"
    assert lease_state(Entry(1, 1, NOW + 1), NOW) == "foreign"
    assert lease_state(Entry(1, 1, NOW), NOW) == "expired"
    assert lease_state(Entry(1, 1, NOW - 0.5), NOW) == "expired"


def test_an_owner_without_a_pid_is_ttl_only_on_this_host_and_foreign_elsewhere() -> None:
    here = _owner.owner_for(None, "cli")
    assert lease_state(Entry(1, 1, NOW + 1, here), NOW) == "ttl-only"
    assert lease_state(Entry(1, 1, NOW, here), NOW) == "expired"
    other_host = Owner(None, None, "another-host", here.ns, "cli")
    other_ns = Owner(None, None, here.host, "another-namespace", "cli")
    assert lease_state(Entry(1, 1, NOW + 1, other_host), NOW) == "foreign"
    assert lease_state(Entry(1, 1, NOW + 1, other_ns), NOW) == "foreign"


def test_a_live_co_owner_holds_a_merged_range(gone_pid: int) -> None:
    merged = Entry(1, 1, NOW - 5, None, co_owners=(dead(gone_pid), alive()))
    assert lease_state(merged, NOW) == "live"
    assert lease_state(Entry(1, 1, NOW - 5, None, co_owners=(dead(gone_pid),)), NOW) == "expired"
    assert lease_state(Entry(1, 1, NOW + 5, dead(gone_pid), co_owners=(alive(),)), NOW) == "live"


def test_the_verdicts_of_one_pass_are_looked_up_once_and_then_reused() -> None:
    me = alive()
    assert me.process is not None
    seen: _status.Verdicts = {}
    assert lease_state(Entry(1, 1, NOW + 1, me), NOW, seen) == "live"
    assert seen == {me.process: "live"}
    # A verdict already in ``seen`` is the one used: the process is not looked up again.
    seen[me.process] = "dead owner"
    assert lease_state(Entry(2, 1, NOW + 1, me), NOW, seen) == "dead owner"
    assert lease_state(Entry(2, 1, NOW + 1, None, co_owners=(me,)), NOW, seen) == "foreign"


# -- lease_info -----------------------------------------------------------------------------------


def test_lease_info_shows_the_owner_or_the_live_co_owner(gone_pid: int) -> None:
    me = Owner(os.getpid(), alive().start, _owner.hostname(), _owner.namespace(), "mine", "run-1")
    info = lease_info(Entry(100, 3, NOW + 1, me), NOW)
    assert info == LeaseInfo(100, 3, NOW + 1, me.pid, me.start, me.host, me.ns, "mine", "live", "run-1")
    assert info.end == 102
    shown = lease_info(Entry(100, 1, NOW - 1, None, co_owners=(dead(gone_pid), me)), NOW)
    assert (shown.pid, shown.label, shown.state, shown.run) == (me.pid, "mine", "live", "run-1")
    nobody = lease_info(Entry(100, 1, NOW + 1), NOW)
    assert nobody == LeaseInfo(100, 1, NOW + 1, None, None, "", "", "", "foreign", "")
    assert lease_info(Entry(100, 1, NOW - 1, None, co_owners=(dead(gone_pid),)), NOW).pid is None


def test_lease_infos_are_by_base() -> None:
    s = state(Entry(300, 1, NOW + 1), Entry(100, 2, NOW - 1))
    assert [(i.base, i.state) for i in lease_infos(s, NOW)] == [(100, "expired"), (300, "foreign")]
    assert lease_infos(state(), NOW) == []


# -- reclaim --------------------------------------------------------------------------------------


def test_reclaim_drops_the_dead_and_the_expired_and_renews_the_alive(gone_pid: int) -> None:
    me = alive()
    s = state(
        Entry(100, 1, NOW + 100, dead(gone_pid)),  # dead: dropped before its expiry
        Entry(200, 1, NOW, None),  # expired, no owner: dropped
        Entry(300, 1, NOW - 10, me),  # expired, alive: kept and renewed
        Entry(400, 1, NOW + 0.5, None),  # not expired: kept as is
        Entry(500, 1, NOW - 10, None, co_owners=(dead(gone_pid), me)),  # a live co-owner holds it
        Entry(600, 1, NOW - 10, recycled()),  # pid reused: dead
        Entry(700, 1, NOW + 100, elsewhere()),  # foreign, not expired: kept
    )
    dropped = reclaim(s, NOW, ttl=30)
    assert [e.base for e in dropped] == [100, 200, 600]
    assert s.bases == [300, 400, 500, 700]
    assert s.entries[300].expires == math.ceil(NOW + 30)
    assert s.entries[500].expires == math.ceil(NOW + 30)
    assert s.entries[400].expires == NOW + 0.5
    assert s.soonest == NOW + 0.5
    assert s.dirty


def test_reclaim_with_nothing_dead_or_expired_changes_nothing() -> None:
    me = alive()
    s = state(Entry(100, 1, NOW + 1, me), Entry(200, 1, NOW + 2, elsewhere()))
    assert reclaim(s, NOW) == []
    assert not s.dirty and s.bases == [100, 200]
    # At the soonest expiry itself, the range is expired.
    assert [e.base for e in reclaim(s, NOW + 2)] == [200]
    assert s.bases == [100] and s.entries[100].expires == math.ceil(NOW + 2 + 120)
    assert s.soonest == math.ceil(NOW + 2 + 120)


def test_reclaim_of_a_dead_owner_runs_even_before_any_expiry(gone_pid: int) -> None:
    s = state(Entry(100, 1, NOW + 100, dead(gone_pid)), Entry(200, 1, NOW + 100, None))
    assert [e.base for e in reclaim(s, NOW)] == [100]
    assert s.soonest == NOW + 100
    s = state(Entry(100, 1, NOW + 100, dead(gone_pid)))
    reclaim(s, NOW)
    assert s.soonest == math.inf


def test_reclaim_at_the_soonest_expiry_itself() -> None:
    s = state(Entry(100, 1, NOW, elsewhere()), Entry(200, 1, NOW + 1))
    assert s.soonest == NOW
    assert [e.base for e in reclaim(s, NOW)] == [100]  # live while now < expires: expired now


def test_reclaim_of_an_expired_ttl_only_lease() -> None:
    s = state(Entry(100, 1, NOW - 1, _owner.owner_for(None, "cli")))
    assert [e.base for e in reclaim(s, NOW)] == [100]


# -- reading the state without changing it --------------------------------------------------------


def write(directory: Path, doc: object) -> None:
    directory.mkdir(exist_ok=True)
    (directory / STATE_NAME).write_text(json.dumps(doc))


def flock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A child holding the flock of ``tmp_path/lock`` until its stdin closes."""
    (tmp_path / "lock").touch()
    code = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, os.fspath(tmp_path / "lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        try:
            assert child.stdout.readline() == "locked\n"
            yield tmp_path, child
        finally:
            child.stdin.close()
            child.wait(timeout=60)


def test_no_state_file_is_no_state(tmp_path: Path) -> None:
    assert _status.read_state(tmp_path) is None
    assert _status.read_state_seen(tmp_path / "missing") == (None, None)
    assert _status.read_status(tmp_path) == []


def test_a_state_without_a_lock_file_is_read_and_the_lock_is_left_free(tmp_path: Path) -> None:
    write(tmp_path, {"next": 0, "keys": {"100": {"size": 2, "expires": 4_000_000_000}}})
    loaded, busy = _status.read_state_seen(tmp_path, lock_wait=0)
    assert busy is None and loaded is not None and sorted(loaded.state.entries) == [100]
    assert not (tmp_path / "lock").exists()  # reads only
    (tmp_path / "lock").touch()
    loaded, busy = _status.read_state_seen(tmp_path, lock_wait=0)
    assert busy is None and loaded is not None and sorted(loaded.state.entries) == [100]
    assert flock_is_free(tmp_path / "lock")  # the reader's descriptor, and so its flock, is gone


def test_a_held_lock_is_read_past_and_its_holder_named(lock_holder: tuple[Path, subprocess.Popen[str]]) -> None:
    directory, child = lock_holder
    write(directory, {"next": 0, "keys": {"100": {"size": 2, "expires": 4_000_000_000}}})
    loaded, busy = _status.read_state_seen(directory, "PORTLEASE_DIR", lock_wait=0)
    assert loaded is not None and sorted(loaded.state.entries) == [100]
    assert busy is not None
    assert busy.pid == child.pid
    assert busy.command.startswith(f"{sys.executable} -c import fcntl")
    assert busy.command.endswith(os.fspath(directory / "lock"))
    assert 0 <= busy.waited < 60
    assert _status.read_state(directory, "PORTLEASE_DIR") is not None


def test_a_lease_directory_that_is_a_file_is_an_error_never_no_state(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(PortleaseError) as info:
        _status.read_state_seen(afile, "--dir")
    assert str(info.value) == f"cannot read lease directory {afile} from --dir (Not a directory): check the path"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_permission_error_asks_for_access() -> None:
    error = _status._unreadable(Path("/x"), "PORTLEASE_DIR", PermissionError(errno.EACCES, "Permission denied"))
    assert str(error) == (
        "cannot read lease directory /x from PORTLEASE_DIR (Permission denied): ask the directory's owner for "
        "access (a shared directory wants a group, see the README), or choose a directory of your own"
    )
    error = _status._unreadable(Path("/x"), "s", PermissionError(errno.EPERM, "Operation not permitted"))
    assert "ask the directory's owner" in str(error)


def test_check_readable_directory(tmp_path: Path) -> None:
    assert _status.check_readable_directory(tmp_path, "--dir") is True
    assert _status.check_readable_directory(tmp_path / "missing", "--dir") is False
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(PortleaseError) as info:
        _status.check_readable_directory(afile, "--dir")
    assert str(info.value) == f"lease directory {afile} from --dir is not a directory: point it at a directory"
    with pytest.raises(PortleaseError) as info:
        _status.check_readable_directory(afile / "sub", "PORTLEASE_DIR")
    assert str(info.value) == (
        f"cannot read lease directory {afile / 'sub'} from PORTLEASE_DIR (Not a directory): check the path"
    )


def test_process_command(gone_pid: int) -> None:
    assert _status.process_command(None) == ""
    assert _status.process_command(gone_pid) == ""
    code = "import sys; print('ready', flush=True); sys.stdin.read()"
    with command_of([sys.executable, "-c", code, "one", "two words"]) as command:
        assert command == f"{sys.executable} -c {code} one two words"


def test_process_command_reads_4096_bytes_and_replaces_what_is_not_utf8() -> None:
    code = "import sys; print('ready', flush=True); sys.stdin.read()"
    argv = [sys.executable, "-c", code, "x" * 5000]
    with command_of(argv) as command:
        assert command == " ".join(argv)[:4096]
    with command_of([os.fsencode(sys.executable), b"-c", code.encode(), b"caf\xe9"]) as command:
        assert command == f"{sys.executable} -c {code} caf\ufffd"


@contextlib.contextmanager
def command_of(argv: list[str] | list[bytes]) -> Iterator[str]:
    """``process_command`` of a child running ``argv``, read once the child runs: Popen returns
    while execve is still under way, and /proc/PID/cmdline is complete only after it."""
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline() == "ready\n"
            yield _status.process_command(child.pid)
        finally:
            child.stdin.close()
            child.wait(timeout=60)


def test_read_status_warns_each_problem_at_the_caller(tmp_path: Path) -> None:
    write(tmp_path, {"next": 0, "keys": {"100": {"size": 2, "expires": 4_000_000_000}, "x": 1}})
    with pytest.warns(PortleaseWarning) as caught:
        infos = _status.read_status(tmp_path, "--dir")
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / STATE_NAME}: dropped 1 range (the key is not a port number from 0 to 65535): 'x'"
    ]
    assert UNDER_MUTMUT or caught[0].filename == __file__
    assert [(i.base, i.size, i.state) for i in infos] == [(100, 2, "foreign")]


def test_each_reader_names_its_source_and_argument_by_default(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("")
    message = f"cannot read lease directory {afile} from {{}} (Not a directory): check the path"
    for read in (_status.read_state, _status.read_state_seen, _status.read_status):
        with pytest.raises(PortleaseError) as info:
            read(afile)
        assert str(info.value) == message.format("argument")
        with pytest.raises(PortleaseError) as info:
            read(afile, "--dir")
        assert str(info.value) == message.format("--dir")


def test_a_state_that_is_a_directory_is_named_with_its_source(tmp_path: Path) -> None:
    (tmp_path / STATE_NAME).mkdir()
    with pytest.raises(PortleaseError) as info:
        _status.read_state_seen(tmp_path, "PORTLEASE_DIR", lock_wait=0)
    assert str(info.value) == (
        f"lease directory {tmp_path} from PORTLEASE_DIR holds a {STATE_NAME} that is not a file: remove it"
    )


def test_the_verdicts_of_one_pass_hold_for_co_owners_and_what_is_shown(gone_pid: int) -> None:
    gone = dead(gone_pid, "held")
    assert gone.process is not None
    seen: _status.Verdicts = {gone.process: "live"}  # as this pass found it
    merged = Entry(100, 1, NOW - 1, None, co_owners=(gone,))
    assert lease_state(merged, NOW, seen) == "live"
    info = lease_info(merged, NOW, seen)
    assert (info.pid, info.label, info.state) == (gone_pid, "held", "live")
    assert lease_info(merged, NOW).state == "expired"  # looked up afresh: dead, and expired


def test_a_fifo_at_the_lock_name_does_not_hang_a_reader(tmp_path: Path) -> None:
    write(tmp_path, {"next": 0, "keys": {"100": {"size": 2, "expires": 4_000_000_000}}})
    os.mkfifo(tmp_path / "lock")
    loaded, _ = _status.read_state_seen(tmp_path, lock_wait=0)
    assert loaded is not None and sorted(loaded.state.entries) == [100]


def test_a_symlink_at_the_lock_name_is_not_followed(lock_holder: tuple[Path, subprocess.Popen[str]]) -> None:
    held, _ = lock_holder
    directory = held / "leases"
    write(directory, {"next": 0, "keys": {}})
    (directory / "lock").symlink_to(held / "lock")  # a lock held by the child, reached by a link
    loaded, busy = _status.read_state_seen(directory, lock_wait=0)
    assert loaded is not None and busy is None  # the link is no lock: read without it
