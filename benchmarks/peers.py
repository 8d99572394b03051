"""Measurements of the peer port allocators, for ``benchmarks/bench_lease.py``.

Peers measured:

* ``portpicker``        -- ``portpicker.pick_unused_port()`` with no portserver;
* ``portpicker+server`` -- ``portpicker.pick_unused_port(portserver_address=...)`` against
  portpicker's own ``portserver.py``, started here as a subprocess (the peer's safe mode);
* ``port-for``          -- ``port_for.select_random()``;
* ``ephemeral-port-reserve`` -- ``ephemeral_port_reserve.reserve()``.

Two measurements per peer:

* :func:`latency` / :func:`peer_latency`: microseconds per call, summarised by
  :func:`percentiles`.
* :func:`duplicate_test`: ``procs`` OS processes (multiprocessing, ``spawn`` by default)
  each obtain ports ``calls`` times. Every grant is held for a window: a *virtual* one of
  ``hold_s`` seconds after the call returned for peers that hold nothing (``holds=False``:
  pick now, the server binds later), or a *real* one for allocators that lease
  (``holds=True``: the worker acquires, sleeps ``hold_s``, then releases, and the window is
  [acquire returned, release called]). A duplicate is one port granted to two different
  processes with overlapping windows (:func:`count_duplicates`).

Any allocator can be plugged in as an object following :class:`Peer`: picklable (it is
sent to ``spawn`` workers), with ``setup()``/``teardown()`` run once per process and
``acquire() -> list[int]`` / ``release(ports)`` per grant, where ``release`` receives
exactly the list ``acquire`` returned.

Run standalone: ``python benchmarks/peers.py [--help]``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import multiprocessing
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext, SpawnContext
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "DEFAULT_CALLS",
    "DEFAULT_HOLD_S",
    "DEFAULT_PROCS",
    "DEFAULT_SERVER_POOL",
    "BasePeer",
    "DupResult",
    "EphemeralPortReservePeer",
    "Grant",
    "Peer",
    "PeerResult",
    "PeerSpec",
    "PortForPeer",
    "PortServer",
    "PortpickerPeer",
    "PortpickerServerPeer",
    "PortserverFallbackError",
    "count_duplicates",
    "duplicate_test",
    "find_portserver_script",
    "format_table",
    "latency",
    "main",
    "measure_peer",
    "peer_latency",
    "percentiles",
    "portserver",
    "results_table",
    "run_peers",
]

DEFAULT_HOLD_S = 0.050
DEFAULT_CALLS = 200
DEFAULT_PROCS: tuple[int, ...] = (4, 16)
DEFAULT_LATENCY_N = 500
# portpicker's no-server fallback draws from the OS ephemeral range, then from 15000-24999.
# A pool disjoint from both lets PortpickerServerPeer tell a real server grant from a
# silent fallback by the port number alone (see PortserverFallbackError).
DEFAULT_SERVER_POOL: tuple[int, int] = (25000, 31999)


# --------------------------------------------------------------------------- statistics


def percentiles(samples: Sequence[float], qs: Sequence[float] = (50.0, 90.0)) -> tuple[float, ...]:
    """Percentiles ``qs`` (0-100) of ``samples`` by linear interpolation (numpy's default).

    ``p50, p90 = percentiles(samples)``. Returns NaNs for an empty sample.
    """
    ordered = sorted(samples)
    if not ordered:
        return tuple(math.nan for _ in qs)
    last = len(ordered) - 1
    out: list[float] = []
    for q in qs:
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile {q!r} is outside 0-100")
        pos = last * q / 100.0
        lo = math.floor(pos)
        hi = min(lo + 1, last)
        frac = pos - lo
        out.append(ordered[lo] + (ordered[hi] - ordered[lo]) * frac)
    return tuple(out)


def latency(
    fn: Callable[[], object],
    n: int,
    *,
    warmup: int = 10,
    max_seconds: float | None = None,
) -> list[float]:
    """Call ``fn()`` ``n`` times (after ``warmup`` untimed calls); microseconds per call.

    With ``max_seconds``, stops early once that much time was spent in timed calls (so a
    slow peer stays within a budget); at least one sample is always taken.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    for _ in range(warmup):
        fn()
    budget_ns = None if max_seconds is None else int(max_seconds * 1e9)
    spent_ns = 0
    samples: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        fn()
        dt = clock() - t0
        samples.append(dt / 1000.0)
        spent_ns += dt
        if budget_ns is not None and spent_ns >= budget_ns:
            break
    return samples


# --------------------------------------------------------------------------- peers


@runtime_checkable
class Peer(Protocol):
    """A port allocator under test. Must be picklable (it is sent to spawn workers).

    ``holds``: True when ``acquire`` really reserves the ports until ``release`` (the
    harness then holds each grant for the hold window before releasing); False for
    pick-and-forget peers (``release`` is a no-op, the hold window is virtual).
    """

    @property
    def name(self) -> str: ...

    @property
    def holds(self) -> bool: ...

    def setup(self) -> None:
        """Called once in each process before the first ``acquire``."""

    def acquire(self) -> list[int]:
        """Obtain ports (one grant). The list is passed back to ``release``."""

    def release(self, ports: list[int]) -> None:
        """Give back what ``acquire`` returned."""

    def teardown(self) -> None:
        """Called once in each process after the last ``release``, even on error."""


@dataclass
class BasePeer:
    """Pick-and-forget peer: no-op setup/release/teardown; subclasses define ``_pick``."""

    name: str = "peer"
    holds: bool = field(default=False, init=False)

    def setup(self) -> None:
        pass

    def acquire(self) -> list[int]:
        return [self._pick()]

    def release(self, ports: list[int]) -> None:
        pass

    def teardown(self) -> None:
        pass

    def _pick(self) -> int:
        raise NotImplementedError


def _attr(module: str, name: str) -> Any:
    # importlib keeps the peers optional (imported only where they run) and keeps mypy
    # quiet about libraries that ship no type information.
    return getattr(importlib.import_module(module), name)


@dataclass
class PortpickerPeer(BasePeer):
    """``portpicker.pick_unused_port()`` without a portserver.

    portpicker silently switches to a portserver when ``PORTSERVER_ADDRESS`` is set, so
    ``setup`` removes it from this process's environment and ``teardown`` restores it.
    """

    name: str = "portpicker"
    _saved_env: str | None = field(default=None, init=False, repr=False)

    def setup(self) -> None:
        self._saved_env = os.environ.pop("PORTSERVER_ADDRESS", None)

    def _pick(self) -> int:
        return int(_attr("portpicker", "pick_unused_port")())

    def teardown(self) -> None:
        if self._saved_env is not None:
            os.environ["PORTSERVER_ADDRESS"] = self._saved_env
            self._saved_env = None


class PortserverFallbackError(RuntimeError):
    """portpicker returned a port outside the server's pool: it fell back to no server."""


@dataclass
class PortpickerServerPeer(BasePeer):
    """``portpicker.pick_unused_port(portserver_address=address)``: the peer's safe mode.

    The server reserves each port for the requesting pid until that pid dies. When the
    server cannot answer, portpicker silently falls back to its no-server mode; such a
    grant lies outside ``pool`` and raises :class:`PortserverFallbackError` instead, so
    the measurement never mixes the two modes (``pool`` must therefore be disjoint from
    the OS ephemeral range and from 15000-24999, as :data:`DEFAULT_SERVER_POOL` is).
    """

    address: str = ""
    pool: tuple[int, int] = DEFAULT_SERVER_POOL
    name: str = "portpicker+server"

    def _pick(self) -> int:
        if not self.address:
            raise ValueError("PortpickerServerPeer needs the portserver address")
        port = int(_attr("portpicker", "pick_unused_port")(portserver_address=self.address))
        low, high = self.pool
        if not low <= port <= high:
            raise PortserverFallbackError(
                f"portpicker returned {port}, outside the portserver pool {low}-{high}: "
                f"the portserver at {self.address!r} did not answer"
            )
        return port


@dataclass
class PortForPeer(BasePeer):
    """``port_for.select_random()`` (recomputes its candidate set on every call)."""

    name: str = "port-for"

    def _pick(self) -> int:
        return int(_attr("port_for", "select_random")())


@dataclass
class EphemeralPortReservePeer(BasePeer):
    """``ephemeral_port_reserve.reserve()`` (leaves the port in TIME_WAIT on 127.0.0.1)."""

    name: str = "ephemeral-port-reserve"

    def _pick(self) -> int:
        return int(_attr("ephemeral_port_reserve", "reserve")())


def peer_latency(
    peer: Peer, n: int, *, warmup: int = 10, max_seconds: float | None = None
) -> list[float]:
    """Microseconds per ``peer.acquire()`` in this process; ``release`` is not timed."""
    peer.setup()
    try:
        for _ in range(warmup):
            peer.release(peer.acquire())
        budget_ns = None if max_seconds is None else int(max_seconds * 1e9)
        spent_ns = 0
        samples: list[float] = []
        clock = time.perf_counter_ns
        for _ in range(max(1, n)):
            t0 = clock()
            ports = peer.acquire()
            dt = clock() - t0
            peer.release(ports)
            samples.append(dt / 1000.0)
            spent_ns += dt
            if budget_ns is not None and spent_ns >= budget_ns:
                break
        return samples
    finally:
        peer.teardown()


# --------------------------------------------------------------------------- portserver


def find_portserver_script() -> Path:
    """The ``portserver.py`` script that portpicker installs next to the interpreter.

    portpicker (1.6) ships the server as a *script* in the environment's scripts
    directory, not as an importable module (there is no ``portpicker.portserver``).
    """
    candidates = [
        Path(sysconfig.get_path("scripts")) / "portserver.py",
        Path(sys.executable).parent / "portserver.py",
    ]
    found = shutil.which("portserver.py")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "portpicker's portserver.py was not found in "
        + ", ".join(str(p.parent) for p in candidates)
        + "; install it with `pip install portpicker`"
    )


