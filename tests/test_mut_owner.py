"""What /proc tells about other processes: start times, command lines, states, lock holders.

Each test runs real child processes and checks ``_owner``'s reading against what the test
itself arranged (a command line of a known length, a name with parentheses, a zombie, a lock
held by one child and waited for by two others).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_portlease import _owner

# A child that renames itself (proc(5): comm, 15 bytes at most), says so, and waits for stdin.
_NAMED = """
import sys
with open("/proc/self/comm", "w") as f:
    f.write(sys.argv[1])
print("ready", flush=True)
sys.stdin.read()
"""

# A child that takes a flock on the file named by argv[1] (blocking), says so, and waits.
_LOCKER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
print("open", flush=True)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def _child(*argv: str, kill: bool = False) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if kill:  # a child blocked in flock(2) reads no stdin
            proc.kill()
        proc.communicate("", timeout=60)  # closes stdin (the child's cue to end) and reaps it


def _read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def test_this_process_sees_its_own_proc() -> None:
    # The oracle: /proc/self/stat's first field is the pid /proc believes is us.
    own = int(Path("/proc/self/stat").read_text().split()[0])
    assert _owner.proc_is_ours() is (own == os.getpid())
    assert own == os.getpid(), "the suite runs in a PID namespace with a /proc of its own"


def test_a_start_time_is_in_clock_ticks_since_boot() -> None:
    with _child("-c", _NAMED, "python3") as proc:
        assert _read_line(proc) == "ready"
        start = _owner.process_start(proc.pid)
        assert start is not None
        since_boot = start / os.sysconf("SC_CLK_TCK")
        assert abs(time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot) < 120  # started just now


def test_a_name_with_parentheses_and_spaces_does_not_shift_the_fields() -> None:
    with _child("-c", _NAMED, "python3") as proc:
        assert _read_line(proc) == "ready"
        before = _owner.process_start(proc.pid)
    with _child("-c", _NAMED, "x) 1 2 ) 3 4 5") as proc:
        assert _read_line(proc) == "ready"
        assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "x) 1 2 ) 3 4 5"
        start = _owner.process_start(proc.pid)
        assert start is not None and before is not None
        assert 0 <= start - before < 120 * os.sysconf("SC_CLK_TCK")
        deadline = time.monotonic() + 30
        while _owner.describe_process(proc.pid)[1] != "S":  # it blocks reading stdin in its time
            assert _owner.describe_process(proc.pid)[1] == "R", "the state is not the field after the name"
            assert time.monotonic() < deadline, "the child never blocked reading stdin"
            time.sleep(0.01)


def test_a_gone_process_is_described_as_unknown() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert _owner.process_start(proc.pid) is None
    assert _owner.describe_process(proc.pid) == (None, None)


def test_a_zombie_has_no_command_line_and_state_z() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        # Not reaped yet: waitid with WNOWAIT waits for the exit and leaves the zombie in place.
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        assert _owner.describe_process(proc.pid) == (None, "Z")
        assert _owner.process_start(proc.pid) is None  # a zombie counts as gone
    finally:
        proc.wait()


def _command_of_length(length: int) -> list[str]:
    code = "import sys;print(1,flush=True);sys.stdin.read()"
    head = " ".join([sys.executable, "-c", code, ""])
    assert len(head) < length
    return ["-c", code, "x" * (length - len(head))]


def test_a_command_line_of_120_characters_is_kept_whole() -> None:
    argv = _command_of_length(120)
    with _child(*argv) as proc:
        assert _read_line(proc) == "1"
        expected = " ".join([sys.executable, *argv])
        assert len(expected) == 120
        assert _owner.describe_process(proc.pid)[0] == expected


def test_a_longer_command_line_is_cut_to_120_characters() -> None:
    argv = _command_of_length(121)
    with _child(*argv) as proc:
        assert _read_line(proc) == "1"
        whole = " ".join([sys.executable, *argv])
        assert _owner.describe_process(proc.pid)[0] == whole[:117] + "..."


def test_lock_holders_names_the_holder_and_each_waiter_of_that_file_only(tmp_path: Path) -> None:
    mine, other = tmp_path / "lock", tmp_path / "other-lock"
    mine.touch()
    other.touch()
    with contextlib.ExitStack() as stack:
        # The unrelated lock is taken first, and newer locks come first in /proc/locks.
        unrelated = stack.enter_context(_child("-c", _LOCKER, os.fspath(other), kill=True))
        assert [_read_line(unrelated), _read_line(unrelated)] == ["open", "locked"]
        holder = stack.enter_context(_child("-c", _LOCKER, os.fspath(mine), kill=True))
        assert [_read_line(holder), _read_line(holder)] == ["open", "locked"]
        waiters = [stack.enter_context(_child("-c", _LOCKER, os.fspath(mine), kill=True)) for _ in range(2)]
        for waiter in waiters:
            assert _read_line(waiter) == "open"
        deadline = time.monotonic() + 30
        while len(_owner.lock_holders(mine)[1]) < 2:  # the waiters reach flock(2) in their time
            assert time.monotonic() < deadline, "the waiters never blocked"
            time.sleep(0.01)
        held_by, waiting = _owner.lock_holders(mine)
        assert (held_by, sorted(waiting)) == (holder.pid, sorted(w.pid for w in waiters))
        assert _owner.lock_holders(other) == (unrelated.pid, [])
        assert _owner.lock_holder_pid(mine) == holder.pid


def test_an_owner_record_without_host_ns_or_label_reads_them_as_empty() -> None:
    assert _owner.Owner.from_json({"pid": 7, "start": 9}) == _owner.Owner(7, 9, "", "", "", "")
    assert _owner.Owner.from_json({}) == _owner.Owner(None, None, "", "", "", "")


@pytest.mark.parametrize("run", [5, None, ["r"]])
def test_an_owner_record_whose_run_is_not_a_string_reads_it_as_no_run(run: object) -> None:
    assert _owner.Owner.from_json({"pid": 7, "start": 9, "run": run}) == _owner.Owner(7, 9, "", "", "", "")


def test_owner_of_a_process_keeps_each_field_and_shares_the_process() -> None:
    process = _owner.Process(123, 456, "host-a", "boot/ns")
    owner = _owner.Owner.of(process, "label-b")
    assert owner == _owner.Owner(123, 456, "host-a", "boot/ns", "label-b", "")
    assert owner.process is process  # preset, not built again from the fields
    assert _owner.Owner.of(process, "label-b", "run-c").run == "run-c"
    # Built without the dataclass's __init__: every field is there, as __init__ would set it.
    built = _owner.Owner(123, 456, "host-a", "boot/ns", "label-b", "run-c")
    assert vars(_owner.Owner.of(process, "label-b", "run-c")) == {**vars(built), "process": process}
    assert hash(owner) == hash(_owner.Owner(123, 456, "host-a", "boot/ns", "label-b", ""))


def test_a_file_longer_than_one_read_comes_back_whole_with_bytes_beyond_ascii_replaced(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"a" * 70_000 + b"\xff" + b"b" * 70_000)
    assert _owner._read(os.fspath(path)) == "a" * 70_000 + "\ufffd" + "b" * 70_000


def test_no_proc_of_ours_where_proc_self_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(path: str) -> str:
        raise FileNotFoundError(path)  # no /proc mounted

    monkeypatch.setattr(os, "readlink", unreadable)
    assert _owner.proc_is_ours() is False


@pytest.mark.parametrize(("state", "start"), [("S", 4242), ("R", 4242), ("Z", None), ("X", None)])
def test_the_start_time_is_field_22_of_a_stat_with_no_fields_after_it(
    monkeypatch: pytest.MonkeyPatch, state: str, start: int | None
) -> None:
    # proc(5): fields 3 (the state) to 22 (the start time) after "pid (comm) ", nothing after.
    stat = "99 (a b) " + " ".join([state, *(["0"] * 18), "4242"])
    monkeypatch.setattr(_owner, "_read", lambda path: stat if path == "/proc/99/stat" else None)
    assert _owner.process_start(99) == start
    monkeypatch.setattr(_owner, "_read", lambda path: stat.rsplit(" ", 1)[0])  # field 22 missing
    assert _owner.process_start(99) is None
