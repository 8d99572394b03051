"""The resolver's boundaries and messages, found by mutation testing of ``_config``: the edges of
each accepted value, whole error messages, and where each value says it came from."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _users import world_dir

from pytest_portlease import InvalidArgument
from pytest_portlease._config import (
    DEFAULT_LOCK_TIMEOUT,
    LAST_PORT,
    MAX_LOCK_TIMEOUT,
    MAX_TTL,
    PortRange,
    Resolved,
    check_directory,
    check_port,
    parse_directory,
    parse_flag,
    parse_lock_timeout,
    parse_patches,
    parse_port_range,
    parse_ttl,
    resolve_directory,
    resolve_layers,
    resolve_lock_timeout,
    resolve_patches,
    resolve_range,
    resolve_ttl,
)

RANGE_EXPECTED = (
    f"expected LOW-HIGH with 1 <= LOW <= HIGH <= 65535 and LOW <= {LAST_PORT}, such as 20000-20999 "
    "(port 65535 is never leased: fedimint-portalloc computes base + size in 16 bits)"
)


# -- ports ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", [1, 2, 65534, 65535])
def test_check_port_accepts_one_to_65535(port: int) -> None:
    assert check_port(port, "port", "argument") == port


@pytest.mark.parametrize("port", [0, 65536, -1, True, False, "80", 80.0, None])
def test_check_port_refuses_the_rest_and_names_it(port: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_port(port, "--port", "PORT_VAR")
    assert str(info.value) == f"invalid --port {port!r} from PORT_VAR: expected a port number from 1 to 65535"


# -- ranges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5-5", PortRange(5, 5)),
        ("1-10", PortRange(1, 10)),
        (" 1 - 10 ", PortRange(1, 10)),
        ("65534-65535", PortRange(65534, 65535)),
        ("1-65535", PortRange(1, 65535)),
        ((5, 5), PortRange(5, 5)),
        ([1, 10], PortRange(1, 10)),
        ((LAST_PORT, LAST_PORT), PortRange(LAST_PORT, LAST_PORT)),
    ],
)
def test_range_boundaries_that_parse(raw: object, expected: PortRange) -> None:
    parsed = parse_port_range(raw, "range", "argument")
    assert parsed == expected
    assert type(parsed) is PortRange


@pytest.mark.parametrize(
    "raw",
    [
        "65535-65535",
        (65535, 65535),
        "0-0",
        (0, 5),
        "6-5",
        (6, 5),
        "1-65536",
        (1, 65536),
        [1, 2, 3],
        "5",
        "+1-5",
        (1, True),
        (1, 2.0),
        12,
        None,
    ],
)
def test_range_boundaries_that_do_not_parse_and_the_whole_message(raw: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_port_range(raw, "--portlease-range", "ini portlease_range")
    assert str(info.value) == f"invalid --portlease-range {raw!r} from ini portlease_range: {RANGE_EXPECTED}"


def test_port_range_size_and_membership_at_the_edges() -> None:
    assert PortRange(5, 5).size == 1
    assert PortRange(1, 10).size == 10
    assert 1 in PortRange(1, 10) and 10 in PortRange(1, 10)
    assert 0 not in PortRange(1, 10) and 11 not in PortRange(1, 10)
    assert 5.0 not in PortRange(1, 10)
    assert str(PortRange(5, 5)) == "5-5"


# -- seconds --------------------------------------------------------------------------------------

TTL_EXPECTED = f"expected a number of seconds greater than 0 and at most {MAX_TTL:.0f}, such as 120"
LOCK_EXPECTED = (
    f"expected a number of seconds from 0 to {MAX_LOCK_TIMEOUT:.0f}, such as 30 (0 fails at once when the lock is held)"
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(MAX_TTL, MAX_TTL), (str(MAX_TTL), MAX_TTL), (1, 1.0), (" 2.5 ", 2.5), (1e-9, 1e-9), ("1e-9", 1e-9)],
)
def test_ttl_boundaries_that_parse(raw: object, expected: float) -> None:
    value = parse_ttl(raw, "ttl", "argument")
    assert value == expected and type(value) is float


@pytest.mark.parametrize(
    "raw", [0, 0.0, "0", -1e-9, MAX_TTL + 1, str(MAX_TTL + 1), "inf", "-inf", "nan", "", "x", True, None, [1]]
)
def test_ttl_boundaries_that_do_not_parse_and_the_whole_message(raw: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_ttl(raw, "--ttl", "PORTLEASE_TTL")
    assert str(info.value) == f"invalid --ttl {raw!r} from PORTLEASE_TTL: {TTL_EXPECTED}"
    if raw in ("", "x"):  # float() refused it: its ValueError is no part of the message
        assert info.value.__suppress_context__


@pytest.mark.parametrize(
    ("raw", "expected"), [(0, 0.0), ("0", 0.0), (MAX_LOCK_TIMEOUT, MAX_LOCK_TIMEOUT), (" 30 ", 30.0), (0.5, 0.5)]
)
def test_lock_timeout_boundaries_that_parse(raw: object, expected: float) -> None:
    value = parse_lock_timeout(raw, "lock_timeout", "argument")
    assert value == expected and type(value) is float


@pytest.mark.parametrize("raw", [-1, "-0.5", MAX_LOCK_TIMEOUT + 1, "nan", "inf", False, "soon"])
def test_lock_timeout_boundaries_that_do_not_parse_and_the_whole_message(raw: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_lock_timeout(raw, "--lock-timeout", "PORTLEASE_LOCK_TIMEOUT")
    assert str(info.value) == f"invalid --lock-timeout {raw!r} from PORTLEASE_LOCK_TIMEOUT: {LOCK_EXPECTED}"


def test_lock_timeout_precedence_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTLEASE_LOCK_TIMEOUT", raising=False)
    assert resolve_lock_timeout() == Resolved(DEFAULT_LOCK_TIMEOUT, "default")
    assert resolve_lock_timeout(ini="7") == Resolved(7.0, "ini portlease_lock_timeout")
    monkeypatch.setenv("PORTLEASE_LOCK_TIMEOUT", "3")
    assert resolve_lock_timeout(ini="7") == Resolved(3.0, "PORTLEASE_LOCK_TIMEOUT")
    assert resolve_lock_timeout(0, option_source="--lock-timeout") == Resolved(0.0, "--lock-timeout")
    monkeypatch.setenv("PORTLEASE_LOCK_TIMEOUT", "-3")
    with pytest.raises(InvalidArgument, match=r"^invalid lock_timeout '-3' from PORTLEASE_LOCK_TIMEOUT: "):
        resolve_lock_timeout()


def test_ttl_sources_and_default_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_ttl() == Resolved(120.0, "default")
    assert resolve_ttl(ini="9") == Resolved(9.0, "ini portlease_ttl")
    assert resolve_ttl(5, option_source="--ttl") == Resolved(5.0, "--ttl")
    monkeypatch.setenv("PORTLEASE_TTL", "")
    assert resolve_ttl(ini="9") == Resolved(9.0, "ini portlease_ttl")
    with pytest.raises(InvalidArgument, match=r"^invalid my ttl 'x' from my ini: "):
        resolve_ttl(ini="x", name="my ttl", ini_source="my ini")


def test_range_sources_and_default_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_range() == Resolved(PortRange(10000, 32000), "default")
    assert resolve_range(ini="2000-2999") == Resolved(PortRange(2000, 2999), "ini portlease_range")
    assert resolve_range("1-2", option_source="--range") == Resolved(PortRange(1, 2), "--range")
    with pytest.raises(InvalidArgument, match=r"^invalid my range '9-3' from my ini: "):
        resolve_range(ini="9-3", name="my range", ini_source="my ini")


def test_the_first_layer_set_wins_and_empty_ones_are_skipped() -> None:
    def parse(raw: object, name: str, source: str) -> str:
        return f"{raw}/{name}/{source}"

    layers: list[tuple[object, str]] = [(None, "a"), ("", "b"), ("x", "c"), ("y", "d")]
    assert resolve_layers(layers, parse, "n", lambda: "dflt") == Resolved("x/n/c", "c")
    assert resolve_layers([(0, "zero")], parse, "n", lambda: "dflt") == Resolved("0/n/zero", "zero")
    assert resolve_layers([(None, "a"), ("", "b")], parse, "n", lambda: "dflt") == Resolved("dflt", "default")


# -- directories ----------------------------------------------------------------------------------


def test_directories_expand_the_home_and_accept_path_objects(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_directory("~/leases", "dir", "argument") == tmp_path / "leases"
    assert parse_directory(tmp_path / "x", "dir", "argument") == tmp_path / "x"
    for raw in ("", 5, None, b"/tmp"):
        with pytest.raises(InvalidArgument) as info:
            parse_directory(raw, "--dir", "PORTLEASE_DIR")
        assert str(info.value) == f"invalid --dir {raw!r} from PORTLEASE_DIR: expected a directory path"


def test_an_empty_directory_option_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve_directory("", name="--portlease-dir", option_source="--portlease-dir")
    assert str(info.value) == (
        "invalid --portlease-dir '' from --portlease-dir: expected a directory path; "
        "leave --portlease-dir out to use the default"
    )
    monkeypatch.setenv("PORTLEASE_DIR", "")
    assert resolve_directory(ini="/ini") == Resolved(Path("/ini"), "ini portlease_dir")
    assert resolve_directory(ini="/ini", ini_source="my ini").source == "my ini"
    with pytest.raises(InvalidArgument, match=r"^invalid my dir 5 from my ini: "):
        resolve_directory(ini=5, name="my dir", ini_source="my ini")


def directory(path: Path, source: str = "PORTLEASE_DIR") -> Resolved[Path]:
    return Resolved(path, source)


def test_check_directory_accepts_an_existing_one_and_a_missing_one_under_it(tmp_path: Path) -> None:
    check_directory(directory(tmp_path), "--portlease-dir")
    check_directory(directory(tmp_path / "a" / "b" / "c"), "--portlease-dir")
    assert not (tmp_path / "a").exists()  # reads only


def test_check_directory_names_a_file_in_the_way(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(InvalidArgument) as info:
        check_directory(directory(afile), "--portlease-dir")
    assert str(info.value) == (
        f"lease directory {afile} from PORTLEASE_DIR is not a directory: "
        "set PORTLEASE_DIR to a directory you can write in, or pass --portlease-dir=DIR"
    )
    with pytest.raises(InvalidArgument) as info:
        check_directory(directory(afile / "sub" / "leases", "--portlease-dir"), "--portlease-dir")
    assert str(info.value) == (
        f"lease directory {afile / 'sub' / 'leases'} from --portlease-dir cannot be created: {afile} is not a "
        "directory: set --portlease-dir to a directory you can write in"
    )


def test_check_directory_names_a_dangling_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(InvalidArgument) as info:
        check_directory(directory(link), "--portlease-dir")
    assert str(info.value) == (
        f"lease directory {link} from PORTLEASE_DIR is a dangling symlink: "
        "set PORTLEASE_DIR to a directory you can write in, or pass --portlease-dir=DIR"
    )


@contextlib.contextmanager
def real_uid_without_access() -> Iterator[None]:
    """access(2) checks the real uid: as root, make it nobody's for the check, so that a directory
    of mode 0o500 is one this process may not write in (for any other user it already is)."""
    if os.geteuid() != 0:
        yield
        return
    os.setreuid(65534, 0)
    try:
        yield
    finally:
        os.setreuid(0, 0)


def test_check_directory_names_one_it_may_not_write_in() -> None:
    # Under a directory anyone may search (pytest's tmp_path is 0o700): access(2) must fail for
    # the missing write permission itself, not for a parent it cannot search.
    with world_dir() as world:
        locked = world / "locked"
        locked.mkdir(mode=0o500)
        uid = os.geteuid()
        with real_uid_without_access(), pytest.raises(InvalidArgument) as info:
            check_directory(directory(locked), "--portlease-dir")
        assert str(info.value) == (
            f"lease directory {locked} from PORTLEASE_DIR is not writable by uid {uid}: "
            "set PORTLEASE_DIR to a directory you can write in, or pass --portlease-dir=DIR"
        )
        with real_uid_without_access(), pytest.raises(InvalidArgument) as info:
            check_directory(directory(locked / "new"), "--portlease-dir")
        assert str(info.value) == (
            f"lease directory {locked / 'new'} from PORTLEASE_DIR cannot be created: {locked} is not writable "
            f"by uid {uid}: set PORTLEASE_DIR to a directory you can write in, or pass --portlease-dir=DIR"
        )


# -- the patch switch -----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [True, "1", "true", " YES ", "on", 1])
def test_flags_that_read_as_on(raw: object) -> None:
    assert parse_flag(raw, "flag", "argument") is True


@pytest.mark.parametrize("raw", [False, "0", "false", "No", " off", 0])
def test_flags_that_read_as_off(raw: object) -> None:
    assert parse_flag(raw, "flag", "argument") is False


@pytest.mark.parametrize("raw", ["", "2", "y", "enable", None])
def test_a_bad_flag_names_value_and_source(raw: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_flag(raw, "--portlease-patch-port-for", "PORTLEASE_PATCH_PORT_FOR")
    assert str(info.value) == (
        f"invalid --portlease-patch-port-for {raw!r} from PORTLEASE_PATCH_PORT_FOR: "
        "expected 1, true, yes, on, 0, false, no or off"
    )


def test_patch_names_messages_in_full() -> None:
    accepted = "expected a comma-separated choice of port-for, portpicker, asyncio, or all"
    with pytest.raises(InvalidArgument) as info:
        parse_patches(["port-for"], "--portlease-patch", "argument")
    assert str(info.value) == f"invalid --portlease-patch ['port-for'] from argument: {accepted}"
    with pytest.raises(InvalidArgument) as info:
        parse_patches("zeta, alpha,port-for", "--portlease-patch", "argument")
    assert str(info.value) == (
        f"invalid --portlease-patch 'zeta, alpha,port-for' from argument ('alpha', 'zeta' unknown): {accepted}"
    )
    with pytest.raises(InvalidArgument) as info:
        parse_patches(" , ", "--portlease-patch", "argument")
    assert str(info.value) == f"invalid --portlease-patch ' , ' from argument: {accepted}"
    assert parse_patches("asyncio,,portpicker", "p", "s") == ("portpicker", "asyncio")


def test_the_alias_with_a_switch_that_has_port_for_already(monkeypatch: pytest.MonkeyPatch) -> None:
    alias = Resolved(True, "--portlease-patch-port-for")
    assert resolve_patches("port-for,asyncio", alias=alias) == Resolved(("port-for", "asyncio"), "--portlease-patch")
    assert resolve_patches("asyncio", alias=alias) == Resolved(
        ("port-for", "asyncio"), "--portlease-patch and --portlease-patch-port-for"
    )
    assert resolve_patches("asyncio", alias=Resolved(False, "x")) == Resolved(("asyncio",), "--portlease-patch")
    assert resolve_patches(None, ini="asyncio", alias=alias) == Resolved(
        ("port-for", "asyncio"), "ini portlease_patch and --portlease-patch-port-for"
    )
    with pytest.raises(InvalidArgument, match=r"^invalid --my-patch 'x' from --my-patch \('x' unknown\)"):
        resolve_patches("x", option_source="--my-patch")


def test_the_resolvers_name_the_value_and_argument_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PORTLEASE_LOCK_TIMEOUT", raising=False)
    with pytest.raises(InvalidArgument, match=r"^invalid directory 5 from argument: expected a directory path$"):
        resolve_directory(5)
    with pytest.raises(InvalidArgument, match=r"^invalid port_range '9-3' from argument: expected LOW-HIGH"):
        resolve_range("9-3")
    with pytest.raises(InvalidArgument, match=r"^invalid ttl 'x' from argument: expected a number"):
        resolve_ttl("x")
    with pytest.raises(InvalidArgument, match=r"^invalid lock_timeout 'x' from argument: expected a number"):
        resolve_lock_timeout("x")
    assert resolve_lock_timeout(5) == Resolved(5.0, "argument")
    assert resolve_range("1-2").source == "argument" and resolve_directory("/x").source == "argument"
