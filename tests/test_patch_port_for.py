"""--portlease-patch=port-for: every binding of port-for's functions, wherever it went, leases;
port-for's own contract (an exact port of ours again; PortForException) holds.

The nested runs are subprocesses: the patch rebinds module globals and watches imports, which
must be seen in a fresh interpreter, with the real modules on disk.
"""

from __future__ import annotations

import importlib
import json
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import port_for
import pytest

from pytest_portlease import PortleaseError, PortRangeExhausted, PortUnavailable, get_port
from pytest_portlease._config import PortRange
from pytest_portlease.patches import port_for as patch
from pytest_portlease.patches._hook import use_session_leaser

pytestmark = pytest.mark.filterwarnings(
    "ignore:port range .* overlaps this host's ephemeral range:pytest_portlease.PortleaseWarning"
)


def printed(result: pytest.RunResult, tag: str) -> object:
    """The JSON a nested test printed after ``tag`` (-s: it may follow the test file's name)."""
    match = re.search(rf"{tag} (.*)$", result.stdout.str(), re.MULTILINE)
    assert match is not None, f"nothing printed as {tag}"
    return json.loads(match.group(1))


# A module of the suite's own that did `from port_for import get_port` (as pytest-postgresql,
# pytest-redis and pytest-mysql do), and one that did `import port_for.store`.
USER_MODULE = """
from port_for import get_port, select_random
from port_for import get_port as renamed

def pick():
    return get_port(None)
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, nested_fast: tuple[str, ...]) -> pytest.Pytester:
    pytester.syspathinsert()
    pytester.makepyfile(early_user=USER_MODULE, late_user=USER_MODULE, inside_user=USER_MODULE)
    # early_user is imported when the session starts (by the conftest); late_user when the test
    # module is collected; inside_user only while a test runs.
    pytester.makeconftest("import early_user")
    pytester.makepyfile(
        test_users="""
        import importlib, json, os
        import port_for, port_for.api, port_for.store
        import early_user, late_user
        from pytest_portlease.patches.port_for import get_port as ours, select_random as our_select

        def test_every_binding_is_ours():
            inside_user = importlib.import_module("inside_user")
            found = {
                name: [m.get_port is ours, m.renamed is ours, m.select_random is our_select]
                for name, m in (("early", early_user), ("late", late_user), ("inside", inside_user))
            }
            found["port_for"] = [port_for.get_port is ours, port_for.api.get_port is ours,
                                 port_for.store.select_random is our_select]
            print("FOUND", json.dumps(found))
            print("PORTS", json.dumps([early_user.pick(), late_user.pick(), inside_user.pick(),
                                       port_for.PortStore(os.environ["STORE"]).bind_port("app")]))
        """
    )
    return pytester


def test_every_binding_before_and_after_start_leases(
    suite: pytest.Pytester, portlease_args: list[str], lease_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STORE", str(tmp_path / "store.ini"))
    result = suite.runpytest_subprocess("-s", "--portlease-patch=port-for", *portlease_args)
    result.assert_outcomes(passed=1)
    found = printed(result, "FOUND")
    assert found == {
        "early": [True, True, True],
        "late": [True, True, True],
        "inside": [True, True, True],
        "port_for": [True, True, True],
    }
    ports = printed(result, "PORTS")
    # Each was a lease of the session (released at its end): the summary counts them.
    result.stdout.fnmatch_lines(["portlease: 4 blocks, 4 ports leased*"])
    assert isinstance(ports, list) and len(set(ports)) == 4


def test_the_alias_switches_the_same_patch(
    suite: pytest.Pytester, portlease_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORE", str(tmp_path / "store.ini"))
    monkeypatch.setenv("PORTLEASE_PATCH_PORT_FOR", "1")
    result = suite.runpytest_subprocess("-s", *portlease_args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["portlease: patched port-for (*) (asked for port-for by PORTLEASE_PATCH_PORT_FOR)"])


def test_the_patch_is_undone_at_the_session_end(pytester: pytest.Pytester, portlease_args: list[str]) -> None:
    # In-process, the outer test sees what the nested session left behind.
    pytester.syspathinsert()
    pytester.makepyfile(undo_user=USER_MODULE)
    pytester.makepyfile(
        test_one="""
        import undo_user

        def test_one():
            assert undo_user.renamed.__module__ == "pytest_portlease.patches.port_for"
        """
    )
    original = port_for.api.get_port
    undo_user = importlib.import_module("undo_user")  # loaded before the session: it is rebound
    finders = list(sys.meta_path)
    result = pytester.runpytest("-p", "no:asyncio", "--portlease-patch=port-for", *portlease_args)
    result.assert_outcomes(passed=1)
    assert port_for.get_port is original and port_for.api.get_port is original
    assert undo_user.get_port is original and undo_user.renamed is original
    assert sys.meta_path == finders


def test_an_exact_port_this_session_holds_is_handed_out_again(
    pytester: pytest.Pytester, portlease_args: list[str], port_range: PortRange
) -> None:
    """port-for's test_get_port_specific, as a suite meets it: a function-scoped fixture that
    asks for the same exact port in every test."""
    from conftest import free_window

    port = free_window(1).low
    pytester.makepyfile(
        f"""
        import port_for, pytest

        @pytest.fixture
        def server_port():
            return port_for.get_port({port})

        def test_one(server_port):
            assert server_port == {port}

        def test_two(server_port):
            assert server_port == {port}
        """
    )
    result = pytester.runpytest_subprocess("--portlease-patch=port-for", *portlease_args)
    result.assert_outcomes(passed=2)


def test_an_exact_port_another_process_holds_is_still_refused(
    lease_dir: Path, port_range: PortRange
) -> None:
    from conftest import free_window

    from pytest_portlease import PortLeaser

    port = free_window(1).low
    with PortLeaser(lease_dir, port_range=port_range) as other, \
            PortLeaser(lease_dir, port_range=port_range) as session:
        other.lease(1, port=port)
        restore = use_session_leaser(lambda: session)
        try:
            with pytest.raises(PortUnavailable):
                get_port(port)
        finally:
            restore()


@pytest.mark.parametrize("kind", ["exhausted", "unavailable"])
def test_nothing_to_lease_is_also_a_port_for_exception(
    kind: str, lease_dir: Path, port_range: PortRange, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import free_window

    from pytest_portlease import PortLeaser

    window = free_window(2)
    monkeypatch.setenv("PORTLEASE_DIR", str(lease_dir))
    monkeypatch.setenv("PORTLEASE_RANGE", str(port_range))
    restore = use_session_leaser(None)
    try:
        with PortLeaser(lease_dir, port_range=port_range) as other:
            other.lease(1, port=window.low)
            other.lease(1, port=window.high)
            spec = (window.low, window.high) if kind == "exhausted" else window.low
            with pytest.raises(port_for.PortForException) as caught:
                get_port(spec)
    finally:
        restore()
    error = caught.value
    expected = PortRangeExhausted if kind == "exhausted" else PortUnavailable
    assert isinstance(error, expected) and isinstance(error, PortleaseError)
    # xdist carries it to the controller: it pickles, and comes back as both.
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
    assert isinstance(again, port_for.PortForException) and isinstance(again, expected)
    if kind == "unavailable":
        assert again.holder == error.holder  # type: ignore[attr-defined]


def test_the_combined_error_unpickles_in_a_fresh_process(
    lease_dir: Path, port_range: PortRange
) -> None:
    from pytest_portlease.patches import _errors

    error = _errors.also(PortUnavailable("port 1 is held by x", "x"), port_for.PortForException)
    code = textwrap.dedent(
        """
        import pickle, sys, port_for, pytest_portlease
        e = pickle.loads(sys.stdin.buffer.read())
        print(isinstance(e, port_for.PortForException), isinstance(e, pytest_portlease.PortUnavailable), e.holder)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(error), capture_output=True, check=True
    ).stdout.decode()
    assert out.split() == ["True", "True", "x"]


def test_bad_arguments_stay_value_errors() -> None:
    with pytest.raises(ValueError, match="invalid ports"):
        get_port([object()])  # type: ignore[list-item]


def test_install_without_port_for_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(patch.importlib.util, "find_spec", lambda name, *a: None)
    assert patch.install() is None
