"""PortLeaser: allocation, exact ports, exhaustion, arguments, threads, processes and crashes."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import SteppedClock, free_window, kernel_ephemeral_range, worker_range

from pytest_portlease import (
    InvalidArgument,
    LockTimeout,
    PortBlock,
    PortleaseError,
    PortLeaser,
    PortRangeExhausted,
    PortUnavailable,
    _owner,
    lease_ports,
)
from pytest_portlease._config import MAX_TTL, PortRange
from pytest_portlease._state import STATE_NAME

# Exact bases from a fresh state: see conftest.low_start.
pytestmark = pytest.mark.usefixtures("low_start")


@pytest.fixture
def port_range() -> PortRange:
    """These tests expect exact bases: a window of the worker's ports that probes free now."""
    return free_window()


@pytest.fixture
def leaser(lease_dir: Path, port_range: PortRange) -> Iterator[PortLeaser]:
    with PortLeaser(lease_dir, port_range=port_range, label="test") as leaser:
        yield leaser


def state_keys(lease_dir: Path) -> dict[str, dict[str, object]]:
    keys: dict[str, dict[str, object]] = json.loads((lease_dir / STATE_NAME).read_text())["keys"]
    return keys


class Child:
    """A Python child process that prints lines; always killed and reaped by the fixture."""

    def __init__(self, code: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            text=True,
        )

    def line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"child exited with {self.proc.wait()}"
        return line.strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def spawn() -> Iterator[type[Child]]:
    children: list[Child] = []

    class Tracked(Child):
        def __init__(self, code: str) -> None:
            super().__init__(code)
            children.append(self)

    yield Tracked
    for child in children:
        child.kill()


# -- PortBlock ------------------------------------------------------------------------------------


def test_port_block_is_a_small_frozen_sequence() -> None:
    block = PortBlock(20000, 3, "pg")
    assert block.ports == (20000, 20001, 20002)
    assert list(block) == [20000, 20001, 20002]
    assert block[0] == 20000 and block[-1] == 20002
    assert len(block) == 3 and 20001 in block and 20003 not in block
    assert str(block) == "20000-20002" and str(PortBlock(20000, 1)) == "20000"
    assert block.env("PG") == {
        "PG_PORT": "20000",
        "PG_PORT_0": "20000",
        "PG_PORT_1": "20001",
        "PG_PORT_2": "20002",
        "PG_PORTS": "20000,20001,20002",
    }
    with pytest.raises(AttributeError):
        block.base = 1  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(block)) == block


# -- allocation -----------------------------------------------------------------------------------


def test_blocks_are_consecutive_next_fit_and_recorded(leaser: PortLeaser, lease_dir: Path) -> None:
    low = leaser.port_range.low
    a, b = leaser.lease(3, label="one"), leaser.lease(2)
    assert (a.base, a.size, b.base) == (low, 3, low + 3)
    assert a.label == "test one" and b.label == "test"
    keys = state_keys(lease_dir)
    assert keys[str(low)]["size"] == 3
    owner = keys[str(low)]["owner"]
    assert isinstance(owner, dict)
    assert owner["pid"] == os.getpid() and owner["label"] == "test one"
    assert owner["start"] == _owner.process_start(os.getpid())
    expires = keys[str(low)]["expires"]
    assert isinstance(expires, int) and time.time() < expires <= time.time() + 121
    # Next-fit: a released block is not reused until the cursor comes round again.
    assert leaser.release(a) is True
    assert leaser.lease(1).base == low + 5
    assert leaser.held == [b, PortBlock(low + 5, 1, "test")]


def test_the_scan_wraps_once_and_skips_bound_ports(lease_dir: Path, port_range: PortRange) -> None:
    rng = PortRange(port_range.low, port_range.low + 9)
    with PortLeaser(lease_dir, port_range=rng) as leaser, socket.socket() as busy:
        busy.bind(("127.0.0.1", rng.low + 1))
        first = leaser.lease(4)  # low..low+3 contains a bound port
        assert first.base == rng.low + 2
        second = leaser.lease(4)
        assert second.base == rng.low + 6
        leaser.release(first)
        third = leaser.lease(3)  # cursor at the end: wraps to the start, skips the bound port
        assert third.base == rng.low + 2


