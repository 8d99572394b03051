"""What mutation testing of _leaser found untested beyond tests/test_gaps_leaser.py: how a holder
is named, the ephemeral report, a fork's fresh start, detach by block, the heartbeat's start and
interval, and what release and renew log; tests/mutation-equivalent.txt lists what no test can
tell apart."""

from __future__ import annotations

import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import SteppedClock, free_window, kernel_ephemeral_range
from test_gaps_leaser import keys, rewrite
from test_leaser import renewals
from test_well_known_ports import port_is_free

from pytest_portlease import (
    InvalidArgument,
    LockTimeout,
    PortLeaser,
    PortleaseWarning,
    PortRangeExhausted,
    PortUnavailable,
    _leaser,
)
from pytest_portlease._config import WELL_KNOWN_PORTS, PortRange, Resolved
from pytest_portlease._owner import owner_for


@pytest.fixture
def port_range() -> PortRange:
    return free_window()


def _all_heartbeats() -> int:
    return sum(t.name == "portlease-heartbeat" for t in threading.enumerate())


@pytest.fixture
def heartbeats() -> Callable[[], int]:
    """The heartbeat threads started since the test began: a leaser that outlives its test in
    this process (the port-for switch's shared one) keeps its own."""
    before = _all_heartbeats()
    return lambda: _all_heartbeats() - before


# -- how a holder is named -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("owner", "named"),
    [
        ({"host": "ci-9", "label": ""}, "of 'an unlabelled holder' (no pid@ci-9)"),
        ({"pid": 4242, "host": "ci-9", "ns": "elsewhere", "label": "db"}, "of 'db' (pid 4242@ci-9)"),
    ],
    ids=["no-pid-no-label", "pid-and-label"],
)
def test_the_holder_of_an_exact_port_is_named_by_label_pid_and_host(
    lease_dir: Path, port_range: PortRange, clock: SteppedClock, owner: dict[str, object], named: str
) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        block = leaser.lease(2)
        leaser.detach(block)
        rewrite(lease_dir, block.base, {"size": 2, "expires": math.ceil(clock.now + 600), "owner": owner})
        with pytest.raises(PortUnavailable) as refused:
            leaser.lease(1, port=block.base + 1)
        holder = f"lease {block.base}-{block.base + 1} {named}"
        assert str(refused.value) == f"port {block.base + 1} is held by {holder}"
        assert refused.value.holder == holder


# -- the ephemeral overlap, once reported, is not warned about --------------------------------


