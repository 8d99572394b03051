"""The pytest plugin: options, the port_block / free_port / port_leaser fixtures, reports.

Thin over ``PortLeaser``. Settings are resolved (and a bad one rejected) at configure time, but
nothing touches the lease directory until a test asks for a port; filelock, the one import that
costs, is loaded only then.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import _leaser, patches
from ._config import (
    DIR_HELP,
    LOCK_TIMEOUT_HELP,
    PATCH_HELP,
    PATCH_PORT_FOR_HELP,
    RANGE_HELP,
    TTL_HELP,
    PortRange,
    Resolved,
    check_directory,
    parse_flag,
    resolve_directory,
    resolve_layers,
    resolve_lock_timeout,
    resolve_patches,
    resolve_range,
    resolve_ttl,
)
from ._leaser import PortBlock, PortLeaser
from .errors import InvalidArgument, PortleaseError, PortUnavailable

#: The memory of named blocks, next to the state file but apart from it: fedimint-portalloc
#: rewrites ``fm-portalloc.json`` without our fields, and must not be able to erase this.
NAMES_FILE = "portlease-names.json"
_NAMES_KEEP = 1000  # newest entries kept; every pytester run adds a rootdir
#: Figures of the engine's LeaseStats, summed over the session's leaser and the xdist workers:
#: among them lock timeouts, and leases refused at once after one.
_FIGURES = ("blocks", "ports", "seconds", "lock_wait", "lock_timeouts", "failed_at_once")
_WARNINGS_SHOWN = 20  # distinct warnings in the summary; the rest are counted
_session_key = pytest.StashKey["PortleaseSession"]()


class PortleaseSession:
    """One pytest process's port leasing: its settings, its leaser (created on first use),
    its named blocks, and the figures for the terminal summary."""

    def __init__(self, config: pytest.Config) -> None:
        try:
            self.directory = _absolute(config, resolve_directory(
                config.getoption("portlease_dir"), name="--portlease-dir",
                option_source="--portlease-dir", ini=config.getini("portlease_dir"),
            ))
            # Found out now, by reads alone, rather than as a traceback in every test that asks
            # for a port; nothing is created until one does.
            check_directory(self.directory, "--portlease-dir")
            self.lock_timeout: Resolved[float] = resolve_lock_timeout(
                config.getoption("portlease_lock_timeout"), name="--portlease-lock-timeout",
                option_source="--portlease-lock-timeout", ini=config.getini("portlease_lock_timeout"),
            )
            self.port_range: Resolved[PortRange] = resolve_range(
                config.getoption("portlease_range"), name="--portlease-range",
                option_source="--portlease-range", ini=config.getini("portlease_range"),
            )
            self.ttl: Resolved[float] = resolve_ttl(
                config.getoption("portlease_ttl"), name="--portlease-ttl",
                option_source="--portlease-ttl", ini=config.getini("portlease_ttl"),
            )
            self.patch_port_for_setting: Resolved[bool] = resolve_layers(
                [
                    (config.getoption("portlease_patch_port_for"), "--portlease-patch-port-for"),
                    (os.environ.get("PORTLEASE_PATCH_PORT_FOR"), "PORTLEASE_PATCH_PORT_FOR"),
                    (_ini_flag(config), "ini portlease_patch_port_for"),
                ],
                parse_flag, "--portlease-patch-port-for", lambda: False,
            )
            self.patch_setting: Resolved[tuple[str, ...]] = resolve_patches(
                config.getoption("portlease_patch"), ini=config.getini("portlease_patch"),
                alias=self.patch_port_for_setting,
            )
        except InvalidArgument as e:
            raise pytest.UsageError(str(e)) from None
        workerinput: dict[str, Any] = getattr(config, "workerinput", {})
        self.worker: str | None = workerinput.get("workerid")
        self.rootdir = str(config.rootpath)
        #: xdist's id of the whole run, the same in every worker: owner data, not label text.
        self.run_id: str = workerinput.get("testrunuid") or ""
        self.label = " ".join(["pytest", *(part for part in (config.rootpath.name, self.worker) if part)])
        #: Node id of the test being set up: a session-scoped factory cannot see its caller.
        self.current_test = ""
        self.figures: dict[str, float] = dict.fromkeys(_FIGURES, 0)
        self.workers = 0
        # Warning text -> how many times (workers, leases) it was recorded: a dict, so that
        # thousands of them are deduplicated in linear time and shown once with a count.
        self.warnings: dict[str, int] = {}
        self._leaser: PortLeaser | None = None
        self._named: dict[str, PortBlock] = {}
        self._create = threading.Lock()
        self._closed = False
        #: The patches installed (undone at the session's end), and those asked for whose
        #: tool is not installed.
        self.patches: list[patches.Patch] = []
        self.patches_missing: list[str] = []

    @property
    def patch_port_for(self) -> bool:
        return "port-for" in self.patch_setting.value

    def install_patches(self, config: pytest.Config) -> None:
        self.patches, self.patches_missing = patches.install(self.patch_setting.value, config.pluginmanager)

    def undo_patches(self) -> None:
        while self.patches:
            self.patches.pop().undo()

    @property
    def leaser(self) -> PortLeaser:
        """The session's ``PortLeaser``, created (with its heartbeat) on first use."""
        with self._create:
            if self._closed:
                raise PortleaseError("the pytest session has ended and released its leases")
            if self._leaser is None:
                _leaser.ephemeral_overlap_reported(self.port_range.value)  # in the report header
                # fail_fast: a frozen lock holder would cost every later lease of the session the
                # whole timeout again. In the leaser, because every way of leasing ends there:
                # these fixtures, the port_leaser fixture (the leaser itself) and the patches.
                self._leaser = _leaser.PortLeaser(
                    self.directory, port_range=self.port_range, ttl=self.ttl, label=self.label,
                    lock_timeout=self.lock_timeout, heartbeat=True, run_id=self.run_id, fail_fast=True,
                )
            return self._leaser

    @contextlib.contextmanager
    def _leasing(self) -> Iterator[PortLeaser]:
        with self.leaser.recording_warnings(self.keep_warnings) as leaser:
            yield leaser

    def keep_warnings(self, caught: list[warnings.WarningMessage]) -> None:
        for w in caught:
            self._warning(f"{w.category.__name__}: {w.message}")

    def _warning(self, text: str, count: int = 1) -> None:
        self.warnings[text] = self.warnings.get(text, 0) + count

    def lease(self, size: int = 1, *, name: str | None = None, label: str = "") -> PortBlock:
        """Lease a block for the rest of the session; a named block is leased once per session
        and prefers the block it had in the previous run."""
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidArgument(
                f"invalid name {name!r} from argument: expected a non-empty string"
            )
        with self._leasing() as leaser:
            if name is None:
                return leaser.lease(size, label=label)
            if (known := self._named.get(name)) is None:
                # The name first: it says which block this is, the test only who asked first.
                named_label = " ".join(x for x in (f"name={name}", label) if x)
                known = self._named[name] = self._lease_named(leaser, size, name, named_label)
            elif size != known.size:
                raise InvalidArgument(
                    f"invalid size {size!r} for block {name!r}: it was leased with "
                    f"{known.size} port(s) ({known}) earlier in this session; "
                    f"use one size per name"
                )
            return known

    def _lease_named(self, leaser: PortLeaser, size: int, name: str, label: str) -> PortBlock:
        key = json.dumps([self.rootdir, self.worker, name])
        base = self._remembered(leaser, key, size)
        block = None
        if base is not None:
            with contextlib.suppress(PortUnavailable):  # held or bound now: take a fresh one
                block = leaser.lease(size, port=base, label=label)
        if block is None:
            block = leaser.lease(size, label=label)
        with leaser.transaction():  # the lock orders our read-modify-write against others'
            names = _read_names(leaser.store.read_file(NAMES_FILE))
            names.pop(key, None)
            names[key] = {"base": block.base, "size": block.size, "used": int(time.time())}
            kept = sorted(names.items(), key=lambda item: _used(item[1]))[-_NAMES_KEEP:]
            data = json.dumps({"version": 1, "blocks": dict(kept)}, indent=1) + "\n"
            leaser.store.write_file(NAMES_FILE, data.encode())
        return block

    def _remembered(self, leaser: PortLeaser, key: str, size: int) -> int | None:
        entry = _read_names(leaser.store.read_file(NAMES_FILE)).get(key, {})
        base, rng = entry.get("base"), self.port_range.value
        # Stale memory (another size, a range changed since) costs only the preference.
        if type(base) is not int or entry.get("size") != size:
            return None
        return base if rng.low <= base and base + size - 1 <= rng.high else None

    def release(self, block: PortBlock) -> None:
        with self._leasing() as leaser:
            leaser.release(block)

    def close(self) -> None:
        """Release everything. Errors and warnings go to the summary: the TTL ends the leases."""
        with self._create:
            leaser, self._leaser, self._closed = self._leaser, None, True
        if leaser is None:
            return
        if leaser.lock_timed_out is not None:
            # Releasing would fail with it at once: the TTL ends these leases, without a warning.
            for block in leaser.held:
                leaser.detach(block)
        # Not under _leasing: close() joins the heartbeat, which may be waiting for the mutex.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                leaser.close()
            except Exception as e:
                self._warning(
                    f"{type(e).__name__}: could not release this session's leases ({e}); "
                    f"they expire after {self.ttl.value:g}s"
                )
        self.keep_warnings(caught)
        stats = leaser.stats  # port_leaser users lease directly: count from the engine
        for name in _FIGURES:
            self.figures[name] += getattr(stats, name)

    def merge(self, output: dict[str, Any]) -> None:
        """Add a worker's figures and warnings (sent through xdist's workeroutput)."""
        self.workers += 1
        for name in _FIGURES:
            self.figures[name] += float(output.get("figures", {}).get(name, 0))
        received = output.get("warnings", {})
        if isinstance(received, list):  # a worker of an older version
            received = dict.fromkeys(received, 1)
        for text, count in received.items():
            self._warning(str(text), count if isinstance(count, int) else 1)

    def summary(self) -> list[str]:
        figures = self.figures
        blocks, ports = int(figures["blocks"]), int(figures["ports"])
        lines = []
        if blocks:
            workers = f" over {_plural(self.workers, 'worker')}" if self.workers else ""
            # Both figures are over the same calls (the leases), so the second is part of the first.
            lines.append(
                f"portlease: {_plural(blocks, 'block')}, {_plural(ports, 'port')} leased{workers} "
                f"in {figures['seconds']:.3f}s of leasing, of which {figures['lock_wait']:.3f}s "
                f"waiting for the lock"
            )
        if timeouts := int(figures["lock_timeouts"]):
            where = f" in {_plural(timeouts, 'process', 'processes')}" if self.workers else ""
            lines.append(
                f"portlease: the lock timed out{where}; {_plural(int(figures['failed_at_once']), 'later lease')} "
                f"failed at once with the same error instead of waiting again"
            )
        shown = list(self.warnings.items())
        for text, count in shown[:_WARNINGS_SHOWN]:
            times = f", {count} times" if count > 1 else ""
            lines.append(f"portlease: {text} (recorded while leasing{times}, not raised)")
        if len(shown) > _WARNINGS_SHOWN:
            rest = sum(count for _, count in shown[_WARNINGS_SHOWN:])
            lines.append(f"portlease: {len(shown) - _WARNINGS_SHOWN} other warnings ({rest} in all) not shown")
        return lines


