"""Real libasound capture without a sound card: a `file` PCM reading a FIFO fed at real pace.

``.asoundrc`` in ``$HOME`` defines ``pcm.NAME { type file slave.pcm "null" ... infile
PATH }``. libasound reads its configuration once per process, at the first
PCM open, and keeps it: setting ``HOME`` later changes nothing until
``reload_alsa_config()`` drops the cached tree (verified with libasound
1.2.8; the next open then reads the new ``~/.asoundrc``).

The `null` slave never overruns, so libasound cannot report EPIPE here.
``ToneFifo`` plays the device's ADC and ring buffer instead: it writes one
period at a time at real pace into a pipe that holds as much as the ALSA
buffer, and drops a period that finds it full, as a device loses audio its
reader did not collect in time. ``XrunPcm`` adds what a driver would say
about it: EPIPE on the next read, then capture restarted with the backlog
discarded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streamer.hardware.sim import click

RATE = 48000
CHANNELS = 2
PERIOD = 1024
TONE_HZ = 1000.0
FRAME_BYTES = 2 * CHANNELS


def tone(seconds: float, seed: int = 7) -> npt.NDArray[np.int16]:
    """A stereo 1 kHz tone with a fixed ±1 LSB dither.

    A pure 1 kHz tone repeats every 48 samples, so a lost multiple of 48
    would go unseen; the dither makes every sample index's frame unique.
    """
    n = np.arange(round(seconds * RATE))
    sine = np.round(0.3 * 32767 * np.sin(2 * math.pi * TONE_HZ * n / RATE)).astype(np.int16)
    dither = np.random.default_rng(seed).integers(-1, 2, (len(n), CHANNELS), dtype=np.int16)
    out: npt.NDArray[np.int16] = sine[:, None] + dither
    return out


def write_asoundrc(home: Path, pcms: dict[str, Path]) -> None:
    """Define each name as a capture PCM reading raw S16_LE from its path."""
    lines = [
        f'pcm.{name} {{ type file slave.pcm "null" file "/dev/null" infile "{path}" format "raw" }}'
        for name, path in pcms.items()
    ]
    (home / ".asoundrc").write_text("\n".join(lines) + "\n")


def reload_alsa_config() -> None:
    """Drop libasound's cached configuration; the next PCM open re-reads ~/.asoundrc.

    Only while no PCM is open in this process (the tree is shared).
    """
    lib = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
    lib.snd_config_update_free_global()


class ToneFifo:
    """A microphone's ADC: ``signal`` written one period at a time at real pace into a FIFO.

    The pipe holds ``buffer_periods`` periods, like the ALSA buffer; a period
    that finds it full is dropped, not delayed, so the signal keeps real time
    and what the reader failed to collect is lost, as on a device. ``written``
    and ``dropped`` count periods.
    """

    def __init__(
        self,
        path: Path,
        signal: npt.NDArray[np.int16],
        buffer_periods: int = 4,
        sync: bool = False,
    ) -> None:
        self.path = path
        self._bytes = signal.tobytes()
        self.sync = sync  # the sim's sync click at each whole second of the monotonic clock
        self.written = 0
        self.dropped = 0
        self.started_at = 0.0
        os.mkfifo(path)
        # O_RDWR: opening never blocks (Linux), so libasound's O_RDONLY open
        # finds a writer at once even though pyalsaaudio holds the GIL there.
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        want = buffer_periods * PERIOD * FRAME_BYTES
        got = fcntl.fcntl(self._fd, fcntl.F_SETPIPE_SZ, want)
        assert got == want, f"pipe holds {got} bytes, wanted {want}"
        self._stop = threading.Event()
        self._restart = threading.Event()  # wakes the ADC thread from its wait too
        self._restarted = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tone-fifo", daemon=True)

    def start(self) -> None:
        """Start the clock: the first period is complete one period from now."""
        self.started_at = time.monotonic()
        self._thread.start()

    def restart(self) -> None:
        """Restart the clock now and empty the pipe, as capture restarts after an xrun."""
        self._restarted.clear()
        self._restart.set()
        assert self._restarted.wait(1.0), "the ADC thread did not restart"
        self.drain()

    def _run(self) -> None:
        chunk = PERIOD * FRAME_BYTES
        base, k, k0 = self.started_at, 0, 0
        while not self._stop.is_set():
            if self._restart.is_set():
                self._restart.clear()
                base, k0 = time.monotonic(), k
                self._restarted.set()
            delay = base + (k - k0 + 1) * PERIOD / RATE - time.monotonic()
            if delay > 0 and self._restart.wait(delay):
                continue
            start = (k * chunk) % len(self._bytes)
            data = self._bytes[start : start + chunk]
            if self.sync:  # this period's first sample was captured a period before now
                first = base + (k - k0) * PERIOD / RATE
                period = np.frombuffer(data, np.int16).reshape(-1, CHANNELS)
                data = click(period, first, RATE).tobytes()
            try:
                os.write(self._fd, data)  # atomic: one page
                self.written += 1
            except BlockingIOError:
                self.dropped += 1
            k += 1

    def drain(self) -> int:
        """Discard what the pipe holds (a driver's prepare after an xrun); returns frames."""
        n = 0
        while True:
            try:
                got = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return n // FRAME_BYTES
            n += len(got)

    def close(self) -> None:
        self._stop.set()
        self._restart.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        os.close(self._fd)


class XrunPcm:
    """The real PCM, plus the driver's overrun report the `null` slave cannot give.

    After the FIFO dropped periods, the next read returns ``(-EPIPE, b"")``
    or, with ``raise_error``, raises ALSAAudioError as some pyalsaaudio
    versions do; the read after that restarts the ADC's clock with the
    backlog discarded, as prepare and start do on a device. Everything else
    is the real PCM.
    """

    def __init__(self, pcm: Any, fifo: ToneFifo, error: type[Exception], raise_error: bool) -> None:
        self._pcm, self._fifo, self._error, self._raise = pcm, fifo, error, raise_error
        self._seen = 0
        self._xrun = False
        self.reported = 0

    def read(self) -> tuple[int, bytes]:
        if self._xrun:  # pyalsaaudio prepares, and readi starts capture again
            self._xrun = False
            self._fifo.restart()
            self._seen = self._fifo.dropped
        elif self._fifo.dropped > self._seen:  # the device stopped when its buffer overflowed
            self._xrun = True
            self.reported += 1
            if self._raise:
                raise self._error(f"{os.strerror(errno.EPIPE)} [xrun]")
            return -errno.EPIPE, b""
        result: tuple[int, bytes] = self._pcm.read()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pcm, name)
