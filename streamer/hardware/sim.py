"""Simulated camera and microphone: the device's twin on a laptop and in CI.

Both are paced to real time from the monotonic clock, like real capture,
and stamp each frame/period with its capture instant. Pictures are built
from precomputed arrays (roll and slice) because per-pixel Python at 720p30
would cost more CPU than the encoder.
"""

from __future__ import annotations

import math
import time

import av
import av.video.plane
import numpy as np
import numpy.typing as npt

# 3x5 bitmap digits, one string per row.
_FONT = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", "###", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", "..#", "..#", "..#"),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
}
COUNTER_DIGITS = 6


def digit_masks(scale: int) -> dict[str, npt.NDArray[np.bool_]]:
    """Each digit as a boolean mask of (5*scale, 3*scale) pixels."""
    masks = {}
    for ch, rows in _FONT.items():
        small = np.array([[c == "#" for c in row] for row in rows], dtype=bool)
        masks[ch] = np.kron(small, np.ones((scale, scale), dtype=bool)).astype(bool)
    return masks


class Pacer:
    """Paces capture on a fixed grid of instants, like a sensor's frame clock.

    ``wait`` returns the grid instant of the period it waited for, not the
    moment the thread woke: a real sensor stamps a frame when it was exposed,
    however late the reader collects it, so a busy machine delays frames but
    never bunches their timestamps. A camera reader more than a period late
    has missed periods: with ``skip_missed`` the grid skips them (a sensor
    drops frames nobody read) instead of bursting to catch up. A sound card
    keeps every sample in its buffer: without ``skip_missed`` a late reader
    gets the periods it missed at once.
    """

    def __init__(self, period: float, skip_missed: bool = True) -> None:
        self.period = period
        self.skip_missed = skip_missed
        self._next: float | None = None

    def wait(self) -> float:
        now = time.monotonic()
        if self._next is None:
            self._next = now
        elif self._next > now:
            time.sleep(self._next - now)
        elif self.skip_missed and now - self._next >= self.period:
            self._next += math.floor((now - self._next) / self.period) * self.period
        instant = self._next
        self._next += self.period
        return instant


CLICK_MS = 10  # the sync click's length


def flash_weight(captured: float, period: float) -> float:
    """How much of the sync flash a frame stamped ``captured`` shows (0 to 1).

    The flash is lit for one frame period centred on each whole second, and a
    frame's exposure spans one period centred on its timestamp, so a flash is
    shared between the two frames whose exposures cover it: the nearest frame
    gets most of it, and the light-weighted mean of their times is the second
    itself. A viewer (and a test) can thus place the flash to the millisecond
    whatever the frame rate.
    """
    distance = abs(captured - round(captured))
    return max(0.0, 1.0 - distance / period)


def click(samples: npt.NDArray[np.int16], first: float, rate: int) -> npt.NDArray[np.int16]:
    """The sync click: ``samples`` (first one captured at ``first``) with a 2 kHz burst of
    ``CLICK_MS`` at full scale overwriting those within CLICK_MS after a whole second."""
    times = first + np.arange(len(samples)) / rate
    clicking = times - np.floor(times) < CLICK_MS / 1000
    if not clicking.any():
        return samples
    out = samples.copy()
    sign = np.where(np.arange(len(samples)) % 24 < 12, 1, -1)  # 2 kHz at 48 kHz
    out[clicking] = (30000 * sign[clicking])[:, None]
    return out


