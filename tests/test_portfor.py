"""get_port: each form of port-for's spec, checked against port-for itself, and the leasing.

Where we differ from port-for on purpose, the test says so in its name and docstring.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import socket
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import port_for
import pytest
from conftest import SteppedClock

from pytest_portlease import (
    InvalidArgument,
    PortLeaser,
    PortleaseWarning,
    PortRangeExhausted,
    PortUnavailable,
    _probe,
    get_port,
)
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME
from pytest_portlease.patches import port_for as _portfor
from pytest_portlease.patches._hook import use_session_leaser
from pytest_portlease.patches.port_for import select_random

# A worker's slice of the test suite may lie in the ephemeral range; that warning is not the
# subject here.
pytestmark = pytest.mark.filterwarnings(
    "ignore:port range .* overlaps this host's ephemeral range:pytest_portlease.PortleaseWarning"
)


@pytest.fixture(autouse=True)
def _module_leaser(
    monkeypatch: pytest.MonkeyPatch, lease_dir: Path, port_range: PortRange
) -> Iterator[None]:
    """get_port without a session: the module's leaser, on this test's directory and range.
    Any session leaser installed by the pytest running these tests is set aside meanwhile."""
    if port_for.get_port is get_port:
        pytest.skip("this session patched port-for (--portlease-patch-port-for): nothing to compare")
    monkeypatch.setenv("PORTLEASE_DIR", str(lease_dir))
    monkeypatch.setenv("PORTLEASE_RANGE", str(port_range))
    restore = use_session_leaser(None)
    yield
    restore()


def free_run(port_range: PortRange, size: int) -> int:
    """The first of ``size`` consecutive ports that probe free, from a random point of the range
    (a port a previous test used may still be in TIME_WAIT)."""
    start = random.randrange(port_range.low, max(port_range.low + 1, port_range.high - 200))
    for base in range(start, start + 150):
        if _probe.first_busy(range(base, base + size)) is None:
            return base
    pytest.fail(f"no {size} free consecutive ports near {start}")


def listen(port: int) -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen(1)
    return s


def leases(lease_dir: Path) -> dict[int, dict[str, object]]:
    keys = json.loads((lease_dir / STATE_NAME).read_text())["keys"]
    return {int(base): entry for base, entry in keys.items()}


# -- the spec, form by form ---------------------------------------------------------------------


def test_minus_one_is_none_as_in_port_for() -> None:
    assert port_for.get_port(-1) is None
    assert get_port(-1) is None


@pytest.mark.parametrize("falsy", [None, 0, "", [], set(), ()])
def test_falsy_is_any_port_but_from_the_configured_range(
    falsy: object, port_range: PortRange, lease_dir: Path
) -> None:
    """We differ on purpose: port-for picks at random among its "good" ports (outside the
    ephemeral range); we lease the next free port of the configured range."""
    theirs = port_for.get_port(falsy)  # type: ignore[arg-type]
    assert isinstance(theirs, int)
    ours = get_port(falsy)  # type: ignore[arg-type]
    assert ours in port_range
    assert ours in leases(lease_dir)


@pytest.mark.parametrize("as_text", [False, True])
def test_an_exact_port_is_that_port_and_leased(
    as_text: bool, port_range: PortRange, lease_dir: Path
) -> None:
    port = free_run(port_range, 1)
    spec = str(port) if as_text else port
    assert port_for.get_port(spec) == port
    assert get_port(spec) == port
    assert leases(lease_dir)[port]["size"] == 1


def test_an_exact_port_that_is_bound_is_refused(port_range: PortRange) -> None:
    """We differ on purpose: port-for hands out an exact port without any check."""
    port = free_run(port_range, 1)
    with listen(port):
        assert port_for.get_port(port) == port
        with pytest.raises(PortUnavailable, match="bound outside portlease") as caught:
            get_port(port)
    assert caught.value.holder is None


def test_an_exact_port_that_is_leased_names_its_holder(
    port_range: PortRange, lease_dir: Path
) -> None:
    """We differ on purpose: port-for would hand the same port to both."""
    port = free_run(port_range, 1)
    with PortLeaser(lease_dir, label="the other suite") as other:
        other.lease(1, port=port)
        assert port_for.get_port(port) == port
        with pytest.raises(PortUnavailable, match="the other suite") as caught:
            get_port(port)
    assert caught.value.holder is not None and "the other suite" in caught.value.holder


def test_a_tuple_is_an_inclusive_range(port_range: PortRange) -> None:
    low = free_run(port_range, 2)
    with listen(low):  # only the upper bound is left
        assert port_for.get_port((low, low + 1)) == low + 1
        assert get_port((low, low + 1)) == low + 1


def test_a_set_is_a_set_of_candidates(port_range: PortRange) -> None:
    middle = (port_range.low + port_range.high) // 2
    a = free_run(PortRange(port_range.low, middle), 1)
    b = free_run(PortRange(middle + 1, port_range.high), 1)
    with listen(a):
        assert port_for.get_port({a, b}) == b
        assert get_port({a, b}) == b


def test_a_list_is_the_union_of_its_items(port_range: PortRange) -> None:
    base = free_run(port_range, 6)
    spec = [(base, base + 1), {base + 3}, base + 5]
    wanted = {base, base + 1, base + 3, base + 5}
    assert port_for.get_port(spec) in wanted  # type: ignore[arg-type,operator]
    first = get_port(spec)  # leased for the session; a fresh range starts at a random point
    assert first in wanted
    # With all but one member busy (bound, or leased by the call above), both must find the one
    # that is left.
    left = base + 3 if first != base + 3 else base + 5
    sockets = [listen(p) for p in sorted(wanted - {left})]
    try:
        assert port_for.get_port(spec) == left  # type: ignore[arg-type]
        assert get_port(spec) == left  # type: ignore[arg-type]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.parametrize("form", ["range", "set", "list", "any"])
def test_exclude_ports_are_never_returned(form: str, port_range: PortRange) -> None:
    low = free_run(port_range, 3)
    excluded = [low, low + 1]
    spec: object = {
        "range": (low, low + 2),
        "set": {low, low + 1, low + 2},
        "list": [(low, low + 1), low + 2],
        "any": None,
    }[form]
    if form == "any":
        # A range of its own, so that the first free port is the excluded one.
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PORTLEASE_RANGE", f"{low}-{low + 2}")
            assert get_port(spec, exclude_ports=excluded) == low + 2  # type: ignore[arg-type]
        return
    assert port_for.get_port(spec, exclude_ports=excluded) == low + 2  # type: ignore[arg-type]
    assert get_port(spec, exclude_ports=excluded) == low + 2  # type: ignore[arg-type]


def test_an_excluded_exact_port_is_refused(port_range: PortRange) -> None:
    """We differ on purpose: port-for returns an exact port even when it is excluded."""
    port = free_run(port_range, 1)
    assert port_for.get_port(port, exclude_ports=[port]) == port
    with pytest.raises(PortUnavailable, match="exclude_ports"):
        get_port(port, exclude_ports=[port])


def test_every_candidate_excluded_is_exhausted(port_range: PortRange) -> None:
    low = free_run(port_range, 2)
    with pytest.raises(port_for.PortForException):
        port_for.get_port((low, low + 1), exclude_ports=[low, low + 1])
    with pytest.raises(PortRangeExhausted, match="exclude_ports"):
        get_port((low, low + 1), exclude_ports=[low, low + 1])


def test_skipped_ports_are_not_left_leased(port_range: PortRange, lease_dir: Path) -> None:
    low = free_run(port_range, 4)
    assert get_port((low, low + 3), exclude_ports=[low, low + 1, low + 2]) == low + 3
    assert sorted(leases(lease_dir)) == [low + 3]


def test_many_exclusions_try_each_run_in_turn(port_range: PortRange) -> None:
    low = free_run(port_range, 1)
    excluded = set(range(port_range.low, port_range.high + 1)) - {low}
    assert get_port(None, exclude_ports=excluded) == low


def test_text_ranges_are_accepted(port_range: PortRange) -> None:
    """We differ on purpose: port-for rejects "LOW-HIGH,PORT" text with a bare ValueError."""
    low = free_run(port_range, 3)
    spec = f"{low}-{low + 1}, {low + 2}"
    with pytest.raises(ValueError, match="invalid literal for int"):
        port_for.get_port(spec)
    with listen(low), listen(low + 1):
        assert get_port(spec) == low + 2


def test_numeric_text_in_a_list_is_a_candidate(port_range: PortRange) -> None:
    """We differ on purpose: port-for's PortType allows list[str], but ignores the strings."""
    port = free_run(port_range, 1)
    with pytest.raises(port_for.PortForException):
        port_for.get_port([str(port)])
    assert get_port([str(port)]) == port


