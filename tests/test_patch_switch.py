"""The switch: --portlease-patch=NAMES, ini portlease_patch, env PORTLEASE_PATCH; its alias; what
the header says; bad names."""

from __future__ import annotations

import pytest

from pytest_portlease import InvalidArgument
from pytest_portlease._config import PATCH_NAMES, Resolved, parse_patches, resolve_patches

ACCEPTED = "expected a comma-separated choice of port-for, portpicker, asyncio, or all"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("port-for", ("port-for",)),
        (" asyncio , PORT-FOR ", ("port-for", "asyncio")),
        ("all", PATCH_NAMES),
        ("portpicker,all", PATCH_NAMES),
    ],
)
def test_names_parse_in_one_order(raw: str, expected: tuple[str, ...]) -> None:
    assert parse_patches(raw, "--portlease-patch", "PORTLEASE_PATCH") == expected


@pytest.mark.parametrize(("raw", "unknown"), [("port_for", "'port_for'"), ("asyncio,redis", "'redis'"), (",", "")])
def test_a_bad_name_names_value_source_and_choices(raw: str, unknown: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_patches(raw, "--portlease-patch", "PORTLEASE_PATCH")
    message = str(caught.value)
    assert message.startswith(f"invalid --portlease-patch {raw!r} from PORTLEASE_PATCH")
    assert unknown in message and message.endswith(ACCEPTED)


def test_the_alias_adds_port_for_and_both_sources_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTLEASE_PATCH", "asyncio")
    alias = Resolved(True, "--portlease-patch-port-for")
    assert resolve_patches(None, alias=alias) == Resolved(
        ("port-for", "asyncio"), "PORTLEASE_PATCH and --portlease-patch-port-for"
    )
    monkeypatch.delenv("PORTLEASE_PATCH")
    assert resolve_patches(None, alias=alias) == Resolved(("port-for",), "--portlease-patch-port-for")
    assert resolve_patches(None, alias=Resolved(False, "default")) == Resolved((), "default")


def test_option_over_env_over_ini(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTLEASE_PATCH", "asyncio")
    assert resolve_patches("portpicker", ini="port-for").value == ("portpicker",)
    assert resolve_patches(None, ini="port-for") == Resolved(("asyncio",), "PORTLEASE_PATCH")
    monkeypatch.setenv("PORTLEASE_PATCH", "")  # empty counts as unset
    assert resolve_patches(None, ini="port-for") == Resolved(("port-for",), "ini portlease_patch")


@pytest.mark.parametrize(
    ("where", "source"),
    [("option", "--portlease-patch"), ("env", "PORTLEASE_PATCH"), ("ini", "ini portlease_patch")],
)
def test_a_bad_name_is_a_usage_error(
    where: str, source: str, pytester: pytest.Pytester, nested_fast: tuple[str, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = list(nested_fast)
    if where == "option":
        argv.append("--portlease-patch=port-for,bogus")
    elif where == "env":
        monkeypatch.setenv("PORTLEASE_PATCH", "port-for,bogus")
    else:
        pytester.makeini("[pytest]\nportlease_patch = port-for,bogus\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*argv)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"ERROR: invalid --portlease-patch 'port-for,bogus' from {source} ('bogus' unknown): {ACCEPTED}"]
    )


def test_the_header_says_what_was_patched_and_what_is_not_installed(
    pytester: pytest.Pytester, portlease_args: list[str]
) -> None:
    # find_spec() is None for a name that sys.modules maps to None: portpicker "is not installed".
    pytester.makepyfile(hide_portpicker="import sys\nsys.modules['portpicker'] = None\n")
    pytester.syspathinsert()
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("-p", "hide_portpicker", "--portlease-patch=all", *portlease_args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "portlease: patched port-for (* module(s) so far, and every module imported later); "
            "asyncio (unused_tcp_port, unused_udp_port, unused_tcp_port_factory, unused_udp_port_factory) "
            "(asked for port-for,portpicker,asyncio by --portlease-patch)",
            "portlease: asked to patch portpicker (--portlease-patch), but it is not installed: "
            "nothing patched for it",
        ]
    )
    assert "portserver_address" not in result.stdout.str()


def test_the_header_notes_what_portpicker_ignores(
    pytester: pytest.Pytester, portlease_args: list[str]
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("--portlease-patch=portpicker", *portlease_args)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "portlease: patched portpicker (*)*",
            "portlease: note: portpicker's portserver_address argument and PORTSERVER_ADDRESS are "
            "ignored: its ports are leased from portlease",
        ]
    )


def test_no_switch_no_patch_line(pytester: pytest.Pytester, portlease_args: list[str]) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*portlease_args)
    result.assert_outcomes(passed=1)
    assert "patched" not in result.stdout.str()
