"""RTMP chunk stream layer (Adobe RTMP spec, section 5.3): messages <-> chunks.

Pure code with no I/O, so that every byte on the wire can be tested and fuzzed
without a socket. The connection layer feeds received bytes to a `ChunkReader`
and writes what a `ChunkWriter` encodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIN_CSID = 2
MAX_CSID = 65599
MAX_CHUNK_SIZE = 0x7FFFFFFF
MAX_PAYLOAD = 0xFFFFFF  # the message length field has 3 bytes
TYPE_SET_CHUNK_SIZE = 1
TYPE_ABORT = 2

_EXTENDED = 0xFFFFFF  # 3-byte timestamp field value announcing a 4-byte extended timestamp
_U32 = 0xFFFFFFFF
_HEADER_SIZE = (11, 7, 3, 0)  # message header size per fmt


@dataclass(frozen=True, slots=True)
class Message:
    """One RTMP message, as sent on or received from a chunk stream."""

    csid: int  # chunk stream id it arrived on / is sent on
    timestamp: int  # absolute, ms, 32-bit (wraps modulo 2**32)
    type_id: int
    stream_id: int  # message stream id (little-endian on the wire!)
    payload: bytes


def _check_chunk_size(size: int) -> int:
    if not 1 <= size <= MAX_CHUNK_SIZE:
        raise ValueError(f"RTMP chunk size must be 1..{MAX_CHUNK_SIZE}, got {size}")
    return size


def _basic_header(fmt: int, csid: int) -> bytes:
    """Chunk basic header: csid 2..63 in 1 byte, 64..319 in 2, up to 65599 in 3."""
    if csid < 64:
        return bytes((fmt << 6 | csid,))
    if csid < 320:
        return bytes((fmt << 6, csid - 64))
    rest = csid - 64
    return bytes((fmt << 6 | 1, rest & 0xFF, rest >> 8))


@dataclass(slots=True)
class _Sent:
    """What the writer last put on one chunk stream, to pick the next header."""

    stream_id: int
    length: int
    type_id: int
    timestamp: int
    # None after a fmt 0 header: what a following fmt 3 means there differs between
    # implementations (the spec and FFmpeg reuse the timestamp, nginx-rtmp uses 0).
    delta: int | None


class ChunkWriter:
    """Splits messages into chunks with the most compact header per chunk stream."""

    def __init__(self, chunk_size: int = 128) -> None:
        self._chunk_size = _check_chunk_size(chunk_size)
        self._last: dict[int, _Sent] = {}

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    def set_chunk_size(self, size: int) -> None:
        """Use `size` from the next `encode` on (send Set Chunk Size first)."""
        self._chunk_size = _check_chunk_size(size)

    def encode(self, msg: Message) -> bytes:
        """Return all chunks of `msg`; raises ValueError for fields that do not fit."""
        if not MIN_CSID <= msg.csid <= MAX_CSID:
            raise ValueError(f"chunk stream id must be {MIN_CSID}..{MAX_CSID}, got {msg.csid}")
        if not 0 <= msg.type_id <= 0xFF:
            raise ValueError(f"message type id must be 0..255, got {msg.type_id}")
        if not 0 <= msg.stream_id <= _U32:
            raise ValueError(f"message stream id must fit in 32 bits, got {msg.stream_id}")
        length = len(msg.payload)
        if length > MAX_PAYLOAD:
            raise ValueError(f"RTMP message payload too large: {length} bytes")
        ts = msg.timestamp & _U32
        prev = self._last.get(msg.csid)
        delta: int | None = None
        if prev is None or prev.stream_id != msg.stream_id or ts < prev.timestamp:
            fmt, value = 0, ts
        else:
            delta = value = ts - prev.timestamp
            if length != prev.length or msg.type_id != prev.type_id:
                fmt = 1
            elif delta != prev.delta:
                fmt = 2
            else:
                fmt = 3
        # The extended field follows the first header and every fmt 3 header of the
        # message, as FFmpeg and nginx-rtmp write and expect it.
        extended = value.to_bytes(4, "big") if value >= _EXTENDED else b""
        out = bytearray(_basic_header(fmt, msg.csid))
        if fmt <= 2:
            out += min(value, _EXTENDED).to_bytes(3, "big")
        if fmt <= 1:
            out += length.to_bytes(3, "big")
            out.append(msg.type_id)
        if fmt == 0:
            out += msg.stream_id.to_bytes(4, "little")
        out += extended
        size = self._chunk_size
        out += msg.payload[:size]
        continuation = _basic_header(3, msg.csid) + extended
        for offset in range(size, length, size):
            out += continuation
            out += msg.payload[offset : offset + size]
        self._last[msg.csid] = _Sent(msg.stream_id, length, msg.type_id, ts, delta)
        return bytes(out)


@dataclass(slots=True)
class _Received:
    """Per chunk stream state of the reader: last header values and partial payload."""

    timestamp: int = 0
    delta: int = 0
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False  # the last fmt 0/1/2 header carried an extended timestamp
    payload: bytearray = field(default_factory=bytearray)  # non-empty: message in progress


class ChunkReader:
    """Reassembles messages from received bytes, fed in pieces of any size.

    Malformed input raises ValueError, after which the reader refuses further input:
    the byte stream cannot be resynchronised, the connection has to be dropped.
    """

    def __init__(self, chunk_size: int = 128, max_message_size: int = 16 * 1024 * 1024) -> None:
        self._chunk_size = _check_chunk_size(chunk_size)
        self._max_message_size = max_message_size
        self._streams: dict[int, _Received] = {}
        self._buf = bytearray()
        self._pos = 0
        self._failed: str | None = None

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    def feed(self, data: bytes) -> list[Message]:
        """Buffer `data` and return every message it completes, in order."""
        if self._failed is not None:
            raise ValueError(f"RTMP chunk stream already broken: {self._failed}")
        self._buf += data
        messages: list[Message] = []
        try:
            while True:
                progressed, msg = self._read_chunk()
                if msg is not None:
                    messages.append(msg)
                if not progressed:
                    return messages
        except ValueError as exc:
            self._failed = str(exc)
            raise
        finally:
            del self._buf[: self._pos]
            self._pos = 0

    def _read_chunk(self) -> tuple[bool, Message | None]:
        """Consume one whole chunk if buffered; (False, None) when more bytes are needed."""
        buf, p = self._buf, self._pos
        end = len(buf)
        if p >= end:
            return False, None
        fmt, csid = buf[p] >> 6, buf[p] & 0x3F
        p += 1
        if csid < 2:
            extra = csid + 1
            if end - p < extra:
                return False, None
            csid = 64 + buf[p] + (buf[p + 1] << 8 if extra == 2 else 0)
            p += extra
        st = self._streams.get(csid)
        if st is None:
            if fmt != 0:
                raise ValueError(f"chunk fmt {fmt} on chunk stream {csid} before any full header")
            st = _Received()  # registered once the chunk is complete
        if st.payload and fmt != 3:
            raise ValueError(f"new message header on chunk stream {csid} inside a message")
        if end - p < _HEADER_SIZE[fmt]:
            return False, None
        # Fields a compressed header leaves out are inherited from the previous one.
        value, extended = st.delta, st.extended
        length, type_id, stream_id = st.length, st.type_id, st.stream_id
        if fmt <= 2:
            value = int.from_bytes(buf[p : p + 3], "big")
            extended = value == _EXTENDED
        if fmt <= 1:
            length = int.from_bytes(buf[p + 3 : p + 6], "big")
            type_id = buf[p + 6]
        if fmt == 0:
            stream_id = int.from_bytes(buf[p + 7 : p + 11], "little")
        p += _HEADER_SIZE[fmt]
        if extended:
            if end - p < 4:
                return False, None
            value = int.from_bytes(buf[p : p + 4], "big")  # unused on a continuation
            p += 4
        if length > self._max_message_size:
            raise ValueError(
                f"RTMP message of {length} bytes exceeds the {self._max_message_size} limit"
            )
        take = min(length - len(st.payload), self._chunk_size)
        if end - p < take:
            return False, None

        # The whole chunk is buffered: commit.
        self._streams[csid] = st
        if not st.payload:  # first chunk of a message: its header values become current
            if fmt == 0:
                st.timestamp = value
            else:
                st.timestamp = (st.timestamp + value) & _U32
            st.delta = value
            st.length, st.type_id, st.stream_id, st.extended = length, type_id, stream_id, extended
        st.payload += buf[p : p + take]
        self._pos = p + take
        if len(st.payload) < length:
            return True, None
        msg = Message(csid, st.timestamp, st.type_id, st.stream_id, bytes(st.payload))
        st.payload = bytearray()
        self._apply_control(msg)
        return True, msg

    def _apply_control(self, msg: Message) -> None:
        """Act on the protocol control messages that change how chunks are read."""
        if msg.type_id == TYPE_SET_CHUNK_SIZE:
            if len(msg.payload) < 4:
                raise ValueError("Set Chunk Size message shorter than 4 bytes")
            size = int.from_bytes(msg.payload[:4], "big")
            if size & 0x80000000 or size < 1:
                raise ValueError(f"invalid RTMP chunk size {size}")
            self._chunk_size = size
        elif msg.type_id == TYPE_ABORT:
            if len(msg.payload) < 4:
                raise ValueError("Abort message shorter than 4 bytes")
            aborted = self._streams.get(int.from_bytes(msg.payload[:4], "big"))
            if aborted is not None:
                aborted.payload = bytearray()
