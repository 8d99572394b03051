"""What mutation testing of _heartbeat found untested: stop() waits for the thread's last
renewal, returns when the heartbeat stops itself, and the at-fork handler resets every leaser it
tracks even when one of them fails; tests/mutation-equivalent.txt lists what no test can tell
apart."""

from __future__ import annotations

import logging
import threading
import weakref

import pytest

from pytest_portlease import _heartbeat


def test_stop_returns_only_once_the_renewal_under_way_has_ended() -> None:
    ready, entered, finished = threading.Event(), threading.Event(), threading.Event()
    beats: list[_heartbeat.Heartbeat] = []

    def renew() -> None:
        ready.wait()
        entered.set()
        beats[0]._stop.wait()  # until stop() is called: a renewal still running when it is
        finished.set()

    beats.append(_heartbeat.Heartbeat(renew, lambda: 0.0))
    ready.set()
    assert entered.wait(60)
    beats[0].stop()
    assert finished.is_set()  # joined: nothing of the heartbeat runs after stop() returns
    assert not beats[0]._thread.is_alive()


def test_a_heartbeat_that_stops_itself_ends_without_an_error(caplog: pytest.LogCaptureFixture) -> None:
    beats: list[_heartbeat.Heartbeat] = []
    ready = threading.Event()

    def renew() -> None:
        ready.wait()
        beats[0].stop()  # from the heartbeat's own thread: it cannot join itself

    with caplog.at_level(logging.WARNING, logger="pytest_portlease"):
        beats.append(_heartbeat.Heartbeat(renew, lambda: 0.0))
        ready.set()
        beats[0]._thread.join(60)
    assert not beats[0]._thread.is_alive()
    assert not any("could not renew" in m for m in caplog.messages), caplog.messages


class _Tracked:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name, self.fail, self.reset = name, fail, 0

    def __repr__(self) -> str:
        return f"<tracked {self.name}>"

    def after_fork_in_child(self) -> None:
        self.reset += 1
        if self.fail:
            raise OSError("boom")


def test_the_at_fork_handler_resets_every_tracked_object_and_logs_a_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Run here, in this process, on objects of the test's own: what a forked child runs first.
    monkeypatch.setattr(_heartbeat, "_registry", weakref.WeakSet())
    failing, fine = _Tracked("failing", fail=True), _Tracked("fine")
    _heartbeat.track(failing)
    _heartbeat.track(fine)
    with caplog.at_level(logging.WARNING, logger="pytest_portlease"):
        _heartbeat._after_fork_in_child()
    assert (failing.reset, fine.reset) == (1, 1)
    assert caplog.messages == ["could not reset <tracked failing> after fork: boom"]


def test_a_failed_renewal_is_logged_and_the_heartbeat_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    second = threading.Event()

    def renew() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("the lock stalled")
        second.set()

    with caplog.at_level(logging.WARNING, logger="pytest_portlease"):
        beat = _heartbeat.Heartbeat(renew, lambda: 0.0)
        try:
            assert second.wait(60), "the heartbeat stopped at its first failure"
        finally:
            beat.stop()
    assert caplog.messages[0] == "could not renew leases: the lock stalled"


def test_the_heartbeat_thread_is_a_daemon() -> None:
    # A process that never calls close() must still exit: the interpreter waits for every
    # thread that is not a daemon.
    release = threading.Event()
    beat = _heartbeat.Heartbeat(release.wait, lambda: 0.0)
    try:
        assert beat._thread.daemon is True
        assert beat._thread.name == "portlease-heartbeat"
    finally:
        release.set()
        beat.stop()
