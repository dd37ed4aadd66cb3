"""Recording while live: the local copy holds everything, through an outage and a power cut."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from streamer.localserver import LocalRtmpServer, free_port
from tests.conftest import LiveCli
from tests.media_check import CAPTURE_FLOOR, ffmpeg_log


def decode_segments(directory: Path) -> tuple[list[list[float]], int]:
    """Per segment (in order), its video frame times in seconds; and the decode errors."""
    segments: list[list[float]] = []
    errors = 0
    for path in sorted(directory.glob("*.mkv")):
        times = []
        with ffmpeg_log() as logs, av.open(str(path)) as container:
            for frame in container.decode(video=0):
                assert frame.pts is not None and frame.time_base is not None
                times.append(float(frame.pts * frame.time_base))
        errors += sum(1 for level, _, _ in logs if level <= av.logging.ERROR)
        segments.append(times)
    return segments, errors


@pytest.mark.slow
def test_recording_spans_a_network_outage_without_a_gap(tmp_path: Path) -> None:
    port = free_port()
    server = LocalRtmpServer(port=port)
    server.start()
    record = tmp_path / "rec"
    record.mkdir()
    cli = LiveCli(
        "run",
        "--url",
        server.url("rec"),
        "--size",
        "320x180",
        "--record",
        str(record),
        "--record-minutes",
        "0.1",
        "--duration",
        "20",
    )
    try:
        cli.wait_for_state("preparing -> live", timeout=15)
        time.sleep(7)
        server.stop()  # the network goes away for 5 s
        time.sleep(5)
        server = LocalRtmpServer(port=port)
        server.start()
        assert cli.proc.wait(timeout=60) == 0, cli.output[-2000:]
    finally:
        cli.stop(signal.SIGKILL)
        server.stop()
        server.remove()
    segments, errors = decode_segments(record)
    assert errors == 0
    assert len(segments) >= 3
    for times in segments:  # inside each segment: no hole (the outage's would be 5 s)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # a camera on a busy machine may skip a few frames (`make test` runs four tests
        # at once)
        assert max(gaps) < 0.5, f"a gap of {max(gaps):.2f} s in a segment"
    frames = sum(len(t) for t in segments)
    # a floor a stalled capture would miss (the rate a busy machine keeps is bench/'s)
    assert frames >= CAPTURE_FLOOR * 20 * 30, f"{frames} frames recorded for 20 s at 30 fps"


@pytest.mark.slow
def test_a_segment_cut_by_a_power_cut_still_plays(tmp_path: Path) -> None:
    with LocalRtmpServer() as server:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamer",
                "run",
                "--url",
                server.url("cut"),
                "--size",
                "320x180",
                "--record",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ),
        )
        try:
            time.sleep(8)
        finally:
            proc.send_signal(signal.SIGKILL)  # no chance to close the file
            proc.wait(timeout=10)
    [frames], errors = decode_segments(tmp_path)  # one segment, cut short
    assert errors == 0
    assert len(frames) >= 4 * 30, f"only {len(frames)} frames survived"


def test_a_missing_record_directory_stops_recording_not_streaming(tmp_path: Path) -> None:
    with LocalRtmpServer() as server:
        cli = LiveCli(
            "run",
            "--url",
            server.url("norec"),
            "--size",
            "320x180",
            "--record",
            str(tmp_path / "missing"),
            "--duration",
            "3",
        )
        try:
            cli.wait_for_state("preparing -> live", timeout=15)
            assert cli.proc.wait(timeout=30) == 0
        finally:
            cli.stop(signal.SIGKILL)
        disabled = [e for e in cli.events if e.get("event") == "recording disabled"]
        assert disabled and "missing" in disabled[0]["reason"]
        assert server.recordings(), "the stream itself went on"
