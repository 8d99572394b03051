"""What the leaser's own bookkeeping must get right, found by mutation testing: whose range
renew and release may touch, what release_all forgets, the reclaim of its own cached leases,
detach, the lock descriptor's life, and the heartbeat under ``-W error``."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SteppedClock, free_window

from pytest_portlease import LockTimeout, PortBlock, PortleaseError, PortLeaser
from pytest_portlease._config import PortRange
from pytest_portlease._owner import owner_for
from pytest_portlease._state import STATE_NAME
from pytest_portlease._store import LOCK_NAME


@pytest.fixture
def port_range() -> PortRange:
    return free_window()


@pytest.fixture
def other_pid() -> Iterator[int]:
    """A live process of this host that is not us."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield child.pid
    assert child.stdin is not None
    child.stdin.close()
    child.wait()


def keys(lease_dir: Path) -> dict[str, dict[str, object]]:
    found: dict[str, dict[str, object]] = json.loads((lease_dir / STATE_NAME).read_bytes())["keys"]
    return found


def rewrite(lease_dir: Path, base: int, value: dict[str, object]) -> None:
    """Replace the range at ``base`` the way another writer would (compact, fedimint's layout)."""
    doc = json.loads((lease_dir / STATE_NAME).read_bytes())
    doc["keys"][str(base)] = value
    (lease_dir / STATE_NAME).write_text(json.dumps(doc))


def lock_fds(lease_dir: Path) -> int:
    """Descriptors of this process open on the lock file, counted in /proc (Linux)."""
    lock = os.fspath(lease_dir / LOCK_NAME)
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):  # the descriptor iterdir itself used, closed by now
            count += os.readlink(fd) == lock
    return count


# -- renew and release touch only our own range -----------------------------------------------


def taken_over(lease_dir: Path, block: PortBlock, other_pid: int, clock: SteppedClock) -> list[dict[str, object]]:
    """Ranges at ``block``'s base that are not ours, each as another holder would write it."""
    expires = math.ceil(clock.now + 600)
    return [
        # Another live process, same size: its pid is what makes it not ours.
        {"size": block.size, "expires": expires, "owner": owner_for(other_pid, "rival").to_json()},
        # No owner (fedimint-portalloc's), but another size: not the range we leased.
        {"size": block.size + 1, "expires": expires},
        # Our pid, but another process start: the pid was reused, so not us.
        {"size": block.size, "expires": expires, "owner": {**owner_for(os.getpid(), "x").to_json(), "start": 1}},
    ]


@pytest.mark.parametrize("case", [0, 1, 2], ids=["other-pid", "other-size", "other-start"])
def test_renew_does_not_take_over_another_holders_range_at_our_base(
    lease_dir: Path, port_range: PortRange, other_pid: int, clock: SteppedClock, case: int
) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        block = leaser.lease(2)
        theirs = taken_over(lease_dir, block, other_pid, clock)[case]
        rewrite(lease_dir, block.base, theirs)
        assert leaser.renew() == [block]
        assert leaser.held == []
        assert keys(lease_dir)[str(block.base)] == theirs
        assert leaser.release(block) is False  # no longer ours to release
    assert keys(lease_dir)[str(block.base)] == theirs  # nor did close() remove it


@pytest.mark.parametrize("case", [0, 1, 2], ids=["other-pid", "other-size", "other-start"])
@pytest.mark.parametrize("how", ["release", "release_all"])
def test_release_does_not_delete_another_holders_range_at_our_base(
    lease_dir: Path, port_range: PortRange, other_pid: int, clock: SteppedClock, case: int, how: str
) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        block = leaser.lease(2)
        theirs = taken_over(lease_dir, block, other_pid, clock)[case]
        rewrite(lease_dir, block.base, theirs)
        if how == "release":
            assert leaser.release(block) is True  # we held it: released as far as we are concerned
        else:
            leaser.release_all()
        assert keys(lease_dir) == {str(block.base): theirs}


