"""--rotate as a viewer sees it: the sim camera turned, through nginx, decoded as it arrives."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from streamer.localserver import LocalRtmpServer
from tests.conftest import CliResult, run_cli
from tests.integration.test_filters_stream import red_png
from tests.media_check import (
    MediaReport,
    analyze_file,
    check_counters_as_captured,
    read_counter,
    watch_live,
)

pytestmark = pytest.mark.slow  # each test here takes more than 5 s

W, H, FPS, SECONDS = 320, 180, 30, 3.5
UNDO = {90: 1, 270: -1}  # numpy rot90 k that turns a clockwise-rotated picture back


def stream_turned(server: LocalRtmpServer, degrees: int, *extra: str) -> tuple[CliResult, Path]:
    result = run_cli(
        "run",
        "--url",
        server.url(f"rotate{degrees}"),
        "--size",
        f"{W}x{H}",
        "--fps",
        str(FPS),
        "--duration",
        str(SECONDS),
        "--video-bitrate",
        "1500",
        "--rotate",
        str(degrees),
        *extra,
        timeout=40,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    server.stop()
    [recording] = server.recordings()
    return result, recording


def check_turned(result: CliResult, recording: Path, degrees: int) -> list[npt.NDArray[np.uint8]]:
    """The recording is the camera's picture turned: its size and its frame counters.

    Returns the decoded pictures as RGB."""
    report = analyze_file(recording)
    assert report.decode_errors == []
    assert (report.width, report.height) == (H, W)  # 180 wide, 320 high
    assert all(c is None for c in report.counters)  # as streamed, the counter is not top-left
    rgbs, readings = [], []
    with av.open(str(recording)) as container:
        for frame in container.decode(video=0):
            luma = np.asarray(frame.to_ndarray(format="yuv420p")[: frame.height], np.uint8)
            readings.append(read_counter(np.rot90(luma, k=UNDO[degrees]), H))
            rgbs.append(np.asarray(frame.to_ndarray(format="rgb24"), np.uint8))
    assert len(readings) == report.frames_decoded
    read = [c for c in readings if c is not None]
    assert len(read) >= 0.95 * len(readings)  # turned back, the counter reads
    _, captured = result.delivered()
    check_counters_as_captured(readings, round(SECONDS * FPS), captured)  # in order, none lost
    return rgbs


def test_rotate_90_streams_the_picture_turned_clockwise(rtmp_server: LocalRtmpServer) -> None:
    live = MediaReport()
    viewer = watch_live(rtmp_server.url("rotate90"), seconds=1.0, report=live)
    time.sleep(0.5)  # the viewer waits for the publisher
    result, recording = stream_turned(rtmp_server, 90)
    viewer.join(timeout=10)
    assert not viewer.is_alive()
    # The live viewer's onMetaData (nginx-rtmp rebuilds it from the width and height we
    # sent; its recordings carry none) and pictures: 180 wide, 320 high.
    assert live.decode_errors == []
    assert (live.metadata.get("displayWidth"), live.metadata.get("displayHeight")) == ("180", "320")
    assert (live.width, live.height) == (H, W)
    check_turned(result, recording, 90)


def test_rotate_270_with_a_watermark_upright_at_its_corner(
    rtmp_server: LocalRtmpServer, tmp_path: Path
) -> None:
    logo = tmp_path / "logo.png"
    red_png(logo)  # 40x40
    result, recording = stream_turned(
        rtmp_server, 270, "--filter", f"watermark={logo}:bottom-right:margin=8"
    )
    rgbs = check_turned(result, recording, 270)
    # at the bottom-right of the streamed 180x320 picture, not of the camera's
    inside = [f[W - 8 - 30 : W - 8 - 10, H - 8 - 30 : H - 8 - 10] for f in rgbs]
    red, green, blue = np.mean(inside, axis=(0, 1, 2))
    assert red > 200 and green < 60 and blue < 60, (red, green, blue)
