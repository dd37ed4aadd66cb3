"""A camera that encodes itself (the Pi's hardware path): its SPS/PPS reach the viewer."""

from __future__ import annotations

from fractions import Fraction

import av

from streamer.clock import MediaClock
from streamer.encode.camera import CameraEncoder
from streamer.hardware.base import EncodedSink
from streamer.hardware.sim import SimCamera
from streamer.media import Packet


class Camera:
    """An EncodedVideoSource whose frames the test hands over itself."""

    width, height, fps, encoder_name = 320, 180, 30.0, "fake hardware"

    def start(self, sink: EncodedSink) -> None: ...
    def set_bitrate(self, kbps: int) -> None: ...
    def request_keyframe(self) -> None: ...
    def stop(self) -> None: ...


def annexb_frames(width: int, height: int, frames: int) -> list[tuple[bytes, bool]]:
    """What a hardware encoder gives: Annex B, SPS/PPS repeated in every keyframe."""
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = width, height, "yuv420p"
    cc.time_base = Fraction(1, 30)
    cc.options = {"preset": "ultrafast", "tune": "zerolatency", "x264-params": "keyint=15"}
    camera = SimCamera(width, height, 30)
    out = []
    for n in range(frames):
        frame = av.VideoFrame.from_ndarray(camera.picture(n), format="yuv420p")
        frame.pts = n
        out += [(bytes(p), bool(p.is_keyframe)) for p in cc.encode(frame)]
    return out + [(bytes(p), bool(p.is_keyframe)) for p in cc.encode(None)]


def test_a_keyframe_with_new_sps_pps_carries_them_to_the_viewer() -> None:
    packets: list[Packet] = []
    encoder = CameraEncoder(Camera(), MediaClock(0.0), packets.extend, 800)
    frames = annexb_frames(320, 180, 30) + annexb_frames(160, 96, 30)  # the encoder restarted
    for n, (data, keyframe) in enumerate(frames):
        encoder.on_frame(data, keyframe, n / 30)

    assert len(packets) == 60 and packets[0].keyframe and packets[30].keyframe
    configs = [p.config for p in packets if p.config is not None]
    assert len(configs) == 4  # every keyframe carries its setup
    assert configs[0] == configs[1] != configs[2] == configs[3]
    assert encoder.config == configs[3]
    sizes = []
    decoder = None
    for p in packets:  # a viewer: a new decoder setup whenever it changes
        if p.config is not None and (decoder is None or decoder.extradata != p.config.avc_config):
            if decoder is not None:
                sizes += [(f.width, f.height) for f in decoder.decode(None)]
            decoder = av.CodecContext.create("h264", "r")
            decoder.extradata = p.config.avc_config
        assert decoder is not None
        sizes += [(f.width, f.height) for f in decoder.decode(av.Packet(p.data))]
    sizes += [(f.width, f.height) for f in decoder.decode(None)] if decoder else []
    assert sizes == [(320, 180)] * 30 + [(160, 96)] * 30
