"""``portlease run``: run a command on a leased block, renew the lease while it lives, pass its
signals on, release the lease when it ends, and exit with its code.

The lease follows CMD, not ``run``: once CMD is started it is recorded as the lease's owner, so a
``run`` killed with SIGKILL (the OOM killer, a CI timeout) leaves a lease that lives exactly as long
as CMD does. On Linux CMD is also made to die with ``run`` (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import _owner
from ._config import PortRange, Resolved
from ._leaser import THIS_PROCESS, PortBlock, PortLeaser
from ._state import Entry
from .errors import InvalidArgument

log = logging.getLogger("pytest_portlease")

# Signals that would otherwise end `run` and orphan CMD: forwarded to CMD instead.
_FORWARD = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                      signal.SIGUSR1, signal.SIGUSR2})
# si_code of a signal the kernel itself sent: the terminal's ^C, ^\ and hangup (Linux).
_SI_KERNEL = 0x80
# prctl(2): the signal the kernel sends a child when the thread that forked it dies.
_PR_SET_PDEATHSIG = 1
# SIGTERM rather than SIGKILL: CMD may clean up (a database flushes, a server closes). One that
# ignores it lives on, and so does its lease, which it owns.
_DEATH_SIGNAL = signal.SIGTERM

PLACEHOLDERS_HELP = (
    "In CMD's arguments {port} is replaced by the base port, {port0} .. {portN-1} by each port, "
    "and {ports} by all of them, comma-separated ({{port}} stays a literal {port}): "
    "portlease run -n 2 -- python -m http.server {port}. The same values are in the environment "
    "as PORTLEASE_PORT, PORTLEASE_PORT_0.., PORTLEASE_PORTS and PORTLEASE_DIR, for a shell that CMD "
    "starts itself: portlease run -- sh -c 'exec python -m http.server $PORTLEASE_PORT' (in single "
    "quotes: the calling shell would expand $PORTLEASE_PORT before run exists)."
)
_PLACEHOLDER = re.compile(r"\{\{(port\d*|ports)\}\}|\{(port\d*|ports)\}")


def substitute(args: list[str], block: PortBlock) -> list[str]:
    """CMD's arguments with ``{port}``, ``{portI}`` and ``{ports}`` replaced (see PLACEHOLDERS_HELP)."""

    def one(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return "{" + match.group(1) + "}"  # {{port}}: the literal text
        name = match.group(2)
        if name == "port":
            return str(block.base)
        if name == "ports":
            return ",".join(map(str, block.ports))
        index = int(name[4:])
        if index >= block.size:
            raise InvalidArgument(
                f"invalid placeholder {match.group(0)} in CMD's arguments: -n {block.size} leases "
                f"{{port0}} to {{port{block.size - 1}}}; lease more ports with -n, or write "
                f"{{{{{name}}}}} for the literal text"
            )
        return str(block.ports[index])

    return [_PLACEHOLDER.sub(one, arg) for arg in args]


@dataclass(frozen=True)
class RunSettings:
    directory: Resolved[Path]
    port_range: Resolved[PortRange]
    ttl: Resolved[float]
    lock_timeout: Resolved[float]
    size: int
    label: str
    die_with_run: bool = True


def run(cmd: list[str], settings: RunSettings) -> int:
    """Lease, run CMD until it ends, release; return CMD's exit code (128+N for signal N)."""
    waited = set(_FORWARD) | {signal.SIGCHLD}
    # Block before any thread exists (the heartbeat inherits the mask), so that every signal
    # waits for the loop below, which sees who sent it.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        leaser = PortLeaser(
            settings.directory, port_range=settings.port_range, ttl=settings.ttl, label="",
            lock_timeout=settings.lock_timeout, owner_pid=THIS_PROCESS,
        )
        try:
            block = leaser.lease(settings.size, label=settings.label)
            if early := signal.sigpending() & _FORWARD:
                return 128 + int(min(early))  # asked to stop before CMD started: do not start it
            argv = substitute(cmd, block)
            env = {**os.environ, **block.env(), "PORTLEASE_DIR": os.fspath(settings.directory.value)}
            proc = _spawn(argv, env, old_mask, settings.die_with_run)
            if isinstance(proc, int):
                return proc  # 127 or 126: CMD could not be found or run
            _hand_over(leaser, block, proc.pid)
            # After the spawn: forking a process that has threads is what fork(2) warns about.
            leaser.start_heartbeat()
            log.debug("started pid %d with PORTLEASE_PORTS=%s", proc.pid, env["PORTLEASE_PORTS"])
            code = _supervise(proc, waited)
            log.debug("pid %d exited with %d; releasing %s", proc.pid, code, block)
            _release(leaser, block, proc.pid)
            return code
        finally:
            leaser.close()
    finally:
        while _wait_signal(waited, 0) is not None:
            pass  # drop what arrived after CMD ended, rather than die of it once unblocked
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _spawn(
    argv: list[str], env: dict[str, str], mask: set[int | signal.Signals], die_with_run: bool
) -> subprocess.Popen[bytes] | int:
    parent = os.getpid()
    prctl = _prctl() if die_with_run else None

    def in_child() -> None:
        # Between fork and exec. The mask: CMD starts with the signals run found, not the ones
        # run blocks for its own loop (exec keeps a blocked mask).
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, int(_DEATH_SIGNAL), 0, 0, 0)
            # run may have died before prctl took effect; then no signal will ever come, and
            # this process is already someone else's child.
            if os.getppid() != parent:
                os._exit(128 + int(_DEATH_SIGNAL))

    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork with threads; run has none of its own yet, and the
            # child only calls prctl and getppid before exec.
            warnings.filterwarnings("ignore", ".*multi-threaded.*fork", DeprecationWarning)
            # close_fds=False: descriptors pass to CMD as they did with exec (socket activation,
            # `3>file`); restore_signals resets SIGPIPE and SIGXFSZ, which Python ignores.
            return subprocess.Popen(argv, env=env, close_fds=False, preexec_fn=in_child)
    except FileNotFoundError:
        print(f"portlease: error: command not found: {argv[0]}: check its name and PATH", file=sys.stderr)
        return 127
    except OSError as e:
        print(f"portlease: error: cannot run {argv[0]} ({e.strerror}): check that it is an executable file",
              file=sys.stderr)
        return 126


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None  # no PR_SET_PDEATHSIG: the lease still follows CMD
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
        return prctl
    except (OSError, AttributeError):
        return None


