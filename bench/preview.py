"""Cost of the status page's preview JPEG (``streamer.preview``), per picture made.

1. ``offer_frame`` / ``offer_packets``: what the capture threads pay per frame
   whether anybody looks or not (ns per call).
2. A JPEG from a raw sim-camera frame (the libx264 / V4L2 M2M paths): scale to
   640 px wide and mjpeg-encode, and the two parts alone.
3. A JPEG from a keyframe (the camera's own hardware encoder path): decode one
   H.264 keyframe of the sim picture (libx264, 2000 kbps), scale and encode,
   and the decode alone.

Wall time (``time.perf_counter``) and CPU (``time.process_time``: all threads)
per JPEG, median and p95 over ``--runs``; every run makes a new JPEG (a new
``now`` a second later and a new offer). At most one JPEG is made per second,
so the CPU per JPEG is also the most the preview costs per second of viewing.

Usage: ``python bench/preview.py [--runs 50] [--size 1280x720]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import av
from av.video.reformatter import VideoReformatter

from streamer.encode.h264 import H264Encoder
from streamer.hardware.sim import SimCamera
from streamer.media import Packet
from streamer.preview import Preview, decode_keyframe, encode_jpeg, preview_size


def measure(runs: int, work: Callable[[int], Any]) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of ``work(n)`` for n in range(runs) (one warm-up first)."""
    work(-1)
    walls, cpus = [], []
    for n in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        work(n)
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return walls, cpus


def p95(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def report(name: str, walls: list[float], cpus: list[float]) -> None:
    print(
        f"{name:<44} wall {statistics.median(walls):7.2f} ms (p95 {p95(walls):7.2f})"
        f"   cpu {statistics.median(cpus):7.2f} ms (p95 {p95(cpus):7.2f})"
    )


def per_call_ns(calls: int, work: Callable[[], None]) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        work()
    return (time.perf_counter_ns() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--size", default="1280x720")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    runs: int = args.runs

    camera = SimCamera(width, height, 30.0)
    frames = [av.VideoFrame.from_ndarray(camera.picture(n), format="yuv420p") for n in range(8)]
    encoder = H264Encoder(width, height, 30.0, 2000)
    keyframe: Packet = encoder.encode(frames[0], 0)[0]
    assert keyframe.keyframe and keyframe.config is not None
    out = preview_size(width, height)
    print(f"{width}x{height} -> {out[0]}x{out[1]} JPEG, {runs} runs, av {av.__version__}")

    preview = Preview()
    packets = [keyframe]
    print(f"offer_frame    {per_call_ns(100_000, lambda: preview.offer_frame(frames[0])):6.0f} ns")
    print(f"offer_packets  {per_call_ns(100_000, lambda: preview.offer_packets(packets)):6.0f} ns")

    raw = Preview()
    sizes: list[int] = []

    def from_frame(n: int) -> None:
        raw.offer_frame(frames[n % len(frames)])
        jpeg = raw.jpeg(1000.0 + n)
        assert jpeg is not None
        sizes.append(len(jpeg))

    report("JPEG from a raw frame (scale + encode)", *measure(runs, from_frame))
    scaler = VideoReformatter()
    report(
        "  scale alone",
        *measure(
            runs,
            lambda n: scaler.reformat(
                frames[n % len(frames)], *out, "yuvj420p", interpolation="AREA", threads=1
            ),
        ),
    )
    small = frames[0].reformat(width=out[0], height=out[1], format="yuvj420p")
    report("  encode alone", *measure(runs, lambda n: encode_jpeg(small)))

    coded = Preview()

    def from_keyframe(n: int) -> None:
        coded.offer_packets([keyframe])  # a new offer: decoded again
        assert coded.jpeg(1000.0 + n) is not None

    report("JPEG from a keyframe (decode + scale + encode)", *measure(runs, from_keyframe))
    report("  decode alone", *measure(runs, lambda n: decode_keyframe(keyframe)))
    print(
        f"JPEG size {statistics.median(sizes) / 1000:.1f} kB; keyframe "
        f"{len(keyframe.data) / 1000:.1f} kB; encodes {raw.encodes} raw, {coded.encodes} decoded"
    )


if __name__ == "__main__":
    main()