@dataclass(frozen=True)
class PortServer:
    """A running portserver. ``address`` is in portpicker's notation (``@`` = abstract)."""

    address: str
    pool: tuple[int, int]
    pid: int
    command: tuple[str, ...]
    log_path: Path


def _ephemeral_range() -> tuple[int, int] | None:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = f.readline().split()
    except (OSError, ValueError):
        return None
    return int(low), int(high)


def _unix_address(address: str) -> str:
    # portpicker's client maps a leading "@" to the abstract namespace (a NUL byte).
    return "\0" + address[1:] if address.startswith("@") else address


def _log_tail(path: Path, limit: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _stop_process(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: portserver has no handler for it, it just exits
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()  # reap


@contextlib.contextmanager
def portserver(
    pool: tuple[int, int] = DEFAULT_SERVER_POOL,
    *,
    address: str | None = None,
    startup_timeout_s: float = 15.0,
    keep_log: bool = False,
) -> Iterator[PortServer]:
    """Run portpicker's portserver for the duration of the ``with`` block.

    Command: ``<sys.executable> <scripts>/portserver.py --portserver_address ADDRESS
    --portserver_static_pool LOW-HIGH``. ADDRESS defaults to the abstract unix socket
    ``@portlease-bench-<pid>-<8 hex>`` on Linux (no file, nothing to clean up, unique per
    run) and to a socket file in a fresh temporary directory elsewhere. The server logs
    two lines per request to stderr; that goes to a temporary log file (a pipe nobody
    reads would fill and stall the server), removed afterwards unless ``keep_log``.

    Ready means a unix-socket ``connect`` to ADDRESS succeeds (the probe sends nothing; the
    server logs one harmless "Could not parse request" warning for it). On exit the server
    gets SIGTERM (then SIGKILL after 5 s) and is always reaped.
    """
    low, high = pool
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"bad portserver pool {pool!r}")
    eph = _ephemeral_range()
    if eph is not None and low <= eph[1] and eph[0] <= high:
        warnings.warn(
            f"portserver pool {low}-{high} overlaps the ephemeral range {eph[0]}-{eph[1]}: "
            "PortpickerServerPeer cannot tell a no-server fallback from a server grant",
            RuntimeWarning,
            stacklevel=3,
        )
    script = find_portserver_script()
    with contextlib.ExitStack() as stack:
        if address is None:
            if sys.platform.startswith("linux"):
                address = f"@portlease-bench-{os.getpid()}-{secrets.token_hex(4)}"
            else:
                sockdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="plb-"))
                address = os.path.join(sockdir, "portserver.sock")
        # The server maps the *first* "@" anywhere in the address to NUL, the client only
        # a leading one: an "@" inside a path would make them disagree.
        if "@" in address[1:]:
            raise ValueError(f"portserver address {address!r} has an '@' after its start")
        fd, log_name = tempfile.mkstemp(prefix="portserver-", suffix=".log")
        log_path = Path(log_name)
        if not keep_log:
            stack.callback(log_path.unlink, missing_ok=True)
        command = (
            sys.executable,
            str(script),
            "--portserver_address",
            address,
            "--portserver_static_pool",
            f"{low}-{high}",
        )
        with os.fdopen(fd, "wb") as log_file:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        try:
            _wait_for_portserver(proc, address, startup_timeout_s, log_path)
            yield PortServer(address, (low, high), proc.pid, command, log_path)
        finally:
            _stop_process(proc)


