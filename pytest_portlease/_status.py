"""What the registry says: the state of each lease, reclaim of the dead ones, and reading the
state without creating or changing anything (``status()``, ``portlease status``)."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import _clock, _owner
from ._config import DEFAULT_TTL
from ._lock import shared_lock
from ._state import STATE_NAME, Entry, Loaded, State, outside_package, parse_tolerant
from ._store import Store
from .errors import PortleaseWarning

log = logging.getLogger("pytest_portlease")


@dataclass(frozen=True)
class LeaseInfo:
    """One range of the state file, as ``status()`` and ``portlease status`` show it.

    ``state`` is ``live`` (owner known alive), ``foreign`` (not expired, owner unknown: none
    recorded, or another host or namespace), ``dead owner`` (provably dead) or ``expired``.
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

    @property
    def end(self) -> int:
        return self.base + self.size - 1


Verdicts = dict[_owner.Process, str]


def lease_state(entry: Entry, now: float, seen: Verdicts | None = None) -> str:
    """``live``, ``foreign``, ``dead owner`` or ``expired`` (see ``LeaseInfo``).

    An owner provably alive holds its lease whatever ``expires`` says: a clock step, a suspend
    or a missing heartbeat does not make a running process let go of its ports. ``seen`` carries
    the verdicts of one pass over the state, so that each owner process is looked up in /proc
    once however many ranges it holds.
    """
    process = entry.process
    verdict = "foreign" if process is None else _verdict(process, seen)
    if verdict == "live":
        return verdict
    return "expired" if entry.expires <= now else verdict


def _verdict(process: _owner.Process, seen: Verdicts | None) -> str:
    if seen is None:
        return _owner.process_state(process)
    if (verdict := seen.get(process)) is None:
        verdict = seen[process] = _owner.process_state(process)
    return verdict


def lease_info(entry: Entry, now: float, seen: Verdicts | None = None) -> LeaseInfo:
    owner = entry.owner or _owner.Owner(None, None, "", "", "")
    return LeaseInfo(
        entry.base, entry.size, entry.expires, owner.pid, owner.start, owner.host, owner.ns,
        owner.label, lease_state(entry, now, seen),
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
        if verdict == "dead owner" or (entry.expires <= now and verdict != "live"):
            dropped.append(entry)
            state.remove(entry.base)
            log.debug("reclaimed %s-%s (%s)", entry.base, entry.end, verdict if verdict != "live" else "expired")
        elif entry.expires <= now:
            state.add(dataclasses.replace(entry, expires=math.ceil(now + ttl)))
            log.debug("kept %s-%s past its expiry: its owner is alive", entry.base, entry.end)
    state.soonest = min((e.expires for e in state.entries.values()), default=math.inf)
    return dropped


def read_state(directory: Path, source: str = "argument") -> Loaded | None:
    """The state in ``directory`` (set by ``source``) with its problems, read without creating
    or changing anything (no backup, no warning); None when there is no state file."""
    store = Store(directory, source)
    if not os.path.lexists(store.state_path):
        return None
    with shared_lock(store.lock_path):
        data = store.read_unlocked()
    return parse_tolerant(data)


def read_status(directory: Path, source: str = "argument") -> list[LeaseInfo]:
    """The ranges of the state in ``directory``, by base; warns about what could not be read."""
    loaded = read_state(directory, source)
    if loaded is None:
        return []
    for problem in loaded.problems:
        warnings.warn(f"{directory / STATE_NAME}: {problem}", PortleaseWarning, stacklevel=outside_package())
    return lease_infos(loaded.state, _clock.now())