@pytest.mark.parametrize(
    ("spec", "theirs"),
    [
        (True, 1),  # int(True)
        (70000, 70000),  # not a port
        ("-1", -1),  # int("-1")
        ("0", 0),  # int("0")
    ],
)
def test_values_port_for_passes_through_unchecked(spec: object, theirs: int) -> None:
    """We differ on purpose: port-for returns int(ports) whatever it is. We refuse what is no
    port, and give text the meaning of the number ("-1" is None, "0" is any port)."""
    assert port_for.get_port(spec) == theirs  # type: ignore[arg-type]
    if spec == "-1":
        assert get_port(spec) is None
    elif spec == "0":
        assert isinstance(get_port(spec), int)
    else:
        with pytest.raises(InvalidArgument, match="from argument"):
            get_port(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["abc", "8000-", (1, 2, 3), (9, 1), 3.5, [[8000]], {"a"}])
def test_malformed_specs_are_a_value_error(spec: object) -> None:
    with pytest.raises(InvalidArgument, match="invalid ports") as caught:
        get_port(spec)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)  # as port-for's int(ports) raises


@pytest.mark.parametrize("exclude", ["8000", 8000, [True], ["x"]])
def test_malformed_exclude_ports_are_refused(exclude: object) -> None:
    with pytest.raises(InvalidArgument, match="exclude_ports"):
        get_port(None, exclude_ports=exclude)  # type: ignore[arg-type]


