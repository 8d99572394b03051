"""What the registry says: the state of each lease, reclaim of the dead ones, and reading the
state without creating or changing anything (``status()``, ``portlease status``)."""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from . import _clock, _owner
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

    ``seen`` carries the verdicts of one pass over the state, so that each owner process is looked
    up in /proc once however many ranges it holds.
    """
    if entry.expires <= now:
        return "expired"
    process = entry.process
    if process is None:
        return "foreign"
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


def reclaim(state: State, now: float) -> list[Entry]:
    """Drop expired ranges and ranges whose owner is provably dead; return them.

    Runs in every lease, so it looks at each owning process once, and at every range only when
    one of them died or some range may have expired.
    """
    dead = {p for p in state.processes if _owner.process_state(p) == "dead owner"}
    if not dead and now < state.soonest:
        return []
    dropped = [e for e in state.entries.values() if e.expires <= now or e.process in dead]
    for entry in dropped:
        state.remove(entry.base)
        log.debug("reclaimed %s-%s (%s)", entry.base, entry.end, "expired" if entry.expires <= now else "dead owner")
    state.soonest = min((e.expires for e in state.entries.values()), default=math.inf)
    return dropped


def read_state(directory: Path, source: str = "argument") -> Loaded | None:
    """The state in ``directory`` (set by ``source``) with its problems, read without creating
    or changing anything (no backup, no warning); None when there is no state file."""
    store = Store(directory, source)
    if not os.path.lexists(store.state_path):
        return None
    with shared_lock(store.lock_path):
        data = store.read_bytes()
    return parse_tolerant(data)


def read_status(directory: Path, source: str = "argument") -> list[LeaseInfo]:
    """The ranges of the state in ``directory``, by base; warns about what could not be read."""
    loaded = read_state(directory, source)
    if loaded is None:
        return []
    for problem in loaded.problems:
        warnings.warn(f"{directory / STATE_NAME}: {problem}", PortleaseWarning, stacklevel=outside_package())
    return lease_infos(loaded.state, _clock.now())
