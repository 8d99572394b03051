"""portpicker's ``pick_unused_port`` and ``return_port``, leasing.

portpicker binds a port, closes it and hands out its number; without a portserver nothing stops
another process from picking the same one. Here the port is a lease, held until ``return_port``
(or the session's end), and every binding of the two functions is replaced by identity, as for
port-for (``PickUnusedPort`` is the same function).
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Callable
from typing import Any, Final

from .._leaser import PortBlock, PortLeaser
from ..errors import InvalidArgument, PortleaseError
from . import _errors, _hook
from ._patch import Patch
from ._rebind import Rebinding

LABEL: Final = "portpicker"
NOTE: Final = (
    "portpicker's portserver_address argument and PORTSERVER_ADDRESS are ignored: "
    "its ports are leased from portlease"
)

_leased: dict[int, tuple[PortLeaser, PortBlock]] = {}
_leased_lock = threading.Lock()
_originals: dict[str, Callable[..., Any]] = {}


def pick_unused_port(pid: int | None = None, portserver_address: str | None = None) -> int:
    """A leased port, free for TCP and UDP, held until ``return_port`` or the session's end.
    ``pid`` and ``portserver_address`` are accepted and ignored (the lease is the reservation)."""
    try:
        with _hook.leasing() as leaser:
            block = leaser.lease(1, label=LABEL)
    except PortleaseError as e:
        if isinstance(e, InvalidArgument):
            raise
        foreign = _no_free_port_error()
        if foreign is None:
            raise
        raise _errors.also(e, foreign) from None
    with _leased_lock:
        _leased[block.base] = (leaser, block)
    return block.base


def return_port(port: int) -> None:
    """Release a port ``pick_unused_port`` leased; any other port goes to portpicker's own."""
    with _leased_lock:
        entry = _leased.pop(port, None)
    if entry is None:
        original = _originals.get("return_port")
        if original is not None:
            original(port)
        return
    leaser, block = entry
    with _hook.leasing():  # the session's warnings sink, if any
        leaser.release(block)


def _no_free_port_error() -> type[Exception] | None:
    try:
        error: type[Exception] = importlib.import_module("portpicker").NoFreePortFoundError
    except (ImportError, AttributeError):
        return None
    return error


_REPLACEMENTS: Final[dict[str, Callable[..., Any]]] = {
    "pick_unused_port": pick_unused_port,
    "return_port": return_port,
}


def install(pluginmanager: object = None) -> Patch | None:
    if importlib.util.find_spec("portpicker") is None:
        return None
    portpicker = importlib.import_module("portpicker")  # untyped: no stubs
    for name, ours in _REPLACEMENTS.items():
        current = getattr(portpicker, name)
        if current is not ours:
            _originals[name] = current
    rebinding = Rebinding({_originals[name]: ours for name, ours in _REPLACEMENTS.items()})
    rebinding.install()

    def describe() -> str:
        return f"{len(rebinding.bindings)} binding(s) so far, and every module imported later"

    return Patch("portpicker", rebinding.undo, describe, (NOTE,))
