"""AlsaMicrophone through the real pyalsaaudio and libasound, with no sound card.

The "microphone" is a `file` PCM defined in a temporary ~/.asoundrc whose
input is a FIFO fed at real pace (see tests/alsa_fixture.py), so reads block
like a device's; a plain file stands in for a device faster than real time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from structlog.testing import capture_logs

from streamer.exc import DeviceError
from streamer.hardware.alsa import AlsaMicrophone
from tests.alsa_fixture import (
    CHANNELS,
    PERIOD,
    RATE,
    TONE_HZ,
    ToneFifo,
    XrunPcm,
    reload_alsa_config,
    tone,
    write_asoundrc,
)
from tests.media_check import dominant_frequency

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh $HOME whose ~/.asoundrc libasound reads at the next open."""
    pytest.importorskip("alsaaudio")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)  # alsa.conf reads its asoundrc too
    reload_alsa_config()  # libasound caches the config of the first open in the process
    yield home
    reload_alsa_config()  # don't leave this test's devices to the next one


@pytest.fixture
def fifo_mic(home: Path, tmp_path: Path) -> Iterator[tuple[AlsaMicrophone, ToneFifo]]:
    """A microphone on `testmic`, the FIFO its ADC writes a 1 kHz tone into."""
    write_asoundrc(home, {"testmic": tmp_path / "mic.fifo"})
    fifo = ToneFifo(tmp_path / "mic.fifo", tone(8))
    mic = AlsaMicrophone("testmic", RATE, CHANNELS, PERIOD)
    try:
        yield mic, fifo
    finally:
        mic.close()
        fifo.close()


Block = tuple[npt.NDArray[np.int16], float, float, float]  # audio, stamp, called, returned


def capture(
    mic: AlsaMicrophone, seconds: float, stalls: dict[int, float] | None = None
) -> list[Block]:
    """Read for ``seconds``; before the read numbered in ``stalls``, sleep that long."""
    blocks: list[Block] = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        time.sleep((stalls or {}).get(len(blocks), 0.0))
        called = time.monotonic()
        audio, stamp = mic.read()
        blocks.append((audio, stamp, called, time.monotonic()))
    return blocks


def joined(blocks: list[Block]) -> npt.NDArray[np.int16]:
    return np.concatenate([b[0] for b in blocks])


def latest(block: Block) -> float:
    """The latest instant the block's first sample can have been captured."""
    return block[3] - len(block[0]) / RATE


def zero_runs(audio: npt.NDArray[np.int16], shortest: int = 64) -> list[tuple[int, int]]:
    """(start, length) of each run of all-zero frames at least ``shortest`` long."""
    silent = np.concatenate([[False], np.all(audio == 0, axis=1), [False]])
    edges = np.flatnonzero(np.diff(silent.astype(np.int8)))
    return [
        (int(a), int(b - a))
        for a, b in zip(edges[::2], edges[1::2], strict=True)
        if b - a >= shortest
    ]


@pytest.mark.alone  # real time on a loaded machine loses periods
def test_captures_the_tone_sample_for_sample_at_real_pace(
    fifo_mic: tuple[AlsaMicrophone, ToneFifo],
) -> None:
    mic, fifo = fifo_mic
    mic.open()
    fifo.start()
    blocks = capture(mic, 2.0)

    audio = joined(blocks)
    assert all(b[0].dtype == np.int16 and b[0].shape == (PERIOD, CHANNELS) for b in blocks)
    # every frame is the ADC's, in order from its first: no gap, no silence, nothing repeated
    assert fifo.dropped == 0
    assert np.array_equal(audio, tone(8)[: len(audio)])
    for ch in range(CHANNELS):
        assert abs(dominant_frequency(audio[:, ch].astype(np.float32), RATE) - TONE_HZ) <= 5
    # real pace: frames after the first block over the time they took to arrive
    fps = (len(audio) - PERIOD) / (blocks[-1][3] - blocks[0][3])
    print(f"measured {fps:.0f} frames/s")
    assert abs(fps / RATE - 1) < 0.02
    # stamps advance by sample count, or step back a little towards the truth,
    # and stay with the monotonic clock
    stamps = np.array([b[1] for b in blocks])
    steps = np.diff(stamps) - PERIOD / RATE
    assert steps.max() < 1e-9 and steps.min() > -0.005, steps
    assert max(abs(b[1] - latest(b)) for b in blocks) < 0.020
    # the FIFO's ADC captured period k from started_at + k periods: after the
    # first few reads the stamps are that, within our wake-up's latency
    truth = fifo.started_at + np.arange(len(stamps)) * PERIOD / RATE
    error_ms = (stamps - truth)[10:] * 1000
    print(f"stamp error after 10 periods: {error_ms.min():.2f}..{error_ms.max():.2f} ms")
    assert error_ms.min() > -0.5 and error_ms.max() < 3
    assert (mic.overruns, mic.reanchors) == (0, 0)


def test_a_plain_file_is_delivered_exactly_and_its_stamps_kept_to_the_clock(
    home: Path, tmp_path: Path
) -> None:
    signal = tone(1)
    (tmp_path / "mic.raw").write_bytes(signal.tobytes())
    write_asoundrc(home, {"filemic": tmp_path / "mic.raw"})
    mic = AlsaMicrophone("filemic")
    mic.open()
    try:
        blocks = [(*mic.read(), 0.0, time.monotonic()) for _ in range(40)]
    finally:
        mic.close()
    assert np.array_equal(joined(blocks), signal[: 40 * PERIOD])
    # a file is read far faster than real time, like a device running fast:
    # the sample clock would run ahead, so the stamps are pulled back to the clock
    assert mic.reanchors >= 1 and mic.overruns == 0
    assert all(b[1] <= latest(b) + 0.020 for b in blocks)


