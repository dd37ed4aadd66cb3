"""Choose the H.264 encoder: ``--encoder auto|v4l2m2m|libx264``.

``v4l2m2m`` is FFmpeg's ``h264_v4l2m2m``: the V4L2 memory-to-memory encoder
of a Raspberry Pi 4 and earlier (``/dev/video11``, driver bcm2835-codec). A
Pi 5 has no H.264 encoder; there, and on a laptop, only libx264 works.
``auto`` tries the hardware once per process (a tiny open) and falls back to
libx264 with one log line that says why.

What FFmpeg's ``h264_v4l2m2m`` takes (libavcodec/v4l2_m2m_enc.c, FFmpeg 8):

- at open only: ``bit_rate`` (``V4L2_CID_MPEG_VIDEO_BITRATE``), ``gop_size``
  (``V4L2_CID_MPEG_VIDEO_GOP_SIZE``), ``framerate`` (``VIDIOC_S_PARM``),
  ``profile``, ``qmin``/``qmax``; ``max_b_frames`` must end up 0. The pixel
  format must be one the device takes on its raw side (``yuv420p`` is YU12,
  which bcm2835-codec accepts). Private options: ``num_output_buffers``
  (raw frames queued, default 16) and ``num_capture_buffers`` (default 4).
  Nothing can be changed on a running context, so a new bitrate means a new
  context (see "Changing the bitrate" below).
- bcm2835-codec rejects ``GOP_SIZE`` ("Failed to set gop size: Invalid
  argument", a warning): left alone it makes an IDR every 60 frames. So this
  encoder forces a keyframe every ``2 * fps`` frames itself through
  ``pict_type = I``, which FFmpeg turns into ``V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME``.
- No extradata: FFmpeg's V4L2 encoder ignores ``global_header`` (it is set
  anyway, for builds such as Raspberry Pi's that may fill it). SPS/PPS come
  out with the first keyframe instead (bcm2835-codec joins them to the first
  frame's buffer; other drivers may send them as a buffer of their own) and
  are not repeated later. So ``config.avc_config`` is empty until the first
  keyframe has been encoded; ``config_ready`` is set then, and
  ``ready_config`` waits for it. Parameter sets are taken out of the packets
  (the FLV sequence header carries them, as with libx264's extradata).

Changing the bitrate (``set_bitrate``): the wish is recorded (thread-safe,
clamped to ``[1, max_bitrate_kbps]``) and applied by the capture thread at the
next frame that is a keyframe anyway (every ``2 * fps`` frames, or the next
``request_keyframe``): a new context is opened with the new ``bit_rate``, the
old one is flushed (its last packets come out first, in order) and dropped,
and the frame goes to the new context as its first IDR, whose SPS/PPS are
taken as before. Not forcing an extra keyframe at once: an IDR costs several
P-frames' worth of bits, the worst thing to add while the link is congested,
and the GOP stays regular; the price is a delay of at most one GOP (2 s, 1 s
on average), close to libx264's own convergence of about a second. Changes
under 5 % of the rate in effect are dropped and at most one reopen happens per
2 s of stream (``REOPEN_MIN_CHANGE``, ``REOPEN_MIN_INTERVAL_MS``); the latest
wish wins. The new context is opened before the old one is flushed (a drained
context takes no more frames), so for a moment two are open (bcm2835-codec
serves several); a failing open (logged once as a warning) leaves the old one
running at its rate, and that encoder stops adapting. The capture thread
encodes no frame while a reopen runs: measured with ``bench/reopen.py`` on a
2-core x86 VM at 1280x720, the reopen (open + drain, the ``ms`` of its log
line) took a median 10 ms on the test fake and its switch frame 41 ms against
5 ms for a keyframe without a reopen (a new x264 context's first frame sets up
its threads); libx264's own open + drain through PyAV took 5 ms. A Pi 4's
bcm2835-codec could not be measured here (no /dev/video* device).
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import av
import av.codec.context
import structlog

from streamer import backends
from streamer.encode.camera import CameraEncoder
from streamer.encode.flv import NAL_PPS, NAL_SPS, avc_decoder_config
from streamer.encode.h264 import H264Encoder, set_stream_params
from streamer.exc import ConfigError, DeviceError
from streamer.media import Packet, VideoConfig

log = structlog.get_logger("streamer.encode")

CHOICES = backends.names(backends.ENCODERS)  # auto, v4l2m2m, libx264
V4L2_CODEC = "h264_v4l2m2m"
PROBE_WIDTH, PROBE_HEIGHT = 64, 64  # bcm2835-codec takes 32x32 up to 1920x1920
NAL_IDR, NAL_AUD = 5, 9
_START = b"\x00\x00\x00\x01"
# A new bitrate reopens h264_v4l2m2m: not for less than this change of the rate
# in effect, and at most once per this much stream time (the GOP is 2 s).
REOPEN_MIN_CHANGE = 0.05
REOPEN_MIN_INTERVAL_MS = 2000

# How codec contexts are made: ``av.CodecContext.create`` (tests pass a fake).
ContextFactory = Callable[[str, str], Any]


def _create(name: str, mode: str) -> Any:
    return av.CodecContext.create(name, "w" if mode == "w" else "r")


class V4L2Unavailable(DeviceError):
    """h264_v4l2m2m cannot be opened here; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the V4L2 hardware H.264 encoder is not available: {reason}; use --encoder libx264"
        )
        self.reason = reason


