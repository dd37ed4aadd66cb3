"""RTMP message types and the few messages a publisher builds or parses."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from streamer.rtmp import amf0
from streamer.rtmp.chunk import Message

# Protocol control messages (RTMP spec 5.4) and others used by a publisher.
SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF0 = 18
COMMAND_AMF0 = 20

# User control event types (spec 7.1.7).
PING_REQUEST = 6
PING_RESPONSE = 7

# Chunk stream ids, as FFmpeg and OBS use them.
CSID_CONTROL = 2
CSID_COMMAND = 3
CSID_AUDIO = 4
CSID_DATA = 5
CSID_VIDEO = 6


def control(type_id: int, payload: bytes) -> Message:
    """Protocol control messages travel on csid 2, message stream 0, time 0."""
    return Message(CSID_CONTROL, 0, type_id, 0, payload)


def set_chunk_size(size: int) -> Message:
    return control(SET_CHUNK_SIZE, struct.pack(">I", size & 0x7FFFFFFF))


def window_ack_size(size: int) -> Message:
    return control(WINDOW_ACK_SIZE, struct.pack(">I", size))


def acknowledgement(sequence: int) -> Message:
    return control(ACKNOWLEDGEMENT, struct.pack(">I", sequence & 0xFFFFFFFF))


def ping_response(timestamp: bytes) -> Message:
    return control(USER_CONTROL, struct.pack(">H", PING_RESPONSE) + timestamp[:4])


def command(name: str, transaction: float, *args: Any, stream_id: int = 0) -> Message:
    """An AMF0 command: name, transaction id, command object (or null), arguments."""
    return Message(CSID_COMMAND, 0, COMMAND_AMF0, stream_id, amf0.encode(name, transaction, *args))


def data(name: str, *args: Any, stream_id: int) -> Message:
    return Message(CSID_DATA, 0, DATA_AMF0, stream_id, amf0.encode(name, *args))


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    transaction: float
    args: list[Any]

    def info(self) -> dict[str, Any]:
        """The first object argument: where servers put code/level/description."""
        for arg in self.args:
            if isinstance(arg, dict):
                return arg
        return {}


def parse_command(payload: bytes) -> Command:
    """Decode an AMF0 command message; anything malformed raises ValueError."""
    values = amf0.decode(payload)
    if not values or not isinstance(values[0], str):
        raise ValueError("command message does not start with a name")
    transaction = values[1] if len(values) > 1 and isinstance(values[1], float) else 0.0
    return Command(values[0], transaction, values[2:])


def peek_command(payload: bytes) -> tuple[str | None, float]:
    """Name and transaction id of a command whose arguments may not decode (0.0 if absent)."""
    try:
        name, pos = amf0.decode_value(payload)
    except ValueError:
        return None, 0.0
    if not isinstance(name, str):
        return None, 0.0
    try:
        transaction, _ = amf0.decode_value(payload, pos)
    except ValueError:
        return name, 0.0
    return name, transaction if isinstance(transaction, float) else 0.0


def u32(payload: bytes) -> int:
    if len(payload) < 4:
        raise ValueError(f"control message too short: {len(payload)} bytes")
    value: int = struct.unpack_from(">I", payload)[0]
    return value
