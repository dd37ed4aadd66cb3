"""Lip sync: a flash on the picture and a click in the sound, captured at the same instant."""

from __future__ import annotations

import numpy as np

from streamer.localserver import LocalRtmpServer
from tests.conftest import run_cli
from tests.media_check import analyze_file

SECONDS = 60


def click_times_ms(samples: np.ndarray, rate: int, start_ms: int) -> list[float]:
    """Onsets of loud bursts (the tone stays below 0.35 of full scale)."""
    loud = np.flatnonzero(np.abs(samples) > 0.6)
    onsets = [i for j, i in enumerate(loud) if j == 0 or i - loud[j - 1] > rate // 10]
    return [start_ms + 1000 * i / rate for i in onsets]


def nearest(values: list[float], target: float) -> float:
    return min(values, key=lambda v: abs(v - target))


def test_flashes_and_clicks_stay_within_40_ms_over_a_minute(
    rtmp_server: LocalRtmpServer,
) -> None:
    result = run_cli(
        "run",
        "--url",
        rtmp_server.url("sync"),
        "--camera",
        "sim:sync",
        "--microphone",
        "sim:sync",
        "--size",
        "320x180",
        "--duration",
        str(SECONDS),
        timeout=SECONDS + 40,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rtmp_server.stop()
    [recording] = rtmp_server.recordings()
    report = analyze_file(recording)
    assert report.decode_errors == []

    luma = np.array(report.frame_luma)
    flashes = [t for t, y in zip(report.frame_pts_ms, luma, strict=True) if y > 200]
    clicks = click_times_ms(report.audio_samples(), report.sample_rate, report.audio_pts_ms[0])
    assert len(flashes) >= SECONDS - 2 and len(clicks) >= SECONDS - 2, (len(flashes), len(clicks))
    offsets = [nearest(clicks, f) - f for f in flashes]
    worst = max(abs(o) for o in offsets)
    print(
        f"A/V offset over {len(offsets)} flashes: mean {np.mean(offsets):.1f} ms, "
        f"worst {worst:.1f} ms"
    )
    assert worst <= 40