def _wait_for_portserver(
    proc: subprocess.Popen[bytes], address: str, timeout_s: float, log_path: Path
) -> None:
    target = _unix_address(address)
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise RuntimeError(
                f"portserver exited with code {code} before it was ready; log:\n"
                + _log_tail(log_path)
            )
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(target)
            except (FileNotFoundError, ConnectionRefusedError):
                pass
            else:
                return
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"portserver at {address!r} not ready after {timeout_s} s; log:\n"
                + _log_tail(log_path)
            )
        time.sleep(0.02)


# --------------------------------------------------------------------------- duplicates


@dataclass(frozen=True)
class Grant:
    """One grant of one port. Times are ``time.monotonic_ns()`` (system-wide on Linux and
    macOS, so comparable across processes). The port counts as in use by ``proc`` during
    [held_from_ns, held_until_ns)."""

    proc: int  # worker index: what "different processes" means
    pid: int
    port: int
    t_start_ns: int  # acquire called
    t_end_ns: int  # acquire returned
    held_from_ns: int
    held_until_ns: int


@dataclass(frozen=True)
class DupResult:
    peer: str
    procs: int
    calls: int  # per process
    hold_s: float
    grants: int  # ports granted in total (a grant of a block counts each port)
    errors: int  # failed acquires/releases plus workers that failed or never reported
    error_samples: tuple[str, ...]
    dup_ports: int  # distinct ports granted to 2+ processes with overlapping windows
    dup_pairs: int  # overlapping (grant, grant) pairs from different processes
    self_pairs: int  # overlapping pairs within one process (not duplicates; informative)
    elapsed_s: float  # from the start signal to the last worker's report
    call_us: tuple[float, ...] = ()  # microseconds of each acquire (one per grant, not per port)
    per_proc_calls: tuple[int, ...] = ()  # successful acquires of each worker
    per_proc_s: tuple[float, ...] = ()  # each worker's first acquire called to last returned

    @property
    def dups(self) -> int:
        return self.dup_ports


