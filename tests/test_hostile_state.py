"""Hostile state: whatever bytes sit in fm-portalloc.json, the engine stays within its contract.

For arbitrary bytes and arbitrary JSON-shaped documents, a leaser:
- raises nothing but its documented errors and warns with nothing but ``PortleaseWarning``;
- never grants a port inside a well-formed live range of the input, and refuses an exact
  request for one;
- keeps the original bytes as a backup whenever it had to drop something, and only then;
- leaves a file that a strict JSON parser (fedimint-portalloc's serde) reads.

The oracle below is written from DESIGN.md, independently of the engine's parser.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from _reliability import check_state_bytes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytest_portlease import (
    PortLeaser,
    PortleaseWarning,
    PortRangeExhausted,
    PortUnavailable,
    _owner,
    _state,
)
from pytest_portlease._config import PortRange
from pytest_portlease._state import STATE_NAME
from pytest_portlease._status import read_status
from pytest_portlease._store import BACKUP_PREFIX

pytestmark = pytest.mark.reliability

NOW = int(time.time())
SPAN = 40  # ports in the range each example leases from
# Entries this close to expiry may expire while the example runs: the oracle ignores them.
MARGIN = 120


# -- the oracle ------------------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _owner_ok(owner: object) -> bool:
    if not isinstance(owner, dict):
        return False
    ints = all(owner.get(k) is None or _is_int(owner.get(k)) for k in ("pid", "start"))
    strs = all(isinstance(owner.get(k, ""), str) for k in ("host", "ns", "label"))
    return ints and strs


U64_MAX = 2**64 - 1


def _port(key: object) -> int | None:
    """A key as fedimint-portalloc reads a u16: ASCII digits, leading zeros allowed."""
    if not (isinstance(key, str) and re.fullmatch(r"[0-9]+", key)):
        return None
    digits = key.lstrip("0") or "0"
    return int(digits) if len(digits) <= 5 and int(digits) <= 65535 else None


def _range_ok(key: object, value: object) -> bool:
    """A range entry as DESIGN.md reads it (expiry aside): fedimint's schema (u16 key and size,
    port 0 and size 0 included), with ``expires`` any finite JSON number."""
    if _port(key) is None or not isinstance(value, dict):
        return False
    size, expires = value.get("size"), value.get("expires")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= 65535:
        return False
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        return False
    return isinstance(expires, int) or math.isfinite(expires)


def _load(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def live_ranges(data: bytes) -> list[tuple[int, int]]:
    """The well-formed ranges of the input that stay live while the example runs."""
    doc = _load(data)
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, dict):
        return []
    out = []
    for key, value in keys.items():
        if not _range_ok(key, value) or value["expires"] <= NOW + MARGIN:
            continue
        owner = value.get("owner")
        if _owner_ok(owner):
            parsed = _owner.Owner.from_json(owner)
            process = None if parsed is None else parsed.process
            if process is not None and _owner.process_state(process) == "dead owner":
                continue  # a dead owner's range is reclaimed: reusing it is right
        base = _port(key)
        assert base is not None
        out.append((base, base + max(value["size"], 1) - 1))  # size 0 holds its base
    return out


def lossy(data: bytes) -> bool:
    """Would reading ``data`` drop or change anything? Then a backup of it is due."""
    if not data.strip():
        return False
    doc = _load(data)
    if not isinstance(doc, dict):
        return True
    if "next" in doc and not (_is_int(doc["next"]) and 0 <= doc["next"] <= 65535):
        return True
    keys = doc.get("keys", {})
    if not isinstance(keys, dict):
        return True
    for key, value in keys.items():
        if not _range_ok(key, value):
            return True
        if key != str(_port(key)) or value["expires"] > U64_MAX:
            return True  # rewritten as fedimint writes a port, or as the largest u64
        if "owner" in value and not _owner_ok(value["owner"]):
            return True
        if not _is_strict({k: v for k, v in value.items() if k not in ("size", "expires", "owner")}):
            return True  # a field we keep but cannot write back as JSON
    return not _is_strict({k: v for k, v in doc.items() if k not in ("next", "keys")})


def _is_strict(value: object) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def _strict_json(data: bytes) -> None:
    """Parse like serde_json: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    json.loads(data, parse_constant=refuse)


# -- strategies ------------------------------------------------------------------------------



def _range() -> PortRange:
    # A slice of this xdist worker's ports (conftest.worker_range), fixed when the module is
    # imported so that the strategies can aim at it.
    from conftest import worker_range

    rng = worker_range()
    return PortRange(rng.low + 1000, rng.low + 1000 + SPAN - 1)


RANGE = _range()

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)

bases = st.integers(RANGE.low - 10, RANGE.high + 10) | st.integers(-5, 70_000)
keys = (
    bases.map(str)
    | bases.map(lambda b: f"00{b}")
    | st.sampled_from(["", " 1", "+1", "1e4", "٣٣", "65536", "0", "-1", "next", "0x10"])
    | st.text(max_size=6)
)
expires = (
    st.integers(NOW + 600, NOW + 10**6)
    | st.floats(NOW + 600, NOW + 10**6)
    | st.integers(0, NOW - 1)
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | json_values
)
sizes = st.integers(1, 8) | st.integers(-3, 70_000) | json_values


def _owners() -> st.SearchStrategy[Any]:
    me = _owner.owner_for(os.getpid(), "me").to_json()
    return st.sampled_from(
        [
            me,  # alive: this very process
            {**me, "start": (me.get("start") or 0) + 1},  # our pid, reused: provably dead
            {**me, "pid": 4_194_305},  # above any pid_max: provably dead
            {**me, "host": "ci-other"},  # another host: only the TTL ends it
            {"pid": 7, "host": "x", "ns": "y", "label": "z"},
            {"label": "no pid"},
        ]
    ) | json_values


