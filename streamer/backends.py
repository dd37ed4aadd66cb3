"""The names of cameras, microphones and H.264 encoders: the one list every part reads.

Config validation (``config.py``), the CLI's help (``__main__.py``),
``streamer doctor`` and the pipeline (``hardware/base.py`` builds sources
from here, ``encode/select.py`` opens encoders by these names) all take
their vocabulary from this module, so a backend added or renamed here is
accepted, documented, checked and built everywhere at once.

A spec is ``name`` or ``name:argument`` (``v4l2:/dev/video2``); the name is
case-insensitive. Stdlib only at import: the config file is checked without
loading PyAV or any hardware library (each factory imports its own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from streamer.exc import ConfigError

if TYPE_CHECKING:
    from streamer.hardware.base import AudioSource, VideoSource

F = TypeVar("F")


@dataclass(frozen=True)
class Backend(Generic[F]):
    """One name users may write.

    ``spellings`` are how help and errors show it (``picamera2[:N]``);
    ``argument`` accepts the text after the colon (None: the name takes
    none); ``group`` is the Unix group its device needs (``doctor``);
    ``make`` builds it.
    """

    name: str
    about: str
    make: F
    spellings: tuple[str, ...] = ()
    argument: Callable[[str], bool] | None = None
    group: str | None = None

    @property
    def shown(self) -> tuple[str, ...]:
        return self.spellings or (self.name,)


CameraFactory = Callable[[str | None, int, int, float], "VideoSource"]
MicrophoneFactory = Callable[[str | None], "AudioSource | None"]


def _printable(text: str) -> bool:
    return text != "" and not any(c.isspace() or not c.isprintable() for c in text)


def camera_number(arg: str | None) -> int:
    """The N of ``picamera2:N`` (0 when not given)."""
    try:
        return int(arg or 0)
    except ValueError:
        raise ConfigError(f"camera number must be an integer: picamera2:{arg}") from None


def _sim_camera(arg: str | None, width: int, height: int, fps: float) -> VideoSource:
    from streamer.hardware.sim import SimCamera

    return SimCamera(width, height, fps, sync=arg == "sync")


def _picamera2(arg: str | None, width: int, height: int, fps: float) -> VideoSource:
    from streamer.hardware.picam import PicameraRaw

    return PicameraRaw(width, height, fps, camera_number(arg))


def _v4l2(arg: str | None, width: int, height: int, fps: float) -> VideoSource:
    from streamer.hardware.v4l2 import V4l2Camera

    return V4l2Camera(width, height, fps, device=arg)


def _sim_microphone(arg: str | None) -> AudioSource:
    from streamer.hardware.sim import SimMicrophone

    return SimMicrophone(sync=arg == "sync")


def _alsa(arg: str | None) -> AudioSource:
    from streamer.hardware.alsa import AlsaMicrophone

    return AlsaMicrophone(device=arg or "default")


def _no_microphone(arg: str | None) -> None:
    return None


CAMERAS: tuple[Backend[CameraFactory], ...] = (
    Backend(
        "sim",
        "a test pattern; sim:sync adds a flash every second (lip-sync checks)",
        _sim_camera,
        spellings=("sim", "sim:sync"),
        argument=lambda arg: arg == "sync",
    ),
    Backend(
        "picamera2",
        "Raspberry Pi camera module N (0 when omitted) through picamera2",
        _picamera2,
        spellings=("picamera2[:N]",),
        argument=str.isdigit,
        group="video",
    ),
    Backend(
        "v4l2",
        "a USB webcam (/dev/video0 when omitted)",
        _v4l2,
        spellings=("v4l2[:/dev/videoN]",),
        argument=lambda arg: arg.startswith("/dev/") and _printable(arg),
        group="video",
    ),
)

MICROPHONES: tuple[Backend[MicrophoneFactory], ...] = (
    Backend(
        "sim",
        "a test tone; sim:sync adds a click every second (lip-sync checks)",
        _sim_microphone,
        spellings=("sim", "sim:sync"),
        argument=lambda arg: arg == "sync",
    ),
    Backend(
        "alsa",
        "an ALSA capture device (default when omitted; arecord -L lists them)",
        _alsa,
        spellings=("alsa[:DEVICE]",),
        argument=_printable,
        group="audio",
    ),
    Backend("none", "no microphone: video only", _no_microphone),
)

ENCODERS: tuple[Backend[None], ...] = (
    Backend("auto", "the V4L2 hardware encoder where there is one, else libx264", None),
    Backend("v4l2m2m", "the V4L2 hardware H.264 encoder (Pi 4 and earlier)", None, group="video"),
    Backend("libx264", "software H.264", None),
)


def names(backends: Sequence[Backend[F]]) -> tuple[str, ...]:
    return tuple(b.name for b in backends)


def choices(backends: Sequence[Backend[F]]) -> str:
    """Every spelling, as help texts and errors list them: ``sim, sim:sync, picamera2[:N], ...``."""
    return ", ".join(s for b in backends for s in b.shown)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"v4l2:/dev/video1"`` -> ``("v4l2", "/dev/video1")``; the name case-insensitive."""
    name, _, arg = spec.partition(":")
    return name.strip().lower(), (arg.strip() or None)


def find(backends: Sequence[Backend[F]], spec: str) -> Backend[F] | None:
    """The backend a spec names (its argument not judged), or None."""
    name = split_spec(spec)[0]
    return next((b for b in backends if b.name == name), None)


def normalise(backends: Sequence[Backend[F]], spec: str) -> str | None:
    """``spec`` with its name in lower case, or None when no backend takes it as written."""
    name, colon, arg = spec.strip().partition(":")
    name = name.strip().lower()
    backend = next((b for b in backends if b.name == name), None)
    if backend is None:
        return None
    if colon and (backend.argument is None or not backend.argument(arg)):
        return None
    return f"{name}:{arg}" if colon else name