def test_select_random_semantics(port_range: PortRange) -> None:
    a = free_run(port_range, 2)
    assert port_for.select_random({a, a + 1}, exclude_ports=[a]) == a + 1
    assert select_random({a, a + 1}, exclude_ports=[a]) == a + 1
    assert select_random() in port_range


# -- leasing ------------------------------------------------------------------------------------


def test_repeated_calls_never_repeat_a_port(port_range: PortRange) -> None:
    """We differ on purpose: port-for checks only that a port is unbound *now*, so it may return
    the same port again until a server binds it. Leased ports are distinct until released."""
    low = free_run(port_range, 4)
    got = {get_port((low, low + 3)) for _ in range(4)}
    assert got == {low, low + 1, low + 2, low + 3}
    with pytest.raises(PortRangeExhausted):
        get_port((low, low + 3))


def test_processes_racing_for_a_small_range_never_share_a_port(
    port_range: PortRange, lease_dir: Path
) -> None:
    low = free_run(port_range, 6)
    code = textwrap.dedent(f"""
        import sys
        from pytest_portlease import get_port
        print("ready", flush=True)
        sys.stdin.readline()  # start together: every child is imported and waiting
        print(get_port(({low}, {low + 5})))
    """)
    with contextlib.ExitStack() as stack:
        children = [
            stack.enter_context(subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            ))
            for _ in range(6)
        ]
        stack.callback(lambda: [child.kill() for child in children if child.poll() is None])
        pipes = [(child.stdin, child.stdout) for child in children]
        for _, out in pipes:
            assert out is not None and out.readline() == "ready\n"
        for stdin, _ in pipes:
            assert stdin is not None
            stdin.write("go\n")
            stdin.close()
        outputs = [out.read() for _, out in pipes if out is not None]
        for child in children:
            child.wait(timeout=60)
    assert [child.returncode for child in children] == [0] * 6
    assert sorted(int(out) for out in outputs) == list(range(low, low + 6))
    assert sorted(leases(lease_dir)) == list(range(low, low + 6))


def test_without_a_session_a_lease_lasts_the_configured_ttl(
    monkeypatch: pytest.MonkeyPatch, lease_dir: Path, clock: SteppedClock
) -> None:
    monkeypatch.setenv("PORTLEASE_TTL", "300")
    port = get_port(None)
    assert port is not None
    entry = leases(lease_dir)[port]
    assert entry["expires"] == math.ceil(clock.now + 300)
    # No owning process: a script may print the port and exit before its server binds it.
    assert "pid" not in entry["owner"]  # type: ignore[operator]


def test_a_session_leaser_holds_the_lease(
    lease_dir: Path, port_range: PortRange, tmp_path: Path
) -> None:
    other_dir = tmp_path / "session-leases"
    with PortLeaser(other_dir, port_range=port_range, label="pytest gw9") as session:
        restore = use_session_leaser(lambda: session)
        try:
            port = get_port(None)
        finally:
            restore()
        assert [block.base for block in session.held] == [port]
        assert session.held[0].label == "pytest gw9 get_port"
        assert port in leases(other_dir)
        assert not (lease_dir / STATE_NAME).exists()  # the module's leaser was not used
    assert port not in leases(other_dir)  # released with the session


def test_the_session_factory_is_called_only_when_a_port_is_asked_for() -> None:
    calls: list[int] = []

    def factory() -> PortLeaser:
        calls.append(1)
        raise AssertionError("not expected")

    restore = use_session_leaser(factory)
    try:
        assert get_port(-1) is None
        assert calls == []
    finally:
        restore()


def test_restoring_the_hook_brings_back_the_previous_session(
    port_range: PortRange, tmp_path: Path
) -> None:
    with (
        PortLeaser(tmp_path / "outer", port_range=port_range) as outer,
        PortLeaser(tmp_path / "inner", port_range=port_range) as inner,
    ):
        restore_outer = use_session_leaser(lambda: outer)
        restore_inner = use_session_leaser(lambda: inner)  # pytester: pytest inside pytest
        get_port(None)
        restore_inner()
        get_port(None)
        restore_outer()
        assert (len(outer.held), len(inner.held)) == (1, 1)


def test_warnings_go_to_the_session_not_to_the_caller(
    lease_dir: Path, port_range: PortRange
) -> None:
    lease_dir.mkdir(mode=0o700)
    (lease_dir / STATE_NAME).write_text("{ not json")
    kept: list[warnings.WarningMessage] = []
    with PortLeaser(lease_dir, port_range=port_range) as session:
        restore = use_session_leaser(lambda: session, keep_warnings=kept.extend)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a suite under -W error must not fail
                assert get_port(None) in port_range
        finally:
            restore()
    assert [w.category for w in kept] == [PortleaseWarning]


def test_patching_is_undone_exactly() -> None:
    original = port_for.get_port
    undo = _portfor.install().undo  # type: ignore[union-attr]
    try:
        assert port_for.get_port is get_port
        assert port_for.api.get_port is get_port
        assert port_for.select_random is select_random
    finally:
        undo()
    assert port_for.get_port is original
    undo()  # idempotent
    assert port_for.get_port is original
