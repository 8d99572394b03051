"""fork(): a child gets a leaser of its own (mutex, lock descriptor, leases, heartbeat), both under
multiprocessing's fork start method and a bare ``os.fork()``."""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from pytest_portlease import PortLeaser, _store
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME

pytestmark = [
    pytest.mark.reliability,
    # Python 3.12+ warns that forking a process with threads may deadlock the child: the very
    # hazard these tests show the leaser to survive.
    pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning"),
]

JOIN_TIMEOUT = 60.0  # a hung child is killed after this; a healthy one is done in well under 1 s


def _expires(lease_dir: Path, base: int) -> int:
    keys = json.loads((lease_dir / STATE_NAME).read_text())["keys"]
    value: int = keys[str(base)]["expires"]
    return value


def _in_child(leaser: PortLeaser, lease_dir: Path, watch_heartbeat: bool) -> dict[str, object]:
    """What a forked child does with the leaser it inherited; returns what it saw."""
    seen: dict[str, object] = {"inherited": [b.base for b in leaser.held]}
    block = leaser.lease(1)
    seen["base"] = block.base
    if watch_heartbeat:
        # The heartbeat renews every ttl/3; wait for the file to show it, bounded.
        first = _expires(lease_dir, block.base)
        deadline = time.monotonic() + 30
        while _expires(lease_dir, block.base) <= first and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["renewed"] = _expires(lease_dir, block.base) > first
    leaser.close()
    return seen


def _mp_target(leaser: PortLeaser, lease_dir: Path, watch: bool, conn: Connection) -> None:
    try:
        conn.send(_in_child(leaser, lease_dir, watch))
    except BaseException as e:
        conn.send({"error": repr(e)})
    finally:
        conn.close()


def _fork_mp(leaser: PortLeaser, lease_dir: Path, watch: bool, forked: Callable[[], object]) -> dict[str, object]:
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_mp_target, args=(leaser, lease_dir, watch, sender))
    try:
        proc.start()
        forked()
        sender.close()
        if not receiver.poll(JOIN_TIMEOUT):
            return {"error": f"the child did not answer within {JOIN_TIMEOUT}s (hung)"}
        result: dict[str, object] = receiver.recv()
        return result
    finally:
        receiver.close()
        if proc.is_alive():
            proc.join(JOIN_TIMEOUT)
        if proc.is_alive():
            proc.kill()
            proc.join()
        proc.close()


def _fork_bare(leaser: PortLeaser, lease_dir: Path, watch: bool, forked: Callable[[], object]) -> dict[str, object]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                out: dict[str, object] = _in_child(leaser, lease_dir, watch)
            except BaseException as e:
                out = {"error": repr(e)}
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    forked()
    try:
        ready, _, _ = select.select([r], [], [], JOIN_TIMEOUT)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            return {"error": f"the child did not answer within {JOIN_TIMEOUT}s (hung)"}
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
        result: dict[str, object] = json.loads(b"".join(chunks))
        return result
    finally:
        os.close(r)
        os.waitpid(pid, 0)


Fork = Callable[[PortLeaser, Path, bool, Callable[[], object]], dict[str, object]]
FORKS: dict[str, Fork] = {
    "multiprocessing-fork": _fork_mp,
    "os.fork": _fork_bare,
}


@pytest.fixture(params=sorted(FORKS))
def fork(request: pytest.FixtureRequest) -> Fork:
    return FORKS[request.param]


@pytest.fixture
def leaser(lease_dir: Path, port_range: PortRange) -> Iterator[PortLeaser]:
    with PortLeaser(lease_dir, port_range=port_range, ttl=2, heartbeat=True) as leaser:
        yield leaser


def test_a_child_forked_while_another_thread_is_inside_the_leaser(
    leaser: PortLeaser, lease_dir: Path, fork: Fork, monkeypatch: pytest.MonkeyPatch,
) -> None:
    mine = leaser.lease(1)
    parent = os.getpid()
    worker: dict[str, Any] = {}
    inside, go = threading.Event(), threading.Event()

    def fault(point: str) -> None:
        # Holds the leaser's mutex and the lock in the parent's worker thread, until told.
        if point == "locked" and os.getpid() == parent and threading.current_thread() is worker.get("t"):
            inside.set()
            go.wait()

    monkeypatch.setattr(_store, "fault", fault)
    thread = threading.Thread(target=lambda: worker.update(block=leaser.lease(1)))
    worker["t"] = thread
    thread.start()
    try:
        assert inside.wait(JOIN_TIMEOUT)
        # The child waits for the lock while the parent's thread holds it: let go once forked.
        seen = fork(leaser, lease_dir, False, go.set)
    finally:
        go.set()
        thread.join()
    assert "error" not in seen, seen
    assert seen["inherited"] == []  # the parent's leases are the parent's to release
    keys = json.loads((lease_dir / STATE_NAME).read_text())["keys"]
    assert str(mine.base) in keys and str(worker["block"].base) in keys
    assert str(seen["base"]) not in keys  # released by the child's close()


def test_a_forked_childs_leases_are_renewed_by_its_heartbeat(
    leaser: PortLeaser, lease_dir: Path, fork: Fork
) -> None:
    mine = leaser.lease(1)
    seen = fork(leaser, lease_dir, True, lambda: None)
    assert "error" not in seen, seen
    assert seen["renewed"] is True
    assert seen["inherited"] == []
    assert mine in leaser.held and str(mine.base) in json.loads((lease_dir / STATE_NAME).read_text())["keys"]