class PortBlockFactory:
    """What the ``port_block`` fixture returns: ``port_block(3)``, ``port_block(3, name="pg")``."""

    def __init__(self, session: PortleaseSession) -> None:
        self.session = session

    def __call__(self, size: int = 1, *, name: str | None = None) -> PortBlock:
        """Lease ``size`` consecutive ports until the session ends. The same ``name`` gives the
        same block all session; across runs it prefers last run's block when that is free."""
        return self.session.lease(size, name=name, label=self.session.current_test)


def _ini_flag(config: pytest.Config) -> object:
    try:
        return config.getini("portlease_patch_port_for")
    except (ValueError, pytest.UsageError) as e:
        raise InvalidArgument(
            f"invalid portlease_patch_port_for from ini portlease_patch_port_for "
            f"({config.inipath}): {e}; expected true or false"
        ) from None


def _absolute(config: pytest.Config, setting: Resolved[Path]) -> Resolved[Path]:
    # A relative directory means the same place in every xdist worker and after a chdir: anchor
    # it now, an ini value at its config file (as pytest does for its "paths" ini type).
    path = setting.value
    if path.is_absolute():
        return setting
    base = config.invocation_params.dir
    if setting.source.startswith("ini") and config.inipath is not None:
        base = config.inipath.parent
    return Resolved(base / path, setting.source)


