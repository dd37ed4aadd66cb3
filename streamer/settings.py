"""What a device runs with: the one object the config file, the flags and Python code all make.

Every default lives here. URLs may be given as plain strings: they are
parsed (and refused with the CLI's own clear errors) when the settings are
made, so a bad URL never reaches the network.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from streamer import backends
from streamer.exc import ConfigError
from streamer.net.bitrate import DEFAULT_MIN_KBPS
from streamer.net.sendqueue import DEFAULT_DROP_THRESHOLD_MS
from streamer.rtmp.url import RtmpUrl, parse_url

if TYPE_CHECKING:
    from streamer.hardware.base import AudioSource, EncodedVideoSource, VideoSource

# A destination's name shows in logs, /status and as a Prometheus label value.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,39}")
NAME_RULE = 'must be 1 to 40 letters, digits, ".", "_" or "-", starting with a letter or digit'

# How far the picture is turned before it is streamed, in degrees clockwise.
ROTATIONS = (0, 90, 180, 270)
ROTATE_RULE = "one of 0, 90, 180, 270 (degrees clockwise)"


@dataclass(frozen=True, slots=True)
class Target:
    """One destination: where to publish, and the name it goes by in logs and /status."""

    url: RtmpUrl
    name: str

    def __repr__(self) -> str:
        return f"Target({self.name!r}, {self.url.redacted!r})"


def targets(urls: Iterable[str | RtmpUrl | Target]) -> tuple[Target, ...]:
    """Destinations from URLs (strings are parsed here), in order.

    A ``Target`` keeps its name (``NAME_RULE``; two of the same name are an
    error); an unnamed URL is named by its host, then ``host-2``,
    ``host-3``... when that name is taken.
    """
    items = [parse_url(u) if isinstance(u, str) else u for u in urls]
    named = [t.name for t in items if isinstance(t, Target)]
    for name in named:
        if not NAME_PATTERN.fullmatch(name):
            raise ConfigError(f"destination name {name!r} {NAME_RULE}")
        if named.count(name) > 1:
            raise ConfigError(f"two destinations are named {name!r}; give each its own name")
    taken = set(named)
    out: list[Target] = []
    for item in items:
        if isinstance(item, Target):
            out.append(item)
            continue
        name, n = item.host, 1
        while name in taken:
            n += 1
            name = f"{item.host}-{n}"
        taken.add(name)
        out.append(Target(item, name))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Settings:
    """A device's configuration.

    ``urls``: one or more destinations (``rtmp://host[:port]/app/key`` strings,
    parsed ``RtmpUrl`` or named ``Target``); every destination gets the same
    encoded stream.

    ``camera`` and ``microphone``: a name from ``streamer.backends``
    (``"sim"``, ``"picamera2:1"``, ``"alsa:default"``, ``"none"``...), or the
    app's own object that follows ``VideoSource`` / ``AudioSource``
    (``streamer/hardware/base.py``), which the pipeline opens, reads and
    closes as it would one of its own. ``camera`` may also be an object that
    follows ``EncodedVideoSource`` (a camera that encodes H.264 itself): its
    frames are sent as they come, like picamera2's hardware-encoded ones, so
    ``encoder`` does not apply and ``filters`` are refused. ``encoder``: a
    name from ``streamer.backends.ENCODERS``. Names are checked (and
    lower-cased) here.

    ``width`` x ``height`` is the size the camera captures; ``rotate`` (0, 90,
    180 or 270 degrees clockwise) turns the picture before anything else,
    so with 90 or 270 the stream is ``height`` x ``width``
    (``streamed_size``). A picamera2 camera turns it by 180 itself, at no CPU
    cost; every other case is an FFmpeg filter (``streamer.encode.filters``).
    Like ``filters``, it is refused with an ``EncodedVideoSource`` of the app's.
    """

    urls: Sequence[str | RtmpUrl | Target] = ()
    camera: str | VideoSource | EncodedVideoSource = "sim"
    microphone: str | AudioSource = "sim"
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    video_bitrate_kbps: int = 2500
    audio_bitrate_kbps: int = 128
    duration: float | None = None
    service: bool = False
    max_reconnects: int = 10
    reconnect_delay: float = 1.0  # seconds before the first reconnect attempt
    reconnect_max_delay: float = 30.0  # the longest wait between attempts
    connect_timeout: float = 10.0
    stall_timeout: float = 10.0
    error_cooldown: float = 60.0  # service mode: seconds in error before trying again
    drop_threshold_ms: int = DEFAULT_DROP_THRESHOLD_MS
    min_video_bitrate_kbps: int = DEFAULT_MIN_KBPS
    adaptive_bitrate: bool = True
    encoder: str = "auto"
    filters: tuple[str, ...] = ()
    rotate: int = 0  # degrees clockwise: 0, 90, 180 or 270
    insecure: bool = False  # rtmps:// without certificate verification, only when asked
    record_dir: str | None = None  # local recording while live (segments of record_minutes)
    record_minutes: float = 5.0
    record_keep_gb: float | None = None
    destinations: tuple[Target, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "camera", _source("camera", self.camera, backends.CAMERAS))
        object.__setattr__(
            self, "microphone", _source("microphone", self.microphone, backends.MICROPHONES)
        )
        object.__setattr__(self, "encoder", _name("encoder", self.encoder, backends.ENCODERS))
        if self.filters and is_encoded_camera(self.camera):
            raise ConfigError(
                "filters need raw frames; a camera that encodes itself (EncodedVideoSource) "
                "gives none"
            )
        if isinstance(self.rotate, bool) or self.rotate not in ROTATIONS:
            raise ConfigError(f"rotate must be {ROTATE_RULE}, got {self.rotate!r}")
        if self.rotate and is_encoded_camera(self.camera):
            raise ConfigError(
                "rotate needs raw frames; a camera that encodes itself (EncodedVideoSource) "
                "gives none"
            )
        found = targets(self.urls)
        if not found:
            raise ConfigError("no stream URL: give at least one rtmp://host/app/key")
        object.__setattr__(self, "destinations", found)
        object.__setattr__(self, "urls", tuple(t.url for t in found))

    @property
    def url(self) -> RtmpUrl:
        """The first destination's URL."""
        return self.destinations[0].url

    @property
    def streamed_size(self) -> tuple[int, int]:
        """(width, height) of the streamed picture: the camera's, swapped by a quarter turn."""
        if self.rotate in (90, 270):
            return self.height, self.width
        return self.width, self.height