def _hand_over(leaser: PortLeaser, block: PortBlock, pid: int) -> None:
    """Make CMD the lease's owner: if run is killed, the lease lives as long as CMD does."""
    owner = _owner.owner_for(pid, block.label)
    with leaser.transaction() as state:
        entry = state.entries.get(block.base)
        if entry is not None and entry.size == block.size:
            state.add(Entry(entry.base, entry.size, entry.expires, owner, entry.extra, entry.co_owners))
    # Renewals now write CMD as the owner, and recognise the lease as ours by it.
    leaser.owner_pid = pid


def _release(leaser: PortLeaser, block: PortBlock, pid: int) -> None:
    # CMD is reaped, so PortLeaser.release would no longer see CMD as the owner it records:
    # remove the lease if it is still the one CMD owned.
    leaser.detach(block)
    with leaser.transaction() as state:
        entry = state.entries.get(block.base)
        owner = None if entry is None else entry.owner
        if entry is not None and entry.size == block.size and (owner is None or owner.pid == pid):
            state.remove(block.base)


def _supervise(proc: subprocess.Popen[bytes], waited: set[signal.Signals]) -> int:
    """Forward signals to CMD until it exits; return its exit code (128+N for signal N)."""
    while True:
        # The timeout covers a SIGCHLD that another thread of an embedding process consumed.
        got = _wait_signal(waited, 0.25)
        if got is not None and got[0] in _FORWARD and _should_forward(got, proc.pid):
            log.debug("forwarding signal %d to pid %d", got[0], proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(got[0])  # still our unreaped child, so the pid cannot be reused
        if (code := proc.poll()) is not None:
            return 128 - code if code < 0 else code


def _wait_signal(waited: set[signal.Signals], timeout: float) -> tuple[int, int | None, int] | None:
    """(signal, si_code or None where unknown, sender pid) of the next pending signal, if any."""
    if hasattr(signal, "sigtimedwait"):
        info = signal.sigtimedwait(waited, timeout)
        return None if info is None else (info.si_signo, info.si_code, info.si_pid)
    # macOS has neither sigtimedwait nor siginfo; sigwait returns at once when one is pending.
    if signal.sigpending() & waited:
        return signal.sigwait(waited), None, 0
    time.sleep(timeout)
    return None


def _should_forward(got: tuple[int, int | None, int], child: int) -> bool:
    signo, code, sender = got
    if code is None:
        # No siginfo (macOS): ^C and ^\ come from the terminal to its foreground process group.
        # When that group is CMD's (ours), CMD has it already.
        return signo not in (signal.SIGINT, signal.SIGQUIT) or not _in_foreground()
    # The terminal's ^C reaches the whole foreground process group, CMD included: forwarding it
    # would deliver it twice. Signals CMD sends us are not bounced back to it either.
    return code != _SI_KERNEL and sender != child


def _in_foreground() -> bool:
    try:
        with open("/dev/tty", "rb", buffering=0) as tty:
            return os.tcgetpgrp(tty.fileno()) == os.getpgrp()
    except OSError:
        return False
