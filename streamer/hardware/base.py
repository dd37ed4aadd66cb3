"""The source protocols every camera and microphone follows, and building one by name.

The names users write (``sim``, ``picamera2:1``, ``alsa:default``...) are
listed once, in ``streamer.backends``; ``make_camera`` and
``make_microphone`` build from there. A device app may instead pass its own
object that follows ``VideoSource`` or ``AudioSource`` as
``Settings(camera=..., microphone=...)``; the pipeline uses it as is. A
camera that encodes H.264 itself may be passed the same way, as an object that
follows ``EncodedVideoSource``: its frames go out as they come, as picamera2's
hardware-encoded ones do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import av
import numpy as np
import numpy.typing as npt

from streamer import backends
from streamer.backends import camera_number, split_spec
from streamer.exc import ConfigError

__all__ = [
    "AudioSource",
    "EncodedSink",
    "EncodedVideoSource",
    "VideoSource",
    "camera_number",
    "make_camera",
    "make_microphone",
    "split_spec",
]


class VideoSource(Protocol):
    """A camera: frames with the instant each was captured.

    - ``open()``: claim the device and start capturing. Called when the
      device starts streaming; called again after ``close()`` when a person
      presses Stop and then Start, so it must be able to reopen.
    - ``read() -> (frame, captured)``: block until the next frame and return
      it as an ``av.VideoFrame`` (any pixel format and size PyAV can convert:
      the encoder scales it to ``Settings.width`` x ``height``; with
      ``Settings.filters`` it must already be that size) together with its
      capture instant in ``time.monotonic()`` seconds. The instants are the
      video's timestamps: stamp when the frame was captured, not when it was
      read (a frame not later than the one before goes 1 ms after it).
      Return a new frame each time, never one whose buffer a later read
      overwrites: the status page's preview keeps the last one by reference.
      Called from a capture thread of its own, never from the event loop; an
      exception ends the run as a device error.
    - ``close()``: release the device; ``read()`` is not called after it.

    ``width``, ``height`` and ``fps`` describe what it delivers.
    """

    width: int
    height: int
    fps: float

    def open(self) -> None: ...
    def read(self) -> tuple[av.VideoFrame, float]: ...
    def close(self) -> None: ...


class AudioSource(Protocol):
    """A microphone: periods of samples with the instant the first was captured.

    - ``open()`` / ``close()``: as for ``VideoSource`` (reopened after a Stop).
    - ``read() -> (samples, captured)``: block until the next period and
      return it as int16 samples of shape ``(frames, channels)``, interleaved
      by row, with the capture instant of its first sample in
      ``time.monotonic()`` seconds. The AAC encoder stamps audio by sample
      count from there, so deliver every sample, at ``sample_rate``; a source
      that loses samples should fill the gap with silence (as the ALSA one
      does) or move its stamps, which the encoder follows.

    ``sample_rate`` (Hz; AAC takes 8000 to 96000) and ``channels`` (1 or 2)
    set up the AAC encoder.
    """

    sample_rate: int
    channels: int

    def open(self) -> None: ...
    def read(self) -> tuple[npt.NDArray[np.int16], float]: ...
    def close(self) -> None: ...


EncodedSink = Callable[[bytes, bool, float], None]


class EncodedVideoSource(Protocol):
    """A camera that encodes H.264 itself (picamera2 with the Pi's hardware encoder).

    ``start(sink)`` begins capture; the camera's own thread then calls
    ``sink(data, keyframe, capture_time)`` for every encoded frame: Annex B
    H.264 (SPS/PPS repeated in every keyframe), whether it is a keyframe, and
    the capture instant in monotonic seconds. The sink never blocks.
    """

    width: int
    height: int
    fps: float
    encoder_name: str

    def start(self, sink: EncodedSink) -> None: ...
    def set_bitrate(self, kbps: int) -> None: ...
    def request_keyframe(self) -> None: ...
    def stop(self) -> None: ...


def make_camera(spec: str, width: int, height: int, fps: float) -> VideoSource:
    """Build the camera named by ``spec`` (``streamer.backends.CAMERAS``)."""
    backend = backends.find(backends.CAMERAS, spec)
    if backend is None:
        raise ConfigError(f"camera {spec!r} is not one of: {backends.choices(backends.CAMERAS)}")
    return backend.make(split_spec(spec)[1], width, height, fps)


def make_microphone(spec: str) -> AudioSource | None:
    """Build the microphone named by ``spec``; ``none`` means video only (None)."""
    backend = backends.find(backends.MICROPHONES, spec)
    if backend is None:
        raise ConfigError(
            f"microphone {spec!r} is not one of: {backends.choices(backends.MICROPHONES)}"
        )
    return backend.make(split_spec(spec)[1])
