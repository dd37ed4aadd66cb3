"""AMF0 encoding and decoding (Adobe AMF0 specification), as used by RTMP commands.

Every type servers are known to send decodes, including the rare ones (Date, reference,
typed object) so that an odd value in a command nobody waits for cannot end a session. An
AVM+ marker switches to AMF3, which we do not parse: at the top level it becomes an opaque
``Amf3`` holding the rest of the message. Decoding treats its input as hostile: anything
malformed or truncated raises ``ValueError`` and nothing else, nesting is bounded, and no
length field is trusted before the bytes it announces are present.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

_NUMBER: Final = 0x00
_BOOLEAN: Final = 0x01
_STRING: Final = 0x02
_OBJECT: Final = 0x03
_NULL: Final = 0x05
_UNDEFINED: Final = 0x06
_REFERENCE: Final = 0x07
_ECMA_ARRAY: Final = 0x08
_OBJECT_END: Final = 0x09
_STRICT_ARRAY: Final = 0x0A
_DATE: Final = 0x0B
_LONG_STRING: Final = 0x0C
_TYPED_OBJECT: Final = 0x10
_AVMPLUS: Final = 0x11

_MAX_DEPTH: Final = 64
"""Deepest container nesting accepted; RTMP needs a few levels, attackers need thousands."""

_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
_F64: Final = struct.Struct(">d")
_DATE_BODY: Final = struct.Struct(">dh")
_END_MARKER: Final = b"\x00\x00\x09"


class _Undefined:
    """Type of ``UNDEFINED``; distinct from ``None`` because AMF0 null and undefined differ."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __reduce__(self) -> str:
        # Pickle and copy by name, so the singleton stays a singleton.
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()


class EcmaArray(dict[str, Any]):
    """dict encoded as an AMF0 ECMA array (0x08); decoding 0x08 returns an EcmaArray.

    Some servers (and ``onMetaData``) use ECMA arrays where others use objects; keeping the
    distinction lets a decoded message be re-encoded byte for byte.
    """


