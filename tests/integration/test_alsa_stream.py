"""A USB microphone through the real libasound: a known tone in, the same tone out of nginx."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from streamer.localserver import LocalRtmpServer
from tests.alsa_fixture import TONE_HZ, ToneFifo, tone, write_asoundrc
from tests.media_check import analyze_file, dominant_frequency

pytestmark = pytest.mark.slow  # each test here takes more than 5 s

SECONDS = 8


@pytest.mark.alone  # the test feeds ALSA's FIFO in real time: a busy machine delays the feed
def test_alsa_tone_reaches_the_viewer_whole(rtmp_server: LocalRtmpServer, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    fifo = ToneFifo(tmp_path / "mic.raw", tone(SECONDS + 20))
    write_asoundrc(home, {"testmic": fifo.path})
    env = {**os.environ, "HOME": str(home)}
    env.pop("XDG_CONFIG_HOME", None)
    fifo.start()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "streamer",
                "run",
                "--url",
                rtmp_server.url("mic"),
                "--microphone",
                "alsa:testmic",
                "--size",
                "320x180",
                "--duration",
                str(SECONDS),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        fifo.close()
    assert result.returncode == 0, result.stderr[-3000:]
    rtmp_server.stop()
    [recording] = rtmp_server.recordings()
    report = analyze_file(recording)
    assert report.decode_errors == []
    assert len(report.audio_pts_ms) >= 0.97 * SECONDS * 48000 / 1024
    assert all(b > a for a, b in zip(report.audio_pts_ms, report.audio_pts_ms[1:], strict=False))
    assert abs(report.audio_pts_ms[0] - report.video_pts_ms[0]) <= 50
    samples = report.audio_samples()
    assert abs(dominant_frequency(samples[48000:144000], 48000) - TONE_HZ) <= 5
    # continuous: every 20 ms window after the start carries the tone (no silence filled in)
    body = samples[4800 : len(samples) - 4800]
    windows = body[: len(body) // 960 * 960].reshape(-1, 960)
    rms = np.sqrt(np.mean(windows**2, axis=1))
    assert float(rms.min()) > 0.1, f"a gap in the audio: min RMS {rms.min():.3f}"
