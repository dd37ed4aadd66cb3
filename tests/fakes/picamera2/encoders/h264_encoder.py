"""Fake of picamera2/encoders/h264_encoder.py: the Pi's V4L2 H.264 encoder, done with libx264.

Like the real one it encodes in its own thread (the real one polls
/dev/video11) and calls ``outputframe`` from there; with ``repeat`` SPS/PPS
precede every keyframe (libx264 without global_header repeats its headers
in-band); ``iperiod`` is the keyframe interval; ``force_key_frame()`` makes
the next frame an IDR; ``vd`` stands for the open device and its
``bitrate`` is the V4L2_CID_MPEG_VIDEO_BITRATE control, taken up while
running.
"""

from __future__ import annotations

import queue
import threading
from fractions import Fraction

import av
import av.codec.context
import av.video.frame
import numpy as np

from ..request import CompletedRequest
from .encoder import Encoder, Quality


class FakeV4L2Device:
    """Stands for the encoder's open /dev/video11 (``encoder.vd``)."""

    def __init__(self, bitrate: int) -> None:
        self.closed = False
        self.bitrate = bitrate  # the V4L2_CID_MPEG_VIDEO_BITRATE control


class H264Encoder(Encoder):
    def __init__(
        self,
        bitrate: int | None = None,
        repeat: bool = True,
        iperiod: int | None = None,
        framerate: float | None = None,
        enable_sps_framerate: bool = False,
        qp: int | None = None,
        profile: str | None = None,
    ) -> None:
        super().__init__()
        self.bitrate = bitrate
        self.iperiod = iperiod
        self.repeat = repeat
        self.qp = qp
        self.profile = profile
        self.framerate = framerate
        self._enable_framerate = enable_sps_framerate
        self.vd: FakeV4L2Device | None = None
        self._key_frames_requested = 0
        self._key_frames_generated = 0
        self._frames: queue.Queue[tuple[CompletedRequest, int, bool]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def _setup(self, quality: Quality | None) -> None:
        if quality is not None or (self.bitrate is None and self.qp is None):
            table = {Quality.VERY_LOW: 2, Quality.LOW: 4, Quality.MEDIUM: 6, Quality.HIGH: 9}
            mbps = table.get(quality or Quality.MEDIUM, 15)
            complexity = self.width * self.height * (self.framerate or 30) / (1920 * 1080 * 30)
            self.bitrate = int(mbps * 1_000_000 * complexity)

    def force_key_frame(self) -> None:
        """Force a key frame to be encoded in the video stream as soon as possible."""
        self._key_frames_requested += 1

    def _start(self) -> None:
        bitrate = self.bitrate or 1_000_000
        cc = av.CodecContext.create("libx264", "w")
        assert isinstance(cc, av.VideoCodecContext)
        cc.width, cc.height, cc.pix_fmt = self.width, self.height, "yuv420p"
        cc.time_base = Fraction(1, 1_000_000)
        cc.framerate = Fraction(round((self.framerate or 30) * 1000), 1000)
        cc.gop_size = self.iperiod or 60  # the Pi's encoder defaults to 60
        cc.bit_rate = bitrate
        cc.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "maxrate": str(bitrate),
            "bufsize": str(bitrate),
            "x264-params": "scenecut=0",
        }
        if not self.repeat:
            cc.flags |= av.codec.context.Flags.global_header
        cc.open()
        for out in self._output:
            out._add_stream("video", "h264", width=self.width, height=self.height)
        self.vd = FakeV4L2Device(bitrate)
        self._frames = queue.Queue()
        self._thread = threading.Thread(
            target=self._thread_poll, args=(cc, self.vd), name="fake-h264", daemon=True
        )
        self._thread.start()

    def _stop(self) -> None:
        if self._thread is not None:
            self._thread.join()
        if self.vd is not None:
            self.vd.closed = True

    def _encode(self, stream: str, request: CompletedRequest) -> None:
        force = self._key_frames_requested > self._key_frames_generated
        if force:
            self._key_frames_generated += 1
        request.acquire()  # held until the encoder has consumed the buffer, as with V4L2
        self._frames.put((request, self._timestamp(request), force))

    def _thread_poll(self, cc: av.VideoCodecContext, vd: FakeV4L2Device) -> None:
        while self._running or not self._frames.empty():
            try:
                request, timestamp_us, force = self._frames.get(timeout=0.05)
            except queue.Empty:
                continue
            try:
                frame = self._to_frame(request.make_array(self.name or "main"))
            finally:
                request.release()
            frame.pts = timestamp_us
            if force:
                frame.pict_type = av.video.frame.PictureType.I
            if cc.bit_rate != vd.bitrate:
                cc.bit_rate = vd.bitrate
            for packet in cc.encode(frame):
                assert packet.pts is not None
                self.outputframe(bytes(packet), packet.is_keyframe, packet.pts)

    def _to_frame(self, array: np.ndarray) -> av.VideoFrame:  # type: ignore[type-arg]
        """A YUV420 buffer as make_array gives it, (h*3/2, stride), to a yuv420p frame."""
        w, h, stride = self.width, self.height, array.shape[1]
        flat = array.reshape(-1)
        ysize, csize = stride * h, (stride // 2) * (h // 2)
        packed = np.concatenate(
            [
                flat[:ysize].reshape(h, stride)[:, :w].reshape(-1),
                flat[ysize : ysize + csize].reshape(h // 2, stride // 2)[:, : w // 2].reshape(-1),
                flat[ysize + csize : ysize + 2 * csize]
                .reshape(h // 2, stride // 2)[:, : w // 2]
                .reshape(-1),
            ]
        )
        return av.VideoFrame.from_ndarray(packed.reshape(h * 3 // 2, w), format="yuv420p")
