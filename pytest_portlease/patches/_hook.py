"""The leaser every patched tool leases through: the pytest session's, once the plugin installed
it, otherwise a module-wide one whose leases only their TTL ends (a script that prints a port and
exits before its server binds it must not take the lease with it)."""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from .._config import PortRange, resolve_directory, resolve_range, resolve_ttl
from .._leaser import PortLeaser

WarningsSink: TypeAlias = Callable[[list[warnings.WarningMessage]], None]


@dataclass(frozen=True)
class _SessionHook:
    factory: Callable[[], PortLeaser]
    keep_warnings: WarningsSink | None


_hook: _SessionHook | None = None
_module_leaser: tuple[tuple[Path, PortRange, float], PortLeaser] | None = None
_module_lock = threading.Lock()


def use_session_leaser(
    factory: Callable[[], PortLeaser] | None, *, keep_warnings: WarningsSink | None = None
) -> Callable[[], None]:
    """Make the patched tools lease through ``factory()`` (the pytest session's leaser), or,
    with None, through the module's own leaser. Returns a function that restores the previous
    hook, because pytester runs a pytest session inside another one.

    ``factory`` is called at the first lease, not here, so a session that never asks for a port
    never touches the lease directory. ``keep_warnings`` receives the warnings raised while
    leasing instead of letting them through (a suite under ``-W error`` must not fail because
    another process left a corrupt state behind).
    """
    global _hook
    previous = _hook
    _hook = None if factory is None else _SessionHook(factory, keep_warnings)

    def restore() -> None:
        global _hook
        _hook = previous

    return restore


def in_session() -> bool:
    """True when leases last the pytest session (its leaser renews and releases them)."""
    return _hook is not None


@contextlib.contextmanager
def leasing() -> Iterator[PortLeaser]:
    hook = _hook
    if hook is None:
        leaser = _default_leaser()
        try:
            yield leaser
        finally:
            for block in leaser.held:
                leaser.detach(block)  # TTL-only leases, which nobody renews or releases
        return
    leaser = hook.factory()
    if hook.keep_warnings is None:
        yield leaser
        return
    with leaser.recording_warnings(hook.keep_warnings):
        yield leaser


def _default_leaser() -> PortLeaser:
    # Resolved on every call, so a changed PORTLEASE_DIR / _RANGE / _TTL takes effect. The leases
    # have no owning process: a shell script may print the port and exit before its server binds
    # it, so only the TTL ends them (the port is bound by then, and the probe sees it).
    global _module_leaser
    settings = (resolve_directory(), resolve_range(), resolve_ttl())
    key = (settings[0].value, settings[1].value, settings[2].value)
    with _module_lock:
        if _module_leaser is None or _module_leaser[0] != key:
            if _module_leaser is not None:
                _module_leaser[1].close()  # it holds no lease (all detached): frees its lock fd
            leaser = PortLeaser(settings[0], port_range=settings[1], ttl=settings[2], owner_pid=None)
            _module_leaser = (key, leaser)
        return _module_leaser[1]
