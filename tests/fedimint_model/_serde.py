"""fedimint-portalloc's reading of ``fm-portalloc.json``: serde_json's rules for its ``RootData``.

The crate derives ``Deserialize`` for::

    RootData  { #[serde(default = LOW)] next: u16, keys: BTreeMap<u16, RangeData> }
    RangeData { size: u16, expires: u64 }

and reads the file with ``serde_json::from_reader``. Python's ``json`` accepts more than that
(NaN, Infinity, ``1.0`` for an integer, lone surrogates, escapes in numeric keys, ``-0``) and
sees less (it cannot tell ``"\\u0031"`` from ``"1"``), so this is a small recursive-descent
reader of the bytes that follows serde_json 1.0.1xx where the two differ:

- whitespace is only space, tab, LF and CR; after the value only whitespace may follow
  (``TrailingCharacters``); an empty file is ``EofWhileParsingValue``;
- a struct is read from an object (unknown fields ignored, a duplicate field is an error, a
  missing ``next`` is 10000, a missing ``keys``/``size``/``expires`` is an error) or from an
  array of its fields in order (serde derive's ``visit_seq``);
- ``u16``/``u64`` take a JSON integer in range: no fraction, no exponent, no minus sign (``-0``
  is a float to serde_json), no leading zero; an integer too big for u64 becomes a float;
- the keys of ``keys`` are parsed as a JSON number inside the quotes (serde_json's
  ``MapKey::deserialize_number``): ``"010000"``, ``"+5"``, ``" 5"`` and escapes are errors; a
  key repeated is not (BTreeMap: the last one wins);
- field names are decoded strings (escapes allowed, lone surrogates and invalid UTF-8 are
  errors); strings of ignored values are only scanned (``ignore_str``: escapes must be well
  formed, control characters are errors, UTF-8 and surrogates are not checked);
- ignored numbers are checked for their grammar only (``1e400`` is fine there).

Out of scope (so this reader is stricter than the crate nowhere that matters to a state file,
and looser nowhere): serde_json's recursion limit of 128 nested containers, which applies to
struct values only and a state file never nests that deep.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LOW = 10000  # fedimint-portalloc's `LOW`: serde's default for a missing `next`
U16_MAX = 0xFFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
_WS = b" \t\n\r"
_DIGITS = b"0123456789"
_HEX = b"0123456789abcdefABCDEF"
# Speed only (the model parses the whole state inside the lock on every allocation, as the crate
# does): an entry in its plainest form, ``"base": {"size": S, "expires": E}``, is read by one
# regular expression; anything else (extra fields, escapes, floats) takes the general path.
_W = rb"[ \t\n\r]*"
_FAST_ENTRY = re.compile(
    _W + rb'"(0|[1-9][0-9]{0,4})"' + _W + rb":" + _W + rb"\{" + _W + rb'"size"' + _W + rb":" + _W
    + rb"(0|[1-9][0-9]{0,4})" + _W + rb"," + _W + rb'"expires"' + _W + rb":" + _W
    + rb"(0|[1-9][0-9]{0,19})" + _W + rb"\}" + _W + rb"(?=[,}])"
)
_PLAIN = re.compile(rb'[^"\\\x00-\x1f]*')  # string bytes that need no look


class SerdeError(ValueError):
    """What serde_json would return: the crate's ``port_alloc`` fails with it."""


@dataclass
class Range:
    size: int
    expires: int


@dataclass
class RootData:
    next: int
    keys: dict[int, Range] = field(default_factory=dict)


def parse(data: bytes) -> RootData:
    """The state as fedimint-portalloc reads it, or ``SerdeError``."""
    reader = _Reader(data)
    root = reader.root()
    reader.ws()
    if reader.pos != len(data):
        raise reader.error("trailing characters")
    return root


