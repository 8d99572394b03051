"""What the registry says: the state of each lease, reclaim of the dead ones, and reading the
state without creating or changing anything (``status()``, ``portlease status``)."""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import stat
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import _clock, _lock, _owner
from ._config import DEFAULT_TTL
from ._parse import Loaded, parse_tolerant
from ._state import STATE_NAME, Entry, State, outside_package
from ._store import Store
from .errors import PortleaseError, PortleaseWarning

log = logging.getLogger("pytest_portlease")


@dataclass(frozen=True)
class LeaseInfo:
    """One range of the state file, as ``status()`` and ``portlease status`` show it.

    ``state`` is ``live`` (owner known alive), ``ttl-only`` (ours, of this host, with no pid to
    check: only its TTL ends it), ``foreign`` (not expired, owner unknown: none recorded, or
    another host or namespace), ``dead owner`` (provably dead) or ``expired``. ``run`` is the
    run the lease belongs to (pytest-xdist's testrunuid), or "".
    """

    base: int
    size: int
    expires: float
    pid: int | None
    start: int | None
    host: str
    ns: str
    label: str
    state: str
    run: str = ""

    @property
    def end(self) -> int:
        return self.base + self.size - 1


Verdicts = dict[_owner.Process, str]


def lease_state(entry: Entry, now: float, seen: Verdicts | None = None) -> str:
    """``live``, ``ttl-only``, ``foreign``, ``dead owner`` or ``expired`` (see ``LeaseInfo``).

    An owner provably alive holds its lease whatever ``expires`` says: a clock step, a suspend
    or a missing heartbeat does not make a running process let go of its ports. ``seen`` carries
    the verdicts of one pass over the state, so that each owner process is looked up in /proc
    once however many ranges it holds.
    """
    process = entry.process
    verdict = _without_pid(entry) if process is None else _verdict(process, seen)
    if verdict == "live" or _live_co_owner(entry, seen) is not None:
        return "live"
    return "expired" if entry.expires <= now else verdict


def _verdict(process: _owner.Process, seen: Verdicts | None) -> str:
    if seen is None:
        return _owner.process_state(process)
    if (verdict := seen.get(process)) is None:
        verdict = seen[process] = _owner.process_state(process)
    return verdict


def _live_co_owner(entry: Entry, seen: Verdicts | None) -> _owner.Owner | None:
    return next((o for o in entry.co_owners if o.process and _verdict(o.process, seen) == "live"), None)


def _without_pid(entry: Entry) -> str:
    # `portlease lease` without --owner-pid records our host and namespace but no pid: a lease
    # of this host that only its TTL ends. No owner at all is fedimint-portalloc's, or unknown.
    owner = entry.owner
    if owner is not None and owner.host == _owner.hostname() and owner.ns == _owner.namespace():
        return "ttl-only"
    return "foreign"


def lease_info(entry: Entry, now: float, seen: Verdicts | None = None) -> LeaseInfo:
    # A merged range without an owner shows the co-owner that holds it, if one is alive.
    owner = entry.owner or _live_co_owner(entry, seen) or _owner.Owner(None, None, "", "", "")
    return LeaseInfo(
        entry.base, entry.size, entry.expires, owner.pid, owner.start, owner.host, owner.ns,
        owner.label, lease_state(entry, now, seen), owner.run,
    )


def lease_infos(state: State, now: float) -> list[LeaseInfo]:
    """Every range of ``state``, by base."""
    seen: Verdicts = {}
    return [lease_info(state.entries[base], now, seen) for base in state.bases]


def reclaim(state: State, now: float, ttl: float = DEFAULT_TTL) -> list[Entry]:
    """Drop ranges whose owner is provably dead, and expired ranges whose owner cannot be
    checked; return them. An expired range whose owner is provably alive is kept, its
    ``expires`` moved to ``now + ttl`` so that fedimint-portalloc, which knows only the TTL,
    respects it too.

    Runs in every lease, so it looks at each owning process once, and at every range only when
    one of them died or some range may have expired.
    """
    verdicts = {p: _owner.process_state(p) for p in state.processes}
    if "dead owner" not in verdicts.values() and now < state.soonest:
        return []
    dropped = []
    for entry in list(state.entries.values()):
        verdict = "foreign" if entry.process is None else verdicts[entry.process]
        if any(verdicts[p] == "live" for p in entry.processes):
            verdict = "live"  # a co-owner of a merged range (see _parse.merge)
        if verdict == "dead owner" or (entry.expires <= now and verdict != "live"):
            dropped.append(entry)
            state.remove(entry.base)
            log.debug("reclaimed %s-%s (%s)", entry.base, entry.end, verdict if verdict != "live" else "expired")
        elif entry.expires <= now:
            state.add(dataclasses.replace(entry, expires=math.ceil(now + ttl)))
            log.debug("kept %s-%s past its expiry: its owner is alive", entry.base, entry.end)
    state.soonest = min((e.expires for e in state.entries.values()), default=math.inf)
    return dropped


