"""ALSA microphone capture through pyalsaaudio: a USB or I2S microphone on the device.

Periods are stamped by sample count from one anchor on the monotonic clock,
so timestamps advance exactly with the audio. The anchor is the earliest
capture time the reads allow (a read returns a period after its last sample
was captured, never before), so a slow first wake-up does not delay the
sound against the picture for the rest of the run. Every read is checked against
the monotonic clock. Audio the device lost is replaced by as much silence as
the clock says is missing, because the AAC encoder stamps packets by sample
count: a gap closed up would pull all later audio ahead of the video. That
covers an overrun ALSA reports (EPIPE) and one it doesn't (a sound server
dropping periods, a device clock slower than nominal). A sample clock ahead
of the monotonic clock cannot be right, so the anchor moves back to it.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from streamer.exc import DeviceError

log = structlog.get_logger("streamer.alsa")

EPIPE = errno.EPIPE  # pyalsaaudio's read() returns (-EPIPE, b"") after an overrun
DRIFT_TOLERANCE = 0.020  # seconds the sample clock may differ from the monotonic clock
BURST_GAP = 1.0  # seconds without an event before the next one is logged again
# A read that blocked for this share of its period returned freshly captured
# audio, so its return time dates the audio; one that returned at once was
# handing out a backlog, which says nothing about lost samples.
LIVE_SHARE = 0.25

CHECK = (
    "check that `arecord -l` lists the microphone, name it as `plughw:CARD=<name>` "
    "(converts rate and channels) or a `dsnoop` PCM (shares it with other programs), "
    "that no other program holds it, and that this user is in the `audio` group"
)


class AlsaMicrophone:
    """An ALSA capture device delivering interleaved S16 periods (AudioSource).

    ``overruns`` counts the gaps filled with silence (reported by ALSA or seen
    on the clock); ``reanchors`` counts the times timestamps were moved back
    to the monotonic clock.
    """

    def __init__(
        self,
        device: str = "default",
        sample_rate: int = 48000,
        channels: int = 2,
        period: int = 1024,
    ) -> None:
        self.device = device
        self.sample_rate, self.channels, self.period = sample_rate, channels, period
        self.overruns = 0
        self.reanchors = 0
        self._pcm: Any = None
        self._alsa_error: type[Exception] = Exception
        # held around pcm.read(): close() must not free the PCM under a blocked read
        self._reading = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._anchor: float | None = None
        self._delivered = 0  # frames handed out since the anchor, silence included
        self._lag: float | None = None  # a lag seen once, waiting for a second live read
        self._last_overrun = -BURST_GAP
        self._last_reanchor = -BURST_GAP

    def open(self) -> None:
        """Open the capture PCM; it starts capturing at the first read."""
        try:
            import alsaaudio
        except ImportError as exc:
            raise DeviceError(
                "ALSA capture needs pyalsaaudio: pip install 'streamer[alsa]'"
            ) from exc
        self._alsa_error = alsaaudio.ALSAAudioError
        try:
            pcm = alsaaudio.PCM(
                alsaaudio.PCM_CAPTURE,
                alsaaudio.PCM_NORMAL,
                device=self.device,
                channels=self.channels,
                rate=self.sample_rate,
                format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=self.period,
            )
        except alsaaudio.ALSAAudioError as exc:
            raise DeviceError(
                f"cannot open ALSA capture device {self.device!r} ({exc}): {CHECK}"
            ) from exc
        self._check_params(pcm)
        self._reset()
        self._pcm = pcm
        log.info(
            "alsa capture open",
            device=self.device,
            rate=self.sample_rate,
            channels=self.channels,
            period=self.period,
        )

    def _check_params(self, pcm: Any) -> None:
        """A hw: device may settle on another rate or channel count; timing would be wrong."""
        info = pcm.info() if hasattr(pcm, "info") else {}
        got = (info.get("rate", self.sample_rate), info.get("channels", self.channels))
        if got != (self.sample_rate, self.channels):
            pcm.close()
            raise DeviceError(
                f"ALSA device {self.device!r} captures at {got[0]} Hz x {got[1]} channels, "
                f"not {self.sample_rate} Hz x {self.channels}: {CHECK}"
            )

    def read(self) -> tuple[npt.NDArray[np.int16], float]:
        """Block for the next period; returns (frames, channels) and its first sample's time.

        A block may be shorter than a period (a short read) or start with
        silence standing in for lost audio.
        """
        pcm = self._pcm
        if pcm is None:
            raise DeviceError(f"ALSA device {self.device!r} is not open")
        silence = 0
        while True:
            called = time.monotonic()
            with self._reading:
                try:
                    length, data = pcm.read()
                except self._alsa_error as exc:
                    if os.strerror(errno.EPIPE) not in str(exc):
                        raise DeviceError(
                            f"ALSA capture from {self.device!r} failed ({exc}): {CHECK}"
                        ) from exc
                    length, data = -EPIPE, b""
            returned = time.monotonic()
            if length == -EPIPE:
                silence += self._fill_overrun(returned)
                continue
            if length < 0:
                raise DeviceError(f"ALSA capture from {self.device!r} failed (error {length})")
            frames = len(data) // (2 * self.channels)
            if frames == 0:
                continue
            # bytes are read-only: copy, so callers get an array they may change
            block = np.frombuffer(data, dtype="<i2", count=frames * self.channels)
            block = block.reshape(frames, self.channels).astype(np.int16)
            return self._place(block, called, returned, silence)

    def _fill_overrun(self, now: float) -> int:
        """The frames that should have arrived by ``now`` and never will, counted as delivered."""
        self._lag = None
        missing = 0
        if self._anchor is not None:
            missing = max(0, round((now - self._anchor) * self.sample_rate) - self._delivered)
            self._delivered += missing
        self._overrun(now, "epipe", missing)
        return missing

    def _place(
        self, block: npt.NDArray[np.int16], called: float, returned: float, silence: int
    ) -> tuple[npt.NDArray[np.int16], float]:
        """Stamp a block by sample count; fill a confirmed gap with silence; fix a clock ahead."""
        rate = self.sample_rate
        n = len(block)
        measured = returned - n / rate  # the latest its first sample can have been captured
        if self._anchor is None:
            self._anchor = measured
        stamp = self._anchor + self._delivered / rate
        lag = measured - stamp
        live = returned - called >= LIVE_SHARE * n / rate
        if lag < -DRIFT_TOLERANCE:
            self._reanchor(returned, measured, lag)
            stamp = measured
        elif lag < 0:
            # No sample is handed out before it was captured, so ``measured``
            # bounds the truth from above: a stamp later than it carries our
            # own late wake-up (the first read's). Keep the earliest bound.
            self._anchor += lag
            stamp = measured
        elif live and lag > DRIFT_TOLERANCE:
            # Audio went missing, or the device clock is slow. One late wake-up
            # looks the same, so act only when the next live read agrees.
            if self._lag is None:
                self._lag = lag
            else:
                missing = round(min(lag, self._lag) * rate)
                self._lag = None
                self._delivered += missing
                stamp += missing / rate
                silence += missing
                self._overrun(returned, "clock", missing)
        elif live:
            self._lag = None
        self._delivered += n
        if silence:
            block = np.concatenate([np.zeros((silence, self.channels), np.int16), block])
        return block, stamp - silence / rate

    def _overrun(self, now: float, detected: str, missing: int) -> None:
        self.overruns += 1
        if now - self._last_overrun >= BURST_GAP:
            log.warning(
                "alsa overrun: audio lost, filled with silence",
                device=self.device,
                detected=detected,
                silence_ms=round(missing * 1000 / self.sample_rate, 1),
                overruns=self.overruns,
            )
        self._last_overrun = now

    def _reanchor(self, now: float, measured: float, lag: float) -> None:
        """Move the anchor so this block's first sample is stamped ``measured``."""
        self._anchor = measured - self._delivered / self.sample_rate
        self._lag = None
        self.reanchors += 1
        if now - self._last_reanchor >= BURST_GAP:
            log.info(
                "alsa timestamps re-anchored to the monotonic clock",
                device=self.device,
                drift_ms=round(-lag * 1000, 1),
                reanchors=self.reanchors,
            )
        self._last_reanchor = now

    def close(self) -> None:
        """Close the PCM, unless a read is still blocked in it (then that read's end frees it)."""
        pcm, self._pcm = self._pcm, None
        if pcm is None:
            return
        if self._reading.acquire(timeout=1.0):
            try:
                pcm.close()
            finally:
                self._reading.release()
        else:
            log.warning("alsa capture still blocked in read; leaving the PCM to close after it")
