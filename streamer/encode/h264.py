"""H.264 through PyAV: libx264 tuned for live (veryfast, zerolatency, VBV).

VBV (maxrate/bufsize) is what lets the bitrate change on a running encoder
later; global_header makes SPS/PPS available as extradata at open, so the
FLV sequence header never has to wait for (or consume) a frame.

Changing the bitrate while running (``set_bitrate``), as verified in FFmpeg's
libavcodec/libx264.c and x264's encoder.c: before each frame FFmpeg's
``reconfig_encoder`` compares ``AVCodecContext.bit_rate`` (PyAV ``cc.bit_rate``)
with x264's ``rc.i_bitrate`` (ABR mode, which setting ``bit_rate`` selects), and
``rc_max_rate``/``rc_buffer_size`` (the ``maxrate``/``bufsize`` options) with
``rc.i_vbv_max_bitrate``/``rc.i_vbv_buffer_size``, and calls
``x264_encoder_reconfig`` on a difference. x264 only takes a new bitrate there
when VBV was on at open (hence maxrate/bufsize). PyAV 18 exposes
``rc_max_rate`` as the read-only ``cc.max_bit_rate`` and ``rc_buffer_size`` not
at all (``cc.options`` only applies at open), so only ``bit_rate`` moves: the
VBV ceiling stays at the opening bitrate. Lowering works (ABR converges within
about a second), raising back works up to that ceiling, and asking for more is
capped by x264 at the ceiling, so ``set_bitrate`` clamps to it.

Other encoders: FFmpeg's ``h264_v4l2m2m`` sets ``V4L2_CID_MPEG_VIDEO_BITRATE``
once, in ``v4l2_prepare_encoder`` at open, so ``V4L2H264Encoder``
(encode/select.py) changes bitrate by reopening the encoder at the next
scheduled keyframe (at most once per 2 s, changes under 5 % dropped; new
SPS/PPS travel with that keyframe; about 10 ms without frames plus a fresh
first frame, measured on a fake). The Pi's encoder device itself accepts the
control while streaming: picamera2's ``H264Encoder`` talks to the same V4L2
device, and ``PicameraEncoded.set_bitrate`` sets ``V4L2_CID_MPEG_VIDEO_BITRATE``
on it while running (effective from the next frames, no reopen).
"""

from __future__ import annotations

import threading
from fractions import Fraction
from typing import Any

import av
import av.codec.context
import av.video.frame

from streamer.encode.flv import annexb_to_avcc, avc_decoder_config
from streamer.exc import DeviceError
from streamer.media import Kind, Packet, VideoConfig

MS = Fraction(1, 1000)
# x264 keeps every frame within its VBV buffer. nginx-rtmp drops a publisher
# on any message over 1 MiB (its default max_message), and a keyframe of a
# detailed picture fills the buffer: above 6000 kbps the buffer is capped
# below one second so that the biggest frame still fits (measured: a 1080p
# keyframe of pure noise at 50000 kbps with a one-second buffer was 1.47 MB).
MAX_VBV_BITS = 6_000_000


def vbv_buffer_bits(bitrate_kbps: int) -> int:
    """One second of the bitrate, but never more than MAX_VBV_BITS."""
    return min(bitrate_kbps * 1000, MAX_VBV_BITS)


def set_stream_params(
    cc: Any, width: int, height: int, fps: float, bitrate_kbps: int, gop: int
) -> None:
    """What every H.264 context here shares: size, ms timestamps, rate, GOP, no B-frames,
    SPS/PPS as extradata where the encoder can give them."""
    cc.width, cc.height = width, height
    cc.pix_fmt = "yuv420p"
    cc.time_base = MS
    cc.framerate = Fraction(fps).limit_denominator(1001)
    cc.bit_rate = bitrate_kbps * 1000
    cc.gop_size = gop
    cc.max_b_frames = 0
    cc.flags |= av.codec.context.Flags.global_header


class H264Encoder:
    """Encode raw frames stamped in media milliseconds into AVCC packets.

    ``encode`` runs on one thread (capture); ``set_bitrate`` and
    ``request_keyframe`` may be called from any other (the event loop). The
    codec context is only ever touched by the encoding thread: a new bitrate
    waits as pending and is applied at the start of the next ``encode``.
    ``config`` keeps describing the setup at open (``bitrate_kbps`` included);
    ``current_bitrate_kbps`` is the bitrate in effect.
    """

    name = "libx264"

    def __init__(self, width: int, height: int, fps: float, bitrate_kbps: int) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.bitrate_kbps = bitrate_kbps
        try:
            cc = av.CodecContext.create("libx264", "w")
        except Exception as exc:
            raise DeviceError(f"H.264 encoder libx264 is not available: {exc}") from exc
        gop = max(1, round(2 * fps))
        set_stream_params(cc, width, height, fps, bitrate_kbps, gop)
        cc.options = {
            "preset": "veryfast",
            "tune": "zerolatency",
            "maxrate": str(bitrate_kbps * 1000),
            "bufsize": str(vbv_buffer_bits(bitrate_kbps)),
            "forced-idr": "1",
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        }
        cc.open()
        self._cc = cc
        self._last_pts = -1
        self.keyframe_requested = False
        self.max_bitrate_kbps = bitrate_kbps  # the VBV maxrate set at open: a hard ceiling
        self._current_kbps = bitrate_kbps
        self._pending_kbps: int | None = None
        self._lock = threading.Lock()
        self.config = VideoConfig(
            width=width,
            height=height,
            fps=fps,
            bitrate_kbps=bitrate_kbps,
            avc_config=avc_decoder_config(bytes(cc.extradata or b"")),
            encoder_name=self.name,
        )

    @property
    def current_bitrate_kbps(self) -> int:
        """The target in effect: changes at the first ``encode`` after ``set_bitrate``."""
        return self._current_kbps

    def set_bitrate(self, kbps: int) -> None:
        """Ask for a new target bitrate; thread-safe, applied at the next ``encode``.

        Clamped to ``max_bitrate_kbps`` (the VBV ceiling fixed at open, which x264
        would enforce anyway). The last request before an ``encode`` wins.
        """
        if kbps < 1:
            raise ValueError(f"bitrate must be >= 1 kbps, got {kbps}")
        with self._lock:
            self._pending_kbps = min(kbps, self.max_bitrate_kbps)

    def request_keyframe(self) -> None:
        """Make the next encoded frame an IDR keyframe (the GOP restarts there)."""
        self.keyframe_requested = True

    def _apply_pending_bitrate(self) -> None:
        with self._lock:
            kbps, self._pending_kbps = self._pending_kbps, None
        if kbps is None or kbps == self._current_kbps:
            return
        # libx264 picks this up before the next frame (reconfig_encoder); rc_max_rate
        # (cc.max_bit_rate) is read-only in PyAV, so the VBV ceiling stays as opened.
        self._cc.bit_rate = kbps * 1000
        self._current_kbps = kbps

    def encode(self, frame: av.VideoFrame | None, pts_ms: int = 0) -> list[Packet]:
        """Encode one frame (``None`` flushes); returns the packets it produced."""
        self._apply_pending_bitrate()
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
                config=self.config if p.is_keyframe else None,
            )
            for p in self._cc.encode(frame)
        ]
