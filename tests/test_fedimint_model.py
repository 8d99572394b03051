"""The model of fedimint-portalloc itself: its serde reading and its port_alloc, so that the
interop tests (test_fedimint_interop.py) stand on a double that behaves like the crate.

The expected outcomes are serde_json's and the crate's documented behaviour, written out by
hand: the model is never checked against itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import worker_range
from fedimint_model import EXIT_PANIC, Allocator, Panic, SerdeError, parse, parses, pretty
from fedimint_model._alloc import ALLOCATION_TIME_SECS, first_unbindable

REPO = Path(__file__).resolve().parent.parent

OK = [
    b'{"next": 10000, "keys": {}}',
    b'{"keys": {}}',  # next: serde's default
    b'  {"keys": {}, "next": 5}\n\n',  # any field order, whitespace around
    b'{"next": 1, "keys": {"0": {"size": 0, "expires": 0}}}',  # valid for fedimint, useless to us
    b'{"next": 65535, "keys": {"65535": {"size": 65535, "expires": 18446744073709551615}}}',
    b'{"next": 1, "keys": {"10": {"size": 1, "expires": 2, "owner": {"pid": 1}}}, "x": [1e400]}',
    b'{"next": 1, "keys": {"10": {"size": 1, "expires": 2}, "10": {"size": 3, "expires": 4}}}',
    b'{"next": 1, "keys": {"10": [1, 2]}}',  # a struct from a sequence (serde derive)
    b'[1, {"10": {"size": 1, "expires": 2}}]',
    b'{"ne\\u0078t": 1, "keys": {}}',  # a field name with an escape is still `next`
    b'{"next": 1, "keys": {}, "junk": "\\ud800 \xff"}',  # ignored strings are only scanned
    b'{"next": 1, "keys": {}, "deep": [[[[{"a": [true, false, null, -0.5e-3]}]]]]}',
]

BAD = [
    b"",  # EOF while parsing a value: an empty state file breaks every port_alloc
    b"   ",
    b"null",
    b'{"next": 1}',  # missing field keys
    b'{"next": 1, "next": 2, "keys": {}}',  # duplicate field
    b'{"next": 65536, "keys": {}}',
    b'{"next": -1, "keys": {}}',
    b'{"next": -0, "keys": {}}',  # -0 is a float to serde_json
    b'{"next": 1.0, "keys": {}}',
    b'{"next": 1e3, "keys": {}}',
    b'{"next": 01, "keys": {}}',
    b'{"next": "1", "keys": {}}',
    b'{"next": null, "keys": {}}',
    b'{"next": 1, "keys": []}',  # a map is never read from a sequence
    b'{"next": 1, "keys": {"010": {"size": 1, "expires": 2}}}',  # a key is a JSON number
    b'{"next": 1, "keys": {"+10": {"size": 1, "expires": 2}}}',
    b'{"next": 1, "keys": {" 10": {"size": 1, "expires": 2}}}',
    b'{"next": 1, "keys": {"\\u0031": {"size": 1, "expires": 2}}}',
    b'{"next": 1, "keys": {"65536": {"size": 1, "expires": 2}}}',
    b'{"next": 1, "keys": {"-1": {"size": 1, "expires": 2}}}',
    b'{"next": 1, "keys": {"1.5": {"size": 1, "expires": 2}}}',
    b'{"next": 1, "keys": {"10": {"size": 1}}}',
    b'{"next": 1, "keys": {"10": {"size": 1, "expires": 2.5}}}',
    b'{"next": 1, "keys": {"10": {"size": 1, "expires": 18446744073709551616}}}',
    b'{"next": 1, "keys": {"10": {"size": 65536, "expires": 2}}}',
    b'{"next": 1, "keys": {"10": {"size": true, "expires": 2}}}',
    b'{"next": 1, "keys": {"10": [1, 2, 3]}}',
    b'{"next": 1, "keys": {"10": {"size": 1, "expires": 2},}}',  # trailing comma
    b'{"next": 1, "keys": {}, "x": NaN}',
    b'{"next": 1, "keys": {}, "x": Infinity}',
    b'{"next": 1, "keys": {}, "x": "a\x01b"}',  # a raw control character
    b'{"next": 1, "keys": {}, "x": "\\q"}',
    b'{"next": 1, "keys": {}, "\\udc00": 1}',  # a lone surrogate in a field name
    b'{"next": 1, "keys": {}} {}',  # trailing characters
    b'\xef\xbb\xbf{"next": 1, "keys": {}}',  # serde_json does not skip a BOM
    b'{"next": 1, "keys": {"10": {"size": 1, "expires": 2}}',  # truncated
]


@pytest.mark.parametrize("data", OK)
def test_reads_what_serde_reads(data: bytes, tmp_path: Path) -> None:
    parse(data)
    (tmp_path / "s.json").write_bytes(data)
    assert parses(tmp_path / "s.json")


@pytest.mark.parametrize("data", BAD)
def test_refuses_what_serde_refuses(data: bytes, tmp_path: Path) -> None:
    with pytest.raises(SerdeError):
        parse(data)
    (tmp_path / "s.json").write_bytes(data)
    assert not parses(tmp_path / "s.json")


def test_schema_values() -> None:
    root = parse(b'{"keys": {"20": {"size": 2, "expires": 9}, "10": {"size": 1, "expires": 8, "o": 1}}}')
    assert root.next == 10000
    assert {k: (v.size, v.expires) for k, v in root.keys.items()} == {20: (2, 9), 10: (1, 8)}
    # A repeated key: the last one wins (BTreeMap::insert).
    root = parse(b'{"next": 1, "keys": {"10": {"size": 1, "expires": 2}, "10": {"size": 3, "expires": 4}}}')
    assert (root.keys[10].size, root.keys[10].expires) == (3, 4)


def test_missing_file_parses(tmp_path: Path) -> None:
    assert parses(tmp_path / "absent.json")


def test_pretty_is_serde_json_layout() -> None:
    root = parse(b'{"next": 10003, "keys": {"10002": {"size": 1, "expires": 7}, "10000": {"size": 2, "expires": 5}}}')
    assert pretty(root) == (
        b'{\n  "next": 10003,\n  "keys": {\n    "10000": {\n      "size": 2,\n      "expires": 5\n'
        b'    },\n    "10002": {\n      "size": 1,\n      "expires": 7\n    }\n  }\n}'
    )
    assert pretty(parse(b'{"next": 0, "keys": {}}')) == b'{\n  "next": 0,\n  "keys": {}\n}'


def _write(directory: Path, doc: object) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fm-portalloc.json").write_text(json.dumps(doc))


def _free_block(size: int) -> int:
    # A start in this xdist worker's slice (no other test of the suite binds there) whose ports
    # the crate's own check (TCP on 127.0.0.1) finds free now.
    rng = worker_range()
    for base in range(rng.low, rng.high - size + 2, size):
        if first_unbindable(base, base + size) is None:
            return base
    raise AssertionError(f"no free block of {size} in {rng}")


def test_fresh_directory_starts_at_port_zero(tmp_path: Path) -> None:
    # RootData::default() has next = 0 (derive(Default)), so the crate's first grant is port 0:
    # bind(0) always succeeds, it means "any port".
    d = tmp_path / "fm"
    assert Allocator(d).alloc(1) == 0
    doc = json.loads((d / "fm-portalloc.json").read_bytes())
    assert doc["next"] == 1 and list(doc["keys"]) == ["0"]
    assert (d / "lock").exists() and not (d / "fm-portalloc.tmp").exists()


def test_next_fit_from_next_and_reset_only_past_high(tmp_path: Path) -> None:
    base = _free_block(4)
    d = tmp_path / "fm"
    _write(d, {"next": base, "keys": {}})
    a = Allocator(d, now=lambda: 1000)
    assert a.alloc(2) == base
    assert a.alloc(2) == base + 2
    doc = json.loads((d / "fm-portalloc.json").read_bytes())
    assert doc == {"next": base + 4, "keys": {
        str(base): {"size": 2, "expires": 1000 + ALLOCATION_TIME_SECS},
        str(base + 2): {"size": 2, "expires": 1000 + ALLOCATION_TIME_SECS},
    }}
    # Below LOW is not a reset: only HIGH < next is.
    _write(d, {"next": 5000, "keys": {}})
    assert a.alloc(1) < 10000
    _write(d, {"next": 32001, "keys": {}})
    assert 10000 <= a.alloc(1) <= 32000


def test_skips_a_reserved_range_to_its_end(tmp_path: Path) -> None:
    base = _free_block(6)
    d = tmp_path / "fm"
    _write(d, {"next": base, "keys": {str(base + 1): {"size": 2, "expires": 2000}}})
    # base..base+2 overlaps base+1..base+3: the scan jumps to the reserved range's end.
    assert Allocator(d, now=lambda: 1000).alloc(2) == base + 3


def test_reclaims_by_ttl_only(tmp_path: Path) -> None:
    base = _free_block(3)
    d = tmp_path / "fm"
    _write(d, {"next": base, "keys": {
        str(base): {"size": 1, "expires": 1000},  # now == expires: reclaimed
        str(base + 1): {"size": 1, "expires": 1001, "owner": {"pid": 999999999}},  # live, dead owner
    }})
    assert Allocator(d, now=lambda: 1000).alloc(1) == base  # the expired range is free again
    keys = json.loads((d / "fm-portalloc.json").read_bytes())["keys"]
    assert set(keys) == {str(base), str(base + 1)} and keys[str(base)]["expires"] == 1120
    assert "owner" not in keys[str(base + 1)]  # the rewrite drops fields it does not know


def test_skips_a_port_bound_on_loopback(tmp_path: Path) -> None:
    import socket

    base = _free_block(4)
    d = tmp_path / "fm"
    _write(d, {"next": base, "keys": {}})
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + 1))
        s.listen(1)
        assert Allocator(d).alloc(2) == base + 2


def test_u16_overflow_panics_in_debug_and_wraps_in_release(tmp_path: Path) -> None:
    d = tmp_path / "fm"
    entry = {"65530": {"size": 6, "expires": 2**40}}  # ends at 65535: 65530 + 6 overflows u16
    _write(d, {"next": 10000, "keys": entry})
    with pytest.raises(Panic, match="overflow"):
        Allocator(d).alloc(1)
    assert json.loads((d / "fm-portalloc.json").read_bytes())["keys"] == entry  # nothing written
    base = Allocator(d, debug=False).alloc(1)
    assert 10000 <= base <= 32000


def test_process_prints_grants_and_exits_101_on_panic(tmp_path: Path) -> None:
    d = tmp_path / "fm"
    base = _free_block(4)
    _write(d, {"next": base, "keys": {}})
    cmd = [sys.executable, "-m", "tests.fedimint_model", "alloc", "--dir", os.fspath(d)]
    done = subprocess.run([*cmd, "--count", "2", "--size", "2"], cwd=REPO, capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout.split()) == (0, [str(base), str(base + 2)]), done.stderr
    _write(d, {"next": 10000, "keys": {"65535": {"size": 1, "expires": 2**40}}})
    done = subprocess.run([*cmd, "--count", "1"], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == EXIT_PANIC and "attempt to add with overflow" in done.stderr
    (d / "fm-portalloc.json").write_bytes(b"")
    done = subprocess.run([*cmd, "--count", "1"], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and done.stderr.startswith("Error: EOF")
