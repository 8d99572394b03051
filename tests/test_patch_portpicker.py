"""--portlease-patch=portpicker: pick_unused_port() leases (portserver_address ignored) and
return_port() releases, wherever portpicker's names went."""

from __future__ import annotations

import pytest

pytest.importorskip("portpicker")


def test_pick_and_return_lease_and_release(pytester: pytest.Pytester, portlease_args: list[str]) -> None:
    pytester.makepyfile(
        """
        import socket
        import portpicker
        from portpicker import pick_unused_port, return_port
        from pytest_portlease.plugin import get_session

        def held(config):
            return {p for block in get_session(config).leaser.held for p in block}

        def test_pick(pytestconfig, tmp_path):
            ports = [
                portpicker.pick_unused_port(),
                pick_unused_port(),  # a copy of the name, imported before the session started
                portpicker.PickUnusedPort(),  # portpicker's alias of the same function
                portpicker.pick_unused_port(portserver_address="@no-such-portserver"),
            ]
            assert len(set(ports)) == 4 and set(ports) <= held(pytestconfig)
            with socket.socket() as s:
                s.bind(("127.0.0.1", ports[0]))
            return_port(ports[0])
            portpicker.return_port(ports[1])
            assert held(pytestconfig) == set(ports[2:])
            return_port(1)  # not ours: portpicker's own return_port logs it, as before
        """
    )
    result = pytester.runpytest_subprocess("--portlease-patch=portpicker", *portlease_args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["portlease: 4 blocks, 4 ports leased*"])


def test_nothing_to_lease_is_also_portpickers_error(
    pytester: pytest.Pytester, portlease_args: list[str]
) -> None:
    from conftest import free_window

    window = free_window(1)
    args = [a for a in portlease_args if not a.startswith("--portlease-range=")]
    pytester.makepyfile(
        """
        import pickle
        import portpicker, pytest
        from pytest_portlease import PortRangeExhausted

        def test_exhausted(port_block):
            port_block(1)  # the range's only port
            with pytest.raises(portpicker.NoFreePortFoundError) as caught:
                portpicker.pick_unused_port()
            assert isinstance(caught.value, PortRangeExhausted)
            assert isinstance(pickle.loads(pickle.dumps(caught.value)), portpicker.NoFreePortFoundError)
        """
    )
    result = pytester.runpytest_subprocess(
        "--portlease-patch=portpicker", f"--portlease-range={window}", *args
    )
    result.assert_outcomes(passed=1)


def test_without_the_switch_portpicker_is_untouched(
    pytester: pytest.Pytester, portlease_args: list[str]
) -> None:
    pytester.makepyfile(
        """
        import portpicker

        def test_theirs():
            assert portpicker.pick_unused_port.__module__ == "portpicker"
        """
    )
    result = pytester.runpytest_subprocess(*portlease_args)
    result.assert_outcomes(passed=1)


def test_the_patch_is_undone_at_the_session_end(pytester: pytest.Pytester, portlease_args: list[str]) -> None:
    # In-process, the outer test sees what the nested session left behind.
    import importlib
    import sys

    import portpicker

    pytester.syspathinsert()
    pytester.makepyfile(
        picker_user="from portpicker import pick_unused_port, return_port\n",
        test_one="""
        import picker_user, portpicker

        def test_one():
            assert portpicker.pick_unused_port.__module__ == "pytest_portlease.patches.portpicker"
            assert picker_user.return_port.__module__ == "pytest_portlease.patches.portpicker"
        """,
    )
    originals = {name: getattr(portpicker, name) for name in ("pick_unused_port", "return_port", "PickUnusedPort")}
    picker_user = importlib.import_module("picker_user")  # loaded before the session: it is rebound
    finders = list(sys.meta_path)
    result = pytester.runpytest("-p", "no:asyncio", "--portlease-patch=portpicker", *portlease_args)
    result.assert_outcomes(passed=1)
    assert {name: getattr(portpicker, name) for name in originals} == originals
    assert picker_user.pick_unused_port is originals["pick_unused_port"]
    assert picker_user.return_port is originals["return_port"]
    assert sys.meta_path == finders
