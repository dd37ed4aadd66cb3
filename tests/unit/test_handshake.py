"""Tests for streamer.rtmp.handshake against scripted peers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from streamer.exc import ProtocolError, StreamerError
from streamer.rtmp.handshake import HANDSHAKE_SIZE, client_handshake, make_c0c1, make_c2

Peer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Seen:
    """What a scripted server received from the client."""

    c0c1: bytes = b""
    c2: bytes = b""


async def run_client(peer: Peer, timeout: float = 5.0) -> None:
    """Serve `peer` on an ephemeral port and run the client handshake against it."""
    server = await asyncio.start_server(peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await client_handshake(reader, writer, timeout=timeout)
        finally:
            writer.close()


def run(coro: Awaitable[None]) -> None:
    """Run with an outer bound so that a broken handshake cannot hang the suite."""

    async def bounded() -> None:
        await asyncio.wait_for(coro, 10)

    asyncio.run(bounded())


def scripted_server(
    seen: Seen, done: asyncio.Event, s1: bytes, s2: bytes | None, s2_after_c2: bool = False
) -> Peer:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.c0c1 = await reader.readexactly(1 + HANDSHAKE_SIZE)
        # S2 normally echoes C1; a peer may also send something else.
        answer_s2 = seen.c0c1[1:] if s2 is None else s2
        writer.write(b"\x03" + s1 + (b"" if s2_after_c2 else answer_s2))
        await writer.drain()
        seen.c2 = await reader.readexactly(HANDSHAKE_SIZE)
        if s2_after_c2:
            writer.write(answer_s2)
            await writer.drain()
        done.set()
        await reader.read()  # until the client closes
        writer.close()

    return peer


@pytest.mark.parametrize(
    ("s2", "s2_after_c2"),
    [(None, False), (b"\xee" * HANDSHAKE_SIZE, False), (None, True)],
    ids=["echo", "s2-not-an-echo", "s2-only-after-c2"],
)
def test_handshake_with_a_conforming_server(s2: bytes | None, s2_after_c2: bool) -> None:
    seen = Seen()
    s1 = os.urandom(HANDSHAKE_SIZE)

    async def scenario() -> None:
        done = asyncio.Event()
        await run_client(scripted_server(seen, done, s1, s2, s2_after_c2))
        await asyncio.wait_for(done.wait(), 5)

    run(scenario())
    assert seen.c0c1[0] == 3
    assert len(seen.c0c1) == 1 + HANDSHAKE_SIZE
    assert seen.c0c1[5:9] == b"\x00\x00\x00\x00"
    assert seen.c2 == s1


def silent_until_eof(answer: bytes) -> Peer:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1 + HANDSHAKE_SIZE)
        writer.write(answer)
        await writer.drain()
        await reader.read()
        writer.close()

    return peer


def test_wrong_version_is_a_protocol_error_naming_it() -> None:
    s1 = bytes(HANDSHAKE_SIZE)
    with pytest.raises(ProtocolError, match=r"version 6\b"):
        run(run_client(silent_until_eof(b"\x06" + s1 + s1)))


def test_server_closing_after_s0_is_a_protocol_error() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(1 + HANDSHAKE_SIZE)
        writer.write(b"\x03")
        await writer.drain()
        writer.close()

    with pytest.raises(ProtocolError, match="closed the connection") as info:
        run(run_client(peer))
    assert isinstance(info.value, StreamerError)
    assert info.value.message == "server closed the connection during the RTMP handshake"


def test_silent_server_times_out_as_a_protocol_error() -> None:
    start = time.monotonic()
    with pytest.raises(ProtocolError, match=r"within 0\.5 s"):
        run(run_client(silent_until_eof(b""), timeout=0.5))
    assert 0.4 < time.monotonic() - start < 3


def test_server_stalling_before_s2_times_out() -> None:
    with pytest.raises(ProtocolError, match="did not complete"):
        run(run_client(silent_until_eof(b"\x03" + bytes(HANDSHAKE_SIZE)), timeout=0.5))


def test_make_c0c1_layout() -> None:
    rand = bytes(range(256)) * 5 + bytes(range(248))
    assert make_c0c1(0x01020304, rand) == b"\x03\x01\x02\x03\x04\x00\x00\x00\x00" + rand
    assert make_c0c1(2**32 + 5, rand)[1:5] == b"\x00\x00\x00\x05"
    generated = make_c0c1()
    assert len(generated) == 1 + HANDSHAKE_SIZE
    assert generated[:9] == b"\x03" + bytes(8)
    assert generated[9:] != make_c0c1()[9:]  # fresh random bytes each time
    with pytest.raises(ValueError):
        make_c0c1(0, b"short")


def test_make_c2_echoes_s1() -> None:
    s1 = os.urandom(HANDSHAKE_SIZE)
    assert make_c2(s1) == s1
    with pytest.raises(ValueError):
        make_c2(s1[:-1])
