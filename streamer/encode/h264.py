"""H.264 through PyAV: libx264 tuned for live (veryfast, zerolatency, VBV).

VBV (maxrate/bufsize) is what lets the bitrate change on a running encoder
later; global_header makes SPS/PPS available as extradata at open, so the
FLV sequence header never has to wait for (or consume) a frame.
"""

from __future__ import annotations

from fractions import Fraction

import av
import av.codec.context
import av.video.frame

from streamer.encode.flv import annexb_to_avcc, avc_decoder_config
from streamer.exc import DeviceError
from streamer.media import Kind, Packet, VideoConfig

MS = Fraction(1, 1000)


class H264Encoder:
    """Encode raw frames stamped in media milliseconds into AVCC packets."""

    name = "libx264"

    def __init__(self, width: int, height: int, fps: float, bitrate_kbps: int) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.bitrate_kbps = bitrate_kbps
        try:
            cc = av.CodecContext.create("libx264", "w")
        except Exception as exc:
            raise DeviceError(f"H.264 encoder libx264 is not available: {exc}") from exc
        gop = max(1, round(2 * fps))
        cc.width, cc.height = width, height
        cc.pix_fmt = "yuv420p"
        cc.time_base = MS
        cc.framerate = Fraction(fps).limit_denominator(1001)
        cc.bit_rate = bitrate_kbps * 1000
        cc.gop_size = gop
        cc.max_b_frames = 0
        cc.flags |= av.codec.context.Flags.global_header
        cc.options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "maxrate": str(bitrate_kbps * 1000),
            "bufsize": str(bitrate_kbps * 1000),
            "forced-idr": "1",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        }
        cc.open()
        self._cc = cc
        self._last_pts = -1
        self.keyframe_requested = False
        self.config = VideoConfig(
            width=width,
            height=height,
            fps=fps,
            bitrate_kbps=bitrate_kbps,
            avc_config=avc_decoder_config(bytes(cc.extradata or b"")),
            encoder_name=self.name,
        )

    def encode(self, frame: av.VideoFrame | None, pts_ms: int = 0) -> list[Packet]:
        """Encode one frame (``None`` flushes); returns the packets it produced."""
        if frame is not None:
            pts_ms = max(pts_ms, self._last_pts + 1)  # the encoder needs strictly rising pts
            self._last_pts = pts_ms
            frame.pts = pts_ms
            frame.time_base = MS
            if self.keyframe_requested:
                frame.pict_type = av.video.frame.PictureType.I
                self.keyframe_requested = False
        return [
            Packet(
                kind=Kind.VIDEO,
                pts_ms=int(p.pts if p.pts is not None else pts_ms),
                dts_ms=int(p.dts if p.dts is not None else pts_ms),
                keyframe=bool(p.is_keyframe),
                data=annexb_to_avcc(bytes(p)),
            )
            for p in self._cc.encode(frame)
        ]