def _read_names(data: bytes) -> dict[str, dict[str, Any]]:
    # Missing, torn or hand-mangled: no preference, never an error. ValueError covers a number
    # of over 4,300 digits; RecursionError, thousands of nested brackets.
    try:
        blocks = json.loads(data)["blocks"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return {}
    if not isinstance(blocks, dict):
        return {}
    return {k: v for k, v in blocks.items() if isinstance(v, dict)}


def _used(entry: dict[str, Any]) -> float:
    used = entry.get("used")
    if isinstance(used, bool) or not isinstance(used, int | float):
        return 0.0
    if isinstance(used, int):
        used = min(used, 10**300)  # float() of an int past 1e308 raises OverflowError
    return float(used) if math.isfinite(used) else 0.0  # NaN would not sort


def _plural(n: int, word: str, words: str = "") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {words or word + 's'}"


def get_session(config: pytest.Config) -> PortleaseSession:
    """The ``PortleaseSession`` of a configured pytest run."""
    return config.stash[_session_key]


# -- hooks ---------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("portlease", "cooperative cross-process port leases")
    for name, metavar, help_text in (
        ("dir", "DIR", DIR_HELP),
        ("range", "LOW-HIGH", RANGE_HELP),
        ("ttl", "SECONDS", TTL_HELP),
        ("lock-timeout", "SECONDS", LOCK_TIMEOUT_HELP),
    ):
        key = name.replace("-", "_")
        group.addoption(f"--portlease-{name}", dest=f"portlease_{key}", metavar=metavar, help=help_text)
        parser.addini(f"portlease_{key}", help_text)
    group.addoption("--portlease-patch", dest="portlease_patch", metavar="NAMES", help=PATCH_HELP)
    parser.addini("portlease_patch", PATCH_HELP)
    group.addoption(
        "--portlease-patch-port-for", dest="portlease_patch_port_for", action="store_true",
        default=None, help=PATCH_PORT_FOR_HELP,
    )
    parser.addini("portlease_patch_port_for", PATCH_PORT_FOR_HELP, type="bool", default=None)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("help"):
        return  # a bad setting must not keep --help from showing how to fix it
    session = config.stash[_session_key] = PortleaseSession(config)
    # get_port leases for this session (lazily: the directory is touched at the first call).
    # Each returns its undo, because pytester runs a pytest session inside another one.
    config.add_cleanup(patches.use_session_leaser(lambda: session.leaser, keep_warnings=session.keep_warnings))
    # Undone at the session's end (pytest_sessionfinish), or here when it never got there.
    session.install_patches(config)
    config.add_cleanup(session.undo_patches)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(session), "portlease-xdist")


