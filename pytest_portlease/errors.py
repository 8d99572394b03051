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


class LockTimeout(PortleaseError, TimeoutError):
    """The lease directory's lock was not acquired in time."""

    def __init__(self, lock_path: str, timeout: float, holder_pid: int | None = None) -> None:
        super().__init__(lock_path, timeout, holder_pid)
        self.lock_path = lock_path
        self.timeout = timeout
        self.holder_pid = holder_pid

    def __str__(self) -> str:
        held = f"held by pid {self.holder_pid}" if self.holder_pid else "holder unknown"
        return (
            f"could not lock {self.lock_path} within {self.timeout:g}s ({held}); "
            f"a stopped or hung process may hold it: check it, or raise lock_timeout"
        )


class InvalidArgument(PortleaseError, ValueError):
    """A bad argument or setting; the message names the value, its source and what is accepted."""


class PortleaseWarning(UserWarning):
    """Recoverable trouble, such as a corrupt state file that was repaired."""