@dataclass(frozen=True)
class LockBusy:
    """The lock as a reader found it when it could not take it: who holds it, and how long the
    reader waited before reading without it."""

    pid: int | None
    command: str
    waited: float


#: How long a reader waits for the lock before it reads without it. A leaser holds it for about
#: 100 us; only a stopped or very busy holder keeps a reader waiting this long.
READ_LOCK_WAIT = 1.0


def read_state(directory: Path, source: str = "argument") -> Loaded | None:
    """The state in ``directory`` (set by ``source``) with its problems, read without creating
    or changing anything (no backup, no warning); None when there is no state file."""
    return read_state_seen(directory, source)[0]


def read_state_seen(
    directory: Path, source: str = "argument", lock_wait: float = READ_LOCK_WAIT
) -> tuple[Loaded | None, LockBusy | None]:
    """``read_state``, and who held the lock if it could not be taken within ``lock_wait``.

    A directory or state file this process cannot see is an error, never "no state": on a shared
    host with the wrong permissions, "nothing leased" would tell every caller that all is free.
    """
    store = Store(directory, source)
    try:
        os.lstat(store.state_path)
    except FileNotFoundError:
        return None, None
    except OSError as e:
        raise _unreadable(directory, source, e) from None
    busy = None
    try:
        # O_NONBLOCK: a FIFO planted at the lock's name must not hang a diagnostic command.
        fd = os.open(store.lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        fd = None  # no lock file (fedimint-portalloc's own layout, say): read without it
    try:
        if fd is not None:
            # A writer that rewrites in place (fedimint-portalloc) is only safe to read under its
            # lock. A stopped holder must not hang a diagnostic command: past the wait, read the
            # last state anyway and say who holds the lock.
            started = time.monotonic()
            if not _lock.poll_lock(fd, lock_wait):
                pid = _owner.lock_holder_pid(store.lock_path)
                busy = LockBusy(pid, process_command(pid), time.monotonic() - started)
        data = store.read_unlocked()
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor drops its flock
    return parse_tolerant(data), busy


def _unreadable(directory: Path, source: str, error: OSError) -> PortleaseError:
    fix = (
        "ask the directory's owner for access (a shared directory wants a group, see the README), "
        "or choose a directory of your own"
        if error.errno in (errno.EACCES, errno.EPERM)
        else "check the path"
    )
    return PortleaseError(
        f"cannot read lease directory {directory} from {source} ({error.strerror}): {fix}"
    )


def check_readable_directory(directory: Path, source: str) -> bool:
    """True when ``directory`` exists, False when it does not; an error when it cannot be seen
    (a parent without search permission) or is not a directory."""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise _unreadable(directory, source, e) from None
    if not stat.S_ISDIR(st.st_mode):
        raise PortleaseError(
            f"lease directory {directory} from {source} is not a directory: point it at a directory"
        )
    return True


def process_command(pid: int | None) -> str:
    """The command line of ``pid`` from /proc/PID/cmdline, or "" where it cannot be read."""
    if pid is None:
        return ""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return ""
    return " ".join(arg.decode(errors="replace") for arg in raw.split(b"\0") if arg)


def read_status(directory: Path, source: str = "argument") -> list[LeaseInfo]:
    """The ranges of the state in ``directory``, by base; warns about what could not be read."""
    loaded = read_state(directory, source)
    if loaded is None:
        return []
    for problem in loaded.problems:
        warnings.warn(f"{directory / STATE_NAME}: {problem}", PortleaseWarning, stacklevel=outside_package())
    return lease_infos(loaded.state, _clock.now())
