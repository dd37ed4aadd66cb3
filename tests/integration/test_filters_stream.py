"""Filters as a viewer sees them: mirror and watermark through nginx, decoded from the recording."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from streamer.localserver import LocalRtmpServer
from tests.conftest import run_cli
from tests.media_check import read_counter
from tests.unit.test_filters import write_png

pytestmark = pytest.mark.slow  # each test here takes more than 5 s


def red_png(path: Path, size: int = 40) -> None:
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 255
    write_png(path, rgba)


def test_mirror_and_watermark_reach_the_viewer(
    rtmp_server: LocalRtmpServer, tmp_path: Path
) -> None:
    logo = tmp_path / "logo.png"
    red_png(logo)
    result = run_cli(
        "run",
        "--url",
        rtmp_server.url("filtered"),
        "--size",
        "320x180",
        "--duration",
        "4",
        "--video-bitrate",
        "1500",
        "--filter",
        "mirror",
        "--filter",
        f"watermark={logo}:bottom-right:margin=8",
        timeout=40,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rtmp_server.stop()
    [recording] = rtmp_server.recordings()
    counters, corner_rgb = [], []
    with av.open(str(recording)) as container:
        for frame in container.decode(video=0):
            luma = frame.to_ndarray(format="yuv420p")[:180]
            counters.append(read_counter(np.fliplr(luma), 180))
            rgb = frame.to_ndarray(format="rgb24")
            corner_rgb.append(
                rgb[180 - 8 - 30 : 180 - 8 - 10, 320 - 8 - 30 : 320 - 8 - 10].mean(axis=(0, 1))
            )
    read = [c for c in counters if c is not None]
    assert len(read) >= 0.9 * len(counters) >= 0.9 * 4 * 30 * 0.9  # the counter reads mirrored
    assert read == list(range(read[0], read[0] + len(read)))
    red, green, blue = np.mean(corner_rgb, axis=0)
    assert red > 200 and green < 60 and blue < 60, (red, green, blue)