def test_a_range_whose_ephemeral_overlap_was_reported_leases_without_a_warning(
    lease_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eph = kernel_ephemeral_range()
    monkeypatch.setattr(_leaser, "_warned_ephemeral", set())
    rng = PortRange(eph.high - 50, eph.high)
    _leaser.ephemeral_overlap_reported(rng)  # what the plugin does once its header says so
    with PortLeaser(lease_dir, port_range=str(rng)) as leaser:
        leaser.lease(1)  # a warning would be an error here


# -- a forked child's fresh start ---------------------------------------------------------------
# test_fork.py forks for real; here the handler runs in this process, as a child runs it first
# thing, so that what it resets is checked one field at a time.


def test_after_fork_a_leaser_starts_afresh_and_restarts_its_heartbeat(
    heartbeats: Callable[[], int], lease_dir: Path, port_range: PortRange
) -> None:
    with PortLeaser(lease_dir, port_range=port_range, ttl=1, owner_pid=None) as leaser:
        inherited = leaser.lease(1)
        leaser.start_heartbeat()
        parents = leaser._heartbeat
        assert parents is not None
        leaser.after_fork_in_child()
        parents.stop()  # in a real child that thread does not exist
        assert leaser.held == []  # the parent's to release, not ours
        assert leaser.stats.blocks == 0
        assert heartbeats() == 0
        renewed = renewals(leaser)
        block = leaser.lease(1)  # a new mutex and lock; the first lease starts the heartbeat
        assert leaser.held == [block]
        assert leaser.stats.blocks == 1
        assert heartbeats() == 1
        assert renewed.wait(60), "the child's heartbeat never renewed"
    assert heartbeats() == 0
    assert list(keys(lease_dir)) == [str(inherited.base)]  # close() released only the child's


def test_after_fork_a_leaser_without_a_heartbeat_starts_none(
    heartbeats: Callable[[], int], lease_dir: Path, port_range: PortRange
) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        leaser.lease(1)
        leaser.after_fork_in_child()
        leaser.lease(1)
        assert heartbeats() == 0


# -- detach, the heartbeat's start and interval --------------------------------------------------


def test_detach_takes_the_block_itself(lease_dir: Path, port_range: PortRange) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        block = leaser.lease(2)
        assert leaser.detach(block) is True
        assert leaser.held == []
    assert list(keys(lease_dir)) == [str(block.base)]


def test_one_heartbeat_per_leaser_and_none_once_closed(
    heartbeats: Callable[[], int], lease_dir: Path, port_range: PortRange
) -> None:
    leaser = PortLeaser(lease_dir, port_range=port_range)
    try:
        leaser.start_heartbeat()
        leaser.start_heartbeat()
        assert heartbeats() == 1
    finally:
        leaser.close()
    assert heartbeats() == 0
    leaser.start_heartbeat()  # closed: final
    assert heartbeats() == 0


def test_the_heartbeat_waits_a_third_of_the_shortest_ttl(lease_dir: Path, port_range: PortRange) -> None:
    with PortLeaser(lease_dir, port_range=port_range, ttl=6) as leaser:
        assert leaser._beat_interval() == 2
        leaser.lease(1, ttl=4.5)
        assert leaser._beat_interval() == 1.5


def test_repr_names_the_directory_range_and_ttl(lease_dir: Path) -> None:
    leaser = PortLeaser(lease_dir, port_range="20000-20099", ttl=90)
    assert repr(leaser) == f"PortLeaser({os.fspath(lease_dir)!r}, port_range='20000-20099', ttl=90)"
    leaser.close()


# -- what release and renew log ---------------------------------------------------------------------


def test_release_and_a_lost_renewal_are_logged(
    lease_dir: Path, port_range: PortRange, clock: SteppedClock, caplog: pytest.LogCaptureFixture
) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        kept, lost = leaser.lease(2), leaser.lease(1)
        with caplog.at_level(logging.DEBUG, logger="pytest_portlease"):
            leaser.release(kept)
            rewrite(lease_dir, lost.base, {"size": 5, "expires": math.ceil(clock.now + 600)})
            assert leaser.renew() == [lost]
    assert f"released {kept}" in caplog.messages
    assert f"lease {lost} was taken over by another holder while we held it" in caplog.messages


# -- the TIME_WAIT pass: inside the range, never over a lease, every port checked ------------------

needs_proc_net_tcp = pytest.mark.skipif(
    sys.platform != "linux" or not Path("/proc/net/tcp").exists(), reason="TIME_WAIT is read from Linux's /proc/net/tcp"
)


def listening(port: int) -> socket.socket:
    server = socket.socket()
    server.bind(("127.0.0.1", port))
    server.listen(1)
    return server


@needs_proc_net_tcp
def test_a_time_wait_block_never_reaches_past_the_range_or_over_a_listener(lease_dir: Path) -> None:
    from test_time_wait import leave_in_time_wait

    low = free_window(3).low  # low + 2, past the range, is free: a block there would be granted
    with listening(low):
        leave_in_time_wait(low + 1, reuse=True)
        leaser = PortLeaser(lease_dir, port_range=f"{low}-{low + 1}")
        with leaser, pytest.raises(PortRangeExhausted, match=r"\(1 of them only in TIME_WAIT"):
            leaser.lease(2)


@needs_proc_net_tcp
def test_a_time_wait_block_may_hold_free_ports(lease_dir: Path) -> None:
    from test_time_wait import leave_in_time_wait

    low = free_window(2).low
    leave_in_time_wait(low, reuse=True)  # low + 1 stays free
    leaser = PortLeaser(lease_dir, port_range=f"{low}-{low + 1}")
    with leaser, pytest.warns(PortleaseWarning, match="only in TIME_WAIT") as record:
        assert leaser.lease(2).base == low
    assert len(record) == 1


@needs_proc_net_tcp
def test_the_time_wait_pass_skips_a_port_that_is_leased(lease_dir: Path) -> None:
    from test_time_wait import leave_in_time_wait

    low = free_window(2).low
    with PortLeaser(lease_dir, port_range=f"{low}-{low + 1}") as leaser:
        assert leaser.lease(1, port=low).base == low  # leased, then left in TIME_WAIT by its user
        leave_in_time_wait(low, reuse=True)
        leave_in_time_wait(low + 1, reuse=True)
        with pytest.warns(PortleaseWarning, match="only in TIME_WAIT"):
            assert leaser.lease(1).base == low + 1


@needs_proc_net_tcp
def test_an_exact_port_is_never_moved_to_a_time_wait_neighbour(lease_dir: Path) -> None:
    from test_time_wait import leave_in_time_wait

    low = free_window(2).low
    with listening(low):
        leave_in_time_wait(low + 1, reuse=True)
        with PortLeaser(lease_dir) as leaser, pytest.raises(PortUnavailable) as refused:
            leaser.lease(1, port=low)
    assert str(refused.value) == f"port {low} is bound outside portlease"  # a listener: no TIME_WAIT note


@needs_proc_net_tcp
def test_an_exact_port_in_time_wait_is_named_as_the_argument(lease_dir: Path) -> None:
    from test_time_wait import leave_in_time_wait

    port = free_window(1).low
    leave_in_time_wait(port, reuse=True)
    with PortLeaser(lease_dir) as leaser, pytest.warns(PortleaseWarning) as record:
        leaser.lease(1, port=port)
    assert f"port {port} of range {port}-{port} (argument) was only in TIME_WAIT" in str(record[0].message)


# -- reclaim inside lease(): a live owner's expired range is extended by this lease's TTL ---------


def test_a_lease_extends_a_live_owners_expired_range_by_its_own_ttl(
    lease_dir: Path, port_range: PortRange, clock: SteppedClock
) -> None:
    with (
        subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as rival,
        PortLeaser(lease_dir, port_range=port_range, ttl=30) as leaser,
    ):
        try:
            theirs = leaser.lease(1)
            leaser.detach(theirs)
            owner = owner_for(rival.pid, "rival").to_json()
            rewrite(lease_dir, theirs.base, {"size": 1, "expires": math.ceil(clock.now) - 10, "owner": owner})
            leaser.lease(1, ttl=45)
            # Alive past its expiry: kept, and extended so that fedimint-portalloc respects it too.
            assert keys(lease_dir)[str(theirs.base)]["expires"] == math.ceil(clock.now + 45)
        finally:
            assert rival.stdin is not None
            rival.stdin.close()


# -- a per-call range, the range's source, the stats ----------------------------------------------


def test_a_per_call_range_is_taken_as_given_by_a_leaser_of_the_default_range(lease_dir: Path) -> None:
    # Below every worker's slice (20000-31999): no other test leases these.
    free = [p for p in sorted(WELL_KNOWN_PORTS) if p < 20000 and port_is_free(p)]
    assert free, "every well-known port below 20000 is taken on this host"
    with PortLeaser(lease_dir) as leaser:
        assert leaser.range_setting.source == "default"
        block = leaser.lease(1, port_range=(free[0], free[0]))
        assert block.base == free[0]  # a range someone chose skips no well-known port


def test_an_exhausted_range_names_the_setting_it_came_from(
    lease_dir: Path, port_range: PortRange, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORTLEASE_RANGE", str(port_range))
    with PortLeaser(lease_dir) as leaser:
        leaser.lease(port_range.size)
        with pytest.raises(PortRangeExhausted) as caught:
            leaser.lease(1)
    assert f"in range {port_range} (PORTLEASE_RANGE):" in str(caught.value)


def test_the_stats_count_each_lease_its_ports_its_time_and_its_wait_for_the_lock(
    lease_dir: Path, port_range: PortRange
) -> None:
    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        leaser.lease(2)
        leaser.lease(1)
        stats = leaser.stats
        assert (stats.blocks, stats.ports, stats.lock_timeouts, stats.failed_at_once) == (2, 3, 0, 0)
        assert 0 < stats.lock_wait <= stats.seconds


_HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_fail_fast_leaser_counts_each_lease_it_refused_at_once(lease_dir: Path, port_range: PortRange) -> None:
    lease_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", _HOLD, os.fspath(lease_dir / "lock")]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        try:
            with PortLeaser(lease_dir, port_range=port_range, lock_timeout=0.05, fail_fast=True) as leaser:
                with pytest.raises(LockTimeout) as first:
                    leaser.lease(1)
                assert (leaser.stats.lock_timeouts, leaser.stats.failed_at_once) == (1, 0)  # it waited
                for refused in (1, 2):
                    with pytest.raises(LockTimeout) as again:
                        leaser.lease(1)
                    assert str(again.value) == str(first.value)  # the first one's, not a new wait
                    assert (leaser.stats.lock_timeouts, leaser.stats.failed_at_once) == (1, refused)
        finally:
            holder.communicate("")


def test_leases_of_the_leasers_own_ttl_never_postpone_its_heartbeat(lease_dir: Path, port_range: PortRange) -> None:
    # Only a shorter TTL wakes the heartbeat to wait anew: were every lease to, a suite leasing
    # more often than ttl/3 would postpone each renewal, and its leases would expire in use.
    with PortLeaser(lease_dir, port_range=port_range, ttl=0.3) as leaser:
        renewed = renewals(leaser)
        leaser.start_heartbeat()
        deadline = time.monotonic() + 30
        while not renewed.is_set():  # back to back, far more often than every 0.1 s
            assert time.monotonic() < deadline, "no renewal while leasing back to back"
            leaser.release(leaser.lease(1))


def test_each_lease_is_logged_with_its_ttl_and_label(
    lease_dir: Path, port_range: PortRange, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        PortLeaser(lease_dir, port_range=port_range, label="suite") as leaser,
        caplog.at_level(logging.DEBUG, logger="pytest_portlease"),
    ):
        block = leaser.lease(2, ttl=42.5, label="db")
    assert f"leased {block} for 42.5s as 'suite db'" in caplog.messages


def test_a_lease_directory_removed_whole_is_made_again_by_the_next_lease(
    lease_dir: Path, port_range: PortRange
) -> None:
    import shutil

    with PortLeaser(lease_dir, port_range=port_range) as leaser:
        leaser.lease(1)
        shutil.rmtree(lease_dir)  # a cache cleaner, or `rm -rf` of a stale-looking directory
        second = leaser.lease(1)
        assert second.base in port_range
        assert (lease_dir / "lock").is_file()
        assert set(keys(lease_dir)) == {str(second.base)}  # the first one's record went with it


def test_settings_resolved_by_the_caller_keep_their_sources(lease_dir: Path, port_range: PortRange) -> None:
    directory = Resolved(lease_dir, "--portlease-dir")
    rng = Resolved(port_range, "ini portlease_range")
    with PortLeaser(directory, port_range=rng) as leaser:
        assert (leaser.directory_setting, leaser.range_setting) == (directory, rng)
        assert leaser.store.source == "--portlease-dir"


@pytest.mark.parametrize("bad", [True, "123", -1, 1.5])
def test_an_owner_pid_that_is_not_a_process_id_is_refused(lease_dir: Path, bad: object) -> None:
    with pytest.raises(InvalidArgument) as caught:
        PortLeaser(lease_dir, owner_pid=bad)  # type: ignore[arg-type]
    assert str(caught.value) == f"invalid owner_pid {bad!r} from argument: expected a process id"


_LABEL = """
import sys
from pytest_portlease import PortLeaser
with PortLeaser(sys.argv[1], port_range=sys.argv[2]) as leaser:
    print(repr(leaser.label))
"""


def test_the_default_label_is_the_scripts_name(lease_dir: Path, port_range: PortRange, tmp_path: Path) -> None:
    script = tmp_path / "my-suite.py"
    script.write_text(_LABEL)
    done = subprocess.run(
        [sys.executable, os.fspath(script), os.fspath(lease_dir), str(port_range)],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert done.stdout == "'my-suite.py'\n"
    with PortLeaser(lease_dir, port_range=port_range) as leaser:  # here: pytest's, or "" under xdist
        assert isinstance(leaser.label, str)
    with PortLeaser(lease_dir, port_range=port_range, label="") as leaser:
        assert leaser.label == ""
