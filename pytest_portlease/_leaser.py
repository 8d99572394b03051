"""PortLeaser and PortBlock: the critical section, next-fit scan, heartbeat, release."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, TypeVar

from . import _clock, _heartbeat, _lock, _owner, _probe, _scan
from ._block import LeaseStats as LeaseStats  # re-exported: older imports name _leaser
from ._block import PortBlock as PortBlock
from ._config import (
    LAST_PORT,
    WELL_KNOWN_PORTS,
    PortRange,
    Resolved,
    check_port,
    parse_port_range,
    parse_ttl,
    resolve_directory,
    resolve_lock_timeout,
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
#: Linux keeps a connection in TIME_WAIT for TCP_TIMEWAIT_LEN, 60 s, not tunable.
_TW_END: Final = "which ends within 60 s; a server can bind over it only if the closed socket set SO_REUSEADDR"

_T = TypeVar("_T")
# Transactions run again when the lock file is replaced under them; a file replaced that often
# is a bug of its own, which the last attempt then reports.
_RETRIES = 5



def _holder(entry: Entry) -> str:
    owner = entry.owner
    if owner is None:
        return f"lease {entry.base}-{entry.end} with no recorded owner (fedimint-portalloc?)"
    pid = "no pid" if owner.pid is None else f"pid {owner.pid}"
    return f"lease {entry.base}-{entry.end} of {owner.label or 'an unlabelled holder'!r} ({pid}@{owner.host})"


_WELL_KNOWN = tuple(sorted(WELL_KNOWN_PORTS))


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
    (``THIS_PROCESS``, the default), or None for leases that only their TTL ends. ``fail_fast``:
    after one ``LockTimeout``, every later transaction (lease, release, renewal) raises that same
    error at once instead of waiting again (``lock_timed_out``); the pytest plugin's leaser does,
    so that a frozen lock holder costs a session one timeout, not one per test.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | Resolved[Path] | None = None,
        *,
        port_range: str | tuple[int, int] | Resolved[PortRange] | None = None,
        ttl: float | Resolved[float] | None = None,
        label: str | None = None,
        lock_timeout: float | Resolved[float] | None = None,
        heartbeat: bool = False,
        owner_pid: int | None = THIS_PROCESS,
        run_id: str = "",
        fail_fast: bool = False,
    ) -> None:
        self.directory_setting: Resolved[Path] = (
            directory if isinstance(directory, Resolved) else resolve_directory(directory)
        )
        self.range_setting: Resolved[PortRange] = (
            port_range if isinstance(port_range, Resolved) else resolve_range(port_range)
        )
        self.ttl_setting: Resolved[float] = ttl if isinstance(ttl, Resolved) else resolve_ttl(ttl)
        self.lock_timeout_setting: Resolved[float] = (
            lock_timeout if isinstance(lock_timeout, Resolved) else resolve_lock_timeout(lock_timeout)
        )
        if label is not None and not isinstance(label, str):
            raise InvalidArgument(f"invalid label {label!r} from argument: expected a string")
        self.label = _default_label() if label is None else label
        if owner_pid is not None and (isinstance(owner_pid, bool) or not isinstance(owner_pid, int) or owner_pid < 0):
            raise InvalidArgument(f"invalid owner_pid {owner_pid!r} from argument: expected a process id")
        self.owner_pid = owner_pid
        if not isinstance(run_id, str):
            raise InvalidArgument(f"invalid run_id {run_id!r} from argument: expected a string")
        self.run_id = run_id
        self.fail_fast = fail_fast
        #: The first LockTimeout of a ``fail_fast`` leaser, raised again by every transaction since.
        self.lock_timed_out: LockTimeout | None = None
        self.store = Store(self.directory, self.directory_setting.source)
        self.stats = LeaseStats()
        self._held: dict[int, tuple[PortBlock, float]] = {}  # base -> (block, ttl)
        self._mutex = threading.RLock()
        self._lock = self._new_lock()
        self._last_lock_wait = 0.0
        self._closed = False
        self._heartbeat: _heartbeat.Heartbeat | None = None
        self._heartbeat_wanted = False  # a forked child starts it at its first lease
        _heartbeat.track(self)
        if heartbeat:
            self.start_heartbeat()

    def _new_lock(self) -> _lock.DirLock:
        return _lock.DirLock(
            self.store.lock_path, self.store.open_lock, lambda: self.store.prepare(again=True)
        )

    def after_fork_in_child(self) -> None:
        """A fresh start in a forked child (see ``_heartbeat``): a new mutex, our own lock
        descriptor, none of the parent's leases, and a heartbeat if the parent ran one."""
        self._mutex = threading.RLock()
        self._lock.forget_after_fork()
        self._lock = self._new_lock()
        self.store.invalidate()  # the parent may have been half-way through changing it
        self._held = {}
        self.stats = LeaseStats()
        self._heartbeat_wanted = self._heartbeat is not None or self._heartbeat_wanted
        self._heartbeat = None

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
    def lock_timeout(self) -> float:
        return self.lock_timeout_setting.value

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
        named-block memory).

        Raises ``_lock.Replaced`` when the lock file was replaced during the transaction and the
        state changed meanwhile: nothing was written, and the body may be run again.
        """
        with self._mutex:
            if self._closed:
                raise PortleaseError("this PortLeaser is closed; create a new one")
            if (first := self.lock_timed_out) is not None:
                # The same error, with this caller's traceback: a copy, since callers in other
                # threads raise it too (pickle's way, which keeps the holder; see errors.py).
                raise copy.copy(first).with_traceback(None)
            inject("before-lock")
            self.store.prepare()
            self.store.preread()  # a big state is parsed here, not while every waiter waits
            inject("preread")
            waited = time.perf_counter()
            if self._acquire():
                # Written meanwhile by processes that locked another inode: nothing cached holds.
                self.store.invalidate()
            # Read by lease() under the same mutex: the summary counts the lock waits of the
            # leases it times, not those of releases and renewals.
            self._last_lock_wait = time.perf_counter() - waited
            log.debug("locked %s after %.6fs", self.store.lock_path, time.perf_counter() - waited)
            try:
                inject("locked")
                state = self.store.load()
                self._restore_owners(state)
                yield state
                if state.dirty:
                    self._still_locked()
                    if not self.store.save(state):
                        raise _lock.Replaced(
                            f"the lock file {self.store.lock_path} was replaced while this process "
                            f"held it, and another process wrote the state meanwhile; put back: retry"
                        )
                    state.dirty = False
            except BaseException:
                self.store.invalidate()
                raise
            finally:
                self._lock.release()

    def _still_locked(self) -> None:
        # The lock file removed or replaced while we held it: others may be in a transaction
        # now, on the new file. Lock that one too; our changes stand only if nobody wrote the
        # state since we read it.
        if self._lock.is_current():
            return
        self._lock.release()
        self._acquire()
        if self.store.read_bytes() != self.store.loaded_bytes:
            raise _lock.Replaced(
                f"the lock file {self.store.lock_path} was replaced while this process held it, "
                f"and the state changed meanwhile; nothing was written: retry"
            )

    def _acquire(self) -> bool:
        try:
            return self._lock.acquire(self.lock_timeout)
        except LockTimeout as e:
            self.stats.lock_timeouts += 1
            if self.fail_fast:
                self.lock_timed_out = e
            raise

    def _transact(self, body: Callable[[State], _T]) -> _T:
        """``body`` in a transaction, run again when the lock file was replaced under it."""
        for _ in range(_RETRIES):
            try:
                with self.transaction() as state:
                    return body(state)
            except _lock.Replaced:
                continue
        with self.transaction() as state:
            return body(state)

    def _restore_owners(self, state: State) -> None:
        # fedimint-portalloc drops our owner when it rewrites the file; until it is back, a
        # crash of ours is freed only by the TTL. Every transaction puts back the ones we hold.
        for base, (block, _) in self._held.items():
            entry = state.entries.get(base)
            if entry is None or entry.owner is not None or entry.size != block.size:
                continue
            mine = self._owner(block.label)
            if not entry.co_owners:
                state.add(dataclasses.replace(entry, owner=mine))
            elif mine.process is not None and mine.process not in entry.processes:
                # A merged range: its TTL may be another copy's, so we join as a co-owner.
                state.add(dataclasses.replace(entry, co_owners=(*entry.co_owners, mine)))

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
            if port + size - 1 > LAST_PORT:
                raise InvalidArgument(
                    f"invalid port {port} with size {size} from argument: the block "
                    f"{PortBlock(port, size)} includes port 65535, which no block may use, since "
                    f"fedimint-portalloc computes base + size in 16 bits; expected a block that "
                    f"ends at {LAST_PORT} at the latest"
                )
        elif size > _scan.usable(rng).size:
            raise InvalidArgument(
                f"invalid size {size} from argument: the range {rng} holds only "
                f"{_scan.usable(rng).size} ports that a block may use"
                + (" (never 65535: fedimint-portalloc computes base + size in 16 bits)" if rng.high > LAST_PORT else "")
            )
        else:
            self._warn_ephemeral(rng)
        full_label = " ".join(x for x in (self.label, label) if x)

        lock_wait = 0.0

        def body(state: State) -> int | PortleaseError:
            nonlocal lock_wait
            lock_wait += self._last_lock_wait  # this attempt's wait (the lock file may be replaced)
            now = _clock.now()
            reclaim(state, now, lease_ttl)
            try:
                if port is None:
                    base = self._next_fit(
                        state, rng, size, self._avoided(port_range), None if port_range is None else "argument"
                    )
                    _scan.advance(state, rng, base, size)
                else:
                    base = self._exact(state, port, size)
            except (PortRangeExhausted, PortUnavailable) as refused:
                return refused  # raised once reclaim's changes (alive owners extended) are saved
            owner = self._owner(full_label)
            state.add(Entry(base, size, math.ceil(now + lease_ttl), owner))
            return base

        with self._mutex:
            if self.lock_timed_out is not None:
                self.stats.failed_at_once += 1  # the transaction raises it at once
            base = self._transact(body)
            if isinstance(base, PortleaseError):
                raise base
            # Held only once the state is saved: a failed save must not leave a lease to renew.
            block = PortBlock(base, size, full_label)
            self._held[base] = (block, lease_ttl)
            self.stats.add(block, time.perf_counter() - started, lock_wait)
            if self._heartbeat_wanted and self._heartbeat is None:
                self.start_heartbeat()  # a forked child's, now that it has a lease to renew
            if lease_ttl < self.ttl and self._heartbeat is not None:
                self._heartbeat.kick()  # it may be waiting longer than this lease lives
        log.debug("leased %s for %gs as %r", block, lease_ttl, full_label)
        return block

    def _owner(self, label: str) -> _owner.Owner:
        pid = os.getpid() if self.owner_pid == THIS_PROCESS else self.owner_pid
        return _owner.owner_for(pid, label, self.run_id)

    def _avoided(self, port_range: object) -> tuple[int, ...]:
        """The well-known service ports a scan skips: only in the default range (see
        WELL_KNOWN_PORTS); a range someone chose is taken as given."""
        if port_range is None and self.range_setting.source == "default":
            return _WELL_KNOWN
        return ()

    def _next_fit(
        self, state: State, rng: PortRange, size: int, avoided: tuple[int, ...] = (), source: str | None = None
    ) -> int:
        if (base := _scan.next_fit(state, rng, size, avoided)) is not None:
            return base
        source = source or self.range_setting.source
        # -- second pass: ports held only in TIME_WAIT (issue 12.5; see _time_wait_pass) --
        taken, time_wait = self._time_wait_pass(state, rng, size, source)
        if taken is not None:
            return taken
        tw_note = "" if time_wait is None else f" ({time_wait} of them only in TIME_WAIT, {_TW_END})"
        # -- end of the second pass --
        held = [e for e in state.entries.values() if e.base <= rng.high and e.end >= rng.low]
        ports = sum(min(e.end, rng.high) - max(e.base, rng.low) + 1 for e in held)
        raise PortRangeExhausted(
            f"no free block of {size} port(s) in range {rng} ({source}): "
            f"{len(held)} live lease(s) hold {ports} of its {rng.size} ports and the rest that "
            f"were probed are bound by other processes{tw_note}; widen the range where it was set "
            f"({source}), release leases, or run "
            f"`portlease --dir {self.directory} status` to see who holds them"
        )

    def _exact(self, state: State, port: int, size: int) -> int:
        block = str(PortBlock(port, size))
        if (entry := state.conflict(port, port + size - 1)) is not None:
            holder = _holder(entry)
            raise PortUnavailable(f"port {block} is held by {holder}", holder)
        busy = _probe.first_busy(range(port, port + size))
        if busy is not None:
            # -- second pass: ports held only in TIME_WAIT (issue 12.5; see _time_wait_pass) --
            exact = PortRange(port, port + size - 1)
            taken, time_wait = self._time_wait_pass(state, exact, size, "argument")
            if taken is not None:
                return taken
            states = _probe.tcp_states() if time_wait else None
            tw_note = f" (only in TIME_WAIT, {_TW_END})" if states and states.get(busy) == {"06"} else ""
            raise PortUnavailable(f"port {busy} is bound outside portlease{tw_note}", None)
        return port

    def _time_wait_pass(
        self, state: State, rng: PortRange, size: int, source: str
    ) -> tuple[int | None, int | None]:
        """When the strict probe found nothing free: the first block of ``rng`` free of leases
        whose busy ports are held only in TIME_WAIT, taken with a warning, since most servers
        (PostgreSQL, Redis, MariaDB, asyncio's) set SO_REUSEADDR and bind over TIME_WAIT; and how
        many ports of ``rng`` were held only in TIME_WAIT (None where the host cannot tell)."""
        states = _probe.tcp_states()
        if states is None:
            return None, None
        waiting = sorted(p for p, st in states.items() if st == {"06"} and p in rng)
        usable = {p for p in waiting if _probe.only_in_time_wait(p, states)}
        bases = sorted({
            b for p in usable for b in range(max(rng.low, p - size + 1), min(p, rng.high - size + 1) + 1)
        })
        for base in bases:
            ports = range(base, base + size)
            if state.conflict(base, base + size - 1) is not None:
                continue
            if all(p in usable or _probe.port_is_free(p) for p in ports):
                warnings.warn(
                    f"port {PortBlock(base, size)} of range {rng} ({source}) was only in TIME_WAIT "
                    f"(connections that closed); leased anyway, because nothing else in the range "
                    f"was free: a server that sets SO_REUSEADDR binds it now, one that does not "
                    f"gets EADDRINUSE until the TIME_WAIT ends (60 s); widen the range to avoid this",
                    PortleaseWarning,
                    stacklevel=outside_package(),
                )
                return base, len(waiting)
        return None, len(waiting)

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

            def body(state: State) -> None:
                entry = state.entries.get(base)
                if entry is not None and self._is_mine(entry, block):
                    state.remove(base)

            self._transact(body)
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

            def body(state: State) -> None:
                for base, (block, _) in self._held.items():
                    entry = state.entries.get(base)
                    if entry is not None and self._is_mine(entry, block):
                        state.remove(base)

            self._transact(body)
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
        with self._mutex:
            if not self._held:
                return []

            def body(state: State) -> list[PortBlock]:
                lost = []
                now = _clock.now()
                for base, (block, ttl) in self._held.items():
                    entry = state.entries.get(base)
                    taken = (
                        not self._is_mine(entry, block)
                        if entry is not None
                        else state.conflict(base, block.ports[-1]) is not None
                    )
                    if taken:
                        lost.append(block)
                    else:
                        state.add(Entry(base, block.size, math.ceil(now + ttl), self._owner(block.label)))
                return lost

            lost = self._transact(body)
            for block in lost:
                del self._held[block.base]
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
                self._heartbeat = _heartbeat.Heartbeat(self.renew, self._beat_interval)

    def _beat_interval(self) -> float:
        with self._mutex:
            ttls = [ttl for _, ttl in self._held.values()]
        return min([self.ttl, *ttls]) / 3

    def close(self) -> None:
        """Stop the heartbeat and release every lease. Final: the leaser cannot lease again."""
        heartbeat = self._heartbeat
        if heartbeat is not None:
            heartbeat.stop()
        with self._mutex:
            if self._closed:
                return
            try:
                self.release_all()
                self._discard_temp()
            finally:
                self._closed = True
                self._lock.close()

    def _discard_temp(self) -> None:
        # Our last write kept the old state under our temp name for the next one; a closed
        # leaser writes no more. Only if the lock is free right now: close() must not wait, and
        # a temp left behind is removed by the first writer that sees us dead.
        if not self._lock.try_acquire():
            return
        try:
            self.store.discard_temp()
        finally:
            self._lock.release()

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


@contextlib.contextmanager
def lease_ports(
    size: int = 1,
    *,
    directory: str | os.PathLike[str] | None = None,
    port: int | None = None,
    port_range: str | tuple[int, int] | None = None,
    ttl: float | None = None,
    label: str | None = None,
    lock_timeout: float | None = None,
) -> Iterator[PortBlock]:
    """Lease a block for the ``with`` body, renewed while it runs, released on exit."""
    with PortLeaser(
        directory, port_range=port_range, ttl=ttl, label=label, lock_timeout=lock_timeout, heartbeat=True
    ) as leaser:
        yield leaser.lease(size, port=port)
