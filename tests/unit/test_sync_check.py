"""The lip-sync measurement itself: it finds an offset put in on purpose, to the millisecond."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.hardware.sim import click, flash_weight
from tests.media_check import MediaReport
from tests.sync_check import measure_sync

RATE = 48000
BASE_LUMA = 110.0


def synthetic(
    fps: float,
    phase: float,
    audio_late_ms: float,
    skip: tuple[int, ...] = (),
    lost_after_capture: bool = False,
) -> MediaReport:
    """10 s as a server would record it: frames on a grid at ``phase``, clicks late or early.

    The frames in ``skip`` are missing: the camera skipped them (the counter
    it paints goes on from the last frame it made), or with
    ``lost_after_capture`` they were made and then lost (their numbers are missing).
    """
    period = 1 / fps
    report = MediaReport(sample_rate=RATE)
    counter = 0
    for k in range(round(10 * fps)):
        t = 100 + phase + k * period
        if k in skip:
            counter += lost_after_capture
            continue
        w = flash_weight(t, period)
        report.frame_luma.append(BASE_LUMA * (1 - w) + 235 * w)
        report.frame_pts_ms.append(round((t - 100) * 1000))
        report.counters.append(counter)
        counter += 1
    samples = np.zeros((10 * RATE, 2), np.int16)
    for start in range(0, len(samples), 1024):
        first = 100 + start / RATE - audio_late_ms / 1000
        samples[start : start + 1024] = click(samples[start : start + 1024], first, RATE)
    report.audio = [(samples[:, 0] / 32768).astype(np.float32)]
    report.audio_pts_ms = [0, round(10_000 - 1000 * 1024 / RATE)]
    return report


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize("late_ms", [0, 12, -30])
def test_an_offset_put_in_is_measured_whatever_the_frame_phase(fps: int, late_ms: int) -> None:
    for phase in (0.0, 0.007, 0.019):
        result = measure_sync(synthetic(fps, phase, late_ms))
        assert len(result.offsets_ms) >= 7  # 10 s less a second at either end
        assert result.unpaired_flashes_ms == result.unpaired_clicks_ms == []
        assert result.median_ms == pytest.approx(late_ms, abs=1.0)
        assert result.worst_ms == pytest.approx(abs(late_ms), abs=1.0)


def test_a_flash_that_lost_a_frame_is_left_out_not_misplaced() -> None:
    fps, phase = 30, 0.010
    nearest = round((4 - phase) * fps)  # the frame that shows most of the flash at 4 s
    whole = measure_sync(synthetic(fps, phase, 0))
    result = measure_sync(synthetic(fps, phase, 0, skip=(nearest,)))
    [partial] = result.partial_flashes_ms  # what light the other frame caught
    assert abs(partial - 4000) < 1000 / fps
    assert len(result.offsets_ms) == len(whole.offsets_ms) - 1
    assert result.worst_ms <= 1.0


@pytest.mark.parametrize("lost_after_capture", [False, True])
def test_a_flash_the_camera_never_saw_is_told_apart_from_a_lost_one(
    lost_after_capture: bool,
) -> None:
    fps, phase = 30, 0.010
    nearest = round((4 - phase) * fps)
    around = (nearest - 1, nearest, nearest + 1)  # every frame that could show the flash at 4 s
    whole = measure_sync(synthetic(fps, phase, 0))
    result = measure_sync(synthetic(fps, phase, 0, around, lost_after_capture))
    assert len(result.offsets_ms) == len(whole.offsets_ms) - 1
    [click] = result.unpaired_clicks_ms if lost_after_capture else result.unseen_clicks_ms
    assert abs(click - 4000) < 1000 / fps
    assert (result.unseen_clicks_ms if lost_after_capture else result.unpaired_clicks_ms) == []
