"""The status page's live picture: the latest frame as a small JPEG, made only when asked.

Capture threads only hand over references (``offer_frame``, ``offer_packets``):
nothing is scaled or encoded while nobody looks. A viewer's ``jpeg`` call does
the work, at most once a second however many viewers ask at once (they share
one lock and the JPEG it made).

Two sources of pictures:

* raw frames (our own encoders' path, after the filters): the viewer sees
  exactly what is streamed, as fresh as the last frame;
* the latest video keyframe (the camera's own hardware encoder, where no raw
  frame reaches us): decoded with its ``VideoConfig.avc_config`` as the H.264
  decoder's extradata, so the picture is up to a GOP (2 s) old.

A raw frame is preferred unless a keyframe came well after it.

Holding a reference to the last frame is safe because no source writes into
a frame it has returned: the sim camera and ``PicameraRaw`` build a new
``av.VideoFrame`` per read (picamera2's buffer is copied out before it is
released), the webcam's and the filter graph's frames are FFmpeg
reference-counted buffers whose pool reuses a buffer only once nobody holds
it, and the encoders only set ``pts``/``pict_type``, never pixels.
``VideoSource`` says so for an app's own camera: one that reused its buffer
would tear the preview (only the preview: the encoders copy the picture in).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import NamedTuple

import av
import structlog
from av.video.reformatter import VideoReformatter

from streamer.media import Kind, Packet

log = structlog.get_logger("streamer")

MAX_WIDTH = 640  # px: the status page's picture, not a second stream
MIN_INTERVAL = 1.0  # s: one encode a second at most, however many ask
QUALITY = 4  # mjpeg qscale (2 best .. 31 worst); ~12 KB at 640x360
FRESH = 1.0  # s: a raw frame older than this before the latest keyframe has stopped coming


class _Offer(NamedTuple):
    """One picture as handed over, and when (the preview's own clock).

    A tuple: the cheapest record to make per frame. Each offer is a new one,
    so ``is`` tells whether the latest picture is the one already encoded.
    """

    at: float
    frame: av.VideoFrame | None = None
    keyframe: Packet | None = None


class Preview:
    """The latest picture of a pipeline as a JPEG at most ``MAX_WIDTH`` px wide.

    ``offer_frame`` and ``offer_packets`` are for the capture threads and
    cost a reference swap; ``jpeg`` is for a viewer (blocking: run it in a
    worker thread). ``encodes`` counts the JPEGs made, ``errors`` the
    attempts that failed (only the first is logged).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # stamps offers, to tell a stale raw frame from a live one
        self._frame: _Offer | None = None  # each replaced whole: readers need no lock
        self._keyframe: _Offer | None = None
        self._lock = threading.Lock()  # one JPEG at a time; the state below is under it
        # Our own scaler: a frame's ``reformat`` uses a context cached in the frame, and
        # one swscale context used from two threads at once crashes or hangs.
        self._scaler = VideoReformatter()
        self._made_from: _Offer | None = None
        self._made_at = -float("inf")
        self._jpeg: bytes | None = None
        self.encodes = 0
        self.errors = 0

    def offer_frame(self, frame: av.VideoFrame) -> None:
        """The frame just captured (after filters): kept by reference, never copied."""
        self._frame = _Offer(self._clock(), frame=frame)

    def offer_packets(self, packets: list[Packet]) -> None:
        """Keep the latest video keyframe that carries its decoder setup."""
        for packet in reversed(packets):
            if packet.kind is Kind.VIDEO and packet.keyframe and packet.config is not None:
                self._keyframe = _Offer(self._clock(), keyframe=packet)
                return

    def jpeg(self, now: float) -> bytes | None:
        """The latest picture as a JPEG; None before any picture (or when making it failed).

        ``now`` is monotonic seconds: within ``MIN_INTERVAL`` of the last one
        made, that one is returned. A caller that waited on the lock while
        another made it gets the fresh one. Never raises.
        """
        with self._lock:
            if 0.0 <= now - self._made_at < MIN_INTERVAL:
                return self._jpeg
            source = self._pick()
            if source is None:
                return None
            if source is not self._made_from:  # a still picture is not encoded again
                self._jpeg = self._make(source)
                self._made_from = source
            self._made_at = now
            return self._jpeg

    def _pick(self) -> _Offer | None:
        frame, keyframe = self._frame, self._keyframe
        if frame is not None and (keyframe is None or keyframe.at - frame.at < FRESH):
            return frame
        return keyframe

    def _make(self, source: _Offer) -> bytes | None:
        try:
            picture = source.frame if source.frame is not None else decode_keyframe(source.keyframe)
            jpeg = encode_jpeg(picture, self._scaler)
        except Exception as exc:  # any failure: no picture this time, and never the caller's
            self.errors += 1
            if self.errors == 1:
                log.warning("preview picture failed", error=repr(exc))
            return None
        self.encodes += 1
        return jpeg


def preview_size(width: int, height: int) -> tuple[int, int]:
    """At most ``MAX_WIDTH`` wide, same aspect, even sides (yuvj420p halves both); no upscale."""
    if width > MAX_WIDTH:
        height, width = round(height * MAX_WIDTH / width), MAX_WIDTH
    return max(2, width & ~1), max(2, height & ~1)


def encode_jpeg(frame: av.VideoFrame, scaler: VideoReformatter | None = None) -> bytes:
    """Scale and encode one frame with FFmpeg's mjpeg (full-range yuvj420p).

    The frame is only read; ``scaler`` must not be in use by another thread.
    """
    width, height = preview_size(frame.width, frame.height)
    small = (scaler or VideoReformatter()).reformat(
        frame, width, height, "yuvj420p", interpolation="AREA", threads=1
    )
    cc = av.CodecContext.create("mjpeg", "w")
    cc.width, cc.height, cc.pix_fmt = width, height, "yuvj420p"
    cc.time_base = Fraction(1, 1)
    cc.qmin = cc.qmax = QUALITY
    data = b"".join(bytes(p) for p in [*cc.encode(small), *cc.encode(None)])
    if not data:
        raise ValueError("the JPEG encoder gave nothing")
    return data


def decode_keyframe(keyframe: Packet | None) -> av.VideoFrame:
    """The picture of one AVCC keyframe, with its SPS/PPS as extradata."""
    if keyframe is None or keyframe.config is None:
        raise ValueError("no keyframe")
    cc = av.CodecContext.create("h264", "r")
    cc.extradata = keyframe.config.avc_config
    frames = [*cc.decode(av.Packet(keyframe.data)), *cc.decode(None)]
    if not frames:
        raise ValueError("the keyframe decoded to no picture")
    frame = frames[-1]
    assert isinstance(frame, av.VideoFrame)
    return frame
