"""The settings resolver: precedence, sources, and errors that name the value and its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_portlease import InvalidArgument, PortLeaser
from pytest_portlease._config import (
    DEFAULT_TTL,
    PortRange,
    parse_port_range,
    resolve_directory,
    resolve_range,
    resolve_ttl,
)


def test_defaults_come_from_platformdirs_and_the_contract(tmp_path: Path) -> None:
    directory = resolve_directory()
    assert directory.value == tmp_path / "xdg-cache" / "fm-portalloc"  # XDG_CACHE_HOME, see conftest
    assert directory.source == "default"
    assert resolve_range().value == PortRange(10000, 32000)
    assert resolve_ttl().value == DEFAULT_TTL == 120


def test_directory_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FM_PORTALLOC_DATA_DIR", "/fm")
    assert resolve_directory() == resolve_directory(None)
    assert resolve_directory().source == "FM_PORTALLOC_DATA_DIR"
    assert resolve_directory(ini="/ini").value == Path("/ini")
    monkeypatch.setenv("PORTLEASE_DIR", "/env")
    resolved = resolve_directory(ini="/ini")
    assert (resolved.value, resolved.source) == (Path("/env"), "PORTLEASE_DIR")
    resolved = resolve_directory("/opt", option_source="--portlease-dir", ini="/ini")
    assert (resolved.value, resolved.source) == (Path("/opt"), "--portlease-dir")


def test_an_empty_environment_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTLEASE_DIR", "")
    monkeypatch.setenv("PORTLEASE_RANGE", "")
    monkeypatch.setenv("FM_PORTALLOC_DATA_DIR", "/fm")
    assert resolve_directory().source == "FM_PORTALLOC_DATA_DIR"
    assert resolve_range(ini="2000-2999").value == PortRange(2000, 2999)


def test_range_and_ttl_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTLEASE_RANGE", "3000-3999")
    monkeypatch.setenv("PORTLEASE_TTL", "7.5")
    assert resolve_range(ini="2000-2999").source == "PORTLEASE_RANGE"
    assert resolve_range((5000, 5009)).value == PortRange(5000, 5009)
    assert resolve_ttl(ini="9").value == 7.5
    assert resolve_ttl(3).value == 3.0


@pytest.mark.parametrize(
    "raw", ["2000", "9-3", "0-10", "1-65536", "a-b", "1-2-3", " - ", (1,), (5, 2), (1.0, 2), (True, 5)]
)
def test_bad_ranges_name_value_and_source(raw: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve_range(raw, name="--portlease-range", option_source="PORTLEASE_RANGE")
    message = str(info.value)
    assert message.startswith(f"invalid --portlease-range {raw!r} from PORTLEASE_RANGE: expected LOW-HIGH")
    assert isinstance(info.value, ValueError)


def test_an_empty_range_is_unset_for_the_resolver_and_invalid_for_the_parser() -> None:
    # The resolver skips an empty layer (an empty environment variable counts as unset); the
    # parser itself, reached by the CLI's --range "", refuses it and names it.
    assert resolve_range("", option_source="--range") == resolve_range()
    with pytest.raises(InvalidArgument, match=r"^invalid --range '' from --range: expected LOW-HIGH"):
        parse_port_range("", "--range", "--range")


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTLEASE_TTL", "soon")
    with pytest.raises(InvalidArgument, match=r"invalid ttl 'soon' from PORTLEASE_TTL: expected a number"):
        resolve_ttl()
    monkeypatch.setenv("PORTLEASE_RANGE", "9-3")
    with pytest.raises(InvalidArgument, match=r"'9-3' from PORTLEASE_RANGE"):
        PortLeaser()


@pytest.mark.parametrize("raw", ["0", "-1", "nan", "inf", 0, -5, float("nan"), True, "1e12", [1]])
def test_bad_ttls(raw: object) -> None:
    with pytest.raises(InvalidArgument, match=r"invalid ttl .* from argument: expected a number of seconds"):
        resolve_ttl(raw)


def test_port_range_reads_as_text() -> None:
    rng = PortRange(20000, 20009)
    assert str(rng) == "20000-20009"
    assert rng.size == 10
    assert 20009 in rng
    assert 20010 not in rng
    assert "20000" not in rng