def test_release_is_idempotent_and_only_touches_our_leases(leaser: PortLeaser) -> None:
    block = leaser.lease(2)
    assert leaser.release(block.base) is True
    assert leaser.release(block) is False
    assert leaser.release(12345) is False


def test_release_all_and_close_are_final(leaser: PortLeaser, lease_dir: Path) -> None:
    for size in (1, 2, 3):
        leaser.lease(size)
    leaser.release_all()
    assert state_keys(lease_dir) == {}
    leaser.lease(1)
    leaser.close()
    leaser.close()
    assert state_keys(lease_dir) == {}
    with pytest.raises(PortleaseError, match="closed"):
        leaser.lease(1)


def test_lease_ports_releases_on_exit(lease_dir: Path, port_range: PortRange) -> None:
    with lease_ports(2, directory=lease_dir, port_range=port_range, label="ctx") as block:
        assert str(block.base) in state_keys(lease_dir)
        assert block.label.endswith("ctx")
    assert state_keys(lease_dir) == {}


def test_a_per_call_range(leaser: PortLeaser) -> None:
    high = leaser.port_range.high
    block = leaser.lease(2, port_range=(high - 1, high))
    assert block.ports == (high - 1, high)
    with pytest.raises(PortRangeExhausted):
        leaser.lease(1, port_range=f"{high - 1}-{high}")


# -- exact ports ----------------------------------------------------------------------------------


def test_an_exact_port_is_leased_or_names_its_holder(leaser: PortLeaser, lease_dir: Path) -> None:
    low = leaser.port_range.low
    block = leaser.lease(2, port=low + 100, label="pg")
    assert block.ports == (low + 100, low + 101)
    assert json.loads((lease_dir / STATE_NAME).read_text())["next"] == 0  # the cursor did not move
    with PortLeaser(lease_dir) as other, pytest.raises(PortUnavailable) as info:
        other.lease(1, port=low + 101)
    assert "'test pg'" in str(info.value) and f"pid {os.getpid()}" in str(info.value)
    assert info.value.holder is not None and "test pg" in info.value.holder
    assert pickle.loads(pickle.dumps(info.value)).holder == info.value.holder


def test_an_exact_port_bound_outside_portlease(leaser: PortLeaser) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]  # an ephemeral port: exact requests may lie outside the range
        with pytest.raises(PortUnavailable, match=f"port {port} is bound outside portlease") as info:
            leaser.lease(1, port=port)
        assert info.value.holder is None
    assert leaser.lease(1, port=port).base == port


# -- exhaustion and bad arguments -----------------------------------------------------------------


