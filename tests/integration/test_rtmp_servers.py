"""The publisher against servers that are not nginx-rtmp: SRS-like, mediamtx-like, silent, strict.

Scripted servers (tests/rtmpserver.py) on loopback play what SRS and
mediamtx do where they differ from nginx-rtmp; the real RtmpPublisher, and
for two of them the real ``streamer run``, publish to them. Every test is
bounded; "nothing stalls" means no frame waits more than STALL_LIMIT s for
room to be sent.
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import struct
import time

import pytest

from streamer.exc import PublishRejected
from streamer.rtmp import amf0
from streamer.rtmp import message as m
from streamer.rtmp.client import RtmpPublisher
from streamer.rtmp.url import parse_url
from tests.conftest import run_cli
from tests.rtmpserver import (
    RESTART,
    ScriptedServer,
    ServerThread,
    frames,
    listening,
    run,
)

STALL_LIMIT = 2.0
SIOCOUTQNSD = 0x894B  # Linux: bytes in the socket's send queue not yet sent


async def push(
    publisher: RtmpPublisher, count: int, size: int, paced_by: ScriptedServer | None = None
) -> float:
    """Send ``count`` video frames as the app's pump does; the longest wait for room.

    ``paced_by``: after each frame, wait until that server has read it, as on a
    link faster than the video, where each ack comes once everything arrived.
    """
    loop = asyncio.get_running_loop()
    longest = 0.0
    for ts, body in frames(count, size):
        waited_since = loop.time()
        while not publisher.has_room():
            await publisher.wait_for_room(0.5)
            assert loop.time() - waited_since < STALL_LIMIT, (
                f"stalled at {ts} ms: acked {publisher.server_acked} "
                f"of {publisher.bytes_sent} bytes sent"
            )
        longest = max(longest, loop.time() - waited_since)
        publisher.write_video(ts, body)
        await publisher.flush()
        await asyncio.sleep(0)  # let the reader take the server's acks
        if paced_by is not None:
            await paced_by.read_up_to(publisher.bytes_sent - paced_by.counter_start, STALL_LIMIT)
    return longest


async def publish(
    server: ScriptedServer, count: int, size: int, key: str = "k", paced: bool = False
) -> tuple[RtmpPublisher, float]:
    async with listening(server) as port:
        publisher = RtmpPublisher(parse_url(f"rtmp://127.0.0.1:{port}/live/{key}"), timeout=5)
        # Hours into a session: the server's counter starts near its restart, and so
        # does our count of bytes sent (nothing else depends on where it starts).
        publisher.bytes_sent = server.counter_start
        try:
            await publisher.connect()
            await publisher.send_metadata({"width": 320.0})
            longest = await push(publisher, count, size, server if paced else None)
        finally:
            await publisher.close()
        await asyncio.wait_for(server.done.wait(), 5)
    return publisher, longest


def video_timestamps(server: ScriptedServer) -> list[int]:
    return [x.timestamp for x in server.media(m.VIDEO)]


def test_an_srs_like_server_gets_every_frame_across_its_counter_restart() -> None:
    """Transaction id 1 for connect whatever was sent, chunk size 60000, ECMA array in
    the connect info, onBWDone, onFCPublish, a Date in an unsolicited command, and acks
    restarting at 0xF0000000 (300 kB into the stream)."""
    server = ScriptedServer(srs=True, acks="srs", counter_start=RESTART - 300_000)
    publisher, longest = (None, 0.0)

    async def go() -> None:
        nonlocal publisher, longest
        publisher, longest = await publish(server, 300, 6_000, key="srs-room")

    run(go(), timeout=60)
    assert publisher is not None
    assert server.command_names()[:5] == [
        "connect",
        "releaseStream",
        "FCPublish",
        "createStream",
        "publish",
    ]
    assert server.commands[4][3] == "srs-room"
    assert len(server.media(m.VIDEO)) == 300
    assert video_timestamps(server) == [ts for ts, _ in frames(300, 0)]
    restarts = [b for a, b in itertools.pairwise(server.ack_values) if b < a]
    assert len(restarts) == 1, "the scripted SRS restarted its counter once"
    assert publisher.server_acked is not None
    assert publisher.bytes_sent - publisher.server_acked < 64 * 1024
    assert server.clean_end is True
    print(f"SRS-like: 300 frames, {len(server.ack_values)} acks, longest wait {longest:.3f} s")


def test_a_mediamtx_like_server_whose_acks_count_the_handshake_never_stalls() -> None:
    server = ScriptedServer(count_handshake=True)
    publisher, longest = (None, 0.0)

    async def go() -> None:
        nonlocal publisher, longest
        # small frames, each read before the next: every ack is ahead of what we sent
        publisher, longest = await publish(server, 300, 2_000, paced=True)

    run(go(), timeout=60)
    assert publisher is not None
    assert len(server.media(m.VIDEO)) == 300
    assert publisher.server_acked is not None
    assert publisher.bytes_sent - publisher.server_acked < 8192
    assert longest < STALL_LIMIT
    print(f"mediamtx-like: 300 frames of 2 kB, longest wait for room {longest:.3f} s")


def test_nginx_counter_restart_midstream_does_not_close_the_window() -> None:
    server = ScriptedServer(acks="nginx", counter_start=RESTART - 200_000)
    publisher, longest = (None, 0.0)

    async def go() -> None:
        nonlocal publisher, longest
        publisher, longest = await publish(server, 300, 10_000)

    run(go(), timeout=60)
    assert publisher is not None
    assert len(server.media(m.VIDEO)) == 300
    assert min(server.ack_values) < 100_000 < RESTART - 20_000 < max(server.ack_values)
    assert publisher.server_acked is not None
    assert publisher.bytes_sent - publisher.server_acked < 64 * 1024


def test_a_server_that_never_acks_cannot_hide_megabytes_in_the_kernel() -> None:
    """No acks: the in-flight window never closes. What bounds the backlog hidden
    below our queue is our buffer limit and TCP_NOTSENT_LOWAT (about 4 MB without it
    here); the slow server's own socket and reader hold the rest."""
    server = ScriptedServer(acks="none", read_rate=250_000)
    hidden: list[int] = []
    unsent: list[int] = []

    async def go() -> None:
        async with listening(server, rcvbuf=64 * 1024) as port:
            url = parse_url(f"rtmp://127.0.0.1:{port}/live/k")
            publisher = RtmpPublisher(url, timeout=5)
            await publisher.connect()
            assert publisher._writer is not None
            sock = publisher._writer.get_extra_info("socket")
            loop = asyncio.get_running_loop()
            end = loop.time() + 3.0
            for ts, body in frames(10_000, 10_000):
                if loop.time() > end:
                    break
                if not publisher.has_room():
                    await publisher.wait_for_room(0.5)
                publisher.write_video(ts, body)
                await publisher.flush()
                await asyncio.sleep(0)
                hidden.append(publisher.bytes_sent - server.bytes_read)
                queued = fcntl.ioctl(sock.fileno(), SIOCOUTQNSD, b"\0" * 4)
                unsent.append(struct.unpack("i", queued)[0])
            server.read_rate = None  # drain fast so that the close is quick
            await publisher.close()
            await asyncio.wait_for(server.done.wait(), 10)

    run(go(), timeout=30)
    print(f"never acks: hidden max {max(hidden)} B, kernel unsent max {max(unsent)} B")
    assert server.ack_values == []
    assert max(unsent) <= 32 * 1024 + 64 * 1024  # the low-water mark and one segment
    assert max(hidden) < 1_000_000
    assert server.bytes_read > 500_000  # it did stream meanwhile