def test_renew_restores_our_owner_after_fedimint_dropped_it(
    lease_dir: Path, port_range: PortRange, clock: SteppedClock
) -> None:
    with PortLeaser(lease_dir, port_range=port_range, label="mine") as leaser:
        block = leaser.lease(2)
        rewrite(lease_dir, block.base, {"size": 2, "expires": math.ceil(clock.now + 5)})  # serde drops owner
        assert leaser.renew() == []
        entry = keys(lease_dir)[str(block.base)]
        assert entry["owner"] == owner_for(os.getpid(), "mine").to_json()
        assert entry["expires"] == math.ceil(clock.now + leaser.ttl)
        # And a range of our base and size with no owner is still ours to release.
        rewrite(lease_dir, block.base, {"size": 2, "expires": math.ceil(clock.now + 5)})
        assert leaser.release(block) is True
        assert keys(lease_dir) == {}


def test_renew_restores_a_dropped_range_only_where_its_ports_are_free_of_leases(
    lease_dir: Path, port_range: PortRange, clock: SteppedClock, other_pid: int
) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        kept, lost = leaser.lease(2), leaser.lease(3)
        doc = json.loads((lease_dir / STATE_NAME).read_bytes())
        rival = {"size": 1, "expires": math.ceil(clock.now + 600), "owner": owner_for(other_pid, "r").to_json()}
        doc["keys"] = {str(lost.base + 2): rival}  # both dropped; a rival sits on lost's last port
        (lease_dir / STATE_NAME).write_text(json.dumps(doc))
        assert leaser.renew() == [lost]
        assert leaser.held == [kept]
        assert sorted(map(int, keys(lease_dir))) == sorted([kept.base, lost.base + 2])  # a scan may wrap


def test_release_all_forgets_what_it_released(lease_dir: Path, port_range: PortRange) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        leaser.lease(1)
        leaser.lease(2)
        leaser.release_all()
        assert leaser.held == []
        assert leaser.renew() == []
        assert keys(lease_dir) == {}  # the renewal did not bring them back
        leaser.release_all()  # nothing held: nothing to do
        assert keys(lease_dir) == {}


def test_release_is_idempotent_and_takes_a_block_or_its_base(lease_dir: Path, port_range: PortRange) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        a, b = leaser.lease(1), leaser.lease(2)
        assert leaser.release(a.base) is True
        assert leaser.release(a) is False
        assert leaser.release(b) is True
        assert keys(lease_dir) == {}
        assert leaser.held == []


# -- the leaser's own cached state: reclaim of its expired and dead-owner leases --------------


@pytest.mark.usefixtures("low_start")  # block.base + 3 follows it: no wrap
def test_a_leaser_reclaims_its_own_expired_lease_from_its_cached_state(
    lease_dir: Path, port_range: PortRange, clock: SteppedClock
) -> None:
    # owner_pid=None: a lease only its TTL ends. Nobody else writes, and every lease succeeds (a
    # failed one drops the cache), so each runs on the state the leaser cached at its last write.
    with PortLeaser(lease_dir, port_range=port_range, owner_pid=None) as leaser:
        block = leaser.lease(3, ttl=5)
        expires = math.ceil(clock.now + 5)
        assert keys(lease_dir)[str(block.base)]["expires"] == expires
        clock.now = expires - 0.25
        assert leaser.lease(1).base == block.base + 3  # still live: next-fit passes it
        clock.now = expires  # expires == now: expired (live only while now < expires)
        assert leaser.lease(1, port=block.base + 1).base == block.base + 1
        assert sorted(map(int, keys(lease_dir))) == [block.base + 1, block.base + 3]