@pytest.mark.alone  # real time on a loaded machine loses periods
def test_a_stalled_reader_loses_audio_and_silence_keeps_it_in_time(
    fifo_mic: tuple[AlsaMicrophone, ToneFifo],
) -> None:
    """libasound reports nothing here (the `null` slave cannot overrun): the clock sees it."""
    mic, fifo = fifo_mic
    mic.open()
    fifo.start()
    with capture_logs() as logs:
        blocks = capture(mic, 1.5, stalls={20: 0.3})  # 0.3 s > the 85 ms buffer

    audio = joined(blocks)
    assert fifo.dropped >= 8  # ~0.3 s - 85 ms lost at the ADC
    assert mic.overruns == 1 and mic.reanchors == 0
    overruns = [e for e in logs if e["event"].startswith("alsa overrun")]
    assert len(overruns) == 1 and overruns[0]["detected"] == "clock"
    # in time: as many frames as time passed since the first sample
    elapsed = blocks[-1][3] - blocks[0][1]
    assert abs(len(audio) / (elapsed * RATE) - 1) < 0.02
    # the silence stands in for what was dropped, give or take a period
    runs = zero_runs(audio)
    assert len(runs) == 1 and abs(runs[0][1] - fifo.dropped * PERIOD) <= PERIOD
    assert abs(dominant_frequency(audio[:, 0].astype(np.float32), RATE) - TONE_HZ) <= 5
    # after it, stamps are back with the monotonic clock
    assert max(abs(b[1] - latest(b)) for b in blocks[-10:]) < 0.020


@pytest.mark.alone  # real time: a starved reader overruns for real, beside the ones it reports
@pytest.mark.parametrize("raise_error", [False, True], ids=["returns-epipe", "raises"])
def test_a_reported_overrun_is_filled_with_silence_and_logged_once_per_burst(
    fifo_mic: tuple[AlsaMicrophone, ToneFifo], monkeypatch: pytest.MonkeyPatch, raise_error: bool
) -> None:
    import alsaaudio

    mic, fifo = fifo_mic
    real_pcm = alsaaudio.PCM
    wrapped: list[XrunPcm] = []

    def pcm(*args: Any, **kwargs: Any) -> XrunPcm:
        wrapped.append(
            XrunPcm(real_pcm(*args, **kwargs), fifo, alsaaudio.ALSAAudioError, raise_error)
        )
        return wrapped[0]

    monkeypatch.setattr(alsaaudio, "PCM", pcm)
    mic.open()
    fifo.start()
    with capture_logs() as logs:
        # two stalls longer than the buffer, closer together than a burst's gap
        blocks = capture(mic, 1.6, stalls={15: 0.3, 30: 0.3})

    audio = joined(blocks)
    assert wrapped[0].reported == 2 and mic.overruns == 2 and mic.reanchors == 0
    overruns = [e for e in logs if e["event"].startswith("alsa overrun")]
    assert len(overruns) == 1 and overruns[0]["detected"] == "epipe"
    elapsed = blocks[-1][3] - blocks[0][1]
    assert abs(len(audio) / (elapsed * RATE) - 1) < 0.02
    # each gap covers the stall (the backlog was discarded, as a driver does)
    runs = zero_runs(audio)
    assert len(runs) == 2 and all(0.25 * RATE < length < 0.40 * RATE for _, length in runs)
    assert max(abs(b[1] - latest(b)) for b in blocks[-10:]) < 0.020


def test_a_missing_device_is_named_with_what_to_check(home: Path) -> None:
    mic = AlsaMicrophone("nosuchmic")
    with pytest.raises(DeviceError) as err:
        mic.open()
    assert "nosuchmic" in err.value.message
    assert "arecord -l" in err.value.message and "audio" in err.value.message


def test_without_pyalsaaudio_open_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "alsaaudio", None)  # import fails
    with pytest.raises(DeviceError, match=r"pip install 'streamer\[alsa\]'"):
        AlsaMicrophone().open()


class ScriptedPcm:
    """Answers reads from a script of (seconds to block, frames); frames < 0 is an error code."""

    def __init__(self, script: list[tuple[float, int]]) -> None:
        self.script = script

    def read(self) -> tuple[int, bytes]:
        wait, frames = self.script.pop(0)
        time.sleep(wait)
        if frames < 0:
            return frames, b""
        return frames, np.ones((frames, CHANNELS), np.int16).tobytes()

    def close(self) -> None:
        pass


def test_a_short_read_returns_what_came_and_advances_the_stamp_by_it() -> None:
    mic = AlsaMicrophone()
    mic._pcm = ScriptedPcm([(PERIOD / RATE, PERIOD), (300 / RATE, 300), (0.0, -5)])
    first, t0 = mic.read()
    short, t1 = mic.read()
    assert first.shape == (PERIOD, CHANNELS) and short.shape == (300, CHANNELS)
    assert t1 - t0 == pytest.approx(PERIOD / RATE, abs=1e-9)
    with pytest.raises(DeviceError, match="error -5"):
        mic.read()
