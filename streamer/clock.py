"""One monotonic media clock shared by every capture source.

Capture timestamps are monotonic seconds (``time.monotonic()``, which is
CLOCK_MONOTONIC on Linux, the clock picamera2 and ALSA stamp with); media
time is integer milliseconds since the clock's origin, so both tracks of a
stream live on one timeline.
"""

from __future__ import annotations

import time


class MediaClock:
    def __init__(self, origin: float | None = None) -> None:
        self.origin = time.monotonic() if origin is None else origin

    def to_ms(self, capture_time: float) -> int:
        """Media time of an instant given in monotonic seconds."""
        return round((capture_time - self.origin) * 1000)