@pytest.mark.usefixtures("low_start")  # block.base + 3 follows it: no wrap
def test_a_leaser_reclaims_its_own_lease_of_a_dead_owner_from_its_cached_state(
    lease_dir: Path, port_range: PortRange
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        with PortLeaser(lease_dir, port_range=port_range, owner_pid=child.pid, ttl=600) as leaser:
            block = leaser.lease(3)
            assert leaser.lease(1).base == block.base + 3  # its owner lives: next-fit passes it
            assert child.stdin is not None
            child.stdin.close()
            child.wait()
            assert leaser.lease(1, port=block.base + 1).base == block.base + 1
            # Both of the dead child's ranges went, in the one reclaim.
            assert list(keys(lease_dir)) == [str(block.base + 1)]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# -- detach ---------------------------------------------------------------------------------


def test_detach_leaves_the_lease_to_its_ttl(lease_dir: Path, port_range: PortRange, clock: SteppedClock) -> None:
    with PortLeaser(lease_dir, port_range=port_range, owner_pid=None, ttl=30) as leaser:
        block, other = leaser.lease(2), leaser.lease(1)
        assert leaser.detach(block.base) is True
        assert leaser.detach(block) is False
        assert leaser.held == [other]
        written = keys(lease_dir)[str(block.base)]
        clock.step(10)
        assert leaser.renew() == []  # renews the other one only
        assert keys(lease_dir)[str(block.base)] == written
        assert keys(lease_dir)[str(other.base)]["expires"] == math.ceil(clock.now + 30)
        assert leaser.release(block) is False
    assert list(keys(lease_dir)) == [str(block.base)]  # close() released only what it held


# -- the lock descriptor --------------------------------------------------------------------


def test_the_lock_is_opened_once_and_closed_by_close(lease_dir: Path, port_range: PortRange) -> None:
    leaser = PortLeaser(lease_dir, port_range=port_range)
    leaser.lease(1)
    leaser.lease(1)
    leaser.renew()
    assert lock_fds(lease_dir) == 1
    leaser.close()
    assert lock_fds(lease_dir) == 0
    leaser.close()  # final and idempotent
    with pytest.raises(PortleaseError, match="closed"):
        leaser.lease(1)


def test_a_forked_child_opens_its_own_lock(lease_dir: Path, port_range: PortRange) -> None:
    # flock belongs to the open file description, which fork shares: a child using the parent's
    # descriptor would "hold" the lock while the parent holds it.
    leaser = PortLeaser(lease_dir, port_range=port_range, lock_timeout=0.2)
    try:
        leaser.lease(1)  # the parent's descriptor is open now
        go_r, go_w = os.pipe()
        answer_r, answer_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(go_w)
            os.close(answer_r)
            os.read(go_r, 1)
            try:
                leaser.lease(1)
                verdict = b"leased while the parent held the lock"
            except LockTimeout:
                verdict = b"waited"
            except BaseException as e:
                verdict = repr(e).encode()
            os.write(answer_w, verdict)
            os._exit(0)
        os.close(go_r)
        os.close(answer_w)
        with leaser.transaction():  # hold the lock while the child tries
            os.write(go_w, b"x")
            with os.fdopen(answer_r, "rb") as answer:
                verdict = answer.read()
        os.close(go_w)
        assert os.waitpid(pid, 0)[1] == 0
        assert verdict == b"waited"
    finally:
        leaser.close()


# -- the heartbeat logs its warnings: under -W error they must not stop the renewal ---------


def test_the_heartbeat_renews_through_a_corrupt_state_under_warnings_as_errors(
    lease_dir: Path, port_range: PortRange, clock: SteppedClock, caplog: pytest.LogCaptureFixture
) -> None:
    from test_leaser import renewals

    bogus = f"bogus-{uuid.uuid4().hex}"  # a problem never warned about before in this process
    with PortLeaser(lease_dir, port_range=port_range, ttl=1, owner_pid=None) as holder:
        renewed = renewals(holder)
        block = holder.lease(1)
        rewrite(lease_dir, 1, {"size": 1, "expires": 0})  # valid: makes the file another layout
        doc = json.loads((lease_dir / STATE_NAME).read_bytes())
        doc["keys"][bogus] = {"size": 1, "expires": 0}
        (lease_dir / STATE_NAME).write_text(json.dumps(doc))
        clock.step(10)
        with caplog.at_level(logging.WARNING, logger="pytest_portlease"):
            holder.start_heartbeat()
            assert renewed.wait(60)
        assert keys(lease_dir)[str(block.base)]["expires"] == math.ceil(clock.now + 1)
        messages = [r.getMessage() for r in caplog.records]
        assert any(bogus in m for m in messages), messages  # logged, not raised
        assert not any("could not renew" in m for m in messages), messages
