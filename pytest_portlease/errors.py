"""The exceptions and the warning that pytest-portlease raises.

Every exception keeps its constructor arguments in ``args`` so that it pickles, because
pytest-xdist carries errors from workers to the controller (filelock ``_error.py`` does the same).
"""

from __future__ import annotations


class PortleaseError(Exception):
    """Base class of every error pytest-portlease raises."""


class PortRangeExhausted(PortleaseError):
    """No free block of the requested size is left in the range after one full cycle."""


class PortUnavailable(PortleaseError):
    """An exact port was requested but is leased or bound; ``holder`` says by whom."""

    def __init__(self, message: str, holder: str | None = None) -> None:
        super().__init__(message, holder)
        self.holder = holder

    def __str__(self) -> str:
        return str(self.args[0])


_STATES = {
    "R": "running: busy, not stopped",
    "S": "sleeping: busy, not stopped (waiting for something)",
    "D": "in uninterruptible disk wait: busy, not stopped",
    "T": "stopped (SIGSTOP or Ctrl-Z): resume it with `kill -CONT {pid}`, or end it",
    "t": "stopped by a debugger or tracer",
    "Z": "a zombie",
}

#: Where the wait is set, in every front end.
LOCK_TIMEOUT_SETTING = "--portlease-lock-timeout, PORTLEASE_LOCK_TIMEOUT or `portlease --lock-timeout`"


class LockTimeout(PortleaseError, TimeoutError):
    """The lease directory's lock was not acquired in time.

    What is known of the holder comes from /proc (Linux): ``holder_pid``, ``holder_cmd`` (its
    command line) and ``holder_state`` (proc(5)'s state letter); ``waiters``: how many other
    processes were blocked on the lock too.
    """

    def __init__(
        self,
        lock_path: str,
        timeout: float,
        holder_pid: int | None = None,
        waited: float | None = None,
        waiters: int | None = None,
        holder: tuple[str | None, str | None] | None = None,
    ) -> None:
        super().__init__(lock_path, timeout, holder_pid, waited, waiters, holder)
        self.lock_path = lock_path
        self.timeout = timeout
        self.holder_pid = holder_pid
        self.waited = timeout if waited is None else waited
        self.waiters = waiters
        self.holder_cmd, self.holder_state = holder if holder is not None else (None, None)

    def __str__(self) -> str:
        text = f"could not lock {self.lock_path} within {self.timeout:g}s (waited {self.waited:.1f}s)"
        if self.holder_pid is None:
            text += "; the holder is unknown (/proc/locks does not name it)"
        else:
            text += f"; held by pid {self.holder_pid}"
            if self.holder_cmd:
                text += f" ({self.holder_cmd})"
            if self.holder_state:
                what = _STATES.get(self.holder_state, f"in state {self.holder_state}")
                text += f", which is {what.format(pid=self.holder_pid)}"
        if self.waiters:
            text += f"; {self.waiters} other process{'es' if self.waiters > 1 else ''} waited for it too"
        return f"{text}; the wait is set by {LOCK_TIMEOUT_SETTING}"


class InvalidArgument(PortleaseError, ValueError):
    """A bad argument or setting; the message names the value, its source and what is accepted."""


class PortleaseWarning(UserWarning):
    """Recoverable trouble, such as a corrupt state file that was repaired."""
