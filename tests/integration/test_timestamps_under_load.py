"""On a busy machine frames arrive late, but each keeps the time it was captured."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from streamer.localserver import LocalRtmpServer
from tests.conftest import run_cli
from tests.media_check import analyze_file

SECONDS = 8
FPS = 30
HOGS = 3  # busy processes: more than the machine's two cores


@pytest.mark.slow
@pytest.mark.alone  # its busy processes would slow every test running beside it
def test_timestamps_rise_on_the_capture_grid_under_cpu_load(rtmp_server: LocalRtmpServer) -> None:
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(HOGS)]
    try:
        result = run_cli(
            *("run", "--url", rtmp_server.url("busy"), "--size", "640x360"),
            *("--fps", str(FPS), "--duration", str(SECONDS)),
            timeout=SECONDS + 60,
        )
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert result.returncode == 0, result.stderr[-2000:]
    rtmp_server.stop()
    [recording] = rtmp_server.recordings()
    report = analyze_file(recording)
    assert report.decode_errors == []
    video, audio = report.video_pts_ms, report.audio_pts_ms
    assert len(video) >= 0.5 * SECONDS * FPS, len(video)
    steps = [b - a for a, b in itertools.pairwise(video)]
    # every step is a whole number of frame periods: late frames are never bunched
    off_grid = [s for s in steps if s < 1 or abs(s - round(s * FPS / 1000) * 1000 / FPS) > 1]
    print(f"{len(video)} frames; steps {min(steps)}..{max(steps)} ms; off the grid: {off_grid}")
    assert not off_grid
    assert all(b > a for a, b in itertools.pairwise(audio))
    # what ffmpeg says when it remuxes the recording, as a viewer's tools would
    remux = subprocess.run(
        ["ffmpeg", "-v", "warning", "-i", str(recording), "-c", "copy", "-f", "null", "-"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert remux.returncode == 0 and "monotonic" not in remux.stderr, remux.stderr[-2000:]
