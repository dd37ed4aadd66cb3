"""The whole device path against a real nginx-rtmp, judged by what a viewer decodes."""

from __future__ import annotations

import itertools
import signal
import time

import numpy as np
import pytest

from streamer.localserver import LocalRtmpServer
from tests.conftest import run_cli, start_cli
from tests.media_check import (
    CAPTURE_FLOOR,
    MediaReport,
    analyze_file,
    check_counters_as_captured,
    dominant_frequency,
    watch_live,
)

DURATION = 10
FPS = 30
AUDIO_FRAMES_PER_S = 48000 / 1024


@pytest.mark.slow
def test_ten_seconds_recorded_by_the_server_decode_completely(
    rtmp_server: LocalRtmpServer,
) -> None:
    result = run_cli(
        "run",
        "--url",
        rtmp_server.url("room"),
        "--camera",
        "sim",
        "--microphone",
        "sim",
        "--size",
        "640x360",
        "--fps",
        str(FPS),
        "--duration",
        str(DURATION),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rtmp_server.stop()  # finalises the recording
    [recording] = rtmp_server.recordings()
    report = analyze_file(recording)

    assert (report.width, report.height) == (640, 360)
    assert report.decode_errors == []
    # every frame captured while live reached the server and is in its recording; a camera
    # on a busy machine (`make test` runs four tests at once) may have skipped a few
    delivered, captured = result.captured_live(DURATION, FPS)
    print(f"{len(report.video_pts_ms)} frames recorded, {delivered} acknowledged of {captured}")
    # (the server's last acknowledgement may not have come before the end)
    assert len(report.video_pts_ms) >= captured - 1 and delivered >= captured - 2
    assert report.frames_decoded == len(report.video_pts_ms)
    assert len(report.audio_pts_ms) >= 0.97 * DURATION * AUDIO_FRAMES_PER_S
    assert report.video_keyframes[0], "the first video packet must be a keyframe"
    # the picture is the sim camera's: its frame counter runs without gaps but the camera's
    counters = [c for c in report.counters if c is not None]
    assert len(counters) >= 0.97 * len(report.counters)
    skipped_by_camera = check_counters_as_captured(report.counters, DURATION * FPS, captured)
    # a keyframe every 2 s (every 60 frames: later by the frames a busy camera skipped)
    key_times = [t for t, k in zip(report.video_pts_ms, report.video_keyframes, strict=True) if k]
    assert len(key_times) >= DURATION // 2 - skipped_by_camera // (2 * FPS)
    longest = 2100 + 1000 * skipped_by_camera / FPS
    assert all(1900 <= b - a <= longest for a, b in itertools.pairwise(key_times)), key_times
    for track in (report.video_pts_ms, report.audio_pts_ms):
        assert all(b > a for a, b in itertools.pairwise(track)), "timestamps not rising"
    assert abs(report.audio_pts_ms[0] - report.video_pts_ms[0]) <= 50
    # the sound is the sim microphone's 440 Hz tone
    freq = dominant_frequency(report.audio_samples()[48000:96000], report.sample_rate)
    assert abs(freq - 440) <= 5, freq


@pytest.mark.slow
@pytest.mark.heavy  # its viewer decodes 640x360 as it comes: a starved viewer loses frames
def test_a_viewer_plays_the_stream_live(rtmp_server: LocalRtmpServer) -> None:
    url = rtmp_server.url("live-room")
    report = MediaReport()
    viewer = watch_live(url, seconds=5, report=report)  # the viewer waits for the publisher
    time.sleep(0.5)
    publisher = start_cli("run", "--url", url, "--size", "640x360", "--duration", "15")
    try:
        viewer.join(timeout=30)
        assert not viewer.is_alive(), "viewer did not get 5 s of video within 30 s"
    finally:
        publisher.terminate()  # SIGTERM: a clean stop
        _, err = publisher.communicate(timeout=20)
    assert publisher.returncode == 0, err
    assert report.decode_errors == []
    # 5 s of media; a camera on a busy machine skips frames (`make test` runs four tests at
    # once): a floor that a stalled capture would miss
    assert report.frames_decoded >= 5 * FPS * CAPTURE_FLOOR
    assert (report.width, report.height) == (640, 360)
    assert report.video_keyframes[0]
    assert report.audio_frames_decoded > 0
    # nginx-rtmp rebuilds onMetaData for viewers from the fields it parsed out of ours
    assert report.metadata.get("displayWidth") == "640"
    assert report.metadata.get("displayHeight") == "360"
    assert report.metadata.get("fps") == "30"
    # Live means paced: after FFmpeg's probe burst, 3 s of media take about 3 s to arrive.
    k = next(i for i, t in enumerate(report.video_pts_ms) if t >= report.video_pts_ms[0] + 2000)
    media_s = (report.video_pts_ms[-1] - report.video_pts_ms[k]) / 1000
    arrival_s = report.arrivals[-1] - report.arrivals[k]
    assert media_s >= 2.9
    assert 0.8 * media_s <= arrival_s <= 1.2 * media_s
    assert np.all(np.diff(report.video_pts_ms) > 0)


def test_sigint_stops_cleanly_and_unpublishes(rtmp_server: LocalRtmpServer) -> None:
    publisher = start_cli("run", "--url", rtmp_server.url("stop-me"), "--size", "320x180")
    try:
        for _ in range(100):  # until the server records: the publisher is live
            if rtmp_server.recordings():
                break
            time.sleep(0.1)
        time.sleep(1.0)
        publisher.send_signal(signal.SIGINT)
        _, err = publisher.communicate(timeout=15)
    finally:
        if publisher.poll() is None:
            publisher.kill()
    assert publisher.returncode == 0, err
    assert "unpublished" in err
    # nginx saw the stream deleted by the client before the connection went away
    lines = [
        line for line in rtmp_server.error_log().splitlines() if "publish: name='stop-me'" in line
    ]
    [conn] = [line.split("*")[1].split()[0] for line in lines]
    events = [
        ("deleteStream" if "deleteStream" in line else "disconnect")
        for line in rtmp_server.error_log().splitlines()
        if f"*{conn} " in line and ("deleteStream" in line or "disconnect" in line)
    ]
    assert events[:2] == ["deleteStream", "disconnect"], events
