"""The publisher against a scripted RTMP server: the protocol as a server sees it."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest
from structlog.testing import capture_logs

from streamer.exc import ConnectFailed, ProtocolError, PublishRejected
from streamer.rtmp import amf0
from streamer.rtmp import message as m
from streamer.rtmp.chunk import Message
from streamer.rtmp.client import NOTSENT_LOWAT, TCP_NOTSENT_LOWAT, RtmpPublisher
from streamer.rtmp.url import parse_url
from tests.rtmpserver import KEY, ScriptedServer, frames, listening, publish_to, run


def test_publish_sequence_as_the_server_sees_it() -> None:
    server = ScriptedServer()

    async def body(p: RtmpPublisher) -> None:
        await p.send_metadata({"width": 640.0})
        await p.send_video(0, b"\x17\x00\x00\x00\x00" + bytes(10_000))  # > chunk size

    run(publish_to(server, body))
    first = server.received[0]
    assert (first.type_id, struct.unpack(">I", first.payload)[0]) == (m.SET_CHUNK_SIZE, 4096)
    names = [c[0] for c in server.commands]
    assert names == [
        "connect",
        "releaseStream",
        "FCPublish",
        "createStream",
        "publish",
        "FCUnpublish",
        "deleteStream",
    ]
    connect = server.commands[0][2]
    assert connect["app"] == "live" and connect["tcUrl"].endswith("/live")
    publish = server.commands[4]
    assert publish[3:] == [KEY, "live"]
    meta = next(x for x in server.received if x.type_id == m.DATA_AMF0)
    assert amf0.decode(meta.payload) == ["@setDataFrame", "onMetaData", {"width": 640.0}]
    assert meta.stream_id == 1
    video = next(x for x in server.received if x.type_id == m.VIDEO)
    assert len(video.payload) == 10_005 and video.stream_id == 1


def test_answers_pings_and_acknowledges_each_window() -> None:
    async def after_publish(server: ScriptedServer) -> None:
        server.send(m.window_ack_size(1000))
        server.send(m.control(m.USER_CONTROL, struct.pack(">HI", m.PING_REQUEST, 123456)))
        server.send(m.data("onFiller", "x" * 3000, stream_id=0))  # crosses the window

    server = ScriptedServer(after_publish=after_publish)

    async def body(p: RtmpPublisher) -> None:
        await asyncio.sleep(0.3)

    run(publish_to(server, body))
    pongs = [x.payload for x in server.received if x.type_id == m.USER_CONTROL]
    assert struct.pack(">HI", m.PING_RESPONSE, 123456) in pongs
    acks = [
        struct.unpack(">I", x.payload)[0] for x in server.received if x.type_id == m.ACKNOWLEDGEMENT
    ]
    assert acks and acks[-1] >= 3000


def test_publish_refusal_carries_the_servers_words() -> None:
    server = ScriptedServer(
        publish_status=("error", "NetStream.Publish.BadName", "Stream key is not valid")
    )
    with pytest.raises(PublishRejected) as info:
        run(publish_to(server, lambda p: asyncio.sleep(0)))
    assert info.value.code == "NetStream.Publish.BadName"
    assert "Stream key is not valid" in info.value.message


@pytest.mark.parametrize("gap", [0.0, 0.02])
def test_a_hang_up_right_after_publish_start_is_a_refusal(gap: float) -> None:
    # nginx-rtmp's `deny publish` answers Start and then closes: in one read, or two.
    async def after_publish(server: ScriptedServer) -> None:
        assert server.writer is not None
        await server.writer.drain()
        await asyncio.sleep(gap)
        server.writer.transport.abort()

    server = ScriptedServer(after_publish=after_publish)
    with pytest.raises(PublishRejected, match="in answer to publish; is the stream key right"):
        run(publish_to(server, lambda p: asyncio.sleep(0)))


def test_connect_error_carries_the_servers_words() -> None:
    server = ScriptedServer(connect_error="Unknown application 'live'")
    with pytest.raises(PublishRejected) as info:
        run(publish_to(server, lambda p: asyncio.sleep(0)))
    assert "Unknown application 'live'" in info.value.message


def test_a_server_that_never_answers_publish_times_out() -> None:
    server = ScriptedServer(publish_status=("status", "NetStream.Something.Else", ""))
    with pytest.raises(ConnectFailed, match=r"did not answer publish within 0\.5 s"):
        run(publish_to(server, lambda p: asyncio.sleep(0), timeout=0.5))


def test_connect_is_transaction_1_and_metadata_an_ecma_array() -> None:
    server = ScriptedServer()

    async def body(p: RtmpPublisher) -> None:
        await p.send_metadata({"width": 640.0})

    run(publish_to(server, body))
    assert server.commands[0][:2] == ["connect", 1.0]  # as the spec, FFmpeg and librtmp
    transactions = [c[1] for c in server.commands if c[0] != "publish"]
    assert len(set(transactions)) == len(transactions)
    meta = next(x for x in server.received if x.type_id == m.DATA_AMF0)
    assert type(amf0.decode(meta.payload)[2]) is amf0.EcmaArray  # as FFmpeg and OBS


def test_publish_answered_with_error_gives_the_servers_reason_at_once() -> None:
    server = ScriptedServer(publish_error=("NetStream.Publish.Denied", "key expired"))
    loop_time: list[float] = []

    async def go() -> None:
        start = asyncio.get_running_loop().time()
        try:
            await publish_to(server, lambda p: asyncio.sleep(0), timeout=10)
        finally:
            loop_time.append(asyncio.get_running_loop().time() - start)

    with pytest.raises(PublishRejected) as info:
        run(go())
    assert info.value.code == "NetStream.Publish.Denied"
    assert "key expired" in info.value.message
    assert loop_time[0] < 1.0, f"took {loop_time[0]:.1f} s"


class BrokenConnectAnswer(ScriptedServer):
    """Answers connect with an object we cannot read: AMF3 inside it."""

    def _on_connect(self, txn: float) -> None:
        payload = amf0.encode("_result", txn, None) + b"\x03\x00\x01a\x11\x01\x00\x00\x09"
        self.send(Message(m.CSID_COMMAND, 0, m.COMMAND_AMF0, 0, payload))


def test_an_unreadable_answer_we_wait_for_is_a_clear_error() -> None:
    with pytest.raises(ProtocolError, match=r"answer to connect \(_result\) could not be read"):
        run(publish_to(BrokenConnectAnswer(), lambda p: asyncio.sleep(0), timeout=10), 5)


class BrokenPublishAnswer(ScriptedServer):
    """Answers publish with an onStatus we cannot read."""

    def _on_publish(self, txn: float) -> None:
        payload = amf0.encode("onStatus", 0.0, None) + b"\x03\x00\x04code\x11\x01\x00\x00\x09"
        self.send(Message(m.CSID_COMMAND, 0, m.COMMAND_AMF0, 1, payload))


def test_an_unreadable_status_while_publishing_is_a_clear_error() -> None:
    with pytest.raises(ProtocolError, match=r"answer to publish \(onStatus\) could not be read"):
        run(publish_to(BrokenPublishAnswer(), lambda p: asyncio.sleep(0), timeout=10), 5)


def test_commands_nobody_waits_for_may_carry_anything() -> None:
    async def after_publish(server: ScriptedServer) -> None:
        unreadable = amf0.encode("onWhatever", 0.0, None) + b"\x03\x00\x01a\x11\x01"
        server.send(Message(m.CSID_COMMAND, 0, m.COMMAND_AMF0, 0, unreadable))
        server.send(Message(m.CSID_COMMAND, 0, m.COMMAND_AMF0, 0, b"\x0d"))  # not even a name
        server.reply("onTime", 0, None, {"now": amf0.Date(1.7e12)}, amf0.Reference(0))
        server.reply("onStatus", 0, None, {"code": "NetStream.Info"}, amf0.Amf3(b"\x0a"))
        server.ping()

    server = ScriptedServer(after_publish=after_publish)

    async def body(p: RtmpPublisher) -> None:
        await asyncio.wait_for(server.pong.wait(), 5)  # it read them all and is still live
        for ts, frame in frames(30, 2000):
            await p.send_video(ts, frame)

    with capture_logs() as logs:
        run(publish_to(server, body))
    assert len(server.media(m.VIDEO)) == 30
    skipped = [e for e in logs if e["event"] == "skipped a command we cannot read"]
    assert [e["command"] for e in skipped] == ["onWhatever", None]
    assert all(e["log_level"] == "debug" for e in skipped)


def test_close_reads_the_servers_last_words_and_ends_with_a_fin() -> None:
    server = ScriptedServer()

    async def body(p: RtmpPublisher) -> None:
        await p.send_video(0, bytes(50_000))
        self_ref.append(p)

    self_ref: list[RtmpPublisher] = []
    run(publish_to(server, body))
    [publisher] = self_ref
    assert server.command_names()[-2:] == ["FCUnpublish", "deleteStream"]
    assert publisher.bytes_received == server.bytes_written  # its answers to both, too
    assert server.clean_end is True


def test_the_kernel_holds_only_tens_of_kib_unsent() -> None:
    seen: list[int] = []

    async def body(p: RtmpPublisher) -> None:
        assert p._writer is not None
        sock = p._writer.get_extra_info("socket")
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT))

    run(publish_to(ScriptedServer(), body))
    assert seen == [NOTSENT_LOWAT]
    assert 16 * 1024 <= NOTSENT_LOWAT <= 64 * 1024


def test_a_blackholed_ipv6_address_does_not_eat_the_connect_timeout() -> None:
    """The host resolves to ::1 first, where nothing answers (a full accept queue drops
    SYNs, as a blackholed route would), then to 127.0.0.1, where the server is."""
    hole = socket.socket(socket.AF_INET6)
    hole.bind(("::1", 0))
    hole.listen(0)
    hole_port = hole.getsockname()[1]
    fillers = []
    while True:  # fill the accept queue until a connection attempt gets no answer
        filler = socket.socket(socket.AF_INET6)
        filler.settimeout(0.3)
        fillers.append(filler)
        try:
            filler.connect(("::1", hole_port))
        except TimeoutError:
            break
    server = ScriptedServer()
    took: list[float] = []

    async def go() -> None:
        async with listening(server) as port:
            loop = asyncio.get_running_loop()

            async def resolve(host: str, port_: Any, **kwargs: Any) -> list[Any]:
                assert host == "dual.example"
                return [
                    (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", hole_port, 0, 0)),
                    (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
                ]

            loop.getaddrinfo = resolve  # type: ignore[method-assign,assignment]
            publisher = RtmpPublisher(parse_url(f"rtmp://dual.example:{port}/live/k"), timeout=5)
            start = loop.time()
            try:
                await publisher.connect()
                took.append(loop.time() - start)
            finally:
                await publisher.close()

    try:
        run(go())
    finally:
        for s in [hole, *fillers]:
            s.close()
    assert took[0] < 1.5, f"took {took[0]:.1f} s"
    assert server.command_names()[0] == "connect"
