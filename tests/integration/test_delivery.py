"""A --duration run that delivered a fraction of its frames does not report success.

The rule (streamer/net/delivery.py, README "Exit codes"): at the end of a
``--duration`` run, fewer than half of the video frames captured while live
acknowledged by the server is exit code 1 with one line saying how many
arrived. A server that stops reading fails the run; a link squeezed to 40 %
of the bitrate still exits 0. A clean run to nginx-rtmp exits 0 with its
count checked against the recording in tests/integration/test_interop.py.
"""

from __future__ import annotations

import time

import pytest

from streamer.localserver import LocalRtmpServer
from streamer.rtmp import message as m
from tests.conftest import run_cli
from tests.media_check import analyze_file
from tests.netproxy import ThrottleProxy
from tests.rtmpserver import ScriptedServer, ServerThread


@pytest.mark.slow
def test_a_server_that_stops_reading_fails_the_run_with_the_frames_it_got() -> None:
    # About half a second of 320x180 video, then the server reads nothing more.
    with ServerThread(lambda: ScriptedServer(stop_reading_after=100_000)) as server:
        started = time.monotonic()
        result = run_cli(
            "run", "--url", server.url("hung-key"), "--size", "320x180", "--duration", "4",
            "--status-port", "0", timeout=40,
        )  # fmt: skip
        took = time.monotonic() - started
        [session] = server.sessions
        at_server = len(session.media(m.VIDEO)) - 1  # without the AVC sequence header
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [x for x in result.stderr.splitlines() if x.startswith("streamer: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    got, live = result.delivered()
    print(f"hung server: {got} of {live} frames acked, {at_server} read; exit in {took:.1f} s")
    assert errors[0].startswith(f"streamer: error: only {got} of {live} video frames")
    assert "hung-key" not in result.output
    # What we say arrived is what the server read (its last ack may lag a frame or two).
    assert at_server - 2 <= got <= at_server
    assert live >= 0.9 * 4 * 30  # every frame of the 4 s was captured while live


@pytest.mark.slow
def test_a_run_squeezed_to_40_percent_of_its_bitrate_still_succeeds(
    rtmp_server: LocalRtmpServer,
) -> None:
    kbps = 1500
    proxy = ThrottleProxy(rtmp_server.port, rate=kbps * 0.4 * 1000 / 8)
    proxy.start()
    try:
        result = run_cli(
            "run", "--url", f"rtmp://127.0.0.1:{proxy.port}/live/squeezed", "--size", "640x360",
            "--video-bitrate", str(kbps), "--duration", "6", "--status-port", "0", timeout=40,
        )  # fmt: skip
    finally:
        proxy.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    rtmp_server.stop()  # finalises the recording
    [recording] = rtmp_server.recordings()
    report = analyze_file(recording)
    got, live = result.delivered()
    print(f"40 % squeeze: {got} of {live} frames acknowledged, {report.frames_decoded} decoded")
    assert report.decode_errors == []
    # Never more than the server has; short by at most the last unacknowledged bytes.
    assert len(report.video_pts_ms) - 5 <= got <= len(report.video_pts_ms)
    assert got >= 0.7 * live
