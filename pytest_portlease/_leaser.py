"""PortLeaser and PortBlock: the critical section, next-fit scan, heartbeat, release."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

from . import _clock, _lock, _owner, _probe, _state
from ._config import (
    PortRange,
    Resolved,
    check_port,
    parse_port_range,
    parse_ttl,
    resolve_directory,
    resolve_range,
    resolve_ttl,
)
from ._state import Entry, State, outside_package
from ._status import LeaseInfo, read_status, reclaim
from ._store import Store, inject
from .errors import (
    InvalidArgument,
    LockTimeout,
    PortleaseError,
    PortleaseWarning,
    PortRangeExhausted,
    PortUnavailable,
)

log = logging.getLogger("pytest_portlease")

#: ``owner_pid`` value meaning "the process that takes the lease".
THIS_PROCESS: Final = 0



@dataclass(frozen=True)
class PortBlock:
    """A leased block of consecutive ports ``base .. base + size - 1``."""

    base: int
    size: int
    label: str = ""
    ports: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", tuple(range(self.base, self.base + self.size)))

    def __iter__(self) -> Iterator[int]:
        return iter(self.ports)

    def __getitem__(self, index: int) -> int:
        return self.ports[index]

    def __len__(self) -> int:
        return self.size

    def __contains__(self, port: object) -> bool:
        return port in self.ports

    def __str__(self) -> str:
        return str(self.base) if self.size == 1 else f"{self.base}-{self.base + self.size - 1}"

    def env(self, prefix: str = "PORTLEASE") -> dict[str, str]:
        """``{PREFIX_PORT, PREFIX_PORT_0.., PREFIX_PORTS}`` for a child process or compose file."""
        env = {f"{prefix}_PORT": str(self.base)}
        env.update({f"{prefix}_PORT_{i}": str(port) for i, port in enumerate(self.ports)})
        env[f"{prefix}_PORTS"] = ",".join(map(str, self.ports))
        return env


def _holder(entry: Entry) -> str:
    owner = entry.owner
    if owner is None:
        return f"lease {entry.base}-{entry.end} with no recorded owner (fedimint-portalloc?)"
    pid = "no pid" if owner.pid is None else f"pid {owner.pid}"
    return f"lease {entry.base}-{entry.end} of {owner.label or 'an unlabelled holder'!r} ({pid}@{owner.host})"


def _default_label() -> str:
    name = Path(sys.argv[0]).name if sys.argv else ""
    return "" if name in ("", "-", "-c") else name


_warned_ephemeral: set[PortRange] = set()


def ephemeral_overlap_reported(rng: PortRange) -> None:
    """Leases from ``rng`` need not warn about its overlap with the ephemeral range: it was
    reported already (the plugin puts it in its report header)."""
    _warned_ephemeral.add(rng)


class PortLeaser:
    """Leases blocks of consecutive ports from a lease directory shared by cooperating processes.

    Safe to share between threads. ``owner_pid``: the process whose death ends the leases
    (``THIS_PROCESS``, the default), or None for leases that only their TTL ends.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | Resolved[Path] | None = None,
        *,
        port_range: str | tuple[int, int] | Resolved[PortRange] | None = None,
        ttl: float | Resolved[float] | None = None,
        label: str | None = None,
        lock_timeout: float = 30,
        heartbeat: bool = False,
        owner_pid: int | None = THIS_PROCESS,
    ) -> None:
        self.directory_setting: Resolved[Path] = (
            directory if isinstance(directory, Resolved) else resolve_directory(directory)
        )
        self.range_setting: Resolved[PortRange] = (
            port_range if isinstance(port_range, Resolved) else resolve_range(port_range)
        )
        self.ttl_setting: Resolved[float] = ttl if isinstance(ttl, Resolved) else resolve_ttl(ttl)
        self.lock_timeout = parse_ttl(lock_timeout, "lock_timeout", "argument")
        if label is not None and not isinstance(label, str):
            raise InvalidArgument(f"invalid label {label!r} from argument: expected a string")
        self.label = _default_label() if label is None else label
        if owner_pid is not None and (isinstance(owner_pid, bool) or not isinstance(owner_pid, int) or owner_pid < 0):
            raise InvalidArgument(f"invalid owner_pid {owner_pid!r} from argument: expected a process id")
        self.owner_pid = owner_pid
        self.store = Store(self.directory, self.directory_setting.source)
        self.stats = LeaseStats()
        self._held: dict[int, tuple[PortBlock, float]] = {}  # base -> (block, ttl)
        self._mutex = threading.RLock()
        self._lock_fd: int | None = None
        self._lock_closer: weakref.finalize[[int, int], PortLeaser] | None = None
        self._lock_pid = 0
        self._closed = False
        self._stop = threading.Event()
        self._kick = threading.Event()  # wakes the heartbeat to recompute its interval
        self._heartbeat: threading.Thread | None = None
        if heartbeat:
            self.start_heartbeat()

    @property
    def directory(self) -> Path:
        return self.directory_setting.value

    @property
    def port_range(self) -> PortRange:
        return self.range_setting.value

    @property
    def ttl(self) -> float:
        return self.ttl_setting.value

    @property
    def held(self) -> list[PortBlock]:
        """The blocks this leaser holds, by base."""
        with self._mutex:
            return [block for _, (block, _) in sorted(self._held.items())]

    # -- the critical section ------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[State]:
        """Lock, load the state, let the caller change it, save it if changed: one lock
        round-trip. The low-level door for tools that edit leases they do not hold (the CLI's
        release, renew and reclaim) or keep files of their own beside the state (the plugin's
        named-block memory)."""
        with self._mutex:
            if self._closed:
                raise PortleaseError("this PortLeaser is closed; create a new one")
            inject("before-lock")
            self.store.prepare()
            waited = time.perf_counter()
            self._acquire()
            self.stats.lock_wait += time.perf_counter() - waited
            log.debug("locked %s after %.6fs", self.store.lock_path, time.perf_counter() - waited)
            try:
                inject("locked")
                state = self.store.load()
                yield state
                if state.dirty:
                    self.store.save(state)
                    state.dirty = False
            except BaseException:
                self.store.invalidate()
                raise
            finally:
                _lock.unlock(self._lock_fd)  # type: ignore[arg-type]  # set by _acquire

    def _acquire(self) -> None:
        # filelock's native lock on a descriptor we keep open: re-opening the file for every
        # acquisition (as FileLock does) costs more than the rest of a lease. flock belongs to
        # the open file description, which a forked child shares: a child opens its own.
        if self._lock_fd is None or self._lock_pid != os.getpid():
            self._lock_fd = self.store.open_lock()
            self._lock_pid = os.getpid()
            # A leaser dropped without close() must not leak its descriptor.
            self._lock_closer = weakref.finalize(self, _lock.close_quietly, self._lock_fd, self._lock_pid)
        if not _lock.poll_lock(self._lock_fd, self.lock_timeout):
            pid = _owner.lock_holder_pid(self.store.lock_path)
            raise LockTimeout(os.fspath(self.store.lock_path), self.lock_timeout, pid)

    # -- leasing -------------------------------------------------------------------------------

    def lease(
        self,
        size: int = 1,
        *,
        port: int | None = None,
        port_range: str | tuple[int, int] | None = None,
        ttl: float | None = None,
        label: str | None = None,
    ) -> PortBlock:
        """Lease ``size`` consecutive ports: the next free block of the range, or exactly ``port``."""
        started = time.perf_counter()
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidArgument(f"invalid size {size!r} from argument: expected a whole number >= 1")
        rng = self.port_range if port_range is None else parse_port_range(port_range, "port_range", "argument")
        lease_ttl = self.ttl if ttl is None else parse_ttl(ttl, "ttl", "argument")
        if label is not None and not isinstance(label, str):
            raise InvalidArgument(f"invalid label {label!r} from argument: expected a string")
        if port is not None:
            check_port(port, "port", "argument")
            if port + size - 1 > 65535:
                raise InvalidArgument(
                    f"invalid size {size} from argument: {port}+{size} ports run past 65535"
                )
        elif size > rng.size:
            raise InvalidArgument(
                f"invalid size {size} from argument: the range {rng} holds only {rng.size} ports"
            )
        else:
            self._warn_ephemeral(rng)
        full_label = " ".join(x for x in (self.label, label) if x)
        with self._mutex, self.transaction() as state:
            now = _clock.now()
            reclaim(state, now)
            if port is None:
                base = self._next_fit(state, rng, size)
                # Past the block, or back to the start: fedimint-portalloc reads `next` as a u16.
                state.next = base + size if base + size <= rng.high else rng.low
            else:
                base = self._exact(state, port, size)
            owner = self._owner(full_label)
            state.add(Entry(base, size, math.ceil(now + lease_ttl), owner))
        # Held only once the state is saved: a failed save must not leave a lease to renew.
        block = PortBlock(base, size, full_label)
        with self._mutex:
            self._held[base] = (block, lease_ttl)
            self.stats.add(block, time.perf_counter() - started)
        if lease_ttl < self.ttl:
            self._kick.set()  # the heartbeat may be waiting longer than this lease lives
        log.debug("leased %s for %gs as %r", block, lease_ttl, full_label)
        return block

    def _owner(self, label: str) -> _owner.Owner:
        pid = os.getpid() if self.owner_pid == THIS_PROCESS else self.owner_pid
        return _owner.owner_for(pid, label)

    def _next_fit(self, state: State, rng: PortRange, size: int) -> int:
        # Next-fit from the cursor, wrapping once; every jump moves strictly forward, so one
        # full cycle probes each port at most once and the scan always ends.
        start = state.next if rng.low <= state.next <= rng.high - size + 1 else rng.low
        base, wrapped = start, False
        while True:
            if base + size - 1 > rng.high:
                if wrapped:
                    break
                base, wrapped = rng.low, True
            if wrapped and base >= start:
                break
            if (entry := state.conflict(base, base + size - 1)) is not None:
                base = entry.end + 1
                continue
            busy = _probe.first_busy(range(base, base + size))
            if busy is None:
                log.debug("probed %d-%d: free", base, base + size - 1)
                return base
            log.debug("probed %d-%d: port %d is bound outside portlease", base, base + size - 1, busy)
            base = busy + 1
        held = [e for e in state.entries.values() if e.base <= rng.high and e.end >= rng.low]
        ports = sum(min(e.end, rng.high) - max(e.base, rng.low) + 1 for e in held)
        raise PortRangeExhausted(
            f"no free block of {size} port(s) in range {rng} ({self.range_setting.source}): "
            f"{len(held)} live lease(s) hold {ports} of its {rng.size} ports and the rest that "
            f"were probed are bound by other processes; widen the range where it was set "
            f"({self.range_setting.source}), release leases, or run "
            f"`portlease --dir {self.directory} status` to see who holds them"
        )

    def _exact(self, state: State, port: int, size: int) -> int:
        block = str(PortBlock(port, size))
        if (entry := state.conflict(port, port + size - 1)) is not None:
            holder = _holder(entry)
            raise PortUnavailable(f"port {block} is held by {holder}", holder)
        busy = _probe.first_busy(range(port, port + size))
        if busy is not None:
            raise PortUnavailable(f"port {busy} is bound outside portlease", None)
        return port

    def _warn_ephemeral(self, rng: PortRange) -> None:
        if rng in _warned_ephemeral:
            return
        _warned_ephemeral.add(rng)
        if (overlap := _probe.ephemeral_overlap(rng)) is not None:
            warnings.warn(
                f"port range {rng} ({self.range_setting.source}) overlaps this host's ephemeral "
                f"range {_probe.ephemeral_range()} at {overlap}: the kernel may give those ports "
                f"to any outgoing connection; choose a range outside it",
                PortleaseWarning,
                stacklevel=outside_package(),
            )

    # -- release and renewal -------------------------------------------------------------------

    def release(self, block_or_base: PortBlock | int) -> bool:
        """Release a lease this leaser holds. Idempotent: False when it holds no such lease."""
        base = block_or_base.base if isinstance(block_or_base, PortBlock) else block_or_base
        with self._mutex:
            if base not in self._held:
                return False
            block, _ = self._held[base]
            with self.transaction() as state:
                entry = state.entries.get(base)
                if entry is not None and self._is_mine(entry, block):
                    state.remove(base)
            del self._held[base]
        log.debug("released %s", block)
        return True

    def detach(self, block_or_base: PortBlock | int) -> bool:
        """Stop holding a lease without releasing it: it lives on until its TTL ends it (or its
        owner dies), and this leaser no longer renews or releases it. False when not held."""
        base = block_or_base.base if isinstance(block_or_base, PortBlock) else block_or_base
        with self._mutex:
            return self._held.pop(base, None) is not None

    def release_all(self) -> None:
        """Release every lease this leaser holds, in one lock round-trip."""
        with self._mutex:
            if not self._held:
                return
            with self.transaction() as state:
                for base, (block, _) in self._held.items():
                    entry = state.entries.get(base)
                    if entry is not None and self._is_mine(entry, block):
                        state.remove(base)
            self._held.clear()

    def _is_mine(self, entry: Entry, block: PortBlock) -> bool:
        # fedimint-portalloc drops our owner when it rewrites the file; a range of our base and
        # size with no owner is still ours.
        if entry.size != block.size:
            return False
        owner = entry.owner
        mine = self._owner(block.label)
        return owner is None or (owner.pid, owner.start, owner.host) == (mine.pid, mine.start, mine.host)

    def renew(self) -> list[PortBlock]:
        """Extend every lease this leaser holds, in one lock round-trip; return the ones lost.

        A range dropped from the file (by fedimint-portalloc, or reclaimed after a long stall) is
        restored when its ports are still free of other leases; otherwise it is lost.
        """
        lost: list[PortBlock] = []
        with self._mutex:
            if not self._held:
                return lost
            with self.transaction() as state:
                now = _clock.now()
                for base, (block, ttl) in list(self._held.items()):
                    entry = state.entries.get(base)
                    if entry is not None and not self._is_mine(entry, block):
                        entry = None
                        lost.append(block)
                    elif entry is None and state.conflict(base, block.ports[-1]) is not None:
                        lost.append(block)
                    if block in lost:
                        del self._held[base]
                        continue
                    state.add(Entry(base, block.size, math.ceil(now + ttl), self._owner(block.label)))
        for block in lost:
            log.warning("lease %s was taken over by another holder while we held it", block)
        return lost

    @contextlib.contextmanager
    def recording_warnings(self, sink: Callable[[list[warnings.WarningMessage]], None]) -> Iterator[PortLeaser]:
        """Hand the warnings raised while the body leases to ``sink`` instead of raising them.

        For pytest: a suite under -W error must not fail because another process left a corrupt
        state behind. catch_warnings is process-wide; holding the mutex keeps this leaser's other
        threads from warning into (or out of) it.
        """
        with self._mutex, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                yield self
            finally:
                sink(caught)

    def status(self) -> list[LeaseInfo]:
        """Every range in the state, by base. Reads only: creates and changes nothing."""
        return read_status(self.directory, self.directory_setting.source)

    # -- heartbeat and close -------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Renew this leaser's leases every ttl/3 from a daemon thread, until ``close()``."""
        with self._mutex:
            if self._heartbeat is None and not self._closed:
                self._heartbeat = threading.Thread(
                    target=self._beat, name="portlease-heartbeat", daemon=True
                )
                self._heartbeat.start()

    def _beat(self) -> None:
        # A warning raised here would land on whatever test runs now, or, under -W error, abort
        # the renewal: the heartbeat logs its warnings instead.
        _state.log_warnings_in_this_thread()
        while not self._stop.is_set():
            if self._kick.wait(self._beat_interval()):
                self._kick.clear()
                continue  # a shorter TTL arrived (or close): wait again, for the new interval
            try:
                self.renew()
            except Exception as e:  # the heartbeat must outlive a stalled lock or a bad file
                log.warning("could not renew leases: %s", e)

    def _beat_interval(self) -> float:
        with self._mutex:
            ttls = [ttl for _, ttl in self._held.values()]
        return min([self.ttl, *ttls]) / 3

    def close(self) -> None:
        """Stop the heartbeat and release every lease. Final: the leaser cannot lease again."""
        self._stop.set()
        self._kick.set()
        if self._heartbeat is not None and self._heartbeat is not threading.current_thread():
            self._heartbeat.join()
        with self._mutex:
            if self._closed:
                return
            try:
                self.release_all()
            finally:
                self._closed = True
                if self._lock_closer is not None:
                    self._lock_closer()
                self._lock_fd = None

    def __enter__(self) -> PortLeaser:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PortLeaser({os.fspath(self.directory)!r}, port_range='{self.port_range}', ttl={self.ttl:g})"


@dataclass
class LeaseStats:
    """What a leaser did: blocks and ports leased, seconds spent leasing and waiting for the lock."""

    blocks: int = 0
    ports: int = 0
    seconds: float = 0.0
    lock_wait: float = 0.0

    def add(self, block: PortBlock, seconds: float) -> None:
        self.blocks += 1
        self.ports += block.size
        self.seconds += seconds


@contextlib.contextmanager
def lease_ports(
    size: int = 1,
    *,
    directory: str | os.PathLike[str] | None = None,
    port: int | None = None,
    port_range: str | tuple[int, int] | None = None,
    ttl: float | None = None,
    label: str | None = None,
    lock_timeout: float = 30,
) -> Iterator[PortBlock]:
    """Lease a block for the ``with`` body, renewed while it runs, released on exit."""
    with PortLeaser(
        directory, port_range=port_range, ttl=ttl, label=label, lock_timeout=lock_timeout, heartbeat=True
    ) as leaser:
        yield leaser.lease(size, port=port)
