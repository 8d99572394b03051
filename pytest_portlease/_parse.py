"""Reading any bytes as a state: keep every range anyone could mean as live, name the rest.

The rules (DESIGN.md, "The lease directory"):
- an entry valid in fedimint-portalloc's own schema (u16 key, u16 size, u64 expires) is kept as
  written, even where it is useless to us (port 0, size 0, past 65534): fedimint treats it as live;
- an entry of ours with a float ``expires`` is read as any JSON number;
- only what fedimint could not parse either is dropped, and then the caller keeps a backup;
- duplicate keys (in the text, or two top-level ``"keys"``) and non-canonical ones ("010000")
  are read as the most conservative union: ``json`` keeps the last of duplicate keys, which would
  let an expired copy hide a live one, so every pair is seen through ``object_pairs_hook``.
Problems are grouped by kind with a count and a few examples: 40,000 bad keys make one line.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ._owner import PLAIN_CHAR, Owner, Process
from ._state import OURS, U64_MAX, Entry, State

EXAMPLES = 3  # examples shown per kind of problem


class _Object(dict[str, Any]):
    """A JSON object that remembers all its pairs when a key repeats (``None`` otherwise)."""

    __slots__ = ("pairs",)
    pairs: list[tuple[str, Any]] | None


def _hook(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.pairs = pairs if len(obj) != len(pairs) else None
    return obj


def _pairs(obj: dict[str, Any]) -> list[tuple[str, Any]]:
    pairs = getattr(obj, "pairs", None)
    return list(obj.items()) if pairs is None else pairs


def loads(data: bytes | str) -> Any:
    """``json.loads`` that keeps every pair of an object whose keys repeat."""
    return json.loads(data, object_pairs_hook=_hook)


def _keys_in(value: object) -> int:
    if isinstance(value, dict):
        return len(value) + sum(_keys_in(v) for v in value.values())
    if isinstance(value, list):
        return sum(_keys_in(v) for v in value)
    return 0


def has_duplicates(value: object) -> bool:
    """Does ``value`` (from ``loads``), or an object inside it, repeat a key?"""
    if isinstance(value, dict):
        return getattr(value, "pairs", None) is not None or any(has_duplicates(v) for v in value.values())
    if isinstance(value, list):
        return any(has_duplicates(v) for v in value)
    return False


@dataclass
class _Kind:
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, example: str) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)

    def listed(self, sep: str = ", ") -> str:
        more = f" and {self.count - len(self.examples)} more" if self.count > len(self.examples) else ""
        return sep.join(self.examples) + more


class Problems:
    """What a read found wrong, grouped by kind. ``lossy``: something was dropped or changed, so
    the original bytes deserve a backup before they are overwritten."""

    def __init__(self) -> None:
        self.drops: dict[str, _Kind] = {}  # why -> the dropped keys
        self.notes: dict[str, _Kind] = {}  # what, with "{n}" for the count -> examples
        self.lossy = False
        self.not_json: str | None = None  # the decoder's complaint when the file is not JSON
        self.recovered = 0

    def __bool__(self) -> bool:
        return bool(self.drops or self.notes or self.not_json)

    def drop(self, key: object, why: str, detail: str = "") -> None:
        name = key if isinstance(key, str) and key.isascii() and key.isdecimal() and len(key) <= 5 else _short(key)
        self.drops.setdefault(why, _Kind()).add(f"{name}{detail}")
        self.lossy = True

    def note(self, what: str, example: str = "", *, lossy: bool = True) -> None:
        self.notes.setdefault(what, _Kind()).add(example)
        self.lossy = self.lossy or lossy

    def lines(self) -> list[str]:
        """One line per kind. A file that is not JSON gets one line for what was recovered and
        what was dropped, so the two never read as contradicting each other."""
        out = []
        dropped = sum(k.count for k in self.drops.values())
        if self.not_json is not None:
            reasons = "; ".join(f"{why}: {kind.listed()}" for why, kind in self.drops.items())
            out.append(
                f"not valid JSON ({self.not_json}); {_n(self.recovered, 'range')} recovered, "
                f"{dropped} dropped" + (f" ({reasons})" if reasons else "")
            )
        else:
            for why, kind in self.drops.items():
                out.append(f"dropped {_n(kind.count, 'range')} ({why}): {kind.listed()}")
        for what, kind in self.notes.items():
            examples = [e for e in kind.examples if e]
            out.append(what.replace("{n}", str(kind.count)) + (f": {kind.listed()}" if examples else ""))
        return out


def _n(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _short(value: object, limit: int = 40) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int of over 4,300 digits, or deep nesting
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


@dataclass
class Loaded:
    state: State
    problems: list[str]
    lossy: bool  # something was dropped or changed: the original bytes deserve a backup
    size: int = 0  # of the bytes parsed


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_json(value: object) -> bool:
    # Python's json reads NaN and Infinity, serde_json (fedimint-portalloc) refuses the whole
    # file: never write them back.
    try:
        json.dumps(value, allow_nan=False)
    except (ValueError, RecursionError):
        return False
    return True


def port_key(key: object) -> int | None:
    """A key as fedimint reads a u16 (digits, leading zeros allowed), or None. The length is
    checked first: ``int()`` of over 4,300 digits raises rather than answers."""
    if not (isinstance(key, str) and key.isascii() and key.isdecimal()):
        return None
    digits = key.lstrip("0") or "0"
    return int(digits) if len(digits) <= 5 and int(digits) <= 65535 else None


def _field(value: dict[str, Any], name: str, problems: Problems, key: str) -> list[Any]:
    """Every value given for ``name`` (more than one when the object repeats it)."""
    found = [v for k, v in _pairs(value) if k == name]
    if len(found) > 1:
        problems.note("{n} range(s) give a field twice; read as the larger value", f"{key}.{name}")
    return found


def _expires(candidates: list[Any]) -> float | int | None:
    good = [v for v in candidates if (_is_int(v) or (isinstance(v, float) and math.isfinite(v)))]
    return max(good) if good else None


def entry_of(key: object, value: object, problems: Problems) -> Entry | None:
    """One range of the state, or None (and a problem) when fedimint could not read it either."""
    base = port_key(key)
    if base is None:
        problems.drop(key, "the key is not a port number from 0 to 65535")
        return None
    assert isinstance(key, str)
    if not isinstance(value, dict):
        problems.drop(key, "not an object", f" ({type(value).__name__})")
        return None
    sizes = [s for s in _field(value, "size", problems, key) if _is_int(s) and 0 <= s <= 65535]
    if not sizes:
        size = _short(value.get("size"))
        problems.drop(key, "size is not a whole number of ports from 0 to 65535", f" (size {size})")
        return None
    expires = _expires(_field(value, "expires", problems, key))
    if expires is None:
        problems.drop(key, "expires is not a number of unix seconds", f" (expires {_short(value.get('expires'))})")
        return None
    if expires > U64_MAX:
        # Beyond what fedimint reads (u64), and beyond what a float holds when huge: as late as
        # can be written keeps the range live, which is what its writer meant.
        problems.note("{n} range(s) expire past the largest u64; read as " + str(U64_MAX), key)
        expires = U64_MAX
    owner = None
    if "owner" in value:
        owner = Owner.from_json(value["owner"])
        if owner is None:
            example = f"range {key}: malformed owner {_short(value['owner'])}"
            problems.note("{n} range(s) kept without their malformed owner", example)
    co_owners = _co_owners(key, value, problems)
    extra = tuple((k, v) for k, v in value.items() if k not in ("size", "expires", "owner", "co_owners"))
    if extra and not _is_json(dict(extra)):
        problems.note("{n} range(s) had fields that are not JSON (NaN, Infinity), removed (ranges kept)", key)
        extra = tuple((k, v) for k, v in extra if _is_json(v))
    return Entry(base, max(sizes), expires, owner, extra, co_owners)


def _co_owners(key: str, value: dict[str, Any], problems: Problems) -> tuple[Owner, ...]:
    if "co_owners" not in value:
        return ()
    raw = value["co_owners"]
    owners = [Owner.from_json(o) for o in raw] if isinstance(raw, list) else [None]
    if None in owners:
        problems.note("{n} range(s) kept without their malformed co-owners", f"range {key}")
    return _unique(o for o in owners if o is not None and o.process is not None)


def _unique(owners: Iterable[Owner]) -> tuple[Owner, ...]:
    return tuple(dict.fromkeys(owners))


def merge(a: Entry, b: Entry) -> Entry:
    """Two readings of one base as one range held while either would be: the larger size, the
    later expiry. Where the owners differ the TTL decides, and every owner is kept as a
    co-owner: one provably alive holds the range, a dead one never frees a copy its TTL holds."""
    later = a if a.expires >= b.expires else b
    owners = (a.owner, b.owner, *a.co_owners, *b.co_owners)
    owner = a.owner if a.owner == b.owner else None
    co_owners = _unique(o for o in owners if o is not None and o != owner and o.process is not None)
    return Entry(a.base, max(a.size, b.size), later.expires, owner, later.extra, co_owners)


def read_head(doc: dict[str, Any], problems: Problems) -> tuple[int, dict[str, int], dict[str, Any]]:
    """``next``, our cursors and the other top-level fields."""
    next_port = doc.get("next", 0)  # fedimint's serde default
    if not _is_int(next_port) or not 0 <= next_port <= 65535:
        problems.note(f"'next' {_short(next_port)} is not a port number; reset")
        next_port = 0
    cursors: dict[str, int] = {}
    ours = doc.get(OURS, {})
    raw = ours.get("cursors", {}) if isinstance(ours, dict) else None
    if not isinstance(raw, dict):
        problems.note(f"'{OURS}' is not an object of cursors; the cursors start afresh")
        raw = {}
    for name, value in raw.items():
        if _is_int(value) and 0 <= value <= 65535 and _RANGE_NAME.fullmatch(name):
            cursors[name] = value
        else:
            problems.note("{n} cursor(s) are not a port of a range; dropped", _short(name))
    extra = {k: v for k, v in doc.items() if k not in ("next", "keys", OURS)}
    if extra and not _is_json(extra):
        problems.note("top-level fields that are not JSON (NaN, Infinity) removed")
        extra = {k: v for k, v in extra.items() if _is_json(v)}
    return next_port, cursors, extra


_RANGE_NAME = re.compile(r"\d{1,5}-\d{1,5}")
_SALVAGE_KEY = re.compile(r'"(\d{1,5})"\s*:\s*(?=\{)')
_SALVAGE_NEXT = re.compile(r'"next"\s*:\s*(\d{1,5})\b')
_KEY_END = re.compile(rb'"[ \t\n\r]*:')


def _salvage(text: str) -> _Object:
    """Recover what ranges we can from a file that is not JSON (truncated, torn, hand-mangled)."""
    decoder = json.JSONDecoder(object_pairs_hook=_hook)
    pairs: list[tuple[str, Any]] = []
    for match in _SALVAGE_KEY.finditer(text):
        with contextlib.suppress(ValueError, RecursionError):
            pairs.append((match.group(1), decoder.raw_decode(text, match.end())[0]))
    doc = _hook([("keys", _hook(pairs))])
    if found := _SALVAGE_NEXT.search(text):
        doc["next"] = int(found.group(1))
    return doc


def parse_tolerant(data: bytes) -> Loaded:
    """Parse any bytes; keep every range anyone could mean as live and describe the rest."""
    problems = Problems()
    state = _parse(data, problems)
    return Loaded(state, problems.lines(), problems.lossy, len(data))


def _parse(data: bytes, problems: Problems) -> State:
    if not data.strip():
        return State(0, {}, {})
    try:
        doc: Any = loads(data)
    # UnicodeDecodeError is a ValueError too, and so is a number of over 4,300 digits;
    # RecursionError: thousands of nested brackets.
    except (ValueError, RecursionError) as e:
        doc = _salvage(data.decode("utf-8", "replace"))
        problems.not_json = str(e)
        problems.lossy = True
    if not isinstance(doc, dict):
        problems.note(f"the top level is {type(doc).__name__}, not an object")
        doc = {}
    tops = [v for k, v in _pairs(doc) if k == "keys"] or [{}]
    if len(tops) > 1:
        problems.note(f"the file has {len(tops)} 'keys' objects; read as their union")
    pairs: list[tuple[str, Any]] = []
    for keys in tops:
        if isinstance(keys, dict):
            pairs.extend(_pairs(keys))
        else:
            problems.note(f"'keys' is {type(keys).__name__}, not an object; no range could be read from it")
    entries: dict[int, Entry] = {}
    for key, value in pairs:
        if (entry := entry_of(key, value, problems)) is None:
            continue
        if key != str(entry.base):
            problems.note("{n} key(s) are not written as fedimint writes a port; read as that port", repr(key))
        if (other := entries.get(entry.base)) is not None:
            problems.note("{n} port(s) have more than one range; read as their union", str(entry.base))
            entry = merge(other, entry)
        entries[entry.base] = entry
    problems.recovered = len(entries)
    next_port, cursors, extra = read_head(doc, problems)
    # Overlapping ranges are valid for fedimint: both are kept as written, silently, and no port
    # of either is granted (State.conflict).
    return State(next_port, entries, extra, cursors)


def split_head(data: bytes) -> tuple[State, int] | None:
    """The head of our layout (``next``, cursors, other top-level fields) as an empty state,
    and where the range lines start: ``{"next": N, "keys": {`` / one ``"base": {...}`` per
    line, comma-terminated but the last / ``}}``. None for any other layout, or a head with
    problems (the full parser describes them)."""
    head_end = data.find(b"\n")
    if head_end < 0 or not data.endswith(b"\n}}\n") or not data[:head_end].endswith(b'"keys": {'):
        return None
    try:
        head = loads(data[:head_end] + b"}}")
    except (ValueError, RecursionError):
        return None
    if not isinstance(head, dict) or head.get("keys") != {} or has_duplicates(head):
        return None
    problems = Problems()
    next_port, cursors, extra = read_head(head, problems)
    return None if problems else (State(next_port, {}, extra, cursors), head_end + 1)


# A JSON string that ``json.dumps`` writes as it is.
_PLAIN = b'"(' + PLAIN_CHAR.encode() + b'*)"'
#: The line ``Entry.line`` writes for a range with at most an owner (pid, start, host, ns, label,
#: run), every string plain and every number canonical: read without a JSON parser, and its
#: bytes are the entry's line as it would write it.
_CANONICAL = re.compile(
    rb'"(0|[1-9][0-9]{0,4})": \{"size": (0|[1-9][0-9]{0,4}), "expires": (0|[1-9][0-9]{0,19})'
    rb'(?:, "owner": \{"pid": ([1-9][0-9]{0,18}), "start": (0|[1-9][0-9]{0,18}), '
    rb'"host": ' + _PLAIN + rb', "ns": ' + _PLAIN + rb', "label": ' + _PLAIN
    + b'(?:, "run": "(' + PLAIN_CHAR.encode() + rb'+)")?\})?\}'
)


#: The owning processes of lines read, by their text: a state of thousands of ranges has a few
#: dozen owners (the workers of a few runs), each made once rather than once a range.
_processes: dict[bytes, Process] = {}


def _canonical(raw: bytes) -> Entry | None:
    """A line as ``Entry.line`` writes it, read with its line already known; None otherwise."""
    if (m := _CANONICAL.fullmatch(raw)) is None:
        return None
    key, size_text, expires_text, pid, start, host, ns, label, run = m.groups()
    base, size, expires = int(key), int(size_text), int(expires_text)
    if base > 65535 or size > 65535 or expires > U64_MAX:
        return None  # the full reading notes what is out of bounds
    owner = None
    if pid is not None:
        who = raw[m.start(4) : m.end(7)]
        if (process := _processes.get(who)) is None:
            if len(_processes) >= 4096:
                _processes.clear()
            process = _processes[who] = Process(int(pid), int(start), host.decode(), ns.decode())
        owner = Owner.of(process, label.decode(), run.decode() if run else "")
    return Entry.with_line(raw, base, size, expires, owner)


def parse_line(raw: bytes) -> Entry | None:
    """One line of our layout, ``"base": {...}``, as a sound range; None for anything else
    (then the full parser reads the file and describes what is wrong)."""
    return _canonical(raw) or _json_line(raw)


def _json_line(raw: bytes) -> Entry | None:
    text = b"{" + raw + b"}"
    try:
        member = json.loads(text)  # C speed; the hook costs a Python call per object
    except (ValueError, RecursionError):
        return None
    if not isinstance(member, dict) or len(member) != 1:
        return None
    # Every key ends with a quote, JSON whitespace and a colon, so when the text holds exactly as
    # many of those as the parsed objects hold keys, no key can have repeated. Otherwise (a
    # repeat, or a string holding '":') look at every pair.
    if len(_KEY_END.findall(text)) != _keys_in(member):
        member = loads(text)
        if has_duplicates(member):
            return None
    problems = Problems()
    ((key, value),) = member.items()
    entry = entry_of(key, value, problems)
    return None if problems or entry is None or key != str(entry.base) else entry
