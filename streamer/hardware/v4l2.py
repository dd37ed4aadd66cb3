"""USB webcam through V4L2, with PyAV's v4l2 demuxer (MJPEG or YUYV, decoded to yuv420p).

The kernel stamps each buffer with CLOCK_MONOTONIC, the clock everything
else here uses; when a driver stamps with something else (far from now) the
read instant stands in for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import av
import av.error
import structlog

from streamer.exc import DeviceError

log = structlog.get_logger("streamer.v4l2")

DEFAULT_DEVICE = "/dev/video0"
INPUT_FORMATS = ("mjpeg", "yuyv422")
CLOCK_TOLERANCE = 1.0  # seconds: a buffer stamp further from now is not CLOCK_MONOTONIC


class V4l2Camera:
    """A webcam: frames in the configured size, yuv420p, stamped at capture."""

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        device: str | None = None,
        input_format: str = "mjpeg",
        *,
        container_format: str = "v4l2",
        options: dict[str, str] | None = None,
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.device = device or DEFAULT_DEVICE
        if input_format not in INPUT_FORMATS:
            raise DeviceError(
                f"V4L2 input format {input_format!r} is not supported; use one of "
                f"{', '.join(INPUT_FORMATS)}"
            )
        self._format = container_format
        self._options = (
            options
            if options is not None
            else {
                "input_format": input_format,
                "video_size": f"{width}x{height}",
                "framerate": f"{fps:g}",
            }
        )
        self._container: Any = None
        self._frames: Iterator[av.VideoFrame] | None = None

    def open(self) -> None:
        try:
            self._container = av.open(self.device, format=self._format, options=self._options)
        except (OSError, av.error.FFmpegError) as exc:
            raise DeviceError(
                f"webcam {self.device} could not be opened ({exc}); check that it is plugged "
                "in (`v4l2-ctl --list-devices`), that no other program uses it, that it "
                f"offers {self._options.get('input_format', '?')} at "
                f"{self._options.get('video_size', '?')} (`v4l2-ctl --list-formats-ext`), "
                "and that this user is in the video group"
            ) from None
        stream = self._container.streams.video[0]
        self._frames = self._container.decode(stream)

    def read(self) -> tuple[av.VideoFrame, float]:
        if self._frames is None:
            raise DeviceError(f"webcam {self.device} is not open")
        try:
            frame = next(self._frames)
        except StopIteration:
            raise DeviceError(f"webcam {self.device} stopped delivering frames") from None
        except av.error.FFmpegError as exc:
            raise DeviceError(f"webcam {self.device} failed: {exc}") from None
        now = time.monotonic()
        captured = now
        if frame.pts is not None and frame.time_base is not None:
            stamped = float(frame.pts * frame.time_base)
            if abs(stamped - now) < CLOCK_TOLERANCE:
                captured = stamped
        if (frame.width, frame.height, frame.format.name) != (self.width, self.height, "yuv420p"):
            frame = frame.reformat(width=self.width, height=self.height, format="yuv420p")
        return frame, captured

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None