def test_without_server_acks_the_window_follows_tcps_acks() -> None:
    """A never-acking server that stops reading: what its TCP has not acknowledged
    stays in flight, at most a window of it, and bytes_delivered says so."""
    server = ScriptedServer(acks="none", stop_reading_after=50_000)
    seen: dict[str, int] = {}

    async def go() -> None:
        async with listening(server, rcvbuf=4096) as port:
            publisher = RtmpPublisher(parse_url(f"rtmp://127.0.0.1:{port}/live/k"), timeout=5)
            await publisher.connect()
            loop = asyncio.get_running_loop()
            start = loop.time()
            try:
                for ts, body in frames(45, 5_000):  # 1.5 s of 1.2 Mbit/s video, paced
                    await asyncio.sleep(max(0.0, start + ts / 1000 - loop.time()))
                    if not publisher.has_room():
                        await publisher.wait_for_room(0.5)
                        if not publisher.has_room():
                            break  # the window is full: the send queue would keep the rest
                    publisher.write_video(ts, body)
                    await publisher.flush()
                    await asyncio.sleep(0)
                seen["sent"] = publisher.bytes_sent
                seen["delivered"] = publisher.bytes_delivered
                seen["limit"] = publisher.tcp_window.limit()
            finally:
                publisher.abandon()
                await publisher.close()

    run(go(), timeout=20)
    in_flight = seen["sent"] - seen["delivered"]
    print(f"TCP window: {in_flight} B unacknowledged of {seen['sent']} sent, limit {seen['limit']}")
    assert server.ack_values == []
    assert 0 < in_flight <= seen["limit"] + 5_000 + 64  # the window, and the frame that filled it
    assert seen["sent"] < 300_000, "stopped at the window, not when buffers filled"


