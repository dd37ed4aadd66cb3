"""The publisher against a scripted RTMP server: the protocol as a server sees it."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from streamer.exc import ConnectFailed, PublishRejected
from streamer.rtmp import amf0
from streamer.rtmp import message as m
from streamer.rtmp.chunk import ChunkReader, ChunkWriter, Message
from streamer.rtmp.client import RtmpPublisher
from streamer.rtmp.url import parse_url

KEY = "room?token=abc"


@dataclass
class ScriptedServer:
    """Plays the server side of a publish; what the client sent is kept in ``received``."""

    publish_status: tuple[str, str, str] = ("status", "NetStream.Publish.Start", "Started")
    connect_error: str | None = None
    after_publish: Callable[[ScriptedServer], Awaitable[None]] | None = None
    received: list[Message] = field(default_factory=list)
    commands: list[list[Any]] = field(default_factory=list)
    out: ChunkWriter = field(default_factory=ChunkWriter)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, msg: Message) -> None:
        assert self.writer is not None
        self.writer.write(self.out.encode(msg))

    def reply(self, name: str, transaction: float, *args: Any, stream_id: int = 0) -> None:
        self.send(m.command(name, transaction, *args, stream_id=stream_id))

    async def next_message(self, chunks: ChunkReader, pending: list[Message]) -> Message:
        assert self.reader is not None
        while not pending:
            data = await self.reader.read(65536)
            if not data:
                raise EOFError
            pending.extend(chunks.feed(data))
        msg = pending.pop(0)
        self.received.append(msg)
        return msg

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        c0c1 = await reader.readexactly(1537)
        writer.write(b"\x03" + bytes(1536) + c0c1[1:])
        await reader.readexactly(1536)
        chunks, pending = ChunkReader(), list[Message]()
        try:
            while True:
                msg = await self.next_message(chunks, pending)
                if msg.type_id != m.COMMAND_AMF0:
                    continue
                cmd = amf0.decode(msg.payload)
                self.commands.append(cmd)
                name, txn = cmd[0], cmd[1]
                if name == "connect":
                    if self.connect_error:
                        info = {
                            "level": "error",
                            "code": "NetConnection.Connect.Rejected",
                            "description": self.connect_error,
                        }
                        self.reply("_error", txn, None, info)
                        continue
                    self.send(m.window_ack_size(2_500_000))
                    self.send(m.control(m.SET_PEER_BANDWIDTH, struct.pack(">IB", 2_500_000, 2)))
                    self.reply(
                        "_result",
                        txn,
                        {"fmsVer": "FMS/3,0,1,123"},
                        {"level": "status", "code": "NetConnection.Connect.Success"},
                    )
                elif name == "createStream":
                    self.reply("_result", txn, None, 1.0)
                elif name == "publish":
                    level, code, description = self.publish_status
                    self.reply(
                        "onStatus",
                        0,
                        None,
                        {"level": level, "code": code, "description": description},
                        stream_id=1,
                    )
                    if self.after_publish:
                        await self.after_publish(self)
                elif name == "deleteStream":
                    self.done.set()
        except (EOFError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.done.set()
            writer.close()


async def publish_to(
    server: ScriptedServer, body: Callable[[RtmpPublisher], Awaitable[None]], timeout: float = 3.0
) -> None:
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    publisher = RtmpPublisher(parse_url(f"rtmp://127.0.0.1:{port}/live/{KEY}"), timeout=timeout)
    try:
        async with srv:
            try:
                await publisher.connect()
                await body(publisher)
            finally:
                await publisher.close()
            await asyncio.wait_for(server.done.wait(), 5)
    finally:
        srv.close()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


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


def test_connect_error_carries_the_servers_words() -> None:
    server = ScriptedServer(connect_error="Unknown application 'live'")
    with pytest.raises(PublishRejected) as info:
        run(publish_to(server, lambda p: asyncio.sleep(0)))
    assert "Unknown application 'live'" in info.value.message


def test_a_server_that_never_answers_publish_times_out() -> None:
    server = ScriptedServer(publish_status=("status", "NetStream.Something.Else", ""))
    with pytest.raises(ConnectFailed, match=r"did not answer publish within 0\.5 s"):
        run(publish_to(server, lambda p: asyncio.sleep(0), timeout=0.5))
