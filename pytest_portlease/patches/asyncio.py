"""pytest-asyncio's ``unused_tcp_port``, ``unused_udp_port`` and their factories, leasing.

pytest-asyncio binds port 0, closes the socket and hands out the number ("bind, close, hope"):
two xdist workers, or two runs on one host, can be given the same port before either binds it.
Ours have the same names, scopes and call signatures, and each port is a lease that ends with
its fixture's scope (a test for the plain fixtures, the session for the factories).

Which definition pytest uses: among fixtures of non-conftest plugins, the one registered last
(``FixtureManager.getfixturedefs``: "registered later => more specific"). This plugin object is
registered at ``pytest_configure``, after every plugin loaded at start-up (``-p``, entry points,
the root conftest's ``pytest_plugins``), so ours win whatever their load order; a conftest's own
definition is more specific than any plugin's, so a suite's override still wins.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest

from .._leaser import PortBlock
from . import _hook
from ._patch import Patch

PLUGIN_NAME: Final = "portlease-asyncio"
FIXTURES: Final = ("unused_tcp_port", "unused_udp_port", "unused_tcp_port_factory", "unused_udp_port_factory")


def _lease(label: str) -> PortBlock:
    # Every lease is free for TCP and UDP both (the strict probe checks both), so one helper
    # serves the four fixtures.
    with _hook.leasing() as leaser:
        return leaser.lease(1, label=label)


def _release(block: PortBlock) -> None:
    with _hook.leasing() as leaser:
        leaser.release(block)


class _Factory:
    """pytest-asyncio's factory: ``factory()`` returns a different port on every call."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.blocks: list[PortBlock] = []

    def __call__(self) -> int:
        block = _lease(self.label)
        self.blocks.append(block)
        return block.base

    def close(self) -> None:
        while self.blocks:
            _release(self.blocks.pop())


def _one_port(request: pytest.FixtureRequest) -> Iterator[int]:
    block = _lease(f"{request.fixturename} {request.node.nodeid}")
    yield block.base
    _release(block)


def _factory(request: pytest.FixtureRequest) -> Iterator[Callable[[], int]]:
    factory = _Factory(str(request.fixturename))
    yield factory
    factory.close()


class AsyncioPorts:
    """The four fixtures, as a plugin object."""

    @pytest.fixture
    def unused_tcp_port(self, request: pytest.FixtureRequest) -> Iterator[int]:
        """A leased port, free for TCP, released when the test ends (pytest-portlease)."""
        yield from _one_port(request)

    @pytest.fixture
    def unused_udp_port(self, request: pytest.FixtureRequest) -> Iterator[int]:
        """A leased port, free for UDP, released when the test ends (pytest-portlease)."""
        yield from _one_port(request)

    @pytest.fixture(scope="session")
    @classmethod  # a session-scoped fixture as an instance method is deprecated (pytest 9)
    def unused_tcp_port_factory(cls, request: pytest.FixtureRequest) -> Iterator[Callable[[], int]]:
        """A factory of different leased TCP ports, released when the session ends (pytest-portlease)."""
        yield from _factory(request)

    @pytest.fixture(scope="session")
    @classmethod  # a session-scoped fixture as an instance method is deprecated (pytest 9)
    def unused_udp_port_factory(cls, request: pytest.FixtureRequest) -> Iterator[Callable[[], int]]:
        """A factory of different leased UDP ports, released when the session ends (pytest-portlease)."""
        yield from _factory(request)


def install(pluginmanager: Any) -> Patch | None:
    if importlib.util.find_spec("pytest_asyncio") is None:
        return None
    plugin = AsyncioPorts()
    pluginmanager.register(plugin, PLUGIN_NAME)

    def undo() -> None:
        if pluginmanager.is_registered(plugin):
            pluginmanager.unregister(plugin)

    return Patch("asyncio", undo, lambda: ", ".join(FIXTURES))