SOURCE_METHODS = ("open", "read", "close")
ENCODED_SOURCE_METHODS = ("start", "set_bitrate", "request_keyframe", "stop")


def _missing(value: Any, methods: Sequence[str]) -> list[str]:
    """The ``methods`` that ``value`` lacks (or has as something not callable)."""
    return [m for m in methods if not callable(getattr(value, m, None))]


def is_encoded_camera(value: Any) -> TypeGuard[EncodedVideoSource]:
    """Whether ``value`` is an app's own camera that encodes itself (``EncodedVideoSource``)."""
    return not isinstance(value, str) and not _missing(value, ENCODED_SOURCE_METHODS)


def _name(what: str, spec: str, choices: Sequence[backends.Backend[Any]]) -> str:
    normal = backends.normalise(choices, spec)
    if normal is None:
        raise ConfigError(f"{what} {spec!r} is not one of: {backends.choices(choices)}")
    return normal


def _source(what: str, value: Any, choices: Sequence[backends.Backend[Any]]) -> Any:
    """A registered name (normalised), or an object with the source protocol's methods."""
    if isinstance(value, str):
        return _name(what, value, choices)
    if what == "camera" and is_encoded_camera(value):
        return value
    missing = _missing(value, SOURCE_METHODS)
    if missing:
        protocol = "VideoSource" if what == "camera" else "AudioSource"
        raise TypeError(
            f"{what} must be one of {backends.choices(choices)}, or an object with open(), "
            f"read() and close() ({protocol} in streamer/hardware/base.py); "
            f"a {type(value).__name__} has no {', '.join(m + '()' for m in missing)}"
        )
    return value