class XdistHooks:
    """Registered only when pytest-xdist is loaded: the controller sums its workers' figures."""

    def __init__(self, session: PortleaseSession) -> None:
        self.session = session

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", {}).get("portlease")
        if output:
            self.session.merge(output)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if (session := item.config.stash.get(_session_key, None)) is not None:
        session.current_test = item.nodeid


@pytest.hookimpl(trylast=True)  # after the runner's hook has torn down the session fixtures
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if (ours := config.stash.get(_session_key, None)) is None:
        return
    ours.undo_patches()  # before the leaser closes: a patched tool must not lease after it
    ours.close()
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None and (ours.figures["blocks"] or ours.figures["lock_timeouts"] or ours.warnings):
        workeroutput["portlease"] = {"figures": ours.figures, "warnings": ours.warnings}


def pytest_unconfigure(config: pytest.Config) -> None:
    if (session := config.stash.get(_session_key, None)) is not None:
        session.close()  # idempotent; covers a session that never reached sessionfinish


def pytest_report_header(config: pytest.Config) -> list[str]:
    if (s := config.stash.get(_session_key, None)) is None:
        return []
    from ._probe import ephemeral_overlap, ephemeral_range

    rng = s.port_range.value
    lines = [
        f"portlease: dir {s.directory.value} (from {s.directory.source}), "
        f"range {rng} (from {s.port_range.source}), ttl {s.ttl.value:g}s (from {s.ttl.source}), "
        f"lock timeout {s.lock_timeout.value:g}s (from {s.lock_timeout.source})"
    ]
    lines.extend(_patch_header(s))
    if (overlap := ephemeral_overlap(rng)) is not None:
        lines.append(
            f"portlease: WARNING: range {rng} overlaps this host's ephemeral port range "
            f"{ephemeral_range()} at {overlap}: the kernel may give those ports to any outgoing "
            f"connection; choose a range outside it"
        )
    return lines


def _patch_header(s: PortleaseSession) -> list[str]:
    asked = s.patch_setting
    if not asked.value:
        return []
    patched = "; ".join(f"{p.name} ({p.describe()})" for p in s.patches) or "nothing"
    lines = [f"portlease: patched {patched} (asked for {','.join(asked.value)} by {asked.source})"]
    if s.patches_missing:
        lines.append(
            f"portlease: asked to patch {', '.join(s.patches_missing)} ({asked.source}), "
            f"but it is not installed: nothing patched for it"
        )
    lines.extend(f"portlease: note: {note}" for p in s.patches for note in p.notes)
    return lines


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if (session := config.stash.get(_session_key, None)) is not None:
        for line in session.summary():
            terminalreporter.write_line(line)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def port_block(pytestconfig: pytest.Config) -> PortBlockFactory:
    """Factory of blocks leased until the session ends: ``port_block(3)``,
    ``port_block(3, name="pg")`` (same block all session, and across runs when free)."""
    return PortBlockFactory(get_session(pytestconfig))


@pytest.fixture
def free_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """One leased port, released when the test ends."""
    session = get_session(request.config)
    block = session.lease(1, label=request.node.nodeid)
    yield block.base
    session.release(block)


@pytest.fixture(scope="session")
def port_leaser(pytestconfig: pytest.Config) -> PortLeaser:
    """The session's ``PortLeaser``, released when the session ends. After one LockTimeout it
    fails at once, as the other fixtures do."""
    return get_session(pytestconfig).leaser
