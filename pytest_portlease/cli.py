"""The ``portlease`` console script: see who holds ports, and lease them from shell scripts.

Exit codes: 0 success, 1 the operation failed, 2 bad usage; ``run`` passes on its command's code.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import logging
import math
import os
import signal
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from . import __version__, _clock, _owner, _probe, _run
from . import _status_view as view
from ._config import (
    DEFAULT_TTL,
    DIR_HELP,
    LOCK_TIMEOUT_HELP,
    RANGE_HELP,
    TTL_HELP,
    PortRange,
    Resolved,
    resolve_directory,
    resolve_lock_timeout,
    resolve_range,
    resolve_ttl,
)
from ._leaser import PortLeaser
from ._state import Entry, State
from ._status import lease_info, lease_state, reclaim
from .errors import InvalidArgument, PortleaseError, PortleaseWarning, PortUnavailable

OK, FAILED, USAGE = 0, 1, 2

log = logging.getLogger("pytest_portlease")


class _Usage(Exception):
    """A usage error found after parsing: exit 2 with the message."""


# -- settings and output -----------------------------------------------------------------------


def _directory(args: argparse.Namespace) -> Resolved[Path]:
    return resolve_directory(args.dir, name="lease directory", option_source="--dir")


def _range(args: argparse.Namespace) -> Resolved[PortRange]:
    return resolve_range(args.range, name="port range", option_source="--range")


def _ttl(args: argparse.Namespace) -> Resolved[float]:
    return resolve_ttl(args.ttl, name="ttl", option_source="--ttl")


def _lock_timeout(args: argparse.Namespace) -> Resolved[float]:
    return resolve_lock_timeout(args.lock_timeout, name="lock timeout", option_source="--lock-timeout")


def _emit(args: argparse.Namespace, text: str, doc: dict[str, Any]) -> None:
    print(view.dumps(doc) if args.json else text)


@contextlib.contextmanager
def _locked_state(args: argparse.Namespace) -> Iterator[State | None]:
    """The state under the lock, saved on exit if changed; None when there is no directory.

    For the admin commands, which change leases this process does not hold. A missing directory
    has nothing to change, and is not created for nothing.
    """
    directory = _directory(args)
    if not directory.value.exists():
        yield None
        return
    # Editing leases needs no range or TTL: a bad PORTLEASE_RANGE or PORTLEASE_TTL in the
    # environment must not stop a release or a reclaim.
    unused = "unused by admin commands"
    leaser = PortLeaser(
        directory, port_range=Resolved(PortRange(1, 65535), unused), ttl=Resolved(DEFAULT_TTL, unused),
        lock_timeout=_lock_timeout(args), owner_pid=None, label="",
    )
    try:
        with leaser.transaction() as state:
            yield state
    finally:
        leaser.close()


# -- commands ----------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    snap = view.read_snapshot(_directory(args), _range(args))
    print(view.dumps(view.to_json(snap)) if args.json else view.render(snap))
    return OK


def cmd_lease(args: argparse.Namespace) -> int:
    owner_pid = None  # this command exits at once: its own pid would make the lease look dead
    if args.owner_pid is not None:
        if args.owner_pid <= 0 or _owner.process_start(args.owner_pid) is None:
            raise _Usage(
                f"invalid --owner-pid {args.owner_pid}: no running process has that pid; "
                f"pass the pid of the process that uses the ports, such as $$ in a shell"
            )
        owner_pid = args.owner_pid
    ttl = _ttl(args)
    leaser = PortLeaser(
        _directory(args), port_range=_range(args), ttl=ttl, lock_timeout=_lock_timeout(args), label="",
        owner_pid=owner_pid,
    )
    label = "portlease lease" if args.label is None else args.label
    try:
        block = leaser.lease(args.size, port=args.port, label=label)
        leaser.detach(block)  # the lease outlives this command: close() must not release it
    except PortUnavailable as e:
        raise PortUnavailable(f"{e}; choose another --port, or leave --port out", e.holder) from e
    finally:
        leaser.close()
    doc = {
        "base": block.base, "end": block.ports[-1], "size": block.size, "ports": list(block.ports),
        "label": block.label, "ttl": ttl.value, "owner_pid": owner_pid, "env": block.env(),
    }
    _emit(args, str(block.base), doc)
    return OK


def cmd_renew(args: argparse.Namespace) -> int:
    ttl = _ttl(args).value
    renewed: list[dict[str, int]] = []
    failed: list[str] = []
    with _locked_state(args) as state:
        now = _clock.now()
        expires = math.ceil(now + ttl)
        for base in args.bases:
            entry = None if state is None else state.entries.get(base)
            if state is None or entry is None or lease_state(entry, now) not in view.HOLDING:
                failed.append(_not_held(state, base, entry, now))
                continue
            # Keep the owner: renewing a lease on someone's behalf does not make it ours.
            state.add(dataclasses.replace(entry, expires=expires))
            renewed.append({"base": base, "end": entry.end, "expires": expires})
    text = "\n".join(f"renewed {view.span(r['base'], r['end'])} for {ttl:g}s" for r in renewed)
    if renewed or args.json:
        _emit(args, text, {"renewed": renewed, "failed": failed})
    for problem in failed:
        print(f"portlease: error: {problem}", file=sys.stderr)
    return FAILED if failed else OK


def _not_held(state: State | None, base: int, entry: Entry | None, now: float) -> str:
    if entry is not None:
        return (
            f"lease {base} is {lease_state(entry, now)} and may no longer be renewed: "
            f"lease a new block"
        )
    inside = state.conflict(base, base) if state is not None else None
    if inside is not None:
        return f"{base} is inside lease {inside.base}-{inside.end}: give its base, {inside.base}"
    return f"no lease starts at {base}: run `portlease status` to see the leases"


def cmd_release(args: argparse.Namespace) -> int:
    chosen = [s for s in (args.bases, args.label, args.pid) if s not in (None, [])]
    if len(chosen) != 1:
        raise _Usage("release takes exactly one of: BASE..., --label LABEL, --pid PID")
    host = _owner.hostname()
    released = []
    with _locked_state(args) as state:
        now = _clock.now()
        for entry in [] if state is None else [state.entries[b] for b in state.bases]:
            owner = entry.owner
            if args.bases:
                match = entry.base in args.bases
            elif args.label is not None:
                match = owner is not None and fnmatch.fnmatchcase(owner.label, args.label)
            else:  # a pid only names a process on the host that recorded it
                match = owner is not None and owner.pid == args.pid and owner.host == host
            if match and state is not None:
                released.append(lease_info(entry, now))
                state.remove(entry.base)
    if not released:
        what = (
            f"base {' '.join(map(str, args.bases))}" if args.bases
            else f"--label {args.label!r}" if args.label is not None else f"--pid {args.pid}"
        )
        raise PortleaseError(f"no lease matched {what}: run `portlease status` to see the leases")
    found = {lease.base for lease in released}
    for base in args.bases or []:
        if base not in found:
            print(f"portlease: warning: no lease starts at {base}", file=sys.stderr)
    text = "\n".join(f"released {view.describe(lease, now)}" for lease in released)
    _emit(args, text, {"released": [view.lease_doc(lease, now) for lease in released]})
    return OK


def cmd_check(args: argparse.Namespace) -> int:
    port = args.port
    snap = view.read_snapshot(_directory(args), _range(args))
    covering = [lease for lease in snap.leases if lease.base <= port <= lease.end]
    held = [lease for lease in covering if lease.state in view.HOLDING]
    binds = _probe.port_is_free(port)
    if held:
        verdict = f"held by lease {view.describe(held[0], snap.now)}"
    elif not binds:
        verdict = "bound outside portlease: no lease holds it"
    else:
        verdict = "free: no lease holds it"
    lines = [f"{port}: {verdict}; it {'binds' if binds else 'does not bind'} now"]
    lines += [
        f"  stale lease {view.describe(x, snap.now)} will be reclaimed by the next leaser"
        for x in covering if x.state not in view.HOLDING
    ]
    free = binds and not held
    doc = {"port": port, "free": free, "held": bool(held), "binds": binds,
           "leases": [view.lease_doc(x, snap.now) for x in covering]}
    _emit(args, "\n".join(lines), doc)
    return OK if free else FAILED


def cmd_reclaim(args: argparse.Namespace) -> int:
    with _locked_state(args) as state:
        now = _clock.now()
        # Describe them before reclaim removes them: a dead owner's lease may not have expired.
        before = {} if state is None else {b: lease_info(e, now) for b, e in state.entries.items()}
        gone = [before[e.base] for e in ([] if state is None else reclaim(state, now))]
    lines = [f"reclaimed {len(gone)} lease{'' if len(gone) == 1 else 's'}"]
    lines += [f"  {view.describe(lease, now)}" for lease in gone]
    _emit(args, "\n".join(lines), {"reclaimed": len(gone), "leases": [view.lease_doc(x, now) for x in gone]})
    return OK


def cmd_run(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise _Usage("run needs a command: portlease run [-n N] -- CMD [ARG...]")
    label = f"portlease run {Path(cmd[0]).name}" if args.label is None else args.label
    settings = _run.RunSettings(
        _directory(args), _range(args), _ttl(args), _lock_timeout(args), args.n, label,
        die_with_run=not args.keep_cmd_alive,
    )
    return _run.run(cmd, settings)


# -- the parser and main -----------------------------------------------------------------------


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _size(text: str) -> int:
    if (n := _int(text)) < 1:
        raise argparse.ArgumentTypeError(f"expected a number of ports >= 1, got {text!r}")
    return n


def _port(text: str) -> int:
    if not 1 <= (n := _int(text)) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 1 to 65535, got {text!r}")
    return n


def _add_globals(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--dir", default=default, metavar="DIR", help=DIR_HELP)
    parser.add_argument("--range", default=default, metavar="LOW-HIGH", help=RANGE_HELP)
    parser.add_argument("--lock-timeout", default=default, metavar="SECONDS", help=LOCK_TIMEOUT_HELP)
    parser.add_argument("--json", action="store_true", default=default, help="print JSON")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="log every step (lock waits, reclaims, probes) and show tracebacks")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line that says what to do, instead of argparse's usage dump.
        self.exit(USAGE, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> _Parser:
    parser = _Parser(
        prog="portlease",
        description="Lease blocks of ports from the directory shared with pytest-portlease and "
        "fedimint-portalloc, and see who holds them.",
        epilog="exit codes: 0 success, 1 failure (exhausted, held, timeout, nothing matched), "
        "2 bad usage; run passes on CMD's code",
    )
    _add_globals(parser, None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # The globals are accepted after the subcommand too; SUPPRESS keeps the earlier value.
    common = _Parser(add_help=False)
    _add_globals(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> _Parser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    p = add("status", "show the range, an occupancy map and every lease; changes nothing")
    p.set_defaults(func=cmd_status)
    p = add("lease", "lease a block and print its base port; it lasts until its TTL ends, "
            "or until --owner-pid exits; nothing renews it (see renew)")
    p.add_argument("size", nargs="?", type=_size, default=1, metavar="N", help="ports (default 1)")
    p.add_argument("--ttl", help="seconds the lease lives; it is never renewed unless you run "
                   f"`portlease renew`; env PORTLEASE_TTL; default {DEFAULT_TTL:g}")
    p.add_argument("--label", help="shown by status (default 'portlease lease')")
    p.add_argument("--port", type=_port, help="lease exactly this base port, even outside the range")
    p.add_argument("--owner-pid", type=_int, metavar="PID",
                   help="the lease ends when this process dies (such as $$)")
    p.set_defaults(func=cmd_lease)
    p = add("renew", "extend leases by their base port, keeping their owner")
    p.add_argument("bases", nargs="+", type=_port, metavar="BASE")
    p.add_argument("--ttl", help="seconds from now that the leases live; env PORTLEASE_TTL; "
                   f"default {DEFAULT_TTL:g}")
    p.set_defaults(func=cmd_renew)
    p = add("release", "release leases by base, by label (glob) or by owner pid; a holder that "
            "is still running restores its lease when it renews")
    p.add_argument("bases", nargs="*", type=_port, metavar="BASE")
    p.add_argument("--label", help="labels matching this glob pattern")
    p.add_argument("--pid", type=_int, help="leases owned by this process on this host")
    p.set_defaults(func=cmd_release)
    p = add("check", "show the lease covering PORT and whether it binds; exit 0 only if free")
    p.add_argument("port", type=_port, metavar="PORT")
    p.set_defaults(func=cmd_check)
    p = add("reclaim", "drop expired and dead-owner leases")
    p.set_defaults(func=cmd_reclaim)
    p = sub.add_parser(
        "run", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run CMD on a leased block, renewing the lease until CMD ends",
        description="Lease a block, run CMD on it, renew the lease while CMD lives, release it "
        "when CMD ends, and exit with CMD's code.\n\n" + textwrap.fill(_run.PLACEHOLDERS_HELP, 78)
        + "\n\n" + textwrap.fill(
            "CMD becomes the lease's owner once it starts: if run is killed, CMD is sent SIGTERM "
            "(Linux), and the lease lives exactly as long as CMD does.", 78),
    )
    p.add_argument("-n", type=_size, default=1, metavar="N", help="ports (default 1)")
    p.add_argument("--ttl", help=TTL_HELP)
    p.add_argument("--label", help="shown by status (default 'portlease run CMD')")
    p.add_argument("--keep-cmd-alive", action="store_true",
                   help="if run itself is killed, let CMD live on (its lease follows it)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=cmd_run)
    return parser


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"portlease: {record.levelname.lower()}: {record.getMessage()}"


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    print(f"portlease: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the console script with ``argv`` (default: ``sys.argv[1:]``); return its exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error argparse has printed
        return e.code if isinstance(e.code, int) else USAGE
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    old_level = log.level
    log.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    log.addHandler(handler)
    try:
        with warnings.catch_warnings():
            # A damaged shared state is worth a line on stderr, never a failure of the command.
            warnings.simplefilter("always", PortleaseWarning)
            warnings.showwarning = _show_warning
            func: Callable[[argparse.Namespace], int] = args.func
            code = func(args)
            sys.stdout.flush()  # here, where a closed pipe is still caught below
            return code
    except BrokenPipeError:  # `portlease status | head`: the reader has gone, nothing to say
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return FAILED
    except (_Usage, InvalidArgument) as e:
        return _fail(e, USAGE, args.verbose)
    except (PortleaseError, OSError) as e:
        return _fail(e, FAILED, args.verbose)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        log.removeHandler(handler)
        log.setLevel(old_level)


def _fail(error: BaseException, code: int, verbose: bool) -> int:
    if verbose:
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    print(f"portlease: error: {error}", file=sys.stderr)
    return code


def main_exit() -> NoReturn:
    """The console script's entry point."""
    sys.exit(main())