class TypedObject(dict[str, Any]):
    """An object with a class name (0x10); a dict, so code reading properties need not care."""

    def __init__(self, class_name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.class_name = class_name

    def __repr__(self) -> str:
        return f"TypedObject({self.class_name!r}, {dict.__repr__(self)})"


@dataclass(frozen=True, slots=True)
class Date:
    """AMF0 Date (0x0B): milliseconds since the Unix epoch (UTC) and a reserved time zone."""

    ms: float
    timezone: int = 0


@dataclass(frozen=True, slots=True)
class Reference:
    """AMF0 reference (0x07) to an earlier complex value of the same message, not resolved."""

    index: int


@dataclass(frozen=True, slots=True)
class Amf3:
    """The bytes after an AVM+ marker (0x11): AMF3, not parsed, ending what AMF0 can read."""

    data: bytes


# --- encoding -----------------------------------------------------------------------------


def encode_value(value: Any) -> bytes:
    """Encode one Python value as one AMF0 value."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def encode(*values: Any) -> bytes:
    """Encode values back to back, as in an RTMP command message body."""
    return b"".join(encode_value(v) for v in values)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if value is UNDEFINED:
        out.append(b"\x06")
    elif value is None:
        out.append(b"\x05")
    elif isinstance(value, bool):  # before int: bool is an int subclass
        out.append(b"\x01\x01" if value else b"\x01\x00")
    elif isinstance(value, int | float):
        try:
            out.append(b"\x00" + _F64.pack(float(value)))
        except OverflowError:
            raise ValueError(f"AMF0: integer {value} does not fit in a float64") from None
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) <= 0xFFFF:
            out.append(b"\x02" + _U16.pack(len(raw)))
        elif len(raw) <= 0xFFFFFFFF:
            out.append(b"\x0c" + _U32.pack(len(raw)))
        else:
            raise ValueError("AMF0: string longer than 4 GiB")
        out.append(raw)
    elif isinstance(value, Date):
        out.append(b"\x0b" + _DATE_BODY.pack(value.ms, value.timezone))
    elif isinstance(value, Reference):
        out.append(b"\x07" + _U16.pack(value.index))
    elif isinstance(value, Amf3):
        out.append(b"\x11" + value.data)
    elif isinstance(value, dict | list | tuple):
        if depth >= _MAX_DEPTH:
            raise ValueError(f"AMF0: nesting deeper than {_MAX_DEPTH} (or a cycle)")
        if isinstance(value, TypedObject):
            raw = value.class_name.encode("utf-8")
            if len(raw) > 0xFFFF:
                raise ValueError("AMF0 class name longer than 65535 bytes")
            out.append(b"\x10" + _U16.pack(len(raw)) + raw)
            _encode_properties(value, out, depth + 1)
        elif isinstance(value, EcmaArray):
            out.append(b"\x08" + _U32.pack(len(value)))
            _encode_properties(value, out, depth + 1)
        elif isinstance(value, dict):
            out.append(b"\x03")
            _encode_properties(value, out, depth + 1)
        else:
            out.append(b"\x0a" + _U32.pack(len(value)))
            for item in value:
                _encode(item, out, depth + 1)
    else:
        raise TypeError(f"AMF0 cannot encode {type(value).__name__}")


def _encode_properties(props: dict[Any, Any], out: list[bytes], depth: int) -> None:
    for key, item in props.items():
        if not isinstance(key, str):
            raise TypeError(f"AMF0 property names must be str, not {type(key).__name__}")
        raw = key.encode("utf-8")
        if not raw:
            # An empty name followed by 0x09 is the end marker; it cannot name a property.
            raise ValueError("AMF0 property names must not be empty")
        if len(raw) > 0xFFFF:
            raise ValueError("AMF0 property name longer than 65535 bytes")
        out.append(_U16.pack(len(raw)) + raw)
        _encode(item, out, depth)
    out.append(_END_MARKER)


# --- decoding -----------------------------------------------------------------------------


def decode_value(data: bytes, offset: int = 0) -> tuple[Any, int]:
    """Decode the AMF0 value at ``offset``; return it and the offset just past it."""
    if not 0 <= offset <= len(data):
        raise ValueError(f"AMF0: offset {offset} outside data of length {len(data)}")
    return _decode(data, offset, 0)


def decode(data: bytes) -> list[Any]:
    """Decode every AMF0 value in ``data``; trailing garbage is an error, not ignored.

    An AVM+ value ends the list: it holds the rest of ``data`` as ``Amf3``.
    """
    values: list[Any] = []
    pos = 0
    while pos < len(data):
        value, pos = _decode(data, pos, 0)
        values.append(value)
    return values


def _need(data: bytes, pos: int, n: int) -> int:
    """Return ``pos + n``, or raise if ``data`` is too short, before anything is sliced."""
    end = pos + n
    if end > len(data):
        raise ValueError(f"AMF0: truncated, need {n} bytes at offset {pos}")
    return end


def _read_utf8(data: bytes, pos: int, size: struct.Struct) -> tuple[str, int]:
    start = _need(data, pos, size.size)
    (length,) = size.unpack_from(data, pos)
    end = _need(data, start, length)
    try:
        return str(data[start:end], "utf-8"), end
    except UnicodeDecodeError:
        raise ValueError(f"AMF0: invalid UTF-8 in string at offset {start}") from None


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    pos_after = _need(data, pos, 1)
    marker = data[pos]
    pos = pos_after
    if marker == _NUMBER:
        end = _need(data, pos, 8)
        return _F64.unpack_from(data, pos)[0], end
    if marker == _BOOLEAN:
        end = _need(data, pos, 1)
        return data[pos] != 0, end
    if marker == _STRING:
        return _read_utf8(data, pos, _U16)
    if marker == _LONG_STRING:
        return _read_utf8(data, pos, _U32)
    if marker == _NULL:
        return None, pos
    if marker == _UNDEFINED:
        return UNDEFINED, pos
    if marker == _DATE:
        end = _need(data, pos, _DATE_BODY.size)
        ms, timezone = _DATE_BODY.unpack_from(data, pos)
        return Date(ms, timezone), end
    if marker == _REFERENCE:
        end = _need(data, pos, 2)
        return Reference(_U16.unpack_from(data, pos)[0]), end
    if marker == _AVMPLUS:
        if depth:
            # AMF3 has no length: the container around it cannot be closed.
            raise ValueError(f"AMF0: AVM+ (AMF3) value inside a container at offset {pos - 1}")
        return Amf3(bytes(data[pos:])), len(data)
    if marker in (_OBJECT, _TYPED_OBJECT, _ECMA_ARRAY, _STRICT_ARRAY):
        if depth >= _MAX_DEPTH:
            raise ValueError(f"AMF0: nesting deeper than {_MAX_DEPTH}")
        if marker == _OBJECT:
            obj: dict[str, Any] = {}
            return obj, _decode_properties(data, pos, depth + 1, obj)
        if marker == _TYPED_OBJECT:
            class_name, pos = _read_utf8(data, pos, _U16)
            typed = TypedObject(class_name)
            return typed, _decode_properties(data, pos, depth + 1, typed)
        # Both arrays carry a u32 count next.
        start = _need(data, pos, 4)
        (count,) = _U32.unpack_from(data, pos)
        if marker == _ECMA_ARRAY:
            # The count is only a hint and servers get it wrong; the end marker is the truth.
            arr = EcmaArray()
            return arr, _decode_properties(data, start, depth + 1, arr)
        # Every value takes at least one byte, so a count beyond what is left is a lie.
        if count > len(data) - start:
            raise ValueError(f"AMF0: strict array of {count} items in {len(data) - start} bytes")
        items: list[Any] = []
        pos = start
        for _ in range(count):
            item, pos = _decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if marker == _OBJECT_END:
        raise ValueError(f"AMF0: object end marker where a value was expected at {pos - 1}")
    raise ValueError(f"AMF0: unsupported type marker 0x{marker:02x} at offset {pos - 1}")


def _decode_properties(data: bytes, pos: int, depth: int, out: dict[str, Any]) -> int:
    """Read name/value pairs into ``out`` up to the end marker; return the offset after it."""
    while True:
        name, pos = _read_utf8(data, pos, _U16)
        if not name:
            end = _need(data, pos, 1)
            if data[pos] != _OBJECT_END:
                raise ValueError(f"AMF0: empty property name without end marker at {pos}")
            return end
        value, pos = _decode(data, pos, depth)
        out[name] = value