class SimCamera:
    """A test pattern with a moving block and a frame counter in the top-left corner.

    Like a real fixed camera, most of the picture is still (a luma gradient
    over colour bars) and a part moves (a textured block sliding across), so
    the encoder does the work a real scene costs, not the worst case of a
    picture that scrolls as a whole. Light grain, like a sensor's, changes
    every frame, so the stream needs the bitrate a real camera needs (a clean
    synthetic picture would fit in a fraction of it, and a squeezed link
    would squeeze nothing).
    """

    GRAIN = 8  # grain amplitude (luma levels)
    GRAIN_FRAMES = 8  # precomputed grain pictures, cycled

    def __init__(self, width: int, height: int, fps: float, sync: bool = False) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.sync = sync  # a white flash centred on every whole monotonic second
        self.frames = 0
        self._pacer = Pacer(1.0 / fps)
        w, h = width, height
        x = np.arange(w, dtype=np.float32)
        y = np.arange(h, dtype=np.float32)[:, None]
        self._y = (40 + 120 * (x / w) + 40 * (y / h)).astype(np.uint8)
        cx = np.arange(w // 2)
        bars = (cx * 8 // max(1, w // 2)).astype(np.int64)
        u_levels = np.array([128, 44, 156, 72, 184, 100, 212, 128], dtype=np.uint8)
        v_levels = np.array([128, 142, 44, 58, 198, 212, 114, 128], dtype=np.uint8)
        self._u = np.tile(u_levels[bars], (h // 2, 1))
        self._v = np.tile(v_levels[bars], (h // 2, 1))
        # The moving block: a sine texture, a quarter of the width, a third of the height.
        self._bw, self._bh = max(8, (w // 4) & ~1), max(8, (h // 3) & ~1)
        bx = np.arange(self._bw, dtype=np.float32)
        by = np.arange(self._bh, dtype=np.float32)[:, None]
        block = 128 + 100 * np.sin(2 * math.pi * (bx / 32.0)) * np.cos(2 * math.pi * by / 48.0)
        self._block = block.astype(np.uint8)
        self._by = (h - self._bh) // 2
        self._scale = max(2, h // 60)
        self._masks = digit_masks(self._scale)
        self._step = max(2, (w // 160) & ~1)
        rng = np.random.default_rng(1)
        self._grain = rng.integers(0, self.GRAIN, (self.GRAIN_FRAMES, h, w), dtype=np.uint8)

    def open(self) -> None:
        self._pacer = Pacer(1.0 / self.fps)

    def draw(
        self, n: int, y: npt.NDArray[np.uint8], u: npt.NDArray[np.uint8], v: npt.NDArray[np.uint8]
    ) -> None:
        """Paint frame ``n`` into the three planes (views of a frame's own buffers)."""
        y[:] = self._y
        u[:] = self._u
        v[:] = self._v
        span = self.width - self._bw
        x0 = (n * self._step) % (2 * span) if span > 0 else 0
        x0 = x0 if x0 <= span else 2 * span - x0  # back and forth
        x0 &= ~1
        y[self._by : self._by + self._bh, x0 : x0 + self._bw] = self._block
        y += self._grain[n % self.GRAIN_FRAMES]
        u[self._by // 2 : (self._by + self._bh) // 2, x0 // 2 : (x0 + self._bw) // 2] = 90
        s = self._scale
        box_h, box_w = 7 * s, (4 * COUNTER_DIGITS + 1) * s
        y[:box_h, :box_w] = 16
        u[: box_h // 2, : box_w // 2] = 128
        v[: box_h // 2, : box_w // 2] = 128
        for i, ch in enumerate(f"{n % 10**COUNTER_DIGITS:0{COUNTER_DIGITS}d}"):
            x = s + 4 * s * i
            y[s : 6 * s, x : x + 3 * s][self._masks[ch]] = 235

    def picture(self, n: int) -> npt.NDArray[np.uint8]:
        """Frame ``n`` as one yuv420p (h*3/2, w) array (for tests and tools)."""
        w, h = self.width, self.height
        flat = np.empty(w * h * 3 // 2, np.uint8)
        y = flat[: w * h].reshape(h, w)
        u = flat[w * h : w * h * 5 // 4].reshape(h // 2, w // 2)
        v = flat[w * h * 5 // 4 :].reshape(h // 2, w // 2)
        self.draw(n, y, u, v)
        return flat.reshape(h * 3 // 2, w)

    def read(self) -> tuple[av.VideoFrame, float]:
        captured = self._pacer.wait()
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        y, u, v = (plane_view(p) for p in frame.planes)
        self.draw(self.frames, y, u, v)
        if self.sync:
            weight = flash_weight(captured, self._pacer.period)
            if weight > 0:  # blend towards white: the flash as this frame's exposure saw it
                for plane, white in ((y, 235), (u, 128), (v, 128)):
                    plane[:] = (plane * (1 - weight) + white * weight).round().astype(np.uint8)
        self.frames += 1
        return frame, captured

    def close(self) -> None:
        pass


def plane_view(plane: av.video.plane.VideoPlane) -> npt.NDArray[np.uint8]:
    """A writable numpy view of a frame plane, without its line padding."""
    flat = np.frombuffer(memoryview(plane), dtype=np.uint8)  # type: ignore[call-overload]
    rows: npt.NDArray[np.uint8] = flat.reshape(plane.height, plane.line_size)
    return rows[:, : plane.width]


class SimMicrophone:
    """A stereo 440 Hz tone at 48 kHz in 1024-sample periods.

    Like a sound card, its own sample clock times the samples: the first
    period is stamped from the monotonic clock, every later sample by count.
    In sync mode a click (10 ms at full scale) starts at each whole second of
    that timeline: the instants the sim camera's flashes are centred on.
    """

    def __init__(
        self,
        sample_rate: int = 48000,
        channels: int = 2,
        period: int = 1024,
        freq: float = 440.0,
        sync: bool = False,
    ) -> None:
        self.sample_rate, self.channels, self.period = sample_rate, channels, period
        self.freq = freq
        self.sync = sync
        self._anchor: float | None = None
        self._delivered = 0
        n = np.arange(sample_rate)  # one second: a whole number of cycles for integer freq
        tone = (0.3 * 32767 * np.sin(2 * math.pi * freq * n / sample_rate)).astype(np.int16)
        self._table = np.repeat(tone[:, None], channels, axis=1)
        self._pos = 0
        self._pacer = Pacer(period / sample_rate, skip_missed=False)

    def open(self) -> None:
        self._pacer = Pacer(self.period / self.sample_rate, skip_missed=False)

    def read(self) -> tuple[npt.NDArray[np.int16], float]:
        now = self._pacer.wait()
        if self._anchor is None:
            self._anchor = now
        first = self._anchor + self._delivered / self.sample_rate
        idx = (self._pos + np.arange(self.period)) % len(self._table)
        self._pos = (self._pos + self.period) % len(self._table)
        samples = self._table[idx]
        if self.sync:
            samples = click(samples, first, self.sample_rate)
        self._delivered += self.period
        return samples, first

    def close(self) -> None:
        pass
