"""Plain (non-digest) RTMP client handshake.

nginx-rtmp accepts the plain scheme from publishers, so the Flash-player digest
variant is not needed: C1 is time + zeros + random, C2 echoes S1.
"""

from __future__ import annotations

import asyncio
import os

from streamer.exc import ProtocolError

HANDSHAKE_SIZE = 1536
RTMP_VERSION = 3
_RANDOM_SIZE = HANDSHAKE_SIZE - 8


def make_c0c1(epoch_ms: int = 0, random_bytes: bytes | None = None) -> bytes:
    """C0 (version 3) + C1: time (4 bytes BE, wrapped), four zero bytes, 1528 random bytes."""
    if random_bytes is None:
        random_bytes = os.urandom(_RANDOM_SIZE)
    if len(random_bytes) != _RANDOM_SIZE:
        raise ValueError(f"C1 needs {_RANDOM_SIZE} random bytes, got {len(random_bytes)}")
    return (
        bytes((RTMP_VERSION,))
        + (epoch_ms & 0xFFFFFFFF).to_bytes(4, "big")
        + bytes(4)
        + random_bytes
    )


def make_c2(s1: bytes) -> bytes:
    """C2 for the plain scheme: S1 sent back unchanged."""
    if len(s1) != HANDSHAKE_SIZE:
        raise ValueError(f"S1 must be {HANDSHAKE_SIZE} bytes, got {len(s1)}")
    return bytes(s1)


async def client_handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float = 10.0
) -> None:
    """Run the handshake as a client; ProtocolError if the server misbehaves or stalls.

    S2 is read but not checked: some servers do not echo C1 in it.
    """
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            writer.write(make_c0c1())
            await writer.drain()
            s0 = await reader.readexactly(1)
            if s0[0] != RTMP_VERSION:
                raise ProtocolError(
                    f"server answered with RTMP version {s0[0]}, expected {RTMP_VERSION}"
                )
            s1 = await reader.readexactly(HANDSHAKE_SIZE)
            writer.write(make_c2(s1))
            await reader.readexactly(HANDSHAKE_SIZE)  # S2
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        raise ProtocolError("server closed the connection during the RTMP handshake") from None
    except TimeoutError:
        if not deadline.expired():
            raise
        raise ProtocolError(
            f"server did not complete the RTMP handshake within {timeout:g} s"
        ) from None
