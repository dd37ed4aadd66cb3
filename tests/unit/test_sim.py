"""The simulated device produces what the integration tests later read back."""

from __future__ import annotations

import numpy as np

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
