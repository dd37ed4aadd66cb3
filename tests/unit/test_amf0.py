"""Tests for streamer.rtmp.amf0: exact bytes, round trips, and hostile input."""

from __future__ import annotations

import copy
import math
import pickle
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.rtmp.amf0 import (
    _MAX_DEPTH,
    UNDEFINED,
    Amf3,
    Date,
    EcmaArray,
    Reference,
    TypedObject,
    decode,
    decode_value,
    encode,
)

FAST = settings(max_examples=400, deadline=None)
# Its property tests keep a core busy for seconds: they take turns with the other such tests.
pytestmark = pytest.mark.cpu_bound


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def num(x: float) -> bytes:
    return b"\x00" + struct.pack(">d", x)


def s(text: str) -> bytes:
    raw = text.encode()
    return b"\x02" + u16(len(raw)) + raw


def name(text: str) -> bytes:
    raw = text.encode()
    return u16(len(raw)) + raw


END = b"\x00\x00\x09"


def same(a: Any, b: Any) -> bool:
    """Strict equality: same types (EcmaArray is not dict), NaN equals NaN, -0.0 is not 0.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, TypedObject) and a.class_name != b.class_name:
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def normalized(value: Any) -> Any:
    """What decoding an encoded value yields: ints become floats, tuples become lists."""
    if isinstance(value, bool) or value is None or value is UNDEFINED:
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, EcmaArray):
        return EcmaArray({k: normalized(v) for k, v in value.items()})
    if isinstance(value, TypedObject):
        return TypedObject(value.class_name, {k: normalized(v) for k, v in value.items()})
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalized(v) for v in value]
    return value


def decodes_or_value_error(data: bytes) -> None:
    """Decoding must either succeed or raise a plain ValueError (not e.g. UnicodeDecodeError)."""
    try:
        decode(data)
    except ValueError as exc:
        assert not isinstance(exc, UnicodeError), repr(exc)


# --- exact bytes ----------------------------------------------------------------------------


def test_scalars_exact_bytes() -> None:
    assert encode("connect") == b"\x02\x00\x07connect"
    assert encode(1.0) == b"\x00" + struct.pack(">d", 1.0)
    assert encode(1.0) == bytes.fromhex("003ff0000000000000")
    assert encode(3) == encode(3.0)
    assert encode(True) == b"\x01\x01"
    assert encode(False) == b"\x01\x00"
    assert encode(None) == b"\x05"
    assert encode(UNDEFINED) == b"\x06"
    assert encode("") == b"\x02\x00\x00"
    assert encode() == b""


def test_bool_is_not_encoded_as_number() -> None:
    assert encode(True) != encode(1)
    assert decode(encode(True)) == [True]
    assert type(decode(encode(1))[0]) is float


def test_containers_exact_bytes() -> None:
    assert encode({}) == b"\x03" + END
    assert encode(EcmaArray()) == b"\x08" + u32(0) + END
    assert encode([]) == b"\x0a" + u32(0)
    assert encode(()) == b"\x0a" + u32(0)
    assert encode({"a": 1, "b": "x"}) == b"\x03" + name("a") + num(1.0) + name("b") + s("x") + END
    assert encode(EcmaArray(duration=0.0)) == b"\x08" + u32(1) + name("duration") + num(0) + END
    assert encode([1, None]) == b"\x0a" + u32(2) + num(1.0) + b"\x05"


def test_unicode_string_length_is_in_utf8_bytes() -> None:
    assert encode("é€😀") == b"\x02\x00\x09" + "é€😀".encode()


def test_long_string_boundary() -> None:
    assert encode("a" * 0xFFFF)[:3] == b"\x02\xff\xff"
    assert encode("a" * 0x10000)[:5] == b"\x0c\x00\x01\x00\x00"
    # 40000 characters but 80000 UTF-8 bytes: the byte count decides.
    assert encode("é" * 40000)[:5] == b"\x0c" + u32(80000)


# A typical connect reply, as sent by nginx-rtmp / FMS, written out by hand.
CONNECT_RESULT = (
    b"\x02\x00\x07_result"
    + b"\x00\x3f\xf0\x00\x00\x00\x00\x00\x00"
    + b"\x03"
    + b"\x00\x06fmsVer"
    + b"\x02\x00\x0dFMS/3,0,1,123"
    + b"\x00\x0ccapabilities"
    + b"\x00\x40\x3f\x00\x00\x00\x00\x00\x00"
    + b"\x00\x00\x09"
    + b"\x03"
    + b"\x00\x05level"
    + b"\x02\x00\x06status"
    + b"\x00\x04code"
    + b"\x02\x00\x1dNetConnection.Connect.Success"
    + b"\x00\x0bdescription"
    + b"\x02\x00\x15Connection succeeded."
    + b"\x00\x0eobjectEncoding"
    + b"\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    + b"\x00\x00\x09"
)
CONNECT_VALUES = [
    "_result",
    1.0,
    {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
    {
        "level": "status",
        "code": "NetConnection.Connect.Success",
        "description": "Connection succeeded.",
        "objectEncoding": 0.0,
    },
]


def test_connect_result_decodes() -> None:
    assert same(decode(CONNECT_RESULT), CONNECT_VALUES)


def test_connect_result_encodes() -> None:
    assert encode(*CONNECT_VALUES) == CONNECT_RESULT


def test_decode_value_offsets() -> None:
    data = encode("a", 2.0, None)
    value, pos = decode_value(data)
    assert (value, pos) == ("a", 4)
    value, pos = decode_value(data, pos)
    assert (value, pos) == (2.0, 13)
    assert decode_value(data, pos) == (None, 14)
    with pytest.raises(ValueError):
        decode_value(data, 14)
    with pytest.raises(ValueError):
        decode_value(data, -1)
    with pytest.raises(ValueError):
        decode_value(data, 99)


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -0.0,
        1.5,
        -1e308,
        math.inf,
        -math.inf,
        True,
        False,
        None,
        UNDEFINED,
        "",
        "héllo wörld ✓ 😀",
        "x" * 70000,
        "ü" * 40000,
        {},
        EcmaArray(),
        [],
        {"a": {"b": {"c": [1.0, "d", None, UNDEFINED, EcmaArray(e=True)]}}},
        EcmaArray({"width": 1280.0, "height": 720.0, "nested": {"list": [[], [{}]]}}),
        [[[[]]], {}, EcmaArray(), "s" * 66000],
        {"ключ": "значение", "long": "y" * 70000},
    ],
    ids=repr,
)
def test_round_trip(value: Any) -> None:
    assert same(decode(encode(value)), [value])


def test_round_trip_normalizes_ints_and_tuples() -> None:
    decoded = decode(encode((1, 2, (3,))))
    assert same(decoded, [[1.0, 2.0, [3.0]]])


def test_nan_round_trips() -> None:
    (value,) = decode(encode(math.nan))
    assert isinstance(value, float) and math.isnan(value)


def test_undefined_singleton() -> None:
    assert repr(UNDEFINED) == "UNDEFINED"
    assert decode(b"\x06")[0] is UNDEFINED
    assert copy.deepcopy(UNDEFINED) is UNDEFINED
    assert pickle.loads(pickle.dumps(UNDEFINED)) is UNDEFINED
    assert UNDEFINED is not None


def test_ecma_array_and_object_stay_distinct() -> None:
    assert type(decode(encode(EcmaArray(a=1)))[0]) is EcmaArray
    assert type(decode(encode({"a": 1}))[0]) is dict


def test_long_string_decodes_to_str() -> None:
    raw = b"ab"
    assert decode(b"\x0c" + u32(2) + raw) == ["ab"]


# --- tolerance ------------------------------------------------------------------------------


@pytest.mark.parametrize("hint", [0, 1, 5, 0xFFFFFFFF])
def test_ecma_array_count_hint_is_ignored(hint: int) -> None:
    data = b"\x08" + u32(hint) + name("a") + num(1.0) + name("b") + s("x") + END + b"\x05"
    values = decode(data)
    assert same(values, [EcmaArray(a=1.0, b="x"), None])


# --- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x00\x00",  # short number
        b"\x01",  # boolean without its byte
        b"\x02\x00",  # short length
        b"\x02\x00\x05abc",  # string shorter than its length
        b"\x0c\xff\xff\xff\xffabc",  # long string shorter than its length
        b"\x02\x00\x01\xff",  # invalid UTF-8
        b"\x03" + u16(1) + b"\xff" + b"\x05" + END,  # invalid UTF-8 property name
        b"\x03",  # object without end
        b"\x03" + name("a") + b"\x05",  # object without end
        b"\x03\x00\x00\x05",  # empty name not followed by the end marker
        b"\x03\x00\x00",  # empty name, then nothing
        b"\x03" + name("a") + END,  # end marker where the value should be
        b"\x08\x00\x00",  # short count hint
        b"\x08" + u32(0),  # ECMA array without end marker
        b"\x0a" + u32(2) + b"\x05",  # strict array short an item
        b"\x0a" + u32(0xFFFFFFFF) + b"\x05" * 5,  # huge count, tiny input: must fail fast
        b"\x0a\x00",  # short count
        b"\x09",  # object end as a value
        b"\x00\x00\x09",  # end marker at top level
        b"\x05\x02",  # trailing truncated value
    ],
)
def test_malformed_raises_value_error(data: bytes) -> None:
    with pytest.raises(ValueError) as info:
        decode(data)
    assert not isinstance(info.value, UnicodeError)


@pytest.mark.parametrize("marker", [0x04, 0x0D, 0x0E, 0x0F, 0x12, 0xFF])
def test_unsupported_markers_raise_value_error(marker: int) -> None:
    with pytest.raises(ValueError):
        decode(bytes([marker]) + b"\x00" * 16)


# --- the rare types servers send ------------------------------------------------------------


def test_date_exact_bytes() -> None:
    data = b"\x0b" + struct.pack(">d", 1.7e12) + b"\x00\x00"
    assert decode(data) == [Date(1.7e12, 0)]
    assert encode(Date(1.7e12)) == data
    assert decode(b"\x0b" + struct.pack(">d", 0.0) + b"\xff\xc4") == [Date(0.0, -60)]


def test_reference_exact_bytes() -> None:
    assert decode(b"\x07\x00\x02") == [Reference(2)]
    assert encode(Reference(2)) == b"\x07\x00\x02"


def test_typed_object_exact_bytes_and_reads_as_a_dict() -> None:
    data = b"\x10" + name("flex.messaging.Status") + name("code") + s("ok") + END
    (value,) = decode(data)
    assert isinstance(value, TypedObject)
    assert value.class_name == "flex.messaging.Status"
    assert value == {"code": "ok"}  # read like any object
    assert encode(value) == data


def test_avmplus_at_the_top_level_keeps_what_came_before_and_holds_the_rest() -> None:
    data = s("onStatus") + num(0.0) + b"\x05" + b"\x11\x0a\x0b\x01\x09code"
    assert decode(data) == ["onStatus", 0.0, None, Amf3(b"\x0a\x0b\x01\x09code")]
    value, pos = decode_value(data, len(data) - 9)
    assert (value, pos) == (Amf3(b"\x0a\x0b\x01\x09code"), len(data))


@pytest.mark.parametrize(
    "data",
    [
        b"\x03" + name("a") + b"\x11\x01" + END,  # AMF3 inside an object: its end is unknown
        b"\x0a" + u32(1) + b"\x11\x01",
        b"\x0b" + struct.pack(">d", 1.0) + b"\x00",  # date short its time zone
        b"\x07\x00",  # reference short its index
        b"\x10" + name("Cls") + name("a") + num(1.0),  # typed object without end marker
        b"\x10\x00",  # class name truncated
    ],
)
def test_rare_types_malformed_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode(data)


def test_empty_input() -> None:
    assert decode(b"") == []
    with pytest.raises(ValueError):
        decode_value(b"")


def _nested_list(depth: int) -> Any:
    value: Any = None
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_limit_boundary() -> None:
    deepest = _nested_list(_MAX_DEPTH)
    assert decode(encode(deepest)) == [deepest]
    with pytest.raises(ValueError):
        encode(_nested_list(_MAX_DEPTH + 1))
    with pytest.raises(ValueError):
        decode(b"\x0a" + u32(1) + encode(deepest))


@pytest.mark.parametrize(
    "opening",
    [b"\x0a" + u32(1), b"\x03" + name("k"), b"\x08" + u32(1) + name("k")],
    ids=["strict", "object", "ecma"],
)
def test_deep_nesting_raises_value_error(opening: bytes) -> None:
    with pytest.raises(ValueError, match="nesting"):
        decode(opening * 100_000 + b"\x05")


def test_cycles_raise_value_error_on_encode() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError):
        encode(cyclic)


@pytest.mark.parametrize(
    "value",
    [object(), b"bytes", bytearray(b"x"), {1, 2}, 1j, {1: "a"}, [object()], {"k": {"j": b""}}],
    ids=lambda value: type(value).__name__,  # the same in every process (no addresses)
)
def test_unsupported_types_raise_type_error(value: Any) -> None:
    with pytest.raises(TypeError):
        encode(value)


@pytest.mark.parametrize("value", [{"": 1}, {"k" * 0x10000: 1}, 10**400])
def test_unrepresentable_values_raise_value_error(value: Any) -> None:
    with pytest.raises(ValueError):
        encode(value)


# --- property based -------------------------------------------------------------------------

keys = st.text(min_size=1, max_size=12)
scalars = (
    st.none()
    | st.just(UNDEFINED)
    | st.booleans()
    | st.floats()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.text(max_size=30)
    | st.builds(Date, st.floats(allow_nan=False), st.integers(-(2**15), 2**15 - 1))
    | st.builds(Reference, st.integers(0, 0xFFFF))
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.lists(inner, max_size=5).map(tuple)
        | st.dictionaries(keys, inner, max_size=5)
        | st.dictionaries(keys, inner, max_size=5).map(EcmaArray)
        | st.builds(TypedObject, st.text(max_size=12), st.dictionaries(keys, inner, max_size=5))
    ),
    max_leaves=30,
)


@FAST
@given(st.lists(values, max_size=4))
def test_round_trip_generated(items: list[Any]) -> None:
    data = encode(*items)
    assert same(decode(data), [normalized(v) for v in items])
    # decode_value walks the same values one by one, ending exactly at the end.
    pos = 0
    for item in items:
        value, pos = decode_value(data, pos)
        assert same(value, normalized(item))
    assert pos == len(data)


@FAST
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    decodes_or_value_error(data)


@FAST
@given(
    st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x05, 0x06, 0x07, 0x08, 0x0A, 0x0B, 0x0C, 0x10, 0x11]),
    st.binary(max_size=200),
)
def test_fuzz_valid_marker_then_random_bytes(marker: int, rest: bytes) -> None:
    decodes_or_value_error(bytes([marker]) + rest)


@FAST
@given(values, st.data())
def test_truncated_encodings_raise_value_error(value: Any, data: st.DataObject) -> None:
    encoded = encode(value)
    cut = data.draw(st.integers(min_value=1, max_value=len(encoded) - 1)) if len(encoded) > 1 else 0
    if cut:
        with pytest.raises(ValueError) as info:
            decode(encoded[:cut])
        assert not isinstance(info.value, UnicodeError)


@FAST
@given(values, st.data())
def test_fuzz_mutated_encodings(value: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode(value))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        index = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
        encoded[index] = data.draw(st.integers(min_value=0, max_value=255))
    decodes_or_value_error(bytes(encoded))
