"""What goes on the wire in a session: each track's timestamps rise strictly from 0."""

from __future__ import annotations

from typing import Any, cast

from streamer.app import Settings, Streamer
from streamer.media import Kind, Packet
from streamer.rtmp.url import parse_url


class Wire:
    """Records what a publisher would send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def write_video(self, ts: int, body: bytes) -> None:
        self.sent.append(("video", ts))

    def write_audio(self, ts: int, body: bytes) -> None:
        self.sent.append(("audio", ts))


def send(packets: list[Packet]) -> list[tuple[str, int]]:
    streamer = Streamer(Settings(url=parse_url("rtmp://127.0.0.1/live/key")))
    wire = Wire()
    for packet in packets:
        streamer._write(cast(Any, wire), packet)
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
