"""Child processes and the load harness of the reliability suite (and of the full-scale benchmark).

Parent side: :func:`child_argv` builds the command line of a child, :func:`run_load` runs the
load test and returns a :class:`LoadReport`.

Child side: ``python tests/_reliability.py MODE JSON-ARGS`` runs one of the ``_mode_*``
functions below. Children talk back through one JSON line per event: on stdout, or, for the load
workers, appended to a file of their own with one ``write`` per line, so that a worker killed with
SIGKILL has still recorded everything it did up to that instant.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD = Path(__file__).resolve()
STATE_NAME = "fm-portalloc.json"


def child_argv(mode: str, **args: Any) -> list[str]:
    """The command line running ``_mode_<mode>(args)`` in a fresh interpreter."""
    return [sys.executable, os.fspath(CHILD), mode, json.dumps(args)]


def unshare_works() -> bool:
    """Whether ``unshare --pid --fork`` runs here: decided by unshare itself, since namespaces
    may be refused (no privilege, seccomp, an old kernel)."""
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--fork", "--kill-child", "true"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@contextlib.contextmanager
def holding(
    directory: Path, port_range: object, *, size: int, ttl: float
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A child that leases ``size`` ports (no heartbeat) and holds them until its stdin closes:
    (the child, the block's base). It must then exit cleanly."""
    code = (
        "import sys\n"
        "from pytest_portlease import PortLeaser\n"
        f"leaser = PortLeaser({os.fspath(directory)!r}, port_range={str(port_range)!r}, ttl={ttl!r})\n"
        f"print(leaser.lease({size}).base, flush=True)\n"
        "sys.stdin.read()\n"
        "leaser.close()\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            yield proc, int(proc.stdout.readline())
        finally:
            proc.stdin.close()
            proc.wait(timeout=60)
        assert proc.returncode == 0


def check_state_bytes(data: bytes) -> dict[str, Any]:
    """Parse a state file strictly, the way fedimint-portalloc's serde would; raise ValueError.

    An empty or missing file is a valid empty state (nobody has leased yet).
    """
    if not data:
        return {"next": 0, "keys": {}}
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError(f"top level is {type(doc).__name__}")
    if not _is_int(doc.get("next")) or not isinstance(doc.get("keys"), dict):
        raise ValueError(f"bad next/keys in {doc!r:.200}")
    for key, value in doc["keys"].items():
        # fedimint's schema: a u16 key (port 0 too), a u16 size, a u64 expires.
        if not (key.isascii() and key.isdecimal() and len(key) <= 5 and 0 <= int(key) <= 65535):
            raise ValueError(f"bad key {key!r}")
        if not isinstance(value, dict) or not _is_int(value.get("size")) or not _is_int(
            value.get("expires")
        ):
            raise ValueError(f"bad range {key}: {value!r}")
    return doc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def can_bind(port: int) -> str | None:
    """None when ``port`` binds for TCP (listening) and UDP on 0.0.0.0, else what failed.

    Independent of the engine's probe on purpose: this is the check a server would make.
    """
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
                if kind == socket.SOCK_STREAM:
                    s.listen(1)
            except OSError as e:
                return f"{'tcp' if kind == socket.SOCK_STREAM else 'udp'} {port}: {e.strerror}"
    return None


# ---------------------------------------------------------------------------------- the load test


@dataclass
class Grant:
    proc: int
    pid: int
    base: int
    size: int
    start: int  # monotonic ns: lease() returned
    end: int | None = None  # monotonic ns: release() called, or the process was killed


@dataclass
class LoadReport:
    procs: int
    leases_per_proc: int
    seconds: float
    grants: list[Grant]
    killed: list[int]  # worker indexes
    binders: list[int]
    overlaps: list[str]
    unbindable: list[str]
    state_errors: list[str]  # reads of the state that did not parse, or lost a live lease
    worker_errors: list[str]
    state_reads: int
    orphaned: int  # leases the killed workers held when they died
    reclaimed_at_end: int  # of those, the ones still in the state when every worker had ended
    outside_ports: list[int]  # bound by the harness outside portlease for the whole run
    exhausted: int  # leases that found the (deliberately tight) window full and were retried
    forked: int = 0  # children forked by workers, leasing with the leaser they inherited
    lock_events: tuple[str, ...] = ()  # what the harness did to the lock file mid-run
    late: int = 0  # workers started only after the lock file was first removed

    @property
    def ports(self) -> int:
        return sum(g.size for g in self.grants)

    def summary(self) -> str:
        rate = len(self.grants) / self.seconds if self.seconds else math.nan
        return (
            f"load: {self.procs} processes x {self.leases_per_proc} leases "
            f"({len(self.binders)} binding their ports, {len(self.killed)} killed with SIGKILL): "
            f"{len(self.grants)} leases of {self.ports} ports in {self.seconds:.1f}s "
            f"({rate:.0f} leases/s, {self.exhausted} retried on a full window); "
            f"{self.forked} forked children leasing, {self.late} workers started late; "
            f"lock file {' then '.join(self.lock_events) or 'left alone'} mid-run; "
            f"{self.orphaned} leases held by killed processes, all reclaimed "
            f"({self.reclaimed_at_end} of them by a final leaser); "
            f"{len(self.overlaps)} overlaps; {len(self.unbindable)} unbindable grants; "
            f"{self.state_reads} state reads, {len(self.state_errors)} bad; "
            f"{len(self.worker_errors)} worker errors"
        )


def _overlaps(grants: list[Grant], now: int) -> list[str]:
    """Pairs of grants that held a common port at a common instant."""
    by_port: dict[int, list[Grant]] = defaultdict(list)
    for g in grants:
        for port in range(g.base, g.base + g.size):
            by_port[port].append(g)
    found: set[tuple[int, int]] = set()
    out: list[str] = []
    for port, gs in by_port.items():
        gs.sort(key=lambda g: g.start)
        reach: Grant | None = None  # the grant so far whose window ends last
        for g in gs:
            if reach is not None and g.start < (reach.end or now):
                pair = (id(reach), id(g))
                if pair not in found:
                    found.add(pair)
                    out.append(
                        f"port {port}: worker {reach.proc} (pid {reach.pid}) held "
                        f"{reach.base}+{reach.size} from {reach.start} to {reach.end} ns, worker "
                        f"{g.proc} (pid {g.pid}) got {g.base}+{g.size} at {g.start} ns"
                    )
            if reach is None or (g.end or now) > (reach.end or now):
                reach = g
    return out


def _read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_bytes().splitlines():
            # A worker killed mid-write leaves at most one torn last line.
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


@contextlib.contextmanager
def _outside_holders(low: int, high: int, count: int, rnd: random.Random) -> Iterator[list[int]]:
    """Bind ``count`` ports of the range outside portlease, as foreign servers would."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        for port in rnd.sample(range(low, high + 1), count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            try:
                s.bind(("127.0.0.1", port))
                s.listen(1)
            except OSError:
                continue  # someone else has it already: just as good
            ports.append(port)
        yield ports
    finally:
        for s in socks:
            s.close()


def run_load(
    directory: Path,
    port_range: tuple[int, int],
    *,
    procs: int,
    leases: int,
    seed: int,
    kill: bool = True,
    timeout: float = 300.0,
    window: int | None = None,
    forks: int = 0,
    late: int = 0,
    lock_events: tuple[str, ...] = (),
) -> LoadReport:
    """Run ``procs`` worker processes that each lease ``leases`` blocks, and check the result.

    A third of the workers bind every port they get, TCP and UDP, as servers would; the
    others bind-check each port once. A quarter are killed with SIGKILL at a random instant
    once they have made a random number of leases. A few ports of the range are held outside
    portlease for the whole run. The harness parses the state file as often as it can while
    the workers run; the workers parse it after every step and check that every lease they
    hold is still in it.

    ``forks`` workers (never killed ones) fork a child half-way that leases with the leaser it
    inherited. ``lock_events`` (``"remove"``, ``"replace"``) are done to the lock file, one after
    each further sixth of the expected grants, as ``rm <dir>/lock`` or a cache cleaner would;
    the last ``late`` workers start only after the first of them. ``window``: the number of
    ports to lease from (default: about three times what the workers hold).
    """
    rnd = random.Random(seed)
    # A window of what the workers could hold at most (5 blocks of up to 8 ports each), about
    # three times what they hold on average: the next-fit cursor wraps again and again and
    # keeps running into live leases it must skip. Now and then it is full (see _mode_load).
    low = port_range[0]
    high = min(port_range[1], low + (window or procs * 40) - 1)
    events_dir = directory.parent / f"{directory.name}-events"
    events_dir.mkdir(parents=True, exist_ok=True)
    binders = sorted(rnd.sample(range(procs), procs // 3))
    victims = sorted(rnd.sample(range(procs), procs // 4 if kill else 0))
    forkers = sorted(rnd.sample([i for i in range(procs) if i not in victims], forks))
    late_ones = set(range(procs - late, procs))
    pending_events = list(lock_events)
    done_events: list[str] = []
    # Kill after a random number of leases (at most half, so the kill lands while it works),
    # then a random few milliseconds more, which puts it anywhere in the lease cycle.
    kill_after = {i: rnd.randint(1, max(1, leases // 2)) for i in victims}
    state_path = directory / STATE_NAME
    state_errors: list[str] = []
    worker_errors: list[str] = []
    state_reads = 0
    killed_at: dict[int, int] = {}
    children: list[subprocess.Popen[bytes]] = []

    with _outside_holders(low, high, 3, rnd) as outside, contextlib.ExitStack() as stack:
        for i in range(procs):
            argv = child_argv(
                "load",
                directory=os.fspath(directory),
                port_range=[low, high],
                leases=leases,
                seed=seed * 1000 + i,
                bind=i in binders,
                events=os.fspath(events_dir / f"{i}.jsonl"),
                label=f"load worker {i}",
                fork_events=os.fspath(events_dir / f"{i}-fork.jsonl") if i in forkers else None,
            )
            child = stack.enter_context(
                subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
            )
            children.append(child)
        try:
            for child in children:
                assert child.stdout is not None
                line = child.stdout.readline()
                if line.strip() != b"ready":
                    raise RuntimeError(f"a load worker did not start: {line!r}")
            started = time.monotonic()
            for i, child in enumerate(children):
                assert child.stdin is not None
                if i not in late_ones:
                    child.stdin.close()  # EOF is the start signal
            deadline = started + timeout
            counted: dict[int, int] = {}
            expected = (procs - late) * leases
            while any(c.poll() is None for c in children):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the load workers did not finish within {timeout}s")
                if pending_events:
                    grants = _count_grants(events_dir)
                    if grants >= expected * (len(done_events) + 1) // 6:
                        _lock_event(directory, pending_events[0])
                        done_events.append(pending_events.pop(0))
                if done_events or not lock_events:
                    for i in late_ones:
                        stdin = children[i].stdin
                        assert stdin is not None
                        if not stdin.closed:
                            stdin.close()
                for i in victims:
                    if i in killed_at or children[i].poll() is not None:
                        continue
                    path = events_dir / f"{i}.jsonl"
                    with contextlib.suppress(FileNotFoundError):
                        counted[i] = path.read_bytes().count(b'"ev": "grant"')
                    if counted.get(i, 0) >= kill_after[i]:
                        time.sleep(rnd.uniform(0, 0.003))
                        killed_at[i] = time.monotonic_ns()
                        os.kill(children[i].pid, signal.SIGKILL)
                try:
                    check_state_bytes(_read_nofollow(state_path))
                except ValueError as e:
                    state_errors.append(f"harness read: {e}")
                state_reads += 1
                time.sleep(0.002)
            seconds = time.monotonic() - started
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
        for i, child in enumerate(children):
            child.wait()
            assert child.stderr is not None
            err = child.stderr.read()  # only a traceback goes there: it fits in the pipe
            if i in killed_at and child.returncode == 0:
                del killed_at[i]  # it finished between our last look and the kill
            expected = -signal.SIGKILL if i in killed_at else 0
            if child.returncode != expected:
                worker_errors.append(
                    f"worker {i} exited with {child.returncode}, expected {expected}: "
                    f"{err.decode(errors='replace')[-2000:]}"
                )

    # Collect every worker's record of what it did.
    grants: list[Grant] = []
    unbindable: list[str] = []
    leftover = exhausted = 0
    for i in [*range(procs), *(1000 + i for i in forkers)]:
        name = f"{i}.jsonl" if i < 1000 else f"{i - 1000}-fork.jsonl"
        open_grants: dict[int, Grant] = {}
        for ev in _read_events(events_dir / name):
            kind = ev["ev"]
            if kind == "grant":
                g = Grant(i, ev["pid"], ev["base"], ev["size"], ev["t"])
                grants.append(g)
                open_grants[g.base] = g
                bad = [p for p in range(g.base, g.base + g.size) if p in outside]
                if bad:
                    unbindable.append(f"worker {i} got {bad}, bound outside portlease")
            elif kind == "bind" and ev["error"]:
                unbindable.append(f"worker {i}: {ev['error']}")
            elif kind == "release":
                open_grants.pop(ev["base"]).end = ev["t"]
            elif kind == "state-error":
                state_errors.append(f"worker {i}: {ev['error']}")
            elif kind == "exhausted":
                exhausted += 1
            elif kind == "error":
                worker_errors.append(f"worker {i}: {ev['error']}")
        for g in open_grants.values():
            if i in killed_at:
                g.end = killed_at[i]
                leftover += 1
            else:
                worker_errors.append(f"worker {i} never released {g.base}+{g.size}")
    overlaps = _overlaps(grants, time.monotonic_ns())

    # A later leaser reclaims what the killed workers held: afterwards nothing is left.
    reclaimed_at_end = _reclaim_all(directory, (low, high), state_errors)
    return LoadReport(
        procs=procs,
        leases_per_proc=leases,
        seconds=seconds,
        grants=grants,
        killed=sorted(killed_at),
        binders=binders,
        overlaps=overlaps,
        unbindable=unbindable,
        state_errors=state_errors,
        worker_errors=worker_errors,
        state_reads=state_reads,
        orphaned=leftover,
        reclaimed_at_end=reclaimed_at_end,
        outside_ports=outside,
        exhausted=exhausted,
        forked=len(forkers),
        lock_events=tuple(done_events),
        late=late,
    )


def _count_grants(events_dir: Path) -> int:
    count = 0
    for path in events_dir.glob("*.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            count += path.read_bytes().count(b'"ev": "grant"')
    return count


def _lock_event(directory: Path, what: str) -> None:
    """Remove the lock file, or replace it with a new one (atomically, as an editor would)."""
    lock = directory / "lock"
    if what == "remove":
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
    elif what == "replace":
        new = directory / "lock.new"
        new.write_bytes(b"")
        os.replace(new, lock)
    else:
        raise ValueError(f"unknown lock event {what!r}")


def _reclaim_all(directory: Path, port_range: tuple[int, int], errors: list[str]) -> int:
    from pytest_portlease import PortLeaser

    before = check_state_bytes(_read_nofollow(directory / STATE_NAME))["keys"]
    with PortLeaser(directory, port_range=port_range, label="load reclaimer") as leaser:
        leaser.release(leaser.lease(1))  # one transaction: reclaims the dead owners' ranges
    after = check_state_bytes(_read_nofollow(directory / STATE_NAME))["keys"]
    if after:
        errors.append(f"ranges left after every worker ended and a reclaim: {sorted(after)}")
    return len(before)


def _read_nofollow(path: Path) -> bytes:
    """Read the state as any reader outside the lock does: open, read, never through a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    with os.fdopen(fd, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------- child modes


def _mode_load(args: dict[str, Any]) -> None:
    """A load worker: lease ``leases`` blocks of 1-8 ports, hold them a while, release them."""
    from pytest_portlease import PortLeaser, PortRangeExhausted

    rnd = random.Random(args["seed"])
    pid = os.getpid()
    fd = os.open(args["events"], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    state_path = Path(args["directory"]) / STATE_NAME

    def record(**event: Any) -> None:
        os.write(fd, json.dumps(event).encode() + b"\n")  # one write: whole lines only

    fork_at = rnd.randint(1, max(1, args["leases"] // 2)) if args.get("fork_events") else -1
    forked: list[int] = []

    servers: dict[int, list[socket.socket]] = {}
    held: dict[int, int] = {}  # base -> size

    def check_state() -> None:
        try:
            keys = check_state_bytes(_read_nofollow(state_path))["keys"]
        except ValueError as e:
            record(ev="state-error", error=f"unparseable: {e}")
            return
        for base, size in held.items():
            value = keys.get(str(base))
            if value is None or value["size"] != size or value.get("owner", {}).get("pid") != pid:
                record(ev="state-error", error=f"live lease {base}+{size} is missing: {value!r}")

    def release(leaser: PortLeaser, base: int) -> None:
        for s in servers.pop(base, []):
            s.close()
        record(ev="release", base=base, t=time.monotonic_ns())
        leaser.release(base)
        del held[base]
        check_state()

    def lease_one(leaser: PortLeaser) -> None:
        size = rnd.randint(1, 8)
        while True:
            try:
                block = leaser.lease(size)
                break
            except PortRangeExhausted:
                # The window is that tight on purpose: wait for the others to release, and
                # give back one of ours, or every worker may wait for the others for good.
                record(ev="exhausted")
                if held:
                    release(leaser, rnd.choice(list(held)))
                time.sleep(0.002)
        record(ev="grant", pid=pid, base=block.base, size=block.size, t=time.monotonic_ns())
        held[block.base] = block.size
        error = None
        if args["bind"]:
            socks = servers[block.base] = []
            for port in block:
                for kind, addr in ((socket.SOCK_STREAM, "127.0.0.1"), (socket.SOCK_DGRAM, "0.0.0.0")):
                    s = socket.socket(socket.AF_INET, kind)
                    socks.append(s)
                    try:
                        s.bind((addr, port))
                        if kind == socket.SOCK_STREAM:
                            s.listen(8)
                    except OSError as e:
                        error = error or f"server bind {addr}:{port}: {e.strerror}"
        else:
            error = next((e for e in map(can_bind, block) if e), None)
        record(ev="bind", base=block.base, error=error)
        check_state()
        time.sleep(rnd.choice((0, 0, rnd.uniform(0, 0.004))))
        # Keep up to a few leases at once; release a random one of them now and then.
        while held and (len(held) > 4 or rnd.random() < 0.3):
            release(leaser, rnd.choice(list(held)))

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.read()  # the start signal is EOF
    with PortLeaser(
        args["directory"], port_range=tuple(args["port_range"]), ttl=600, label=args["label"]
    ) as leaser:
        for n in range(args["leases"]):
            if n == fork_at:
                child = os.fork()
                if child == 0:
                    # The child leases with the leaser it inherited, on records of its own. Our
                    # sockets are the parent's to close: a copy here would keep its ports bound.
                    status = 1
                    try:
                        for socks in servers.values():
                            for sock in socks:
                                sock.close()
                        servers.clear()
                        held.clear()
                        pid = os.getpid()
                        fd = os.open(args["fork_events"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                        for _ in range(max(3, args["leases"] // 4)):
                            lease_one(leaser)
                        for base in list(held):
                            release(leaser, base)
                        leaser.close()
                        status = 0
                    except BaseException as e:
                        record(ev="error", error=f"forked child: {e!r}")
                    finally:
                        os._exit(status)
                forked.append(child)
            lease_one(leaser)
        for base in list(held):
            release(leaser, base)
    for child in forked:
        _, status = os.waitpid(child, 0)
        if status != 0:
            record(ev="error", error=f"forked child {child} exited with status {status}")
    os.close(fd)


def _kill_at(point: str) -> Callable[[str], None]:
    def fault(where: str) -> None:
        if where == point:
            os.kill(os.getpid(), signal.SIGKILL)

    return fault


def _mode_crash(args: dict[str, Any]) -> None:
    """Lease (and for ``op=release`` then release) with a SIGKILL at ``point`` of the fault seam.

    Prints the leased block first for ``op=release``. Exits 0 only if the point was never hit.
    """
    from pytest_portlease import PortLeaser, _store

    if not args["exchange"]:
        _store._renameat2 = False  # the os.replace fallback of systems without renameat2
    leaser = PortLeaser(args["directory"], port_range=tuple(args["port_range"]), label="crasher")
    if args["op"] == "lease":
        _store.fault = _kill_at(args["point"])
        leaser.lease(3)
    else:
        block = leaser.lease(3)
        print(json.dumps({"base": block.base, "size": block.size}), flush=True)
        _store.fault = _kill_at(args["point"])
        leaser.release(block)


def _mode_hold_lock(args: dict[str, Any]) -> None:
    """Lease, but stop inside the lock the first time the fault seam reaches ``at`` (default
    ``locked``): print ``locked``, wait for a line on stdin, go on."""
    from pytest_portlease import PortLeaser, _store

    stops = [args.get("at", "locked")]

    def fault(where: str) -> None:
        if where in stops:
            stops.clear()
            print("locked", flush=True)
            sys.stdin.readline()

    _store.fault = fault
    leaser = PortLeaser(
        args["directory"], port_range=tuple(args["port_range"]), ttl=600, owner_pid=None
    )
    block = leaser.lease(2)
    print(json.dumps({"base": block.base, "size": block.size}), flush=True)


def _mode_lease(args: dict[str, Any]) -> None:
    """Lease one block and print it, or print the error: ``{"base", "size"}`` or ``{"error"}``.

    ``owner_pid=None``: the lease outlives this process (only its TTL ends it).
    """
    import warnings

    from pytest_portlease import PortleaseError, PortLeaser

    warnings.simplefilter("error")
    try:
        leaser = PortLeaser(
            args["directory"], port_range=tuple(args["port_range"]), ttl=600, owner_pid=None
        )
        block = leaser.lease(args.get("size", 1))
    except PortleaseError as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
        return
    print(json.dumps({"base": block.base, "size": block.size}), flush=True)


def _mode_hello(args: dict[str, Any]) -> None:
    import pytest_portlease

    print(json.dumps({"uid": os.getuid(), "gids": os.getgroups(), "v": pytest_portlease.__version__}))


MODES: dict[str, Callable[[dict[str, Any]], None]] = {
    "load": _mode_load,
    "crash": _mode_crash,
    "hold-lock": _mode_hold_lock,
    "lease": _mode_lease,
    "hello": _mode_hello,
}

if __name__ == "__main__":
    MODES[sys.argv[1]](json.loads(sys.argv[2]))


def lock_is_held(lock: Path) -> bool:
    """Whether somebody holds the lock's flock, apart from the engine: a non-blocking try on a
    description of our own."""
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # drops the flock, if we took it
    return False