class V4L2H264Encoder(H264Encoder):
    """``H264Encoder`` on FFmpeg's ``h264_v4l2m2m``: the same ``encode`` and packets.

    Differences from libx264:

    - ``set_bitrate`` takes effect by reopening the encoder at the next
      keyframe that comes anyway (at most every ``REOPEN_MIN_INTERVAL_MS`` of
      stream, changes under ``REOPEN_MIN_CHANGE`` dropped): FFmpeg sets the
      V4L2 bitrate control at open only. ``current_bitrate_kbps`` is the rate
      of the open context. A failed reopen keeps the old context and rate.
    - ``config.avc_config`` is empty until the first keyframe went through
      ``encode`` (the hardware gives SPS/PPS with it, not at open); then
      ``config`` is replaced and ``config_ready`` set. Use ``ready_config``.
    - Keyframes every ``2 * fps`` frames are forced here (the Pi ignores
      ``gop_size``); ``request_keyframe`` restarts that count, as with libx264.

    ``__init__`` does not call ``H264Encoder.__init__`` (it opens libx264): it
    sets the same attributes, so the inherited ``encode`` works unchanged.
    """

    name = V4L2_CODEC

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        bitrate_kbps: int,
        *,
        create: ContextFactory | None = None,
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.bitrate_kbps = bitrate_kbps
        self._gop = max(1, round(2 * fps))
        self._create = create or _create
        self._cc = _open_v4l2(self._create, width, height, fps, bitrate_kbps, self._gop)
        self._last_pts = -1
        self.keyframe_requested = False
        self.max_bitrate_kbps = bitrate_kbps
        self._current_kbps = bitrate_kbps
        self._pending_kbps: int | None = None
        self._lock = threading.Lock()
        self._since_key = 0
        self._opened_pts: int | None = None  # stream ms of the open context's first frame
        self.reopens = 0
        self.adaptive = True  # False after a failed reopen: the bitrate stays fixed
        self._params: tuple[bytes, ...] = ()
        self.config_ready = threading.Event()
        self.config = VideoConfig(
            width=width,
            height=height,
            fps=fps,
            bitrate_kbps=bitrate_kbps,
            avc_config=b"",
            encoder_name=self.name,
        )
        self._take_extradata(self._cc)

    def set_bitrate(self, kbps: int) -> None:
        """Ask for a new bitrate; thread-safe, cheap: only recorded (the last wish wins).

        Clamped to ``[1, max_bitrate_kbps]``; ValueError below 1. The capture
        thread reopens the encoder with it at the next keyframe (see the class).
        """
        super().set_bitrate(kbps)

    def _apply_pending_bitrate(self) -> None:
        """Nothing per frame: a new bitrate waits for a keyframe (``_reopen_if_due``)."""

    def wait_config(self, timeout: float) -> VideoConfig:
        """``config`` once SPS/PPS are known; DeviceError after ``timeout`` seconds."""
        if not self.config_ready.wait(timeout):
            raise DeviceError(
                f"the V4L2 hardware H.264 encoder gave no SPS/PPS within {timeout:g} s; "
                "use --encoder libx264"
            )
        return self.config

    def encode(self, frame: av.VideoFrame | None, pts_ms: int = 0) -> list[Packet]:
        """Encode one frame (``None`` flushes); parameter sets go to ``config``.

        At a keyframe, a pending bitrate reopens the encoder first: the old
        context's last packets come before this frame's.
        """
        out: list[Packet] = []
        if frame is not None:
            if self._since_key >= self._gop:
                self.keyframe_requested = True
            if self.keyframe_requested:
                self._since_key = 0
                out += self._reopen_if_due(max(pts_ms, self._last_pts + 1))
            self._since_key += 1
            if self._opened_pts is None:
                self._opened_pts = max(pts_ms, self._last_pts + 1)
        try:
            packets = super().encode(frame, pts_ms)
        except av.FFmpegError as exc:
            raise DeviceError(f"the V4L2 hardware H.264 encoder failed: {exc}") from exc
        return out + self._convert(packets)

    def _reopen_if_due(self, pts_ms: int) -> list[Packet]:
        """Reopen at the pending bitrate if it is due; the old context's last packets.

        Runs on the capture thread at a keyframe, before ``pts_ms``'s frame.
        """
        if not self.adaptive:
            return []
        with self._lock:
            kbps = self._pending_kbps
            if kbps is None:
                return []
            old = self._current_kbps
            if abs(kbps - old) < old * REOPEN_MIN_CHANGE:
                self._pending_kbps = None  # too small to pay for a reopen
                return []
            if self._opened_pts is not None and pts_ms - self._opened_pts < REOPEN_MIN_INTERVAL_MS:
                return []  # too soon: kept, a later wish replaces it
            self._pending_kbps = None
        started = time.perf_counter()
        try:
            cc = self._create(V4L2_CODEC, "w")
            set_stream_params(cc, self.width, self.height, self.fps, kbps, self._gop)
            cc.open()
        except Exception as exc:  # FFmpegError, OSError: the device said no
            self.adaptive = False
            log.warning(
                "encoder could not reopen for a new bitrate; the bitrate stays fixed",
                encoder=self.name,
                kbps=old,
                asked_kbps=kbps,
                error=str(exc) or type(exc).__name__,
            )
            return []
        try:
            flushed = super().encode(None)  # the old context, still self._cc
        except av.FFmpegError as exc:
            flushed = []
            log.warning("flushing the old encoder failed", encoder=self.name, error=str(exc))
        self._cc = cc  # the old context is freed (its device closed) with its last reference
        self._current_kbps = kbps
        self._opened_pts = pts_ms
        self.reopens += 1
        out = self._convert(flushed)  # the old context's packets, with the old SPS/PPS
        self._take_extradata(cc)
        log.info(
            "encoder reopened for a new bitrate",
            encoder=self.name,
            old_kbps=old,
            kbps=kbps,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return out

    def _convert(self, packets: list[Packet]) -> list[Packet]:
        """Parameter sets out of the packets (into ``config``), AUDs dropped, keyframes marked."""
        out = []
        for packet in packets:
            nals = split_avcc(packet.data)
            params = tuple(n for n in nals if n[0] & 0x1F in (NAL_SPS, NAL_PPS))
            if params:
                self._take_params(params)
            rest = [n for n in nals if n[0] & 0x1F not in (NAL_SPS, NAL_PPS, NAL_AUD)]
            if not rest:
                continue  # a header-only buffer
            keyframe = packet.keyframe or any(n[0] & 0x1F == NAL_IDR for n in rest)
            data = b"".join(len(n).to_bytes(4, "big") + n for n in rest)
            config = self.config if keyframe else None  # with the parameter sets just taken
            out.append(replace(packet, keyframe=keyframe, data=data, config=config))
        return out

    def _take_params(self, params: tuple[bytes, ...]) -> None:
        if params == self._params:
            return
        try:
            record = avc_decoder_config(b"".join(_START + n for n in params))
        except ValueError:
            return  # an SPS without its PPS (or the reverse): wait for both
        if self._params:  # the next keyframe carries it to every destination and the recorder
            log.info("encoder changed its SPS/PPS", encoder=self.name)
        self._params = params
        self._set_avc_config(record)

    def _take_extradata(self, cc: Any) -> None:
        """SPS/PPS from a build that fills extradata (global_header), used as libx264's."""
        extradata = bytes(cc.extradata or b"")
        if extradata:  # else the first keyframe brings them
            with contextlib.suppress(ValueError):
                self._set_avc_config(avc_decoder_config(extradata))

    def _set_avc_config(self, record: bytes) -> None:
        self.config = replace(self.config, avc_config=record)
        self.config_ready.set()


def split_avcc(data: bytes) -> list[bytes]:
    """NAL units of AVCC data (4-byte big-endian lengths); a bad length ends the list."""
    nals, i = [], 0
    while i + 4 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        if size == 0 or i + 4 + size > len(data):
            break
        nals.append(data[i + 4 : i + 4 + size])
        i += 4 + size
    return nals


def _open_v4l2(
    create: ContextFactory, width: int, height: int, fps: float, bitrate_kbps: int, gop: int
) -> Any:
    """An open h264_v4l2m2m context, or DeviceError with the reason and the way out."""
    try:
        cc = create(V4L2_CODEC, "w")
    except Exception as exc:  # av.codec.codec.UnknownCodecError, or a build without it
        raise V4L2Unavailable(f"this FFmpeg build has no {V4L2_CODEC} encoder ({exc})") from exc
    set_stream_params(cc, width, height, fps, bitrate_kbps, gop)
    try:
        cc.open()
    except Exception as exc:
        raise V4L2Unavailable(_explain(exc)) from exc
    return cc


def video_device_names() -> dict[str, str]:
    """``/dev/videoN`` -> its name in sysfs (``bcm2835-codec-encode``, ``UVC Camera``...)."""
    names = {}
    for dev in sorted(glob.glob("/dev/video*"), key=_device_order):
        try:
            with open(f"/sys/class/video4linux/{os.path.basename(dev)}/name") as f:
                names[dev] = f.read().strip()
        except OSError:
            names[dev] = "?"
    return names


def _device_order(dev: str) -> tuple[int, str]:
    digits = dev.removeprefix("/dev/video")
    return (int(digits), dev) if digits.isdigit() else (1 << 30, dev)


def _explain(exc: Exception) -> str:
    """Why h264_v4l2m2m did not open, in terms a user can act on."""
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        ffmpeg = f"FFmpeg: {exc.strerror}"
    else:
        ffmpeg = str(exc) or type(exc).__name__
    devices = video_device_names()
    if not devices:
        return (
            "no /dev/video* device exists: a Raspberry Pi 4 has its encoder at /dev/video11, "
            f"a Pi 5 has none ({ffmpeg})"
        )
    encoders = [d for d, name in devices.items() if "enc" in name.lower()]
    locked = [d for d in encoders or devices if not os.access(d, os.R_OK | os.W_OK)]
    if locked:
        return (
            f"no permission to open {', '.join(locked)} "
            f"(sudo usermod -aG video $USER, then log in again) ({ffmpeg})"
        )
    return (
        f"FFmpeg found no V4L2 device that encodes H.264 among {len(devices)} /dev/video* "
        f"device(s) ({ffmpeg})"
    )


_probe_lock = threading.Lock()
_probe_cache: dict[str, str | None] = {}


def v4l2m2m_unavailable_reason(create: ContextFactory | None = None) -> str | None:
    """None when h264_v4l2m2m opens here (tiny size), else why not.

    The real probe (``create`` None) runs once per process and is cached; a
    given ``create`` (a test's fake) is probed every time and not cached.
    """

    def probe() -> str | None:
        try:
            V4L2H264Encoder(PROBE_WIDTH, PROBE_HEIGHT, 30, 500, create=create)
        except V4L2Unavailable as exc:
            return exc.reason
        return None  # the context is freed (and the device closed) with the encoder

    if create is not None:
        return probe()
    with _probe_lock:
        if V4L2_CODEC not in _probe_cache:
            _probe_cache[V4L2_CODEC] = probe()
        return _probe_cache[V4L2_CODEC]


def libx264_unavailable_reason() -> str | None:
    """None when libx264 opens here (tiny size), else why not. Not cached: it is cheap."""
    try:
        H264Encoder(PROBE_WIDTH, PROBE_HEIGHT, 30, 500)
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None


def _run_probe(probe: Callable[[], bool]) -> str | None:
    try:
        ok = probe()
    except Exception as exc:
        return str(exc) or type(exc).__name__
    return None if ok else "the probe found no usable V4L2 H.264 encoder"


def open_h264(
    choice: str,
    width: int,
    height: int,
    fps: float,
    bitrate_kbps: int,
    *,
    probe: Callable[[], bool] | None = None,
    create: ContextFactory | None = None,
) -> H264Encoder:
    """Open the encoder ``--encoder`` names.

    - ``libx264``: ``H264Encoder``.
    - ``v4l2m2m``: ``V4L2H264Encoder``, or DeviceError("the V4L2 hardware H.264
      encoder is not available: <reason>; use --encoder libx264").
    - ``auto``: the hardware if ``probe()`` says it opens (default: one cached
      tiny open per process) and it then opens at the real size; otherwise
      libx264, with one log line carrying the reason.

    ``probe`` returns True when the hardware encoder is usable; False or an
    exception (its message is the reason) means it is not. ``create`` makes
    codec contexts (default ``av.CodecContext.create``); tests pass fakes.
    ConfigError for any other ``choice``.
    """
    name = choice.strip().lower()
    if name not in CHOICES:
        raise ConfigError(
            f"encoder {choice!r} is not one of: {backends.choices(backends.ENCODERS)}"
        )
    if name == "libx264":
        return H264Encoder(width, height, fps, bitrate_kbps)
    if name == "v4l2m2m":
        return V4L2H264Encoder(width, height, fps, bitrate_kbps, create=create)
    reason = v4l2m2m_unavailable_reason(create) if probe is None else _run_probe(probe)
    if reason is None:
        try:
            return V4L2H264Encoder(width, height, fps, bitrate_kbps, create=create)
        except V4L2Unavailable as exc:  # opened tiny, not at this size
            reason = exc.reason
    log.info("hardware H.264 encoder not available, using libx264", reason=reason)
    return H264Encoder(width, height, fps, bitrate_kbps)


def ready_config(encoder: H264Encoder | CameraEncoder, timeout: float = 5.0) -> VideoConfig:
    """The encoder's ``config`` with SPS/PPS filled in, waiting for them if needed.

    libx264 has them at open; the V4L2 encoder after its first keyframe (the
    capture thread must be encoding). Blocking: from asyncio, run it with
    ``asyncio.to_thread``. DeviceError when they do not come within ``timeout``.
    """
    if encoder.config.avc_config:
        return encoder.config
    if isinstance(encoder, V4L2H264Encoder | CameraEncoder):
        return encoder.wait_config(timeout)
    raise DeviceError(f"H.264 encoder {encoder.name} gave no SPS/PPS at open")
