"""What a viewer would see: decode FLV recordings and live streams with real FFmpeg (PyAV).

Decode errors are counted from FFmpeg's own error log lines as well as from
exceptions, because FFmpeg conceals many broken frames without raising.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.logging
import numpy as np
import numpy.typing as npt

from streamer.hardware.sim import COUNTER_DIGITS, digit_masks


@dataclass
class MediaReport:
    width: int = 0
    height: int = 0
    video_pts_ms: list[int] = field(default_factory=list)
    video_keyframes: list[bool] = field(default_factory=list)
    audio_pts_ms: list[int] = field(default_factory=list)
    frames_decoded: int = 0
    audio_frames_decoded: int = 0
    counters: list[int | None] = field(default_factory=list)
    decode_errors: list[str] = field(default_factory=list)
    audio: list[npt.NDArray[np.float32]] = field(default_factory=list)
    sample_rate: int = 0
    arrivals: list[float] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    frame_luma: list[float] = field(default_factory=list)  # mean Y of each decoded frame
    frame_pts_ms: list[int] = field(default_factory=list)

    def audio_samples(self) -> npt.NDArray[np.float32]:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.float32)


def read_counter(luma: npt.NDArray[np.uint8], height: int) -> int | None:
    """Read the sim camera's frame counter back from a decoded picture."""
    scale = max(2, height // 60)
    masks = digit_masks(scale)
    digits = []
    for i in range(COUNTER_DIGITS):
        x0 = scale + 4 * scale * i
        cell = luma[scale : 6 * scale, x0 : x0 + 3 * scale] > 128
        best = min(masks, key=lambda ch: int(np.count_nonzero(masks[ch] != cell)))
        if np.count_nonzero(masks[best] != cell) > cell.size // 8:
            return None
        digits.append(best)
    return int("".join(digits))


# Of the frames a camera's clock made in a run, the share it must have captured: a floor that
# a stalled capture misses by far. A camera on a machine running four tests at once skips
# frames (as a sensor does when its reader is late): 73 % was seen at 640x360 on 2 busy
# cores. The rate a device keeps is measured by bench/, not asserted here.
CAPTURE_FLOOR = 0.6


def check_counters_as_captured(
    readings: list[int | None], frames_in_run: int, captured: int
) -> int:
    """The sim camera's frame counters read back: in capture order, none twice, and none
    missing but what the camera skipped (a reader that is late loses frames, as a sensor's
    does; ``captured`` frames of the ``frames_in_run`` its clock made were read). Returns
    how many it skipped.

    ``readings``: every decoded frame's counter, None where it could not be read: such a
    frame arrived, so it is not missing (it used to count as one).
    """
    where = [i for i, c in enumerate(readings) if c is not None]
    counters = [c for c in readings if c is not None]
    assert all(b > a for a, b in itertools.pairwise(counters)), f"frames out of order: {counters}"
    skipped_by_camera = max(0, frames_in_run + 1 - captured)
    missing = counters[-1] - counters[0] + 1 - (where[-1] - where[0] + 1)
    assert missing <= skipped_by_camera, (
        f"{missing} frames missing, the camera skipped {skipped_by_camera}"
    )
    return skipped_by_camera


@contextlib.contextmanager
def ffmpeg_log() -> Iterator[list[tuple[int, str, str]]]:
    """FFmpeg's own log lines while decoding (PyAV passes them on only when a level is set)."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.WARNING)
    try:
        with av.logging.Capture() as logs:
            yield logs
    finally:
        av.logging.set_level(previous)


def _decode(
    container: av.container.InputContainer,
    report: MediaReport,
    until_s: float | None,
    keep_audio: bool,
) -> None:
    video = container.streams.video[0] if container.streams.video else None
    audio_stream = container.streams.audio[0] if container.streams.audio else None
    streams = [s for s in (video, audio_stream) if s is not None]
    report.metadata = dict(container.metadata)
    with ffmpeg_log() as logs:
        for packet in container.demux(*streams):
            if packet.size == 0 or packet.pts is None:
                continue
            ms = round(float(packet.pts * packet.time_base) * 1000)
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                report.decode_errors.append(str(exc))
                frames = []
            if packet.stream.type == "video":
                report.arrivals.append(time.monotonic())
                report.video_pts_ms.append(ms)
                report.video_keyframes.append(bool(packet.is_keyframe))
                for frame in frames:
                    assert isinstance(frame, av.VideoFrame)
                    report.frames_decoded += 1
                    report.width, report.height = frame.width, frame.height
                    luma = np.asarray(frame.to_ndarray(format="yuv420p")[: frame.height], np.uint8)
                    report.frame_luma.append(float(luma.mean()))
                    report.frame_pts_ms.append(
                        round(float(frame.pts * frame.time_base) * 1000)
                        if frame.pts is not None and frame.time_base is not None
                        else ms
                    )
                    report.counters.append(read_counter(luma, frame.height))
                if until_s is not None and ms >= until_s * 1000 + (report.video_pts_ms[0]):
                    break
            else:
                report.audio_pts_ms.append(ms)
                for frame in frames:
                    assert isinstance(frame, av.AudioFrame)
                    report.audio_frames_decoded += 1
                    report.sample_rate = frame.sample_rate
                    if keep_audio:
                        report.audio.append(frame.to_ndarray()[0].astype(np.float32))
    report.decode_errors += [
        f"{name}: {text.strip()}" for level, name, text in logs if level <= av.logging.ERROR
    ]


def analyze_file(path: Path) -> MediaReport:
    report = MediaReport()
    with av.open(str(path)) as container:
        _decode(container, report, None, keep_audio=True)
    return report


def watch_live(
    url: str, seconds: float, report: MediaReport, nobuffer: bool = False
) -> threading.Thread:
    """Play ``url`` as a viewer in a thread until ``seconds`` of video have been received.

    ``nobuffer`` cuts FFmpeg's own buffering (for latency measurements) but
    also discards the packets read while probing, so the viewer then starts
    at the second keyframe.
    """
    options = {"rtmp_live": "live"}
    if nobuffer:
        options["fflags"] = "nobuffer"

    def run() -> None:
        try:
            with av.open(url, options=options) as container:
                _decode(container, report, seconds, keep_audio=False)
        except av.error.FFmpegError as exc:
            report.decode_errors.append(f"open/read: {exc}")

    thread = threading.Thread(target=run, name="viewer", daemon=True)
    thread.start()
    return thread


def dominant_frequency(samples: npt.NDArray[np.float32], sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * sample_rate / len(samples))
