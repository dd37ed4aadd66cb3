"""What a bitrate change costs the h264_v4l2m2m path: the wall time of a reopen.

``V4L2H264Encoder`` changes bitrate by opening a new context at the new rate and
draining the old one, on the capture thread, so that time is time without
frames. Measured here (``time.perf_counter``, median and max over ``--repeat``):

1. h264_v4l2m2m itself, when this machine has it (a Pi 4: /dev/video11);
   otherwise the reason it cannot open is printed.
2. The encoder on the test fake of h264_v4l2m2m (tests/unit/test_encoder_select.py:
   libx264 ultrafast behind it, 2 frames in flight): the switch frame's
   ``encode`` against a normal frame's, at 1280x720.
3. libx264 through PyAV at 1280x720 with our options (veryfast, zerolatency,
   VBV): ``open()`` of a new context plus draining one that has encoded 30
   frames, a stand-in for avcodec_open2 + flush.

Usage: ``python bench/reopen.py [--repeat 10]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import structlog
from structlog.typing import EventDict, WrappedLogger

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamer.encode.h264 import H264Encoder
from streamer.encode.select import V4L2H264Encoder, v4l2m2m_unavailable_reason
from tests.unit.test_encoder_select import Factory

W, H, FPS = 1280, 720, 30


def frame_list(n: int) -> list[av.VideoFrame]:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, size=(H * 3 // 2, W), dtype=np.uint8)
    return [
        av.VideoFrame.from_ndarray(np.roll(base, i * 4, axis=1), format="yuv420p") for i in range(n)
    ]


def summary(ms: list[float]) -> str:
    return f"median {statistics.median(ms):6.1f} ms, max {max(ms):6.1f} ms (n={len(ms)})"


def switch_cost(
    create: Callable[[str, str], object] | None, frames: list[av.VideoFrame]
) -> tuple[float, float, list[float]]:
    """ms of ``encode`` for: the switch frame (a reopen and an IDR), a scheduled
    keyframe without a reopen, and every other frame."""
    enc = V4L2H264Encoder(W, H, FPS, 2500, create=create)
    switch = keyframe = 0.0
    normal: list[float] = []
    for i, frame in enumerate(frames):
        if i == 2 * FPS + 5:
            enc.set_bitrate(1000)
        t0 = time.perf_counter()
        enc.encode(frame, i * 1000 // FPS)
        ms = (time.perf_counter() - t0) * 1000
        if i == 4 * FPS:
            switch = ms
        elif i == 2 * FPS:
            keyframe = ms
        elif i:
            normal.append(ms)
    assert enc.current_bitrate_kbps == 1000
    return switch, keyframe, normal


def libx264_reopen(frames: list[av.VideoFrame]) -> tuple[float, float]:
    """(open ms, drain ms) of libx264 at 1280x720 as H264Encoder opens it."""
    old = H264Encoder(W, H, FPS, 2500)
    for i, frame in enumerate(frames[:30]):
        old.encode(frame, i * 33)
    t0 = time.perf_counter()
    H264Encoder(W, H, FPS, 1000)
    t1 = time.perf_counter()
    old.encode(None)
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    reopens: list[float] = []

    def keep(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        if event.get("event") == "encoder reopened for a new bitrate":
            reopens.append(float(str(event["ms"])))
        raise structlog.DropEvent

    structlog.configure(processors=[keep])
    frames = frame_list(4 * FPS + 10)
    print(f"PyAV {av.__version__}, FFmpeg {av.ffmpeg_version_info}, {W}x{H} at {FPS} fps")

    reason = v4l2m2m_unavailable_reason()
    runs = {"h264_v4l2m2m": None, "fake h264_v4l2m2m": Factory(delay=2)}
    if reason is not None:
        print(f"h264_v4l2m2m: not measured, it does not open here: {reason}")
        del runs["h264_v4l2m2m"]
    for name, create in runs.items():
        switch, keyframe, normal = [], [], []
        for _ in range(args.repeat):
            s, k, n = switch_cost(create, frames)
            switch.append(s)
            keyframe.append(k)
            normal += n
        print(f"{name + ' switch frame:':<35}{summary(switch)}")
        print(f"{name + ' keyframe:':<35}{summary(keyframe)}")
        print(f"{name + ' P-frame:':<35}{summary(normal)}")

    print(f"{'  of which the reopen (logged ms):':<35}{summary(reopens)}")
    opens, drains = [], []
    for _ in range(args.repeat):
        o, d = libx264_reopen(frames)
        opens.append(o)
        drains.append(d)
    print(f"libx264 open (veryfast, VBV):      {summary(opens)}")
    print(f"libx264 drain after 30 frames:     {summary(drains)}")
    total = [o + d for o, d in zip(opens, drains, strict=True)]
    print(f"libx264 open + drain:              {summary(total)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
