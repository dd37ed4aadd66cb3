"""Interfaces every capture backend implements, and the registry that picks one by name.

Sources block in ``read()`` until the next frame or period is captured and
return it with its capture instant in monotonic seconds; they are read from
a dedicated thread, never from the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import av
import numpy as np
import numpy.typing as npt

from streamer.exc import ConfigError


class VideoSource(Protocol):
    width: int
    height: int
    fps: float

    def open(self) -> None: ...
    def read(self) -> tuple[av.VideoFrame, float]: ...
    def close(self) -> None: ...


class AudioSource(Protocol):
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


CameraFactory = Callable[[str | None, int, int, float], VideoSource]
MicrophoneFactory = Callable[[str | None], AudioSource]


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"v4l2:/dev/video1"`` -> ``("v4l2", "/dev/video1")``; the name case-insensitive."""
    name, _, arg = spec.partition(":")
    return name.strip().lower(), (arg.strip() or None)


def camera_number(arg: str | None) -> int:
    """The N of ``picamera2:N``."""
    try:
        return int(arg or 0)
    except ValueError:
        raise ConfigError(f"camera number must be an integer: picamera2:{arg}") from None


def make_camera(spec: str, width: int, height: int, fps: float) -> VideoSource:
    """Build the camera backend named by ``spec`` (``sim``, later ``picamera2``, ``v4l2:DEV``)."""
    from streamer.hardware import picam, sim, v4l2

    cameras: dict[str, CameraFactory] = {
        "sim": lambda arg, w, h, f: sim.SimCamera(w, h, f, sync=arg == "sync"),
        "picamera2": lambda arg, w, h, f: picam.PicameraRaw(w, h, f, camera_number(arg)),
        "v4l2": lambda arg, w, h, f: v4l2.V4l2Camera(w, h, f, device=arg),
    }
    name, arg = split_spec(spec)
    if name not in cameras:
        raise ConfigError(f"unknown camera {name!r}; available: {', '.join(sorted(cameras))}")
    return cameras[name](arg, width, height, fps)


def make_microphone(spec: str) -> AudioSource | None:
    """Build the microphone backend named by ``spec``; ``none`` means video only."""
    from streamer.hardware import alsa, sim

    microphones: dict[str, MicrophoneFactory] = {
        "sim": lambda arg: sim.SimMicrophone(sync=arg == "sync"),
        "alsa": lambda arg: alsa.AlsaMicrophone(device=arg or "default"),
    }
    name, arg = split_spec(spec)
    if name == "none":
        return None
    if name not in microphones:
        choices = ", ".join([*sorted(microphones), "none"])
        raise ConfigError(f"unknown microphone {name!r}; available: {choices}")
    return microphones[name](arg)