def count_duplicates(grants: Iterable[Grant]) -> tuple[int, int, int]:
    """``(dup_ports, dup_pairs, self_pairs)`` over ``grants``.

    Two grants of the same port overlap when ``a.held_from < b.held_until`` and
    ``b.held_from < a.held_until`` (windows that merely touch do not overlap). A pair from
    different processes is a duplicate; a pair from the same process is a ``self_pair``.
    """
    by_port: dict[int, list[Grant]] = defaultdict(list)
    for g in grants:
        by_port[g.port].append(g)
    dup_ports = dup_pairs = self_pairs = 0
    for port_grants in by_port.values():
        if len(port_grants) < 2:
            continue
        port_grants.sort(key=lambda g: g.held_from_ns)
        active: list[Grant] = []
        port_dups = 0
        for g in port_grants:
            active = [a for a in active if a.held_until_ns > g.held_from_ns]
            for a in active:
                if a.proc != g.proc:
                    port_dups += 1
                else:
                    self_pairs += 1
            active.append(g)
        if port_dups:
            dup_ports += 1
            dup_pairs += port_dups
    return dup_ports, dup_pairs, self_pairs


# A worker's report: ("ready", index) or ("done", index, pid, rows, n_errors, samples),
# rows being (port, t_start_ns, t_end_ns, held_from_ns, held_until_ns).
_Row = tuple[int, int, int, int, int]


