"""The webcam backend, fed by a live lavfi source through the same PyAV calls (no webcam here)."""

from __future__ import annotations

import time

import pytest

from streamer.exc import DeviceError
from streamer.hardware.v4l2 import V4l2Camera


def test_frames_come_out_yuv420p_at_the_configured_size_and_stamped() -> None:
    camera = V4l2Camera(
        320,
        180,
        30,
        device="testsrc2=size=640x480:rate=30",
        container_format="lavfi",
        options={},
    )
    camera.open()
    try:
        before = time.monotonic()
        frames = [camera.read() for _ in range(10)]
    finally:
        camera.close()
    for frame, captured in frames:
        assert (frame.width, frame.height, frame.format.name) == (320, 180, "yuv420p")
        assert before - 0.5 <= captured <= time.monotonic()
    stamps = [c for _, c in frames]
    assert stamps == sorted(stamps)


def test_missing_webcam_says_what_to_check() -> None:
    camera = V4l2Camera(640, 480, 30, device="/dev/video99")
    with pytest.raises(DeviceError) as info:
        camera.open()
    message = info.value.message
    assert "/dev/video99" in message and "v4l2-ctl --list-devices" in message


def test_unsupported_input_format_is_refused() -> None:
    with pytest.raises(DeviceError, match="h264"):
        V4l2Camera(640, 480, 30, input_format="h264")