entries = st.fixed_dictionaries(
    {}, optional={"size": sizes, "expires": expires, "owner": _owners(), "extra": json_values}
) | json_values
# Mostly sound ranges inside the range, so that the "never grant inside" check has teeth.
sound_entries = st.builds(
    lambda size, exp, owner: {"size": size, "expires": exp, **({"owner": owner} if owner else {})},
    st.integers(1, 8),
    st.integers(NOW + 600, NOW + 10**6),
    st.none() | _owners(),
)
documents = st.fixed_dictionaries(
    {},
    optional={
        "next": st.integers(RANGE.low - 5, RANGE.high + 5) | json_values,
        "keys": st.dictionaries(keys, sound_entries | entries, max_size=10) | json_values,
        "other": json_values,
    },
) | json_values


def _our_layout(doc: Any) -> bytes:
    """The engine's own one-range-per-line layout, so its fast line parser sees hostile input."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict):
        return json.dumps(doc).encode()
    head = {k: v for k, v in doc.items() if k != "keys"}
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc["keys"].items()]
    text = json.dumps(head)[:-1] + (", " if head else "") + '"keys": {'
    return (text + "\n" + ",\n".join(lines) + "\n}}\n").encode() if lines else (text + "\n}}\n").encode()


@st.composite
def encoded(draw: st.DrawFn) -> bytes:
    doc = draw(documents)
    style = draw(st.sampled_from(["compact", "indent", "layout"]))
    indent = 2 if style == "indent" else None
    data = _our_layout(doc) if style == "layout" else json.dumps(doc, indent=indent).encode()
    if draw(st.booleans()):
        return data
    # Torn or mangled: cut it short, or flip a few bytes.
    if draw(st.booleans()):
        return data[: draw(st.integers(0, len(data)))]
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        if buf:
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(buf)


# -- the property ----------------------------------------------------------------------------


def check(data: bytes) -> None:
    _state._warned.clear()  # warnings are deduplicated per process: see each example's own
    forbidden = live_ranges(data)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lease_dir = Path(tmp) / "leases"
        lease_dir.mkdir()
        (lease_dir / STATE_NAME).write_bytes(data)
        read_status(lease_dir)  # the read-only path (portlease status) copes too
        with PortLeaser(lease_dir, port_range=RANGE, lock_timeout=5, ttl=60) as leaser:
            granted = []
            for size in (1, 3, 2, 5, 1):
                try:
                    block = leaser.lease(size)
                except PortRangeExhausted:
                    break
                granted.append(block)
                inside = [r for r in forbidden if r[0] <= block.ports[-1] and block.base <= r[1]]
                assert not inside, f"granted {block} inside live range(s) {inside}"
            # Port 0 and 65535 cannot be asked for (fedimint may still have written them).
            requestable = [(low + high) // 2 for low, high in forbidden if 1 <= (low + high) // 2 <= 65534]
            for port in requestable[:3]:
                with pytest.raises(PortUnavailable):
                    leaser.lease(1, port=port)
            leaser.status()
            if granted:  # else the live ranges of the input fill the range: nothing was written
                written = (lease_dir / STATE_NAME).read_bytes()
                _strict_json(written)
                check_state_bytes(written)
        backups = [p.read_bytes() for p in lease_dir.iterdir() if p.name.startswith(BACKUP_PREFIX)]
    assert all(issubclass(w.category, PortleaseWarning) for w in caught), [
        str(w.message) for w in caught
    ]
    if lossy(data):
        assert data in backups, "something was dropped but the original bytes were not kept"
        assert caught, "something was dropped without a warning"
    else:
        assert backups == []


COMMON = settings(
    deadline=None,
    max_examples=int(os.environ.get("PORTLEASE_HYPOTHESIS_EXAMPLES", "200")),
    suppress_health_check=[HealthCheck.too_slow],
)


@COMMON
@given(encoded())
@example(b"")
@example(b"   \n")
@example(b"\xff\xfe\x00garbage")
@example(b'{"next": 1, "keys": {"%d": {"size": 2, "expires": 1%s}}}' % (RANGE.low, b"0" * 5000))
@example(json.dumps({"keys": {str(RANGE.low): {"size": 3, "expires": NOW + 999, "x": math.nan}}}).encode())
@example(json.dumps({"next": RANGE.low, "keys": {str(RANGE.low): {"size": 3, "expires": 1e300}}}).encode())
@example(b"[" * 100_000)
def test_hostile_documents(data: bytes) -> None:
    check(data)


@COMMON
@given(st.binary(max_size=400))
def test_hostile_bytes(data: bytes) -> None:
    check(data)


def test_backup_keeps_the_exact_original(lease_dir: Path, port_range: PortRange) -> None:
    # The unit version of the property, readable at a glance.
    live = {"size": 2, "expires": NOW + 600}
    data = json.dumps({"next": 0, "keys": {str(port_range.low): live, "junk": 5}}).encode()
    lease_dir.mkdir()
    (lease_dir / STATE_NAME).write_bytes(data)
    _state._warned.clear()
    with (
        PortLeaser(lease_dir, port_range=(port_range.low, port_range.low + 9)) as leaser,
        pytest.warns(PortleaseWarning, match="junk"),
    ):
        block = leaser.lease(1)
    assert block.base >= port_range.low + 2  # past the live range the junk sat next to
    (backup,) = lease_dir.glob(f"{BACKUP_PREFIX}*")
    assert backup.read_bytes() == data