def parses(path: str | Path) -> bool:
    """Whether fedimint-portalloc can read the state file at ``path``. A missing file reads as
    the crate's ``Default`` (it never opens it), so it parses."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return True
    try:
        parse(data)
    except SerdeError:
        return False
    return True


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def error(self, what: str) -> SerdeError:
        return SerdeError(f"{what} at byte {self.pos}")

    def ws(self) -> None:
        data, pos = self.data, self.pos
        while pos < len(data) and data[pos] in _WS:
            pos += 1
        self.pos = pos

    def peek(self) -> int | None:
        self.ws()
        return self.data[self.pos] if self.pos < len(self.data) else None

    def expect(self, byte: bytes, what: str) -> None:
        if self.peek() != byte[0]:
            raise self.error(what)
        self.pos += 1

    # -- the schema ------------------------------------------------------------------------

    def root(self) -> RootData:
        first = self.peek()
        if first is None:
            raise self.error("EOF while parsing a value")
        if first == ord("["):
            self.pos += 1
            # visit_seq: fields in declaration order; `next` has a default, `keys` has none.
            if self.peek() == ord("]"):
                raise self.error("invalid length 0, expected struct RootData with 2 elements")
            next_port = self.u16()
            self.comma_or_end("struct RootData with 2 elements", required=True)
            keys = self.keys()
            self.end_seq()
            return RootData(next_port, keys)
        if first != ord("{"):
            raise self.error("invalid type, expected struct RootData")
        self.pos += 1
        found_next: int | None = None
        found_keys: dict[int, Range] | None = None
        for name in self.fields():
            if name == "next":
                if found_next is not None:
                    raise self.error("duplicate field `next`")
                found_next = self.u16()
            elif name == "keys":
                if found_keys is not None:
                    raise self.error("duplicate field `keys`")
                found_keys = self.keys()
            else:
                self.ignore_value()
        if found_keys is None:
            raise self.error("missing field `keys`")
        return RootData(LOW if found_next is None else found_next, found_keys)

    def keys(self) -> dict[int, Range]:
        # BTreeMap deserializes through deserialize_map, which takes an object only.
        self.expect(b"{", "invalid type, expected a map")
        keys: dict[int, Range] = {}
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise self.error("EOF while parsing an object")
            if c == ord("}"):
                self.pos += 1
                return keys
            if not first:
                if c != ord(","):
                    raise self.error("expected `,` or `}`")
                self.pos += 1
                c = self.peek()
                if c == ord("}"):
                    raise self.error("trailing comma")
            first = False
            fast = _FAST_ENTRY.match(self.data, self.pos)
            if fast is not None:
                key, size, expires = (int(g) for g in fast.groups())
                if key <= U16_MAX and size <= U16_MAX and expires <= U64_MAX:
                    keys[key] = Range(size, expires)
                    self.pos = fast.end()
                    continue
            if c != ord('"'):
                raise self.error("key must be a string")
            self.pos += 1
            key = self.numeric_key()
            self.expect(b":", "expected `:`")
            keys[key] = self.range()

    def numeric_key(self) -> int:
        # serde_json >= 1.0.108 parses a numeric map key as a JSON number between the quotes.
        if self.pos >= len(self.data) or self.data[self.pos] not in b"-0123456789":
            raise self.error("invalid value: expected key to be a number in quotes")
        value = self.integer(U16_MAX, "u16")
        if self.data[self.pos : self.pos + 1] != b'"':
            raise self.error("invalid value: expected key to be a number in quotes")
        self.pos += 1
        return value

    def range(self) -> Range:
        first = self.peek()
        if first == ord("["):
            self.pos += 1
            if self.peek() == ord("]"):
                raise self.error("invalid length 0, expected struct RangeData with 2 elements")
            seq_size = self.u16()
            self.comma_or_end("struct RangeData with 2 elements", required=True)
            seq_expires = self.u64()
            self.end_seq()
            return Range(seq_size, seq_expires)
        if first != ord("{"):
            raise self.error("invalid type, expected struct RangeData")
        self.pos += 1
        size: int | None = None
        expires: int | None = None
        for name in self.fields():
            if name == "size":
                if size is not None:
                    raise self.error("duplicate field `size`")
                size = self.u16()
            elif name == "expires":
                if expires is not None:
                    raise self.error("duplicate field `expires`")
                expires = self.u64()
            else:
                self.ignore_value()
        if size is None:
            raise self.error("missing field `size`")
        if expires is None:
            raise self.error("missing field `expires`")
        return Range(size, expires)

    def fields(self) -> Iterator[str]:
        """Field names of an object whose ``{`` was consumed; the caller reads each value."""
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise self.error("EOF while parsing an object")
            if c == ord("}"):
                self.pos += 1
                return
            if not first:
                if c != ord(","):
                    raise self.error("expected `,` or `}`")
                self.pos += 1
                c = self.peek()
                if c == ord("}"):
                    raise self.error("trailing comma")
            first = False
            if c != ord('"'):
                raise self.error("key must be a string")
            self.pos += 1
            name = self.string()
            self.expect(b":", "expected `:`")
            yield name

    def comma_or_end(self, expected: str, *, required: bool) -> None:
        c = self.peek()
        if c == ord(","):
            self.pos += 1
            return
        if c == ord("]") and required:
            raise self.error(f"invalid length, expected {expected}")
        raise self.error("expected `,` or `]`")

    def end_seq(self) -> None:
        c = self.peek()
        if c == ord("]"):
            self.pos += 1
            return
        if c == ord(","):
            self.pos += 1
            if self.peek() == ord("]"):
                raise self.error("trailing comma")
            raise self.error("trailing characters")  # more elements than fields
        raise self.error("expected `,` or `]`")

    # -- numbers ---------------------------------------------------------------------------

    def u16(self) -> int:
        return self.typed_integer(U16_MAX, "u16")

    def u64(self) -> int:
        return self.typed_integer(U64_MAX, "u64")

    def typed_integer(self, limit: int, name: str) -> int:
        c = self.peek()
        if c is None:
            raise self.error("EOF while parsing a value")
        if c not in b"-0123456789":
            raise self.error(f"invalid type, expected {name}")
        return self.integer(limit, name)

    def integer(self, limit: int, name: str) -> int:
        """A JSON number at ``pos`` that must be an integer within ``0..=limit``."""
        start = self.pos
        negative, is_float = self.number()
        text = self.data[start : self.pos]
        if is_float or (negative and int(text) == 0):
            raise self.error(f"invalid type: floating point, expected {name}")
        value = int(text)
        if not negative and value > U64_MAX:
            # serde_json turns an integer past u64 into an f64, which no integer type takes.
            raise self.error(f"invalid type: floating point, expected {name}")
        if negative or value > limit:
            raise self.error(f"invalid value: integer `{value}`, expected {name}")
        return value

    def number(self) -> tuple[bool, bool]:
        """Consume a JSON number; return (negative, has a fraction or exponent)."""
        data = self.data
        negative = data[self.pos : self.pos + 1] == b"-"
        if negative:
            self.pos += 1
        if self.pos >= len(data) or data[self.pos] not in _DIGITS:
            raise self.error("invalid number")
        if data[self.pos] == ord("0"):
            self.pos += 1
            if self.pos < len(data) and data[self.pos] in _DIGITS:
                raise self.error("invalid number")
        else:
            self.digits()
        is_float = False
        if data[self.pos : self.pos + 1] == b".":
            self.pos += 1
            if self.pos >= len(data) or data[self.pos] not in _DIGITS:
                raise self.error("invalid number")
            self.digits()
            is_float = True
        if data[self.pos : self.pos + 1] in (b"e", b"E"):
            self.pos += 1
            if data[self.pos : self.pos + 1] in (b"+", b"-"):
                self.pos += 1
            if self.pos >= len(data) or data[self.pos] not in _DIGITS:
                raise self.error("invalid number")
            self.digits()
            is_float = True
        return negative, is_float

    def digits(self) -> None:
        data, pos = self.data, self.pos
        while pos < len(data) and data[pos] in _DIGITS:
            pos += 1
        self.pos = pos

    # -- strings ---------------------------------------------------------------------------

    def string(self) -> str:
        """A decoded string whose opening quote was consumed (serde_json's ``parse_str``)."""
        data = self.data
        out: list[str] = []
        chunk = self.pos
        while True:
            if self.pos >= len(data):
                raise self.error("EOF while parsing a string")
            self.pos = _PLAIN.match(data, self.pos).end()  # type: ignore[union-attr]  # always matches
            if self.pos >= len(data):
                continue
            c = data[self.pos]
            if c == ord('"'):
                out.append(self._utf8(data[chunk : self.pos]))
                self.pos += 1
                return "".join(out)
            if c < 0x20:
                raise self.error("control character (\\u0000-\\u001F) found while parsing a string")
            if c != ord("\\"):
                self.pos += 1
                continue
            out.append(self._utf8(data[chunk : self.pos]))
            self.pos += 1
            out.append(self.escape())
            chunk = self.pos

    def _utf8(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("invalid unicode code point") from None

    def escape(self) -> str:
        simple = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
        if self.pos >= len(self.data):
            raise self.error("EOF while parsing a string")
        c = chr(self.data[self.pos])
        self.pos += 1
        if c in simple:
            return simple[c]
        if c != "u":
            raise self.error("invalid escape")
        unit = self.hex4()
        if 0xDC00 <= unit <= 0xDFFF:
            raise self.error("lone leading surrogate in hex escape")
        if not 0xD800 <= unit <= 0xDBFF:
            return chr(unit)
        if self.data[self.pos : self.pos + 2] != b"\\u":
            raise self.error("unexpected end of hex escape")
        self.pos += 2
        low = self.hex4()
        if not 0xDC00 <= low <= 0xDFFF:
            raise self.error("lone leading surrogate in hex escape")
        return chr(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))

    def hex4(self) -> int:
        digits = self.data[self.pos : self.pos + 4]
        if len(digits) < 4:
            raise self.error("EOF while parsing a string")
        if any(d not in _HEX for d in digits):
            raise self.error("invalid escape")
        self.pos += 4
        return int(digits, 16)

    def ignore_str(self) -> None:
        """Skip a string whose opening quote was consumed, as ``IoRead::ignore_str`` does."""
        data = self.data
        while True:
            self.pos = _PLAIN.match(data, self.pos).end()  # type: ignore[union-attr]  # always matches
            if self.pos >= len(data):
                raise self.error("EOF while parsing a string")
            c = data[self.pos]
            self.pos += 1
            if c == ord('"'):
                return
            if c < 0x20:
                raise self.error("control character (\\u0000-\\u001F) found while parsing a string")
            if c == ord("\\"):
                if self.pos >= len(data):
                    raise self.error("EOF while parsing a string")
                e = chr(data[self.pos])
                self.pos += 1
                if e == "u":
                    self.hex4()  # well formed; the code point itself is not checked
                elif e not in '"\\/bfnrt':
                    raise self.error("invalid escape")

    # -- ignored values --------------------------------------------------------------------

    def ignore_value(self) -> None:
        """Skip one JSON value, checking its syntax only (iterative: any nesting depth)."""
        closers: list[int] = []
        while True:
            c = self.peek()
            if c is None:
                raise self.error("EOF while parsing a value")
            self.scalar_or_open(c, closers)
            # After a value: close containers, or move to the next element.
            while closers:
                c = self.peek()
                if c == closers[-1]:
                    self.pos += 1
                    closers.pop()
                    continue
                if c != ord(","):
                    raise self.error("expected `,` or a closing bracket")
                self.pos += 1
                c = self.peek()
                if c in (ord("]"), ord("}")):
                    raise self.error("trailing comma")
                if closers[-1] == ord("}"):
                    self.object_key()
                break
            else:
                return

    def scalar_or_open(self, c: int, closers: list[int]) -> None:
        """Consume a scalar, or open a container (and consume it whole when it is empty)."""
        while c in (ord("["), ord("{")):
            self.pos += 1
            close = ord("]") if c == ord("[") else ord("}")
            if self.peek() == close:
                self.pos += 1
                return
            closers.append(close)
            if close == ord("}"):
                self.object_key()
            c = self.peek()  # type: ignore[assignment]
            if c is None:
                raise self.error("EOF while parsing a value")
        if c == ord('"'):
            self.pos += 1
            self.ignore_str()
        elif c in b"-0123456789":
            self.number()
        else:
            for word in (b"true", b"false", b"null"):
                if self.data.startswith(word, self.pos):
                    self.pos += len(word)
                    return
            raise self.error("expected value")

    def object_key(self) -> None:
        if self.peek() != ord('"'):
            raise self.error("key must be a string")
        self.pos += 1
        self.ignore_str()
        self.expect(b":", "expected `:`")
