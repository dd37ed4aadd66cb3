"""The Pi camera path, through a fake picamera2 faithful to the real API (no camera here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.localserver import LocalRtmpServer
from tests.conftest import CliResult
from tests.media_check import analyze_file, check_counters_as_captured

pytestmark = pytest.mark.slow  # each test here takes more than 5 s

FAKES = Path(__file__).parents[1] / "fakes"


def run_with_fake_picamera2(*args: str, platform: str = "VC4") -> CliResult:
    """`streamer run` in a process that imports the fake picamera2 as the real one."""
    code = (
        "import sys, picamera2.platform as p; "
        f"p._platform = p.Platform.{platform}; "
        "from streamer.__main__ import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAKES), os.getcwd()])}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.mark.parametrize(
    ("platform", "encoder"),
    [("VC4", "picamera2 H264Encoder (V4L2)"), ("PISP", "libx264")],
)
def test_pi_camera_streams_and_the_recording_decodes(
    rtmp_server: LocalRtmpServer, platform: str, encoder: str
) -> None:
    result = run_with_fake_picamera2(
        "run",
        "--url",
        rtmp_server.url("picam"),
        "--camera",
        "picamera2",
        "--size",
        "640x360",
        "--fps",
        "30",
        "--duration",
        "6",
        "--log-format",
        "json",
        platform=platform,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert encoder in result.stderr  # the stats line names the encoder in use
    rtmp_server.stop()
    [recording] = rtmp_server.recordings()
    report = analyze_file(recording)
    assert report.decode_errors == []
    assert (report.width, report.height) == (640, 360)
    assert report.video_keyframes[0]
    # everything captured while live is on the server (the camera's rate on a busy
    # machine is bench/'s business: a floor a stalled capture would miss)
    delivered, captured = result.captured_live(6, 30)
    assert len(report.video_pts_ms) >= captured - 1 and delivered >= captured - 2
    assert all(b > a for a, b in zip(report.video_pts_ms, report.video_pts_ms[1:], strict=False))
    counters = [c for c in report.counters if c is not None]
    assert len(counters) >= 0.95 * len(report.counters)
    # Every frame in capture order, none twice, none missing but what the camera
    # skipped (a reader that is late loses frames, as with picamera2).
    check_counters_as_captured(report.counters, 6 * 30, captured)
    assert abs(report.audio_pts_ms[0] - report.video_pts_ms[0]) <= 50
