"""The simulated device produces what the integration tests later read back."""

from __future__ import annotations

import time

import numpy as np
import pytest

from streamer.hardware import sim
from streamer.hardware.sim import SimCamera, SimMicrophone
from tests.media_check import dominant_frequency, read_counter


def test_frame_counter_reads_back_at_every_size() -> None:
    for width, height in ((320, 180), (640, 360), (1280, 720)):
        camera = SimCamera(width, height, 30)
        for n in (0, 7, 123, 98765):
            picture = camera.picture(n)
            assert picture.shape == (height * 3 // 2, width)
            assert read_counter(picture[:height], height) == n


def test_a_block_moves_over_a_still_background() -> None:
    camera = SimCamera(320, 180, 30)
    # frames a grain cycle apart share their grain: only the block has moved
    a, b = camera.picture(10)[:180], camera.picture(10 + camera.GRAIN_FRAMES)[:180]
    changed_rows = np.flatnonzero(np.any(a != b, axis=1))
    assert len(changed_rows) > 0
    # only the moving block's rows change, and the frame counter's
    block = set(range(camera._by, camera._by + camera._bh))
    counter = set(range(7 * camera._scale))
    assert set(changed_rows.tolist()) <= block | counter
    assert len(set(changed_rows.tolist()) & block) == camera._bh


def test_microphone_is_a_continuous_440_hz_stereo_tone() -> None:
    mic = SimMicrophone()
    periods = [mic._table[(i * 1024 + np.arange(1024)) % 48000] for i in range(60)]
    # read() itself is paced in real time; the samples it returns come from the same table
    samples, _ = mic.read()
    assert samples.shape == (1024, 2) and samples.dtype == np.int16
    assert np.array_equal(samples, periods[0])
    left = np.concatenate(periods)[:, 0].astype(np.float32)
    assert abs(dominant_frequency(left, 48000) - 440) < 2
    # no click at period boundaries: the largest step stays a sine's step
    assert np.max(np.abs(np.diff(left))) < 0.3 * 32767 * 2 * np.pi * 440 / 48000 * 1.05


class FakeTime:
    """time.monotonic and time.sleep on a clock that moves only when told (or slept)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, now: float) -> None:
        self.now = now
        monkeypatch.setattr(time, "monotonic", lambda: self.now)
        monkeypatch.setattr(time, "sleep", self.advance)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_frames_are_stamped_on_the_sensor_grid_however_late_they_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The reader is late by 20 ms (less than a frame), then by 75 ms (two
    # frames missed). Stamps stay on the 1/30 s grid, never bunch.
    clock = FakeTime(monkeypatch, 100.0)
    pacer = sim.Pacer(1 / 30)
    stamps = [pacer.wait()]
    for late in (0.0, 0.020, 0.0, 0.075, 0.0):
        clock.advance(late)
        stamps.append(pacer.wait())
    frames = [round((t - 100.0) * 30, 6) for t in stamps]
    assert frames == [0, 1, 2, 3, 5, 6]


def test_a_microphone_read_late_gets_every_period_it_missed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeTime(monkeypatch, 50.0)
    mic = SimMicrophone()
    first = mic.read()[1]
    clock.advance(0.1)  # almost five periods late
    stamps = [mic.read()[1] for _ in range(6)]
    assert clock.now - 50.0 < 0.1 + 2 * 1024 / 48000  # the backlog came at once
    assert [round((t - first) * 48000) for t in stamps] == [1024 * i for i in range(1, 7)]


@pytest.mark.parametrize("fps", [25, 30, 29.97])
def test_each_flash_is_centred_on_its_second(fps: float) -> None:
    period = 1 / fps
    for phase in np.linspace(0, period, 7, endpoint=False):
        times = [10 + phase + k * period for k in range(-3, 4)]
        weights = [sim.flash_weight(t, period) for t in times]
        lit = [(t, w) for t, w in zip(times, weights, strict=True) if w > 1e-9]
        assert 1 <= len(lit) <= 2
        assert sum(weights) == pytest.approx(1)  # one frame period of light in all
        centre = sum(t * w for t, w in lit) / sum(w for _, w in lit)
        assert centre == pytest.approx(10, abs=1e-9)
        nearest = min(times, key=lambda t: abs(t - 10))
        assert max(lit, key=lambda tw: tw[1])[0] == nearest


def test_the_sync_click_starts_on_the_second() -> None:
    rate = 48000
    first = 99.99  # the period spans the whole second 100
    out = sim.click(np.zeros((1024, 2), np.int16), first, rate)
    loud = np.flatnonzero(np.abs(out[:, 0]) > 20000)
    assert abs(loud[0] - 0.01 * rate) <= 1  # within a sample (float times)
    assert abs(len(loud) - sim.CLICK_MS * rate // 1000) <= 1