def _dup_worker(
    peer: Peer,
    index: int,
    calls: int,
    hold_s: float,
    reports: multiprocessing.Queue[tuple[Any, ...]],
    go: Any,  # multiprocessing.synchronize.Event
    go_timeout_s: float,
) -> None:
    pid = os.getpid()
    rows: list[_Row] = []
    errors: list[str] = []
    n_errors = 0
    hold_ns = int(hold_s * 1e9)
    clock = time.monotonic_ns
    try:
        peer.setup()
    except BaseException as exc:
        reports.put(("done", index, pid, rows, 1, [f"setup: {exc!r}"]))
        return
    try:
        reports.put(("ready", index))
        if not go.wait(go_timeout_s):
            n_errors += 1
            errors.append("no start signal")
            return
        holds = peer.holds
        for _ in range(calls):
            t0 = clock()
            try:
                ports = peer.acquire()
            except Exception as exc:
                n_errors += 1
                if len(errors) < 5:
                    errors.append(f"acquire: {exc!r}")
                continue
            t1 = clock()
            if holds:
                time.sleep(hold_s)
                until = clock()
            else:
                until = t1 + hold_ns
            try:
                peer.release(ports)
            except Exception as exc:
                n_errors += 1
                if len(errors) < 5:
                    errors.append(f"release: {exc!r}")
            rows.extend((int(p), t0, t1, t1, until) for p in ports)
    except BaseException as exc:
        n_errors += 1
        errors.append(f"worker: {exc!r}")
    finally:
        try:
            peer.teardown()
        except Exception as exc:
            n_errors += 1
            errors.append(f"teardown: {exc!r}")
        reports.put(("done", index, pid, rows, n_errors, errors[:5]))


def duplicate_test(
    peer: Peer,
    procs: int,
    calls: int = DEFAULT_CALLS,
    hold_s: float = DEFAULT_HOLD_S,
    *,
    start_method: str = "spawn",
    timeout_s: float = 60.0,
) -> DupResult:
    """Run ``procs`` worker processes that each acquire from ``peer`` ``calls`` times.

    Workers start together (each runs ``peer.setup()``, reports ready, then waits for a
    common start signal). For ``peer.holds`` False the grant's window is
    [acquire returned, +hold_s) and the worker goes straight on; for True the worker sleeps
    ``hold_s`` and releases, and the window is [acquire returned, release called).
    Every worker is joined, terminated or killed, and reaped before this returns; a worker
    that fails or does not report within ``timeout_s`` counts as an error. ``fork`` is not
    offered: forking a process that holds locks or threads (a leaser's heartbeat) is unsafe.
    """
    if procs < 1 or calls < 1 or hold_s < 0:
        raise ValueError(f"bad duplicate_test arguments {procs=}, {calls=}, {hold_s=}")
    ctx: SpawnContext | ForkServerContext
    if start_method == "spawn":
        ctx = multiprocessing.get_context("spawn")
    elif start_method == "forkserver":
        ctx = multiprocessing.get_context("forkserver")
    else:
        raise ValueError(f"start_method must be 'spawn' or 'forkserver', not {start_method!r}")
    reports: multiprocessing.Queue[tuple[Any, ...]] = ctx.Queue()
    go = ctx.Event()
    deadline = time.monotonic() + timeout_s
    workers = [
        ctx.Process(
            target=_dup_worker,
            args=(peer, i, calls, hold_s, reports, go, timeout_s),
            name=f"portlease-bench-{peer.name}-{i}",
            daemon=True,
        )
        for i in range(procs)
    ]
    grants: list[Grant] = []
    n_errors = 0
    samples: list[str] = []
    done: set[int] = set()
    ready: set[int] = set()
    t_go = time.monotonic_ns()
    t_last = t_go

    def pump(until_ready: bool) -> None:
        nonlocal n_errors
        while len(done) < procs and (not until_ready or len(ready | done) < procs):
            if time.monotonic() >= deadline:
                raise TimeoutError
            try:
                msg = reports.get(timeout=0.2)
            except queue.Empty:
                for i, w in enumerate(workers):
                    if i not in done and w.exitcode is not None:
                        # Died without a report (a report in flight is still fine: it
                        # arrives first because the worker flushes before it exits).
                        with contextlib.suppress(queue.Empty):
                            while True:
                                handle(reports.get(timeout=0.2))
                        if i not in done:
                            done.add(i)
                            n_errors += 1
                            samples.append(f"worker {i} died with exit code {w.exitcode}")
                continue
            handle(msg)

    def handle(msg: tuple[Any, ...]) -> None:
        nonlocal n_errors, t_last
        if msg[0] == "ready":
            ready.add(msg[1])
            return
        _, index, pid, rows, errs, errs_text = msg
        done.add(index)
        n_errors += errs
        samples.extend(f"[{index}] {t}" for t in errs_text)
        grants.extend(Grant(index, pid, *row) for row in rows)
        t_last = time.monotonic_ns()

    try:
        for w in workers:
            w.start()
        try:
            pump(until_ready=True)
            t_go = t_last = time.monotonic_ns()
            go.set()
            pump(until_ready=False)
        except TimeoutError:
            missing = procs - len(done)
            n_errors += missing
            samples.append(f"{missing} worker(s) did not report within {timeout_s} s")
    finally:
        go.set()
        for w in workers:
            if w.pid is None:
                continue  # never started
            w.join(timeout=max(0.1, deadline - time.monotonic()))
            if w.is_alive():
                w.terminate()
                w.join(timeout=2.0)
            if w.is_alive():
                w.kill()
                w.join()
            w.close()
        reports.close()
        reports.join_thread()

    dup_ports, dup_pairs, self_pairs = count_duplicates(grants)
    calls_seen = {(g.proc, g.t_start_ns): (g.t_end_ns - g.t_start_ns) / 1000 for g in grants}
    per_proc = [0] * procs
    first = [math.inf] * procs
    last = [0.0] * procs
    for g in grants:
        first[g.proc] = min(first[g.proc], g.t_start_ns)
        last[g.proc] = max(last[g.proc], g.t_end_ns)
    for proc, _ in calls_seen:
        per_proc[proc] += 1
    return DupResult(
        peer=peer.name,
        procs=procs,
        calls=calls,
        hold_s=hold_s,
        grants=len(grants),
        errors=n_errors,
        error_samples=tuple(samples[:10]),
        dup_ports=dup_ports,
        dup_pairs=dup_pairs,
        self_pairs=self_pairs,
        elapsed_s=max(0, t_last - t_go) / 1e9,
        call_us=tuple(calls_seen.values()),
        per_proc_calls=tuple(per_proc),
        per_proc_s=tuple(max(0.0, (b - a) / 1e9) if a != math.inf else 0.0 for a, b in zip(first, last, strict=True)),
    )


