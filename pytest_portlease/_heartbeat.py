"""The heartbeat that renews a leaser's leases, and what a forked child makes of its leasers.

fork() copies every leaser of the parent into the child as it was at that instant: a mutex that
another thread of the parent may have held (it stays locked forever in the child, where that
thread does not exist), the parent's lock descriptor (whose flock the child shares), the parent's
leases (the parent's to release) and a heartbeat thread object with no thread behind it. Every
leaser registers here, weakly, and ``os.register_at_fork`` gives each one a fresh start in the
child before any code of the child's runs.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

from . import _state

log = logging.getLogger("pytest_portlease")


class Heartbeat:
    """Calls ``renew`` every ``interval()`` seconds from a daemon thread, until ``stop()``."""

    def __init__(self, renew: Callable[[], object], interval: Callable[[], float]) -> None:
        self._renew = renew
        self._interval = interval
        self._stop = threading.Event()
        self._kick = threading.Event()  # wakes the thread to recompute its interval
        self._thread = threading.Thread(target=self._beat, name="portlease-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        # A warning raised here would land on whatever test runs now, or, under -W error, abort
        # the renewal: the heartbeat logs its warnings instead.
        _state.log_warnings_in_this_thread()
        while not self._stop.is_set():
            if self._kick.wait(self._interval()):
                self._kick.clear()
                continue  # a shorter TTL arrived (or stop): wait again, for the new interval
            try:
                self._renew()
            except Exception as e:  # the heartbeat must outlive a stalled lock or a bad file
                log.warning("could not renew leases: %s", e)

    def kick(self) -> None:
        self._kick.set()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not threading.current_thread():
            self._thread.join()


class Forkable(Protocol):
    def after_fork_in_child(self) -> None: ...


_registry: weakref.WeakSet[Forkable] = weakref.WeakSet()


def track(obj: Forkable) -> None:
    """Give ``obj`` a fresh start (``after_fork_in_child``) in every child forked from now on."""
    _registry.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_registry):
        try:
            obj.after_fork_in_child()
        except Exception as e:  # an at-fork handler must not break the child's fork()
            log.warning("could not reset %r after fork: %s", obj, e)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
