"""Fake of picamera2/platform.py: which ISP (and so which H.264 encoder) the Pi has."""

from __future__ import annotations

from enum import Enum


class Platform(Enum):
    VC4 = 0  # Pi 4 and earlier: hardware H.264 at /dev/video11
    PISP = 1  # Pi 5: no hardware H.264


_platform = Platform.VC4


def get_platform() -> Platform:
    return _platform