# --------------------------------------------------------------------------- runs, table


@dataclass(frozen=True)
class PeerSpec:
    """A peer with its per-peer budget (slow peers get fewer calls)."""

    peer: Peer
    latency_n: int = DEFAULT_LATENCY_N
    calls: int = DEFAULT_CALLS  # per process, in the duplicate test
    latency_max_s: float | None = 3.0


@dataclass(frozen=True)
class PeerResult:
    name: str
    latency_us: tuple[float, ...]
    dups: dict[int, DupResult]  # keyed by number of processes

    @property
    def p50(self) -> float:
        return percentiles(self.latency_us)[0]

    @property
    def p90(self) -> float:
        return percentiles(self.latency_us)[1]


def measure_peer(
    spec: PeerSpec,
    *,
    procs: Sequence[int] = DEFAULT_PROCS,
    hold_s: float = DEFAULT_HOLD_S,
    start_method: str = "spawn",
    timeout_s: float = 60.0,
) -> PeerResult:
    """Latency, then one :func:`duplicate_test` per entry of ``procs``."""
    samples = peer_latency(spec.peer, spec.latency_n, max_seconds=spec.latency_max_s)
    dups = {
        k: duplicate_test(
            spec.peer, k, spec.calls, hold_s, start_method=start_method, timeout_s=timeout_s
        )
        for k in procs
    }
    return PeerResult(spec.peer.name, tuple(samples), dups)


