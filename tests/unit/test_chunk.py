"""Tests for streamer.rtmp.chunk: exact wire bytes, round trips, and hostile input.

Expected bytes are built here by hand from the spec's layout, not with the writer,
so that a writer bug and a matching reader bug cannot cancel out.
"""

from __future__ import annotations

import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.rtmp.chunk import ChunkReader, ChunkWriter, Message

FAST = settings(max_examples=300, deadline=None)
# Its property tests keep a core busy for seconds: they take turns with the other such tests.
pytestmark = pytest.mark.cpu_bound
EXT = 0xFFFFFF


# -- hand-built wire pieces -------------------------------------------------------------


def basic(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes([fmt << 6 | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([fmt << 6 | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])


def ts3(value: int) -> bytes:
    return min(value, EXT).to_bytes(3, "big")


def ext(value: int) -> bytes:
    return value.to_bytes(4, "big") if value >= EXT else b""


def fmt0(csid: int, ts: int, length: int, type_id: int, msid: int) -> bytes:
    return (
        basic(0, csid)
        + ts3(ts)
        + length.to_bytes(3, "big")
        + bytes([type_id])
        + msid.to_bytes(4, "little")
        + ext(ts)
    )


def fmt1(csid: int, delta: int, length: int, type_id: int) -> bytes:
    return basic(1, csid) + ts3(delta) + length.to_bytes(3, "big") + bytes([type_id]) + ext(delta)


def fmt2(csid: int, delta: int) -> bytes:
    return basic(2, csid) + ts3(delta) + ext(delta)


def fmt3(csid: int, repeated: int = 0) -> bytes:
    return basic(3, csid) + ext(repeated)


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


def set_chunk_size(size: int) -> Message:
    return Message(2, 0, 1, 0, size.to_bytes(4, "big"))


def encode_all(writer: ChunkWriter, msgs: list[Message]) -> bytes:
    return b"".join(writer.encode(m) for m in msgs)


def fmt_of(chunk: bytes) -> int:
    return chunk[0] >> 6


# -- header formats on the wire ---------------------------------------------------------


def test_header_format_choice_follows_previous_message_on_the_csid() -> None:
    w = ChunkWriter()
    p10, p12 = payload(10), payload(12, 1)
    seq = [
        (Message(4, 0, 9, 1, p10), 0),  # first on the csid
        (Message(4, 40, 9, 1, p12), 1),  # length differs
        (Message(4, 80, 9, 1, p12), 3),  # same length, type and delta (40)
        (Message(4, 100, 9, 1, p12), 2),  # only the delta differs (20)
        (Message(4, 120, 9, 1, p12), 3),
        (Message(4, 130, 8, 1, p12), 1),  # type differs
        (Message(4, 110, 8, 1, p12), 0),  # timestamp goes backwards
        (Message(4, 150, 8, 1, p12), 2),  # delta after fmt 0 is never assumed
        (Message(4, 190, 8, 7, p12), 0),  # message stream id changes
        (Message(5, 190, 8, 7, p12), 0),  # another csid has its own state
    ]
    encoded = [w.encode(m) for m, _ in seq]
    assert [fmt_of(b) for b in encoded] == [f for _, f in seq]
    assert ChunkReader().feed(b"".join(encoded)) == [m for m, _ in seq]


def test_exact_bytes_of_each_format() -> None:
    w = ChunkWriter()
    p = payload(5)
    assert w.encode(Message(3, 0x0A0B0C, 0x14, 0x01020304, p)) == (
        b"\x03\x0a\x0b\x0c\x00\x00\x05\x14\x04\x03\x02\x01" + p
    )
    q = payload(6)
    assert w.encode(Message(3, 0x0A0B0C + 33, 0x14, 0x01020304, q)) == (
        b"\x43\x00\x00\x21\x00\x00\x06\x14" + q
    )
    assert w.encode(Message(3, 0x0A0B0C + 33 + 20, 0x14, 0x01020304, q)) == b"\x83\x00\x00\x14" + q
    assert w.encode(Message(3, 0x0A0B0C + 33 + 40, 0x14, 0x01020304, q)) == b"\xc3" + q


def test_zero_length_message() -> None:
    w = ChunkWriter()
    msgs = [Message(3, 0, 4, 0, b""), Message(3, 5, 4, 0, b""), Message(3, 10, 4, 0, b"")]
    data = encode_all(w, msgs)
    assert data == fmt0(3, 0, 0, 4, 0) + fmt2(3, 5) + fmt3(3)
    assert ChunkReader().feed(data) == msgs


# -- splitting into chunks --------------------------------------------------------------


@pytest.mark.parametrize("size", [128, 4096])
def test_round_trip_many_messages_on_several_csids(size: int) -> None:
    rng = random.Random(size)
    clocks = {2: 0, 3: 0, 4: 0, 6: 0, 100: 0, 400: 0}
    msgs = []
    for i in range(400):
        csid = rng.choice(list(clocks))
        clocks[csid] += rng.choice([0, 20, 33, 40])
        n = rng.choice([0, 1, size - 1, size, size + 1, 3 * size + 7, rng.randrange(10_000)])
        msgs.append(
            Message(csid, clocks[csid], rng.choice([8, 9, 18, 20]), csid % 3, payload(n, i))
        )
    data = encode_all(ChunkWriter(size), msgs)
    reader = ChunkReader(size)
    assert reader.feed(data) == msgs


def test_message_larger_than_chunk_size_is_split_with_fmt3_continuations() -> None:
    p = payload(300)
    data = ChunkWriter(128).encode(Message(5, 1000, 9, 1, p))
    assert data == (fmt0(5, 1000, 300, 9, 1) + p[:128] + fmt3(5) + p[128:256] + fmt3(5) + p[256:])
    assert ChunkReader(128).feed(data) == [Message(5, 1000, 9, 1, p)]


def test_chunk_size_change_mid_stream_is_followed_by_the_reader() -> None:
    w = ChunkWriter()
    big = payload(3000)
    before = [Message(6, 0, 9, 1, big), Message(6, 40, 9, 1, big)]
    data = encode_all(w, before) + w.encode(set_chunk_size(4096))
    w.set_chunk_size(4096)
    after = [Message(6, 80, 9, 1, big), Message(4, 80, 8, 1, payload(5000, 3))]
    tail = [w.encode(m) for m in after]
    assert len(tail[0]) == 1 + 3000  # one fmt 3 chunk: the new size is in use
    reader = ChunkReader()
    assert reader.feed(data + b"".join(tail)) == [*before, set_chunk_size(4096), *after]
    assert reader.chunk_size == 4096
    assert w.chunk_size == 4096


@pytest.mark.parametrize("bad", [0, -1, 0x80000000])
def test_writer_rejects_invalid_chunk_size(bad: int) -> None:
    with pytest.raises(ValueError):
        ChunkWriter(bad)
    with pytest.raises(ValueError):
        ChunkWriter().set_chunk_size(bad)


def test_interleaved_chunk_streams() -> None:
    a, b = payload(300, 1), payload(200, 2)
    data = (
        fmt0(4, 10, 300, 9, 1)
        + a[:128]
        + fmt0(6, 0x1234567, 200, 8, 1)
        + b[:128]
        + fmt3(4)
        + a[128:256]
        + fmt3(6, 0x1234567)
        + b[128:]
        + fmt3(4)
        + a[256:]
    )
    reader = ChunkReader()
    assert reader.feed(data) == [Message(6, 0x1234567, 8, 1, b), Message(4, 10, 9, 1, a)]


# -- extended timestamps ----------------------------------------------------------------


def test_extended_absolute_timestamp_repeated_on_continuations() -> None:
    p = payload(300)
    msg = Message(4, 0x12345678, 9, 1, p)
    data = ChunkWriter().encode(msg)
    repeat = b"\xc4\x12\x34\x56\x78"
    assert data == (
        b"\x04\xff\xff\xff\x00\x01\x2c\x09\x01\x00\x00\x00\x12\x34\x56\x78"
        + p[:128]
        + repeat
        + p[128:256]
        + repeat
        + p[256:]
    )
    assert ChunkReader().feed(data) == [msg]


def test_timestamp_0xffffff_itself_is_extended() -> None:
    data = ChunkWriter().encode(Message(4, EXT, 9, 1, b"x"))
    assert data == fmt0(4, EXT, 1, 9, 1) + b"x"
    assert data[1:4] == b"\xff\xff\xff"
    assert data[12:16] == b"\x00\xff\xff\xff"


def test_extended_delta_on_fmt2_then_reused_by_fmt3() -> None:
    p = payload(200)
    d = 0x1000000
    msgs = [Message(4, 0, 9, 1, p), Message(4, d, 9, 1, p), Message(4, 2 * d, 9, 1, p)]
    data = encode_all(ChunkWriter(), msgs)
    assert (
        data
        == (
            fmt0(4, 0, 200, 9, 1)
            + p[:128]
            + fmt3(4)
            + p[128:]
            + fmt2(4, d)
            + p[:128]
            + fmt3(4, d)
            + p[128:]
            + fmt3(4, d)  # a new message reusing the extended delta carries it too
            + p[:128]
            + fmt3(4, d)
            + p[128:]
        )
    )
    assert ChunkReader().feed(data) == msgs


def test_extended_delta_on_fmt1() -> None:
    msgs = [Message(7, 5, 9, 1, b"ab"), Message(7, 5 + 0x2000000, 9, 1, b"abc")]
    data = encode_all(ChunkWriter(), msgs)
    assert data == fmt0(7, 5, 2, 9, 1) + b"ab" + fmt1(7, 0x2000000, 3, 9) + b"abc"
    assert ChunkReader().feed(data) == msgs


def test_timestamps_wrap_modulo_2_32() -> None:
    # Reader: a delta that crosses 2**32 wraps around.
    data = fmt0(3, 0xFFFFFFF0, 1, 9, 1) + b"a" + fmt2(3, 0x20) + b"b" + fmt3(3) + b"c"
    assert [m.timestamp for m in ChunkReader().feed(data)] == [0xFFFFFFF0, 0x10, 0x30]
    # Writer: a timestamp past 32 bits is sent modulo 2**32; the wrap restarts with fmt 0.
    w = ChunkWriter()
    first = w.encode(Message(3, 2**32 - 10, 9, 1, b"a"))
    second = w.encode(Message(3, 2**32 + 5, 9, 1, b"b"))
    assert first == fmt0(3, 2**32 - 10, 1, 9, 1) + b"a"
    assert second == fmt0(3, 5, 1, 9, 1) + b"b"


# -- chunk stream ids -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("csid", "header"),
    [
        (2, b"\x02"),
        (63, b"\x3f"),
        (64, b"\x00\x00"),
        (319, b"\x00\xff"),
        (320, b"\x01\x00\x01"),
        (65599, b"\x01\xff\xff"),
    ],
)
def test_basic_header_forms(csid: int, header: bytes) -> None:
    p = payload(200)
    msgs = [Message(csid, 0, 9, 1, p), Message(csid, 40, 9, 1, b"z")]
    data = encode_all(ChunkWriter(), msgs)
    assert data.startswith(header + b"\x00\x00\x00")
    continuation = bytes([header[0] | 0xC0]) + header[1:]
    assert data[len(header) + 11 + 128 :].startswith(continuation + p[128:])
    assert ChunkReader().feed(data) == msgs


@pytest.mark.parametrize("csid", [0, 1, 65600, -3])
def test_writer_rejects_invalid_csid(csid: int) -> None:
    with pytest.raises(ValueError):
        ChunkWriter().encode(Message(csid, 0, 9, 1, b""))


def test_writer_rejects_fields_that_do_not_fit() -> None:
    w = ChunkWriter()
    for bad in (
        Message(3, 0, 256, 1, b""),
        Message(3, 0, 9, 2**32, b""),
        Message(3, 0, 9, -1, b""),
        Message(3, 0, 9, 1, bytes(0x1000000)),
    ):
        with pytest.raises(ValueError):
            w.encode(bad)


# -- incremental input ------------------------------------------------------------------


def mixed_stream() -> tuple[bytes, list[Message]]:
    w = ChunkWriter()
    msgs = [
        Message(3, 0, 20, 0, payload(150)),
        Message(4, 0x1FFFFFF, 9, 1, payload(400, 1)),
        Message(4, 0x1FFFFFF + 40, 9, 1, payload(400, 2)),
        Message(4, 0x1FFFFFF + 80, 9, 1, payload(400, 3)),
        Message(320, 7, 8, 1, payload(3, 4)),
        Message(5, 0x2000000, 20, 0, b""),  # extended timestamp and nothing after it
        set_chunk_size(64),
    ]
    data = encode_all(w, msgs)
    w.set_chunk_size(64)
    tail = [Message(4, 0x3000000, 9, 1, payload(200, 5)), Message(3, 1, 20, 0, payload(10))]
    return data + encode_all(w, tail), msgs + tail


def test_feeding_one_byte_at_a_time_gives_the_same_messages() -> None:
    data, msgs = mixed_stream()
    assert ChunkReader().feed(data) == msgs
    reader = ChunkReader()
    got: list[Message] = []
    for i in range(len(data)):
        got += reader.feed(data[i : i + 1])
    assert got == msgs


def test_truncated_input_is_buffered_not_an_error() -> None:
    data = ChunkWriter().encode(Message(65599, EXT + 1, 9, 1, payload(300)))
    reader = ChunkReader()
    for cut in (1, 2, 3, 10, 15, 16, 20, 150):
        assert ChunkReader().feed(data[:cut]) == []
    assert reader.feed(data[:150]) == []
    assert reader.feed(data[150:]) == [Message(65599, EXT + 1, 9, 1, payload(300))]


# -- control messages -------------------------------------------------------------------


def test_abort_discards_the_partial_message() -> None:
    a = payload(300)
    abort = Message(2, 0, 2, 0, (4).to_bytes(4, "big"))
    data = (
        fmt0(4, 0, 300, 9, 1)
        + a[:128]
        + fmt0(2, 0, 4, 2, 0)
        + abort.payload
        + fmt0(4, 50, 3, 9, 1)
        + b"new"
    )
    assert ChunkReader().feed(data) == [abort, Message(4, 50, 9, 1, b"new")]
    # Without the abort the new header inside an unfinished message is malformed.
    with pytest.raises(ValueError, match="inside a message"):
        ChunkReader().feed(fmt0(4, 0, 300, 9, 1) + a[:128] + fmt0(4, 50, 3, 9, 1) + b"new")


@pytest.mark.parametrize(
    "body", [b"\x00\x00\x00\x00", b"\x80\x00\x00\x00", b"\xff\xff\xff\xff", b"\x00\x01"]
)
def test_invalid_set_chunk_size_raises(body: bytes) -> None:
    reader = ChunkReader()
    with pytest.raises(ValueError):
        reader.feed(fmt0(2, 0, len(body), 1, 0) + body)
    with pytest.raises(ValueError, match="broken"):  # later valid chunks are not trusted
        reader.feed(fmt0(3, 0, 1, 9, 0) + b"x")


def test_short_abort_raises() -> None:
    with pytest.raises(ValueError):
        ChunkReader().feed(fmt0(2, 0, 2, 2, 0) + b"\x00\x04")


def test_reader_chunk_size_one_and_maximum() -> None:
    data = fmt0(2, 0, 4, 1, 0) + (1).to_bytes(4, "big")
    data += fmt0(3, 0, 3, 9, 0) + b"a" + fmt3(3) + b"b" + fmt3(3) + b"c"
    reader = ChunkReader()
    assert reader.feed(data)[1] == Message(3, 0, 9, 0, b"abc")
    assert reader.chunk_size == 1
    reader = ChunkReader()
    reader.feed(fmt0(2, 0, 4, 1, 0) + (0x7FFFFFFF).to_bytes(4, "big"))
    assert reader.chunk_size == 0x7FFFFFFF
    assert reader.feed(fmt0(3, 0, 500, 9, 0) + payload(500)) == [Message(3, 0, 9, 0, payload(500))]


# -- malformed input --------------------------------------------------------------------


@pytest.mark.parametrize("first", [fmt1(5, 0, 1, 9) + b"x", fmt2(5, 0) + b"x", fmt3(5) + b"x"])
def test_compressed_header_without_previous_header_raises(first: bytes) -> None:
    with pytest.raises(ValueError):
        ChunkReader().feed(first)


def test_oversized_message_raises_before_its_payload_arrives() -> None:
    reader = ChunkReader(4096, max_message_size=1000)
    assert reader.feed(fmt0(3, 0, 1000, 9, 0) + payload(1000))[0].payload == payload(1000)
    with pytest.raises(ValueError, match="1001"):
        reader.feed(fmt0(3, 0, 1001, 9, 0))  # header only
    with pytest.raises(ValueError):
        reader.feed(b"")  # the stream cannot be resynchronised


def test_fmt3_after_fmt0_uses_the_timestamp_as_delta() -> None:
    # Spec 5.3.1.2.4 (and FFmpeg): the writer never produces this, peers may.
    data = fmt0(3, 100, 1, 9, 0) + b"a" + fmt3(3) + b"b"
    assert [m.timestamp for m in ChunkReader().feed(data)] == [100, 200]


# -- properties -------------------------------------------------------------------------

CSIDS = st.sampled_from([2, 3, 4, 63, 64, 319, 320, 65599])
DELTAS = st.sampled_from([0, 20, 40, EXT - 1, EXT, EXT + 1]) | st.integers(0, 2**32 - 1)
LENGTHS = st.sampled_from([0, 1, 127, 128, 129, 300]) | st.integers(0, 1000)


@st.composite
def message_lists(draw: st.DrawFn) -> list[Message]:
    clocks: dict[int, int] = {}
    msgs = []
    for _ in range(draw(st.integers(1, 25))):
        csid = draw(CSIDS)
        clocks[csid] = (clocks.get(csid, 0) + draw(DELTAS)) & 0xFFFFFFFF
        body = draw(LENGTHS.map(payload) | st.binary(max_size=300))
        type_id = draw(st.sampled_from([3, 8, 9, 20, 255]))
        stream_id = draw(st.sampled_from([0, 1, 0xFFFFFFFF]))
        msgs.append(Message(csid, clocks[csid], type_id, stream_id, body))
    return msgs


@FAST
@given(
    msgs=message_lists(),
    size=st.sampled_from([1, 7, 128, 4096]),
    cuts=st.lists(st.integers(0, 50_000), max_size=20),
)
def test_random_message_sequences_round_trip(
    msgs: list[Message], size: int, cuts: list[int]
) -> None:
    data = encode_all(ChunkWriter(size), msgs)
    reader = ChunkReader(size)
    got: list[Message] = []
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for lo, hi in pairwise(bounds):
        got += reader.feed(data[lo:hi])
    assert got == msgs


def outcome(pieces: list[bytes]) -> tuple[list[Message], bool]:
    """Messages returned and whether ValueError was raised; anything else fails the test."""
    reader = ChunkReader(max_message_size=4096)
    got: list[Message] = []
    try:
        for piece in pieces:
            got += reader.feed(piece)
    except ValueError:
        return got, True
    return got, False


@FAST
@given(st.binary(max_size=2000))
def test_random_bytes_raise_only_value_error(data: bytes) -> None:
    whole = outcome([data])
    bytewise = outcome([data[i : i + 1] for i in range(len(data))])
    assert whole[1] == bytewise[1]
    if not whole[1]:
        assert whole[0] == bytewise[0]


@FAST
@given(
    msgs=message_lists(),
    edits=st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), max_size=8),
    cut=st.integers(0, 2**31),
    step=st.integers(1, 300),
)
def test_mutated_and_truncated_streams_raise_only_value_error(
    msgs: list[Message], edits: list[tuple[int, int]], cut: int, step: int
) -> None:
    data = bytearray(encode_all(ChunkWriter(), msgs))
    for where, value in edits:
        data[where % len(data)] = value
    data = data[: cut % (len(data) + 1)]
    whole = outcome([bytes(data)])
    pieces = outcome([bytes(data[i : i + step]) for i in range(0, len(data), step)])
    assert whole[1] == pieces[1]
    if not whole[1]:
        assert whole[0] == pieces[0]
