"""Lip sync as a viewer measures it: the sim's flashes in the picture against its clicks.

The sim camera lights a flash for one frame period centred on every whole
second, shared between the two frames whose exposures cover it (see
``streamer.hardware.sim.flash_weight``); the sim microphone (or the ALSA test
FIFO) starts a click at the same instants. Here each flash is placed at the
light-weighted mean time of its frames, which is the second itself whatever
the frame rate, and paired with the click nearest to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from tests.media_check import MediaReport

WHITE = 235  # the flash's luma
PAIR_MS = 500  # a click further than this from a flash belongs to another second
EDGE_MS = 1000  # flashes this close to either end of the recording may lack their click
PARTIAL = 0.2  # a flash whose frames show less (or more) light than this off 1 lost a frame


def click_times_ms(samples: npt.NDArray[np.float32], rate: int, start_ms: int) -> list[float]:
    """Onsets of loud bursts (the tone stays below 0.35 of full scale)."""
    loud = np.flatnonzero(np.abs(samples) > 0.6)
    onsets = [i for j, i in enumerate(loud) if j == 0 or i - loud[j - 1] > rate // 10]
    return [start_ms + 1000 * i / rate for i in onsets]


@dataclass
class Flash:
    centre_ms: float  # light-weighted mean time of the frames that show it
    brightest_ms: float  # time of the frame that shows most of it
    light: float  # how much of the flash the frames show: 1 when none of them is missing


def flashes(report: MediaReport) -> list[Flash]:
    """Each flash's time, from how much of it every decoded frame shows."""
    luma = np.array(report.frame_luma)
    times = np.array(report.frame_pts_ms, dtype=np.float64)
    base = float(np.median(luma))  # flashes touch 2 frames a second: the median is the scene
    weight = np.clip((luma - base) / (WHITE - base), 0.0, 1.0)
    lit = np.flatnonzero(weight > 0.05)
    found: list[Flash] = []
    group: list[int] = []
    for i in [*lit.tolist(), None]:
        if group and (i is None or times[i] - times[group[-1]] > 100):
            w = weight[group]
            found.append(
                Flash(
                    centre_ms=float(np.sum(w * times[group]) / np.sum(w)),
                    brightest_ms=float(times[group[int(np.argmax(w))]]),
                    light=float(np.sum(w)),
                )
            )
            group = []
        if i is not None:
            group.append(i)
    return found


@dataclass
class SyncResult:
    offsets_ms: list[float] = field(default_factory=list)  # click - flash centre
    nearest_frame_ms: list[float] = field(default_factory=list)  # click - brightest frame
    unpaired_flashes_ms: list[float] = field(default_factory=list)
    unpaired_clicks_ms: list[float] = field(default_factory=list)
    # flashes a frame of which the camera skipped (a busy machine): their centre is off
    partial_flashes_ms: list[float] = field(default_factory=list)
    # clicks during a stretch the camera skipped whole: no frame could show their flash
    unseen_clicks_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return float(np.median(self.offsets_ms))

    @property
    def worst_ms(self) -> float:
        return max(abs(o) for o in self.offsets_ms)

    def summary(self) -> str:
        return (
            f"{len(self.offsets_ms)} flashes paired: median {self.median_ms:+.1f} ms, "
            f"worst {self.worst_ms:.1f} ms (nearest frame worst "
            f"{max(abs(o) for o in self.nearest_frame_ms):.1f} ms); unpaired flashes "
            f"{[round(t) for t in self.unpaired_flashes_ms]}, clicks "
            f"{[round(t) for t in self.unpaired_clicks_ms]}; partial flashes left out "
            f"{[round(t) for t in self.partial_flashes_ms]}, clicks the camera skipped "
            f"{[round(t) for t in self.unseen_clicks_ms]}"
        )


def measure_sync(report: MediaReport) -> SyncResult:
    """Pair flashes with clicks; events within EDGE_MS of either end are left out."""
    clicks = click_times_ms(report.audio_samples(), report.sample_rate, report.audio_pts_ms[0])
    start = max(report.frame_pts_ms[0], report.audio_pts_ms[0]) + EDGE_MS
    end = min(report.frame_pts_ms[-1], report.audio_pts_ms[-1]) - EDGE_MS
    result = SyncResult()
    paired: set[int] = set()
    for flash in flashes(report):
        if not start <= flash.centre_ms <= end:
            continue
        near = [i for i, c in enumerate(clicks) if abs(c - flash.centre_ms) <= PAIR_MS]
        if not near:
            result.unpaired_flashes_ms.append(flash.centre_ms)
            continue
        i = min(near, key=lambda i: abs(clicks[i] - flash.centre_ms))
        paired.add(i)
        if abs(flash.light - 1) > PARTIAL:
            result.partial_flashes_ms.append(flash.centre_ms)
            continue
        result.offsets_ms.append(clicks[i] - flash.centre_ms)
        result.nearest_frame_ms.append(clicks[i] - flash.brightest_ms)
    for i, click in enumerate(clicks):
        if i in paired or not start + PAIR_MS <= click <= end - PAIR_MS:
            continue
        if camera_skipped(report, click):
            result.unseen_clicks_ms.append(click)
        else:
            result.unpaired_clicks_ms.append(click)
    return result


def camera_skipped(report: MediaReport, at_ms: float) -> bool:
    """Whether the camera captured no frame within a period of ``at_ms`` and the stream lost none.

    The sim skips the periods its reader was late for (as a sensor nobody
    reads does): the frames on both sides of the hole carry consecutive
    counters. A hole with a counter missing lost a frame after capture.
    """
    times = np.array(report.frame_pts_ms, dtype=np.float64)
    period = float(np.median(np.diff(times)))
    after = int(np.searchsorted(times, at_ms))
    if after == 0 or after == len(times):
        return False
    before_ms, after_ms = times[after - 1], times[after]
    if at_ms - before_ms < period or after_ms - at_ms < period:
        return False  # a frame was there to show the flash
    first, second = report.counters[after - 1], report.counters[after]
    return first is not None and second == first + 1