def test_a_fully_bound_range_is_exhausted_after_one_bounded_cycle(lease_dir: Path) -> None:
    # A window free now: a port of the slice still held by an earlier test (a server being
    # stopped) would move the first block off the range's start and, once let go, be granted.
    rng = free_window(16)
    with ExitStack() as stack, PortLeaser(lease_dir, port_range=rng) as leaser:
        leaser.lease(4)
        for port in range(rng.low + 4, rng.high + 1):
            sock = stack.enter_context(socket.socket())
            sock.bind(("0.0.0.0", port))
        with pytest.raises(PortRangeExhausted) as info:
            leaser.lease(1)
    message = str(info.value)
    assert f"range {rng} (argument)" in message
    assert "1 live lease(s) hold 4 of its 16 ports" in message
    assert "widen the range where it was set (argument)" in message
    assert f"portlease --dir {lease_dir} status" in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": 0}, "invalid size 0"),
        ({"size": -2}, "invalid size -2"),
        ({"size": True}, "invalid size True"),
        ({"size": "3"}, "invalid size '3'"),
        ({"size": 5000}, "invalid size 5000 .* holds only 200 ports"),
        ({"size": 1, "port_range": "30-20"}, "invalid port_range '30-20'"),
        ({"size": 1, "port": 0}, "invalid port 0 .* 1 to 65535"),
        ({"size": 1, "port": 70000}, "invalid port 70000"),
        ({"size": 3, "port": 65533}, "65533-65535 includes port 65535, which no block may use"),
        ({"size": 1, "ttl": 0}, "invalid ttl 0"),
        ({"size": 1, "ttl": -1}, "invalid ttl -1"),
        ({"size": 1, "label": 5}, "invalid label 5"),
    ],
)
def test_bad_arguments_name_the_value(leaser: PortLeaser, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as info:
        leaser.lease(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert "from argument" in str(info.value)


def test_bad_constructor_arguments(lease_dir: Path) -> None:
    with pytest.raises(ValueError, match="invalid port_range '1-0'"):
        PortLeaser(lease_dir, port_range="1-0")
    with pytest.raises(ValueError, match="invalid ttl 0"):
        PortLeaser(lease_dir, ttl=0)
    with pytest.raises(ValueError, match="invalid lock_timeout -1"):
        PortLeaser(lease_dir, lock_timeout=-1)


def test_a_lease_directory_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(PortleaseError, match=f"lease directory {path} from argument is not a directory"):
        PortLeaser(path).lease(1)


# -- renewal and reclaim --------------------------------------------------------------------------


def test_renew_extends_every_lease_in_one_round_trip(
    lease_dir: Path, port_range: PortRange, clock: SteppedClock
) -> None:
    with PortLeaser(lease_dir, port_range=port_range, ttl=5) as leaser:
        blocks = [leaser.lease(1), leaser.lease(2, ttl=50)]
        assert [state_keys(lease_dir)[str(b.base)]["expires"] for b in blocks] == [
            math.ceil(clock.now + 5), math.ceil(clock.now + 50)
        ]
        clock.step(30)  # the first has expired by the engine's clock, the second not
        assert leaser.renew() == []
        # Each by its own TTL, from the time of the renewal.
        assert [state_keys(lease_dir)[str(b.base)]["expires"] for b in blocks] == [
            math.ceil(clock.now + 5), math.ceil(clock.now + 50)
        ]


def test_expired_leases_are_reclaimed(lease_dir: Path, port_range: PortRange) -> None:
    low = port_range.low
    lease_dir.mkdir()
    (lease_dir / STATE_NAME).write_text(
        json.dumps({"next": low, "keys": {str(low): {"size": 5, "expires": int(time.time()) - 1}}})
    )
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        assert [i.state for i in leaser.status()] == ["expired"]
        assert leaser.lease(1, port=low + 2).base == low + 2
        assert list(state_keys(lease_dir)) == [str(low + 2)]


def test_a_recycled_pid_is_a_dead_owner_and_a_foreign_namespace_is_not(
    lease_dir: Path, port_range: PortRange
) -> None:
    low = port_range.low
    future = int(time.time()) + 600
    me = _owner.owner_for(os.getpid(), "x").to_json()
    recycled = dict(me, start=me["start"] - 1)  # our pid, but a process that started earlier
    elsewhere = dict(me, ns="another-boot/123")
    lease_dir.mkdir()
    (lease_dir / STATE_NAME).write_text(json.dumps({"next": low, "keys": {
        str(low): {"size": 1, "expires": future, "owner": recycled},
        str(low + 1): {"size": 1, "expires": future, "owner": elsewhere},
        str(low + 2): {"size": 1, "expires": future, "owner": me},
    }}))
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        assert [i.state for i in leaser.status()] == ["dead owner", "foreign", "live"]
        assert leaser.lease(1).base == low  # reclaimed at once, without waiting for the TTL
        assert set(state_keys(lease_dir)) == {str(low), str(low + 1), str(low + 2)}
        assert state_keys(lease_dir)[str(low)]["owner"] != recycled


def test_a_sigkilled_holder_is_reclaimed_at_once(
    lease_dir: Path, port_range: PortRange, spawn: type[Child]
) -> None:
    child = spawn(f"""
        from pytest_portlease import PortLeaser
        leaser = PortLeaser({str(lease_dir)!r}, port_range={str(port_range)!r}, ttl=600)
        print(leaser.lease(3).base, leaser.lease(2).base, flush=True)
        import time; time.sleep(600)
    """)
    bases = [int(b) for b in child.line().split()]
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        assert [i.state for i in leaser.status()] == ["live", "live"]
        with pytest.raises(PortUnavailable):
            leaser.lease(1, port=bases[0])
        os.kill(child.proc.pid, signal.SIGKILL)
        child.kill()
        assert [i.state for i in leaser.status()] == ["dead owner", "dead owner"]
        assert leaser.lease(3, port=bases[0]).base == bases[0]
        assert list(state_keys(lease_dir)) == [str(bases[0])]


def test_a_child_killed_while_holding_the_lock_leaves_a_parseable_state(
    lease_dir: Path, port_range: PortRange, spawn: type[Child]
) -> None:
    with PortLeaser(lease_dir, port_range=port_range, ttl=600) as mine:
        kept = mine.lease(2)
        for point in ("locked", "temp-written", "after-replace"):
            child = spawn(f"""
                import os, signal
                from pytest_portlease import PortLeaser, _store
                def die(where):
                    if where == {point!r}:
                        print("dying", flush=True)
                        os.kill(os.getpid(), signal.SIGKILL)
                _store.fault = die
                PortLeaser({str(lease_dir)!r}, port_range={str(port_range)!r}).lease(4)
            """)
            assert child.line() == "dying"
            assert child.proc.wait() == -signal.SIGKILL
            keys = state_keys(lease_dir)  # parses
            assert str(kept.base) in keys
            block = mine.lease(1)  # the kernel dropped the dead child's flock: we proceed
            assert block.base not in kept
    with PortLeaser(lease_dir, port_range=port_range) as fresh:
        fresh.lease(1)  # its first write sweeps the temp file the dead writer left
    assert sorted(p.name for p in lease_dir.iterdir()) == [STATE_NAME, "lock"]


def test_lock_timeout_names_the_lock_and_its_holder(
    lease_dir: Path, port_range: PortRange, spawn: type[Child]
) -> None:
    child = spawn(f"""
        import time
        from pytest_portlease import PortLeaser, _store
        def hold(where):
            if where == "locked":
                print("holding", flush=True)
                time.sleep(600)
        _store.fault = hold
        PortLeaser({str(lease_dir)!r}, port_range={str(port_range)!r}).lease(1)
    """)
    assert child.line() == "holding"
    with PortLeaser(lease_dir, port_range=port_range, lock_timeout=0.3) as leaser, pytest.raises(LockTimeout) as info:
        leaser.lease(1)
    error = info.value
    assert isinstance(error, TimeoutError)
    assert error.holder_pid == child.proc.pid
    assert str(lease_dir / "lock") in str(error) and f"pid {child.proc.pid}" in str(error)
    assert str(pickle.loads(pickle.dumps(error))) == str(error)


def _signalled(leaser: PortLeaser, name: str) -> threading.Event:
    """An event set after each call of ``leaser``'s method ``name``, which is wrapped in place."""
    done = threading.Event()
    method = getattr(leaser, name)

    def signalling() -> object:
        try:
            return method()
        finally:
            done.set()

    setattr(leaser, name, signalling)
    return done


def renewals(leaser: PortLeaser) -> threading.Event:
    """An event set after each of ``leaser``'s renewals (the heartbeat calls ``self.renew``)."""
    return _signalled(leaser, "renew")


def waiting(leaser: PortLeaser) -> threading.Event:
    """An event set once ``leaser``'s heartbeat has read its interval, the time it then waits.
    Installed before the heartbeat starts (it binds ``self._beat_interval`` then)."""
    return _signalled(leaser, "_beat_interval")


def test_the_heartbeat_keeps_leases_past_their_ttl(
    lease_dir: Path, port_range: PortRange, clock: SteppedClock
) -> None:
    # owner_pid=None: only the TTL protects these leases, so only the heartbeat keeps them.
    with PortLeaser(lease_dir, port_range=port_range, ttl=1, owner_pid=None) as holder:
        renewed = renewals(holder)
        block = holder.lease(2)
        clock.step(10)  # long past its expiry, by the engine's clock
        holder.start_heartbeat()
        assert renewed.wait(60), "the heartbeat never renewed"
        assert state_keys(lease_dir)[str(block.base)]["expires"] == math.ceil(clock.now + 1)
        with PortLeaser(lease_dir, port_range=port_range) as other, pytest.raises(PortUnavailable, match="held by"):
            other.lease(1, port=block.base)
    assert state_keys(lease_dir) == {}


# -- concurrency ----------------------------------------------------------------------------------


def test_threads_sharing_one_leaser_get_disjoint_blocks(leaser: PortLeaser) -> None:
    blocks: list[PortBlock] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for size in (1, 2, 3, 4):
                blocks.append(leaser.lease(size))
                leaser.renew()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ports = [p for b in blocks for p in b]
    assert len(ports) == len(set(ports)) == 8 * 10
    assert len(leaser.held) == 32


CHURN = """
import json, random, socket, sys, time
from pytest_portlease import PortLeaser
rng = random.Random({seed})
grants = []
with PortLeaser({directory!r}, port_range={port_range!r}, ttl=60) as leaser:
    held = []
    for _ in range({rounds}):
        block = leaser.lease(rng.randint(1, 5))
        granted = time.monotonic()
        socks = []
        for port in block:  # bindable at the moment it was granted, as a real server would
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(socket.AF_INET, kind)
                s.bind(("127.0.0.1", port))
                socks.append(s)
        for s in socks:
            s.close()
        held.append((block, granted))
        if rng.random() < 0.6:
            old, since = held.pop(rng.randrange(len(held)))
            grants.append((old.base, old.size, since, time.monotonic()))
            leaser.release(old)
    end = time.monotonic()
    grants.extend((b.base, b.size, since, end) for b, since in held)
print(json.dumps(grants))
"""


def test_processes_leasing_at_once_never_overlap(lease_dir: Path) -> None:
    port_range = worker_range()  # room for 8 processes holding up to 40 blocks each
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHURN.format(
                seed=i, directory=str(lease_dir), port_range=str(port_range), rounds=40
            )],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        results.append(json.loads(out))
    # Each window is from just after the grant to just before the release: a subset of the
    # lease's life, so any two windows on a shared port that overlap in time are a real collision.
    windows = [(i, base, size, t0, t1) for i, grants in enumerate(results) for base, size, t0, t1 in grants]
    assert len(windows) == 8 * 40
    by_port: dict[int, list[tuple[int, float, float]]] = {}
    for i, base, size, t0, t1 in windows:
        for port in range(base, base + size):
            by_port.setdefault(port, []).append((i, t0, t1))
    for port, uses in by_port.items():
        uses.sort(key=lambda u: u[1])
        holder, until = uses[0][0], uses[0][2]
        for i, t0, t1 in uses[1:]:
            assert t0 >= until, f"port {port}: processes {holder} and {i} held it at once"
            if t1 > until:
                holder, until = i, t1
    assert state_keys(lease_dir) == {}


def test_a_range_inside_the_ephemeral_range_warns_once(lease_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_portlease import PortleaseWarning, _leaser

    eph = kernel_ephemeral_range()
    monkeypatch.setattr(_leaser, "_warned_ephemeral", set())
    rng = f"{eph.high - 50}-{eph.high}"
    with PortLeaser(lease_dir, port_range=rng) as leaser:
        with pytest.warns(PortleaseWarning, match=rf"overlaps this host's ephemeral range {eph}"):
            leaser.lease(1)
        leaser.lease(1)  # once per process and range: no second warning (warnings are errors here)


def test_a_shorter_per_lease_ttl_wakes_the_heartbeat(lease_dir: Path, port_range: PortRange) -> None:
    # The leaser's TTL (MAX_TTL) makes the heartbeat wait years between renewals: a renewal
    # at all shows that the 1 s lease woke it to wait ttl/3 instead.
    with PortLeaser(lease_dir, port_range=port_range, ttl=MAX_TTL, owner_pid=None) as holder:
        renewed, asleep = renewals(holder), waiting(holder)
        holder.start_heartbeat()  # after the hooks: the heartbeat binds what it will call
        # Only once it waits the leaser's TTL: a heartbeat that read its interval after the
        # lease below would wait ttl/3 of the new lease without being woken.
        assert asleep.wait(60), "the heartbeat never started"
        holder.lease(1, ttl=1)
        assert renewed.wait(60), "the heartbeat slept on with the leaser's TTL"


def test_close_wakes_the_heartbeat(lease_dir: Path, port_range: PortRange) -> None:
    # Without the wake-up, close() would wait for the heartbeat's next beat: years away here.
    holder = PortLeaser(lease_dir, port_range=port_range, ttl=MAX_TTL)
    asleep = waiting(holder)
    holder.start_heartbeat()
    holder.lease(1)
    # A heartbeat that had not reached its wait yet would see the stop without being woken.
    assert asleep.wait(60), "the heartbeat never started"
    closer = threading.Thread(target=holder.close, daemon=True)
    closer.start()
    closer.join(60)
    assert not closer.is_alive(), "close() is waiting for the heartbeat"
    assert state_keys(lease_dir) == {}


def test_a_range_ending_at_65535_never_grants_it(lease_dir: Path) -> None:
    # fedimint-portalloc computes base + size in u16: a block holding 65535 makes it panic.
    with PortLeaser(lease_dir, port_range="65530-65535") as leaser:
        for _ in range(3):
            blocks = [leaser.lease(1) for _ in range(5)]
            assert sorted(b.base for b in blocks) == list(range(65530, 65535))
            with pytest.raises(PortRangeExhausted):
                leaser.lease(1)
            leaser.release_all()
        assert leaser.lease(5).base == 65530
        with pytest.raises(InvalidArgument, match=r"holds only 5 ports .*\(never 65535"):
            leaser.lease(6)
        keys = json.loads((lease_dir / STATE_NAME).read_text())["keys"]
        assert all(int(k) + v["size"] <= 65535 for k, v in keys.items())


def test_an_exact_request_for_65535_is_an_invalid_argument(lease_dir: Path) -> None:
    with PortLeaser(lease_dir) as leaser:
        with pytest.raises(InvalidArgument, match=r"invalid port 65535 .* fedimint-portalloc computes base"):
            leaser.lease(1, port=65535)
        with pytest.raises(InvalidArgument, match="65534-65535 includes port 65535"):
            leaser.lease(2, port=65534)
    assert not lease_dir.exists()  # refused before touching anything


def test_a_failed_save_leaves_no_lease_behind(
    lease_dir: Path, port_range: PortRange, monkeypatch: pytest.MonkeyPatch
) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        leaser.lease(1)
        def refuse(path: object, data: bytes) -> None:
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr(leaser.store, "_write_new", refuse)
        with pytest.raises(PortleaseError, match="cannot be written"):
            leaser.lease(2)
        assert [b.size for b in leaser.held] == [1]  # nothing for the heartbeat to resurrect
        monkeypatch.undo()
        assert leaser.renew() == []
        assert sorted(v["size"] for v in state_keys(lease_dir).values()) == [1]


def test_read_errors_name_the_setting_source(lease_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (lease_dir / STATE_NAME).mkdir(parents=True)
    monkeypatch.setenv("PORTLEASE_DIR", str(lease_dir))
    with pytest.raises(PortleaseError, match=f"lease directory {lease_dir} from PORTLEASE_DIR"):
        PortLeaser().status()


def test_a_dropped_leaser_does_not_leak_its_lock_descriptor(lease_dir: Path, port_range: PortRange) -> None:
    import gc

    gc.collect()  # what earlier tests dropped is closed now, not during the count
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        leaser = PortLeaser(lease_dir, port_range=port_range)
        leaser.detach(leaser.lease(1))
        del leaser
        gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before
