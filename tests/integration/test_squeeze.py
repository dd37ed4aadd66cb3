"""A bad uplink: the viewer stays within a second of live and never sees a broken frame."""

from __future__ import annotations

import signal
import statistics
import threading
import time

import numpy as np
import pytest

from streamer.localserver import LocalRtmpServer
from tests.conftest import LiveCli
from tests.media_check import MediaReport, watch_live
from tests.netproxy import ThrottleProxy

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # each more than 5 s

KBPS = 1500
AUDIO_PER_S = 48000 / 1024
SETTLE_S = 15  # the sustained link: seconds the controller has to find the link
SPAN_S = 15  # ... then two spans of this, compared
SUSTAINED_S = SETTLE_S + 2 * SPAN_S + 2


def viewer_delays(report: MediaReport) -> tuple[np.ndarray, np.ndarray]:
    """Per video packet: arrival time, and queueing delay above the best seen."""
    arrivals = np.array(report.arrivals)
    lag = arrivals - np.array(report.video_pts_ms) / 1000
    return arrivals, lag - lag.min()


def start_scenario(
    server: LocalRtmpServer, key: str, seconds: float
) -> tuple[ThrottleProxy, LiveCli, MediaReport, threading.Thread]:
    proxy = ThrottleProxy(server.port)
    proxy.start()
    report = MediaReport()
    viewer = watch_live(server.url(key), seconds=seconds, report=report, nobuffer=True)
    time.sleep(0.5)
    cli = LiveCli(
        "run",
        "--url",
        f"rtmp://127.0.0.1:{proxy.port}/live/{key}",
        "--size",
        "640x360",
        "--fps",
        "30",
        "--video-bitrate",
        str(KBPS),
        "--duration",
        str(seconds + 8),
    )
    cli.wait_for_state("preparing -> live", timeout=15)
    return proxy, cli, report, viewer


def finish(proxy: ThrottleProxy, cli: LiveCli, viewer: threading.Thread, timeout: float) -> None:
    """Let the viewer see its fill, then stop the publisher (cleanly) and the proxy."""
    try:
        viewer.join(timeout=timeout)
        assert not viewer.is_alive(), f"the viewer did not get its video within {timeout} s"
        assert cli.stop() == 0, cli.output[-2000:]
    finally:
        cli.stop(signal.SIGKILL)
        proxy.stop()


def bitrate_events(cli: LiveCli) -> list[tuple[float, int]]:
    return [(e["_received"], e["target_kbps"]) for e in cli.events if e.get("event") == "bitrate"]


def held_kbps(events: list[tuple[float, int]], start: float, end: float) -> float:
    """The target the controller held over [start, end], weighted by time.

    Judging the last event alone would count a short upward probe (which the
    controller makes after seconds of an empty queue, and takes back when the
    queue grows) as the rate it settled at.
    """
    held = [kbps for t, kbps in events if t <= start][-1:]  # in effect at start
    if not held:
        raise AssertionError("no bitrate decision before the window")
    changes = [(start, held[0])] + [(t, kbps) for t, kbps in events if start < t < end]
    spans = zip(changes, [t for t, _ in changes[1:]] + [end], strict=True)
    return sum((until - t) * kbps for (t, kbps), until in spans) / (end - start)


def test_link_cut_to_40_percent_for_15_s(rtmp_server: LocalRtmpServer) -> None:
    proxy, cli, report, viewer = start_scenario(rtmp_server, "squeeze", seconds=30)
    try:
        time.sleep(5)
        squeeze_start = time.monotonic()
        proxy.set_rate(KBPS * 0.4 * 1000 / 8)
        time.sleep(15)
        proxy.set_rate(None)
        restored = time.monotonic()
    finally:
        finish(proxy, cli, viewer, timeout=40)
    assert report.decode_errors == []
    arrivals, delay = viewer_delays(report)
    p95 = float(np.percentile(delay, 95))
    print(f"viewer delay p50 {np.median(delay):.2f} s, p95 {p95:.2f} s, max {delay.max():.2f} s")
    assert p95 <= 1.0
    after = delay[arrivals >= restored + 3]
    assert len(after) > 0 and float(after.max()) < 0.5, "not back to live 3 s after recovery"
    watched = arrivals[-1] - arrivals[0]
    assert report.audio_frames_decoded >= 0.95 * AUDIO_PER_S * watched
    events = bitrate_events(cli)
    lowered = [kbps for t, kbps in events if squeeze_start <= t <= restored and kbps < KBPS]
    assert lowered, f"target bitrate not lowered during the squeeze: {events}"
    # Back up once the link is: the target in effect at the end. (The controller probes
    # upward after seconds of a calm queue; a probe that falls in the squeeze's last moments
    # holds, with nothing left to raise after it.)
    final = [kbps for t, kbps in events if t > squeeze_start][-1]
    assert final > min(lowered), f"target bitrate not raised after the squeeze: {events}"


def test_sustained_link_at_70_percent(rtmp_server: LocalRtmpServer) -> None:
    # 15 s to settle, then two spans of 15 s: the second may not be worse than the first.
    proxy, cli, report, viewer = start_scenario(rtmp_server, "sustained", seconds=SUSTAINED_S)
    link_kbps = KBPS * 0.7
    try:
        proxy.set_rate(link_kbps * 1000 / 8)
        started = time.monotonic()
    finally:
        finish(proxy, cli, viewer, timeout=SUSTAINED_S + 28)
    assert report.decode_errors == []
    arrivals, delay = viewer_delays(report)
    late = delay[arrivals >= started + SETTLE_S]
    early = delay[(arrivals >= started + 5) & (arrivals < started + SETTLE_S)]
    print(
        f"delay p95 5-{SETTLE_S} s {np.percentile(early, 95):.2f} s, after {SETTLE_S} s "
        f"{np.percentile(late, 95):.2f} s, max {late.max():.2f} s"
    )
    assert float(np.percentile(late, 95)) <= 1.0
    # no growth: the last span is not worse than the span before it
    last = delay[arrivals >= arrivals[-1] - SPAN_S]
    before = delay[(arrivals >= arrivals[-1] - 2 * SPAN_S) & (arrivals < arrivals[-1] - SPAN_S)]
    median_before, median_last = statistics.median(before), statistics.median(last)
    print(f"median delay, span before {median_before:.2f} s, last {median_last:.2f} s")
    assert median_last <= median_before + 0.25
    events = bitrate_events(cli)
    assert events, "the encoder never adapted"
    settled = held_kbps(events, arrivals[-1] - SPAN_S, arrivals[-1])
    print(f"bitrate held over the last {SPAN_S} s: {settled:.0f} kbps (link {link_kbps:.0f})")
    assert 300 <= settled <= link_kbps, f"settled at {settled:.0f} kbps on a {link_kbps} kbps link"