def test_publish_refused_with_error_reaches_the_user_at_once() -> None:
    """The server's _error reason is in the error line; in-process it arrives within 1 s."""

    def make() -> ScriptedServer:
        return ScriptedServer(publish_error=("NetStream.Publish.Denied", "stream key expired"))

    took: list[float] = []

    async def in_process(port: int) -> None:
        publisher = RtmpPublisher(parse_url(f"rtmp://127.0.0.1:{port}/live/k"), timeout=10)
        start = time.monotonic()
        try:
            with pytest.raises(PublishRejected, match="stream key expired"):
                await publisher.connect()
            took.append(time.monotonic() - start)
        finally:
            await publisher.close()

    with ServerThread(make) as server:
        run(in_process(server.port))
        result = run_cli(
            "run", "--url", server.url("secret-key"), "--size", "320x180", "--duration", "5",
            timeout=40,
        )  # fmt: skip
        exited = time.monotonic()
    assert took[0] < 1.0, f"{took[0]:.2f} s"
    assert result.returncode == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("streamer: error:")]
    assert len(errors) == 1 and "NetStream.Publish.Denied" in errors[0], result.stderr
    assert "stream key expired" in errors[0]
    assert "secret-key" not in result.output
    cli_session = server.sessions[-1]
    assert cli_session.publish_at is not None
    print(
        f"publish _error: {took[0] * 1000:.0f} ms in process; "
        f"CLI exited {exited - cli_session.publish_at:.2f} s after the server refused"
    )
    assert exited - cli_session.publish_at < 5.0


def test_the_cli_streams_to_an_srs_like_server() -> None:
    with ServerThread(lambda: ScriptedServer(srs=True, acks="srs")) as server:
        result = run_cli(
            "run", "--url", server.url("cli-room"), "--size", "320x180", "--duration", "4",
            timeout=60,
        )  # fmt: skip
        [session] = server.wait_sessions(1, timeout=10)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cli-room" not in result.output
    assert session.commands[4][:4] == ["publish", 5.0, None, "cli-room"]
    meta = next(x for x in session.received if x.type_id == m.DATA_AMF0)
    assert type(amf0.decode(meta.payload)[2]) is amf0.EcmaArray
    video = session.media(m.VIDEO)
    header = video[0].payload
    assert header[:2] == b"\x17\x00" and header[6] == 100  # High profile ...
    assert header.endswith(b"\xfd\xf8\xf8\x00")  # ... with its 4:2:0 8-bit trailer
    timestamps = [x.timestamp for x in video[1:]]
    assert len(timestamps) >= 0.9 * 4 * 30
    assert all(b > a for a, b in itertools.pairwise(timestamps))
    assert session.media(m.AUDIO)
    assert session.clean_end is True
    print(f"CLI to SRS-like: {len(timestamps)} video frames, {len(session.ack_values)} acks")
