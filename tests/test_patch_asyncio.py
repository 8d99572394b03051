"""--portlease-patch=asyncio: pytest-asyncio's unused_*_port fixtures lease, with pytest-asyncio's
scopes and signatures, whatever the plugin order; a suite's own override still wins.

Every nested run loads the real pytest-asyncio (this suite disables it for itself)."""

from __future__ import annotations

import inspect
import json

import pytest

pytest.importorskip("pytest_asyncio")

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\n"

# What the nested tests check, from inside the session: the port is a lease the session holds
# while the fixture lives, and pytest resolved our definition, with pytest-asyncio's scope.
CHECKS = """
import inspect, json, socket
import pytest
from pytest_portlease.plugin import get_session

NAMES = ("unused_tcp_port", "unused_udp_port", "unused_tcp_port_factory", "unused_udp_port_factory")
seen = {}

def held(config):
    return {p for block in get_session(config).leaser.held for p in block}

def resolved(request, name):
    fixturedef = request._fixturemanager.getfixturedefs(name, request.node)[-1]
    return fixturedef.func.__module__, fixturedef.scope

def test_fixtures(request, pytestconfig, unused_tcp_port, unused_udp_port,
                  unused_tcp_port_factory, unused_udp_port_factory):
    tcp2, udp2 = unused_tcp_port_factory(), unused_udp_port_factory()
    ports = [unused_tcp_port, unused_udp_port, tcp2, udp2]
    assert len(set(ports)) == 4 and set(ports) <= held(pytestconfig)
    assert inspect.signature(unused_tcp_port_factory).parameters == {}
    assert inspect.signature(unused_udp_port_factory).parameters == {}
    with socket.socket() as s:  # the leased port binds for its server
        s.bind(("127.0.0.1", unused_tcp_port))
    seen.update(function=ports[:2], factory=ports[2:])
    print("RESOLVED", json.dumps({n: resolved(request, n) for n in NAMES}))

def test_function_leases_ended_with_their_test(pytestconfig):
    assert not set(seen["function"]) & held(pytestconfig)
    assert set(seen["factory"]) <= held(pytestconfig)  # session scope: still held
"""


def _expected_scopes() -> dict[str, str]:
    import pytest_asyncio.plugin as theirs

    def scope(name: str) -> str:
        definition = getattr(theirs, name)
        return str(getattr(definition, "_fixture_function_marker", definition).scope)

    return {name: scope(name) for name in (
        "unused_tcp_port", "unused_udp_port", "unused_tcp_port_factory", "unused_udp_port_factory"
    )}


def test_their_fixtures_have_the_scopes_we_copy() -> None:
    # The independent oracle: pytest-asyncio's own definitions, read from the installed version.
    assert _expected_scopes() == {
        "unused_tcp_port": "function",
        "unused_udp_port": "function",
        "unused_tcp_port_factory": "session",
        "unused_udp_port_factory": "session",
    }


def _args_without_asyncio_off(portlease_args: list[str]) -> list[str]:
    args = list(portlease_args)
    i = args.index("no:asyncio")
    del args[i - 1 : i + 1]
    return args


@pytest.mark.parametrize("order", ["entry-point", "dash-p-first", "conftest-plugins"])
def test_the_fixtures_lease_whatever_the_plugin_order(
    order: str, pytester: pytest.Pytester, portlease_args: list[str]
) -> None:
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(test_ports=CHECKS)
    args = _args_without_asyncio_off(portlease_args)
    if order == "dash-p-first":
        # pytest-asyncio loaded before every entry point, ours included.
        args = ["-p", "no:asyncio", "-p", "pytest_asyncio.plugin", *args]
    elif order == "conftest-plugins":
        pytester.makeconftest('pytest_plugins = ["pytest_asyncio.plugin"]')
        args = ["-p", "no:asyncio", *args]
    # -W error: a suite with filterwarnings = error gets no deprecation from our fixtures.
    result = pytester.runpytest_subprocess("-s", "-W", "error", "--portlease-patch=asyncio", *args)
    result.assert_outcomes(passed=2)
    line = next(x for x in result.outlines if "RESOLVED" in x)
    resolved = json.loads(line.split("RESOLVED ", 1)[1])
    assert {name: module for name, (module, _) in resolved.items()} == dict.fromkeys(
        resolved, "pytest_portlease.patches.asyncio"
    )
    assert {name: scope for name, (_, scope) in resolved.items()} == _expected_scopes()


def test_without_the_switch_they_are_pytest_asyncios(
    pytester: pytest.Pytester, portlease_args: list[str]
) -> None:
    pytester.makefile(".ini", pytest=INI)
    pytester.makepyfile(
        """
        def test_theirs(request, unused_tcp_port):
            fixturedef = request._fixturemanager.getfixturedefs("unused_tcp_port", request.node)[-1]
            assert fixturedef.func.__module__ == "pytest_asyncio.plugin"
        """
    )
    result = pytester.runpytest_subprocess(*_args_without_asyncio_off(portlease_args))
    result.assert_outcomes(passed=1)


def test_a_conftest_override_still_wins(pytester: pytest.Pytester, portlease_args: list[str]) -> None:
    pytester.makefile(".ini", pytest=INI)
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def unused_tcp_port():
            return 1234
        """
    )
    pytester.makepyfile(
        """
        def test_override(unused_tcp_port, unused_udp_port):
            assert unused_tcp_port == 1234
            assert unused_udp_port != 1234
        """
    )
    result = pytester.runpytest_subprocess("--portlease-patch=asyncio", *_args_without_asyncio_off(portlease_args))
    result.assert_outcomes(passed=1)


def test_the_factory_signature_is_theirs() -> None:
    from pytest_portlease.patches.asyncio import _Factory

    assert list(inspect.signature(_Factory("x")).parameters) == []


def test_the_patch_is_undone_at_the_session_end(pytester: pytest.Pytester, portlease_args: list[str]) -> None:
    # In-process, so that the outer test holds the nested session's plugin manager after its end:
    # the patch is a plugin object registered on it, and its undo unregisters it.
    import pytest_asyncio.plugin as theirs

    from pytest_portlease.patches import asyncio as patch

    pytester.makeini(INI)
    pytester.makepyfile(
        """
        def test_one(request, unused_tcp_port):
            fixturedef = request._fixturemanager.getfixturedefs("unused_tcp_port", request.node)[-1]
            assert fixturedef.func.__module__ == "pytest_portlease.patches.asyncio"
        """
    )
    originals = {name: getattr(theirs, name) for name in patch.FIXTURES}
    reprec = pytester.inline_run("-p", "asyncio", "--portlease-patch=asyncio", *portlease_args)
    reprec.assertoutcome(passed=1)
    config = reprec.getcall("pytest_unconfigure").config
    assert config.pluginmanager.get_plugin(patch.PLUGIN_NAME) is None
    assert not any(isinstance(p, patch.AsyncioPorts) for p in config.pluginmanager.get_plugins())
    assert {name: getattr(theirs, name) for name in patch.FIXTURES} == originals
