"""Who holds a lease, and whether that process is provably dead.

An owner is the pid, the process start time, the hostname and a namespace identity. Only an
owner that shares our host, boot and PID namespace can be probed: its pid means the same process
to us. Anything else (another host, a container, a fedimint lease with no owner) is left to the
TTL, because "I can't see that pid" proves nothing there.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any, NamedTuple

#: A character ``json.dumps`` writes as it is: printable ASCII but the quote and the backslash.
PLAIN_CHAR = r"[\x20\x21\x23-\x5b\x5d-\x7e]"
_plain = re.compile(PLAIN_CHAR + "*").fullmatch


class Process(NamedTuple):
    """The identity of an owning process, without the label: what liveness is decided on."""

    pid: int
    start: int | None
    host: str
    ns: str


@dataclass(frozen=True)
class Owner:
    pid: int | None
    start: int | None
    host: str
    ns: str
    label: str
    #: The run this lease belongs to (pytest-xdist's testrunuid, the same in every worker), or "".
    run: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.pid is not None:
            data["pid"] = self.pid
        if self.start is not None:
            data["start"] = self.start
        data["host"] = self.host
        data["ns"] = self.ns
        data["label"] = self.label
        if self.run:
            data["run"] = self.run
        return data

    @classmethod
    def from_json(cls, data: object) -> Owner | None:
        """The owner recorded in a state file, or None when it is malformed."""
        if not isinstance(data, dict):
            return None
        pid, start = data.get("pid"), data.get("start")
        host, ns, label = data.get("host", ""), data.get("ns", ""), data.get("label", "")
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (pid, start)):
            return None
        if pid is not None and pid <= 0:
            return None  # no process has it: reading it as one would make the range look dead
        if not all(isinstance(v, str) for v in (host, ns, label)):
            return None
        run = data.get("run", "")
        return cls(pid, start, host, ns, label, run if isinstance(run, str) else "")

    @classmethod
    def of(cls, process: Process, label: str, run: str = "") -> Owner:
        """The owner that is ``process`` (which it then shares) with ``label`` and ``run``."""
        # Its fields set at once, as ``Entry.with_line`` does; ``process`` is where
        # ``cached_property`` keeps it.
        owner = object.__new__(cls)
        pid, start, host, ns = process
        owner.__dict__.update(pid=pid, start=start, host=host, ns=ns, label=label, run=run, process=process)
        return owner

    @property
    def plain(self) -> bool:
        """Does ``to_json`` encode as ``json.dumps`` would without escapes: a pid and a start,
        and strings of printable ASCII with no quote or backslash?"""
        text = self.host + self.ns + self.label + self.run
        return self.pid is not None and self.start is not None and _plain(text) is not None

    @cached_property
    def process(self) -> Process | None:
        """The owning process, or None for a lease that no process owns (TTL only)."""
        return None if self.pid is None else Process(self.pid, self.start, self.host, self.ns)



def _read(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("ascii", "replace")


@cache
def namespace() -> str:
    """This host's boot id and our PID namespace, or "" where they cannot be read (non-Linux).

    A pid only names the same process to two observers that share the boot (pids restart at boot)
    and the PID namespace (containers renumber pids).
    """
    if not proc_is_ours():
        return ""
    boot = _read("/proc/sys/kernel/random/boot_id")
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot.strip()}/{pidns}" if boot else ""


def proc_is_ours() -> bool:
    """Whether /proc describes our own PID namespace.

    A process in a PID namespace that mounts no /proc of its own (``unshare --pid --fork``
    without ``--mount-proc``, some containers) sees the host's: /proc/self resolves to its pid
    in the host's namespace, and /proc/<pid> of a pid of ours is some other process, or none.
    There, no owner can be checked at all.
    """
    try:
        return os.readlink("/proc/self") == str(os.getpid())
    except OSError:
        return False


@cache
def hostname() -> str:
    return socket.gethostname()


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (proc(5) field 22), or None if gone.

    A zombie counts as gone: it has exited, and its sockets are closed.
    """
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # comm, field 2, may contain spaces and parentheses; the fields after the last ')' are plain.
    fields = stat[stat.rfind(")") + 2 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def owner_for(pid: int | None, label: str, run: str = "") -> Owner:
    """An owner record for ``pid`` on this host (None: the lease has no owning process)."""
    if pid is None or not namespace():
        start = None  # nothing to check it with: /proc would name another process
    elif pid == os.getpid():
        start = _own_start(pid)
    else:
        start = process_start(pid)
    return Owner(pid, start, hostname(), namespace(), label, run)


@cache
def _own_start(pid: int) -> int | None:
    return process_start(pid)  # keyed by pid, so a forked child looks itself up afresh


def process_state(process: Process) -> str:
    """``live``, ``dead owner``, or ``foreign`` when we cannot see the process.

    Dead is proven only for a process that shares our host, boot and PID namespace and whose pid
    is gone or now belongs to a process that started at another time (pid reuse).
    """
    ns = namespace()
    if not ns or process.ns != ns or process.host != hostname():
        return "foreign"
    pid = process.pid
    start = _own_start(pid) if pid == os.getpid() else process_start(pid)
    alive = start is not None and (process.start is None or start == process.start)
    return "live" if alive else "dead owner"


def lock_holder_pid(lock_path: Path) -> int | None:
    """The pid holding a flock on ``lock_path``, read from /proc/locks (Linux), else None."""
    return lock_holders(lock_path)[0]


def lock_holders(lock_path: Path) -> tuple[int | None, list[int]]:
    """The pid holding a flock on ``lock_path`` and the pids blocked waiting for it (Linux).

    /proc/locks prints ``1: FLOCK ADVISORY WRITE <pid> <major>:<minor>:<inode> 0 EOF`` for a
    lock, and the same after ``1: ->`` for each process blocked on it; the device is in hex.
    """
    try:
        st = os.stat(lock_path)
    except OSError:
        return None, []
    text = _read("/proc/locks")
    if not text:
        return None, []
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    holder: int | None = None
    waiters: list[int] = []
    for line in text.splitlines():
        parts = line.split()
        blocked = "->" in parts
        if blocked:
            parts.remove("->")
        if "FLOCK" in parts and len(parts) >= 6 and parts[5] == want and parts[4].isdigit():
            if blocked:
                waiters.append(int(parts[4]))
            elif holder is None:
                holder = int(parts[4])
    return holder, waiters


def describe_process(pid: int) -> tuple[str | None, str | None]:
    """The command line of ``pid`` (shortened) and its state letter (proc(5): R running,
    S sleeping, D disk wait, T stopped, t traced), each None where /proc does not say."""
    raw = _read(f"/proc/{pid}/cmdline")
    cmd = " ".join(raw.replace("\0", " ").split()) if raw else None  # one line, whatever argv holds
    if cmd and len(cmd) > 120:
        cmd = cmd[:117] + "..."
    stat = _read(f"/proc/{pid}/stat")
    fields = stat[stat.rfind(")") + 2 :].split() if stat else []
    return cmd or None, fields[0] if fields else None
