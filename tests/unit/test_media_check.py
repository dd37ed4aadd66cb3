"""The viewer-side checks themselves: a broken stream must show up as decode errors."""

from __future__ import annotations

import av

from streamer.encode.h264 import H264Encoder
from streamer.hardware.sim import SimCamera
from tests.media_check import ffmpeg_log


def test_ffmpeg_errors_are_captured_from_a_damaged_frame() -> None:
    encoder, camera = H264Encoder(160, 96, 30, 300), SimCamera(160, 96, 30)
    packets = []
    for n in range(20):
        frame = av.VideoFrame.from_ndarray(camera.picture(n), format="yuv420p")
        packets += encoder.encode(frame, n * 33)
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = encoder.config.avc_config
    with ffmpeg_log() as logs:
        for i, packet in enumerate(packets):
            data = bytearray(packet.data)
            if i == 5:  # garbage in the middle of one frame, as a broken sender would leave
                middle = len(data) // 2
                data[middle : middle + 40] = b"\xff" * 40
            decoder.decode(av.Packet(bytes(data)))
    errors = [text for level, _, text in logs if level <= av.logging.ERROR]
    assert errors, (
        "FFmpeg's complaints must reach the tests, or 'zero decode errors' proves nothing"
    )