def run_peers(
    *,
    only: Iterable[str] | None = None,
    latency_n: int = DEFAULT_LATENCY_N,
    calls: int = DEFAULT_CALLS,
    procs: Sequence[int] = DEFAULT_PROCS,
    hold_s: float = DEFAULT_HOLD_S,
    start_method: str = "spawn",
    server_pool: tuple[int, int] = DEFAULT_SERVER_POOL,
    progress: Callable[[str], None] | None = None,
) -> list[PeerResult]:
    """Measure the four peers (or those named in ``only``), running the portserver for
    ``portpicker+server`` only while it is measured.

    port-for costs ~10 ms a call (it rebuilds its candidate set each time), so it gets a
    quarter of ``calls`` and ``latency_n`` to keep the whole run within about a minute.
    """
    wanted = None if only is None else set(only)
    slow = max(1, calls // 4), max(1, latency_n // 4)
    plan: list[tuple[str, Callable[[str], PeerSpec]]] = [
        ("portpicker", lambda _a: PeerSpec(PortpickerPeer(), latency_n, calls)),
        (
            "portpicker+server",
            lambda a: PeerSpec(PortpickerServerPeer(address=a, pool=server_pool), latency_n, calls),
        ),
        ("port-for", lambda _a: PeerSpec(PortForPeer(), slow[1], slow[0])),
        (
            "ephemeral-port-reserve",
            lambda _a: PeerSpec(EphemeralPortReservePeer(), latency_n, calls),
        ),
    ]
    if wanted is not None:
        unknown = wanted - {name for name, _ in plan}
        if unknown:
            raise ValueError(f"unknown peer(s): {', '.join(sorted(unknown))}")
    results: list[PeerResult] = []
    for name, make in plan:
        if wanted is not None and name not in wanted:
            continue
        if progress:
            progress(name)
        with contextlib.ExitStack() as stack:
            address = ""
            if name == "portpicker+server":
                address = stack.enter_context(portserver(server_pool)).address
            results.append(
                measure_peer(make(address), procs=procs, hold_s=hold_s, start_method=start_method)
            )
    return results


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Aligned text table: the first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)]
        return " | ".join(parts).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.1f}"
    return str(value)


def results_table(results: Sequence[PeerResult], procs: Sequence[int] = DEFAULT_PROCS) -> str:
    """``peer | p50 µs | p90 µs | dups@K...``; a dup cell reads ``N`` or ``N (E err)``."""
    headers = ["peer", "p50 µs", "p90 µs", *(f"dups@{k}" for k in procs)]
    rows: list[list[object]] = []
    for r in results:
        row: list[object] = [r.name, r.p50, r.p90]
        for k in procs:
            d = r.dups.get(k)
            if d is None:
                row.append("-")
            else:
                row.append(f"{d.dup_ports} ({d.errors} err)" if d.errors else d.dup_ports)
        rows.append(row)
    return format_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Latency and duplicates of peer allocators.")
    parser.add_argument("--only", action="append", metavar="PEER", help="repeatable")
    parser.add_argument("--latency-n", type=int, default=DEFAULT_LATENCY_N)
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS, help="per process")
    parser.add_argument("--procs", type=int, nargs="+", default=list(DEFAULT_PROCS))
    parser.add_argument("--hold-ms", type=float, default=DEFAULT_HOLD_S * 1000)
    parser.add_argument("--start-method", default="spawn", choices=["spawn", "forkserver"])
    parser.add_argument("-v", "--verbose", action="store_true", help="per-run details")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    results = run_peers(
        only=args.only,
        latency_n=args.latency_n,
        calls=args.calls,
        procs=args.procs,
        hold_s=args.hold_ms / 1000,
        start_method=args.start_method,
        progress=lambda name: print(f"measuring {name} ...", file=sys.stderr, flush=True),
    )
    print(results_table(results, args.procs))
    print()
    print(
        f"dups@K: distinct ports granted to 2+ of K processes within {args.hold_ms:g} ms "
        "of each other (pick-and-forget peers hold nothing; the window is virtual)."
    )
    for r in results:
        d0 = next(iter(r.dups.values()), None)
        if d0 is not None:
            grants = ", ".join(f"{k}x{d.calls}={d.grants}" for k, d in r.dups.items())
            print(f"  {r.name}: latency n={len(r.latency_us)}; grants {grants}")
        if args.verbose:
            for k, d in r.dups.items():
                print(
                    f"    K={k}: pairs={d.dup_pairs} self_pairs={d.self_pairs} "
                    f"errors={d.errors} elapsed={d.elapsed_s:.2f}s {list(d.error_samples)}"
                )
    print(f"total {time.monotonic() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # Spawn workers re-import this file as __mp_main__; the guard keeps them from
    # re-running the benchmark.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
