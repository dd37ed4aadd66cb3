"""What goes on the wire in a session: timestamps rising strictly from 0, decoder setups."""

from __future__ import annotations

import asyncio
import io
import struct
from typing import Any

import av

from streamer.encode.h264 import H264Encoder
from streamer.hardware.sim import SimCamera
from streamer.media import Kind, Packet, VideoConfig
from streamer.rtmp.session import SESSION_LIMIT_MS, Session


class Wire:
    """Records what a publisher would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.bytes_sent = 0  # where each written frame ends, for the delivery count

    def write_video(self, ts: int, body: bytes) -> None:
        self.sent.append(("video", ts))

    def write_audio(self, ts: int, body: bytes) -> None:
        self.sent.append(("audio", ts))

    async def send_metadata(self, metadata: dict[str, Any]) -> None:
        pass

    async def send_video(self, ts: int, body: bytes) -> None:
        pass

    async def send_audio(self, ts: int, body: bytes) -> None:
        pass


def send(packets: list[Packet]) -> list[tuple[str, int]]:
    wire = Wire()
    session = Session(wire)
    for packet in packets:
        session.write(packet)
    return wire.sent


def video(ms: int, key: bool = False) -> Packet:
    return Packet(Kind.VIDEO, ms, ms, key, b"\x00\x00\x00\x01\x65")


def audio(ms: int) -> Packet:
    return Packet(Kind.AUDIO, ms, ms, True, b"\x21")


def test_a_session_starts_at_its_first_keyframe() -> None:
    sent = send([audio(990), video(995), video(1000, key=True), audio(1011), video(1033)])
    assert sent == [("video", 0), ("audio", 11), ("video", 33)]


def test_a_repeated_or_backward_camera_time_still_rises_and_the_frame_is_kept() -> None:
    # a frame dropped here would break every later frame of its GOP
    sent = send([video(1000, key=True), video(1033), video(1033), video(1020), video(1100)])
    assert sent == [("video", 0), ("video", 33), ("video", 34), ("video", 35), ("video", 100)]


def test_a_session_ends_at_the_first_keyframe_a_minute_before_2_31_ms() -> None:
    wire = Wire()
    session = Session(wire, start_ms=SESSION_LIMIT_MS - 2500)
    for n in range(0, 150):  # 5 s at 30 fps, a keyframe every 2 s
        session.write(video(1000 + n * 33, key=n % 60 == 0))
    video_ts = [ts for kind, ts in wire.sent if kind == "video"]
    assert video_ts[0] == SESSION_LIMIT_MS - 2500
    # the keyframe at +2 s is before the limit and its GOP goes; the one at +4 s is past it
    assert video_ts[-1] == SESSION_LIMIT_MS - 2500 + 119 * 33 < 2**31
    assert len(video_ts) == 120 and session.ended


class FlvWire(Wire):
    """Writes what a publisher would send as an FLV file a player can open."""

    def __init__(self) -> None:
        super().__init__()
        self.flv = io.BytesIO()
        self.flv.write(b"FLV\x01\x01" + struct.pack(">II", 9, 0))

    def _tag(self, ts: int, body: bytes) -> None:
        header = b"\x09" + len(body).to_bytes(3, "big") + ts.to_bytes(3, "big") + b"\0\0\0\0"
        self.flv.write(header + body + struct.pack(">I", len(header) + len(body)))

    def write_video(self, ts: int, body: bytes) -> None:
        super().write_video(ts, body)
        self._tag(ts, body)

    async def send_video(self, ts: int, body: bytes) -> None:
        self._tag(ts, body)


def encoded(width: int, height: int, first: int, frames: int) -> tuple[VideoConfig, list[Packet]]:
    encoder, camera = H264Encoder(width, height, 30, 500), SimCamera(width, height, 30)
    packets = []
    for n in range(first, first + frames):
        frame = av.VideoFrame.from_ndarray(camera.picture(n), format="yuv420p")
        packets += encoder.encode(frame, n * 33)
    return encoder.config, packets + encoder.encode(None)


def test_an_encoder_that_changes_its_sps_pps_keeps_the_viewer_decoding() -> None:
    # a hardware encoder restarted with other settings: here 320x180, then 160x96
    first_config, first = encoded(320, 180, 0, 45)
    _, second = encoded(160, 96, 45, 45)
    assert second[0].keyframe and second[0].config is not None
    wire = FlvWire()
    session = Session(wire)
    asyncio.run(session.open(first_config, None))
    for packet in first + second:
        assert session.write(packet)

    sizes = []
    with av.open(io.BytesIO(wire.flv.getvalue()), "r", format="flv") as viewer:
        for frame in viewer.decode(video=0):
            sizes.append((frame.width, frame.height))
    assert sizes == [(320, 180)] * 45 + [(160, 96)] * 45
    # the second sequence header goes at the keyframe's own time, just before it
    assert wire.sent[45] == wire.sent[46] == ("video", 45 * 33) and len(wire.sent) == 91


def test_a_new_session_sends_the_setup_of_its_first_keyframe() -> None:
    # opened with a stale setup (the encoder changed while we were offline)
    stale_config, _ = encoded(320, 180, 0, 1)
    _, now = encoded(160, 96, 0, 30)
    wire = FlvWire()
    session = Session(wire)
    asyncio.run(session.open(stale_config, None))
    for packet in now:
        session.write(packet)
    with av.open(io.BytesIO(wire.flv.getvalue()), "r", format="flv") as viewer:
        sizes = {(f.width, f.height) for f in viewer.decode(video=0)}
    assert sizes == {(160, 96)}
