"""On a real Pi with a camera and a USB microphone: the same checks as with the simulators.

Run with ``STREAMER_HW=1 make test`` on the device (camera and microphone
attached; ``STREAMER_HW_MIC`` names the ALSA device, default ``default``).
Everywhere else these are skipped: the hardware cannot exist there.
"""

from __future__ import annotations

import itertools
import os

import pytest

from streamer.localserver import LocalRtmpServer
from tests.conftest import run_cli
from tests.media_check import analyze_file

pytestmark = [
    pytest.mark.hardware,
    pytest.mark.skipif(os.environ.get("STREAMER_HW") != "1", reason="needs STREAMER_HW=1 on a Pi"),
]


def test_pi_camera_and_usb_microphone_stream_and_decode(rtmp_server: LocalRtmpServer) -> None:
    mic = os.environ.get("STREAMER_HW_MIC", "default")
    result = run_cli(
        "run",
        "--url",
        rtmp_server.url("device"),
        "--camera",
        "picamera2",
        "--microphone",
        f"alsa:{mic}",
        "--size",
        "1280x720",
        "--fps",
        "30",
        "--duration",
        "10",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rtmp_server.stop()
    [recording] = rtmp_server.recordings()
    report = analyze_file(recording)
    assert report.decode_errors == []
    assert (report.width, report.height) == (1280, 720)
    assert report.video_keyframes[0]
    assert len(report.video_pts_ms) >= 0.97 * 10 * 30
    assert len(report.audio_pts_ms) >= 0.97 * 10 * 48000 / 1024
    for track in (report.video_pts_ms, report.audio_pts_ms):
        assert all(b > a for a, b in itertools.pairwise(track))
    assert abs(report.audio_pts_ms[0] - report.video_pts_ms[0]) <= 50
