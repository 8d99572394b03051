"""The patch switch's adapters: one small module per tool whose port choice it routes through
leases (``--portlease-patch=port-for,portpicker,asyncio``). Each adapter is independent: it
installs only when its tool is installed, and its undo puts back exactly what it replaced.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from ._hook import use_session_leaser
from ._patch import Patch

__all__ = ["Patch", "install", "use_session_leaser"]

#: Switch name -> the module of its adapter (imported only when asked for).
_ADAPTERS = {"port-for": "port_for", "portpicker": "portpicker", "asyncio": "asyncio"}


def install(names: Sequence[str], pluginmanager: Any) -> tuple[list[Patch], list[str]]:
    """Install the adapters ``names`` asks for. Returns the patches installed and the names
    whose tool is not installed."""
    installed: list[Patch] = []
    missing: list[str] = []
    for name in names:
        adapter = importlib.import_module(f".{_ADAPTERS[name]}", __name__)
        patch: Patch | None = adapter.install(pluginmanager)
        if patch is None:
            missing.append(name)
        else:
            installed.append(patch)
    return installed, missing
