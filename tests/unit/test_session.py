"""What goes on the wire in a session: each track's timestamps rise strictly from 0."""

from __future__ import annotations

from typing import Any

from streamer.media import Kind, Packet
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
