"""Cost of the video filters (beauty, watermark, mirror, a clock), alone and chained, and of
each rotation (``--rotate``), against the frame budget and against the ffmpeg CLI running the
same FFmpeg filters.

1. Per-frame cost in process (``FilterChain.process``: push + pull through the
   graph, ``time.perf_counter``), median and p95 over ``--frames`` frames of the
   sim camera at 1280x720 and 640x360, against the 33.3 ms budget at 30 fps.
2. CPU of the whole chain on the same 300 frames (10 s of 720p30 ``testsrc2``):
   ours in process (user+sys from ``resource.getrusage(RUSAGE_SELF)`` deltas
   around the loop; the frames are generated before it), and the ffmpeg CLI's
   (user+sys from the rusage ``os.wait4`` returns for the child) with the
   equivalent ``-filter_complex`` and ``-f null -`` (no encoding). ffmpeg's
   figure includes generating testsrc2 and its own start-up, so it is also run
   with only ``format=yuv420p`` (the baseline) and the difference is its cost of
   the chain alone: the target is judged on that, the stricter ratio.
   Each ffmpeg run is done with its default filter threads and with
   ``-filter_threads 1`` (ours uses one thread).
3. The clock (``text=%Y-%m-%d %H:%M:%S``, box on, 30 px at 720p; frames a
   thirtieth of a second apart, so it is drawn again once a second) against
   the ffmpeg CLI's ``drawtext`` doing the same (same font file, size and
   box), each less its baseline as in 2.
4. The same for each rotation alone (``rotate=90``: ``transpose=clock``, 180:
   ``vflip,hflip``, 270: ``transpose=cclock``): per-frame rows as in 1, and
   CPU per frame over 1500 frames (the first 30 of testsrc2, looped), ours
   against ffmpeg's own (the CLI reads the frames raw with ``-stream_loop``,
   minus the same run with only ``format=yuv420p``: a rotation costs a tenth
   of generating testsrc2, which would drown it), and their ratio.

Targets (reported, not asserted): the whole chain at 720p within 40 % of the
frame budget; at most 1.2x ffmpeg's CPU for the chain.

Usage: ``python bench/filters.py [--frames 100] [--repeat 3] [--rotation-only] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np

from streamer.encode.filters import (
    BeautySpec,
    FilterChain,
    FilterSpec,
    MirrorSpec,
    TextSpec,
    WatermarkSpec,
)
from streamer.encode.text import FONT_PATHS, TextOverlay
from streamer.hardware.sim import SimCamera

FPS = 30
BUDGET_MS = 1000.0 / FPS
SIZES = ((1280, 720), (640, 360))
STRENGTH = 0.5
LOGO = (200, 80)  # a typical channel logo
OPACITY = 0.8
MARGIN = 16
CHAIN_TARGET = 0.40  # of the frame budget, whole chain at 720p
CPU_TARGET = 1.2  # ours / ffmpeg's
CLI_FRAMES = 300  # 10 s at 30 fps
WARMUP = 5
CLOCK = "%Y-%m-%d %H:%M:%S"
ROTATIONS = (90, 180, 270)
ROTATION_FRAMES = 1500  # per CPU run of a rotation (50 s of 30 fps) ...
ROTATION_DISTINCT = 30  # ... cycling through this many testsrc2 frames
BASELINE_GRAPH = "[0:v]format=yuv420p[out]"  # ffmpeg generating and converting, no filter
ROTATION_GRAPH = {90: "transpose=clock", 180: "vflip,hflip", 270: "transpose=cclock"}


@dataclass
class CostRow:
    size: str
    filters: str
    median_ms: float
    p95_ms: float
    cpu_ms: float  # user+sys per frame, whole process
    budget_pct: float


@dataclass
class CpuRun:
    name: str
    cpu_s: float
    frames: int
    command: list[str]


def make_logo(path: Path) -> Path:
    """A 200x80 RGBA logo: coloured bands, alpha fading in from the left."""
    w, h = LOGO
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = np.linspace(40, 250, w, dtype=np.uint8)[None, :]
    rgba[..., 1] = np.linspace(200, 40, h, dtype=np.uint8)[:, None]
    rgba[..., 2] = 180
    rgba[..., 3] = np.linspace(60, 255, w, dtype=np.uint8)[None, :]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = w, h, "rgba"
        frame = av.VideoFrame.from_ndarray(rgba, format="rgba")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


def cases(logo: Path) -> list[tuple[str, list[FilterSpec]]]:
    beauty = BeautySpec(STRENGTH)
    mark = WatermarkSpec(logo, "bottom-right", MARGIN, OPACITY)
    return [
        (f"beauty={STRENGTH}", [beauty]),
        ("watermark", [mark]),
        ("mirror", [MirrorSpec()]),
        ("chain (all three)", [beauty, MirrorSpec(), mark]),
        ("clock text", [TextSpec(CLOCK)]),
    ]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_frame_cost(
    name: str, specs: list[FilterSpec], width: int, height: int, frames: int, rotate: int = 0
) -> CostRow:
    camera = SimCamera(width, height, FPS)
    pictures = [
        av.VideoFrame.from_ndarray(camera.picture(n), format="yuv420p")
        for n in range(camera.GRAIN_FRAMES)
    ]
    chain = FilterChain(specs, width, height, FPS, rotate=rotate)
    for n in range(WARMUP):
        chain.process(pictures[n % len(pictures)])
    times = []
    first = time.monotonic()  # capture times a frame apart: a clock changes once a second
    cpu0 = cpu_seconds()
    for n in range(frames):
        frame = pictures[n % len(pictures)]
        start = time.perf_counter()
        chain.process(frame, first + n / FPS)
        times.append((time.perf_counter() - start) * 1000)
    cpu_ms = (cpu_seconds() - cpu0) * 1000 / frames
    median = float(np.median(times))
    return CostRow(
        size=f"{width}x{height}",
        filters=name,
        median_ms=round(median, 3),
        p95_ms=round(float(np.percentile(times, 95)), 3),
        cpu_ms=round(cpu_ms, 3),
        budget_pct=round(100 * median / BUDGET_MS, 1),
    )


def testsrc2_frames(width: int, height: int) -> list[av.VideoFrame]:
    source = f"testsrc2=size={width}x{height}:rate={FPS}:duration={CLI_FRAMES / FPS}"
    with av.open(source, format="lavfi") as container:
        return [
            f if f.format.name == "yuv420p" else f.reformat(format="yuv420p")
            for f in container.decode(video=0)
        ]


def ours_cpu(
    specs: list[FilterSpec],
    frames: list[av.VideoFrame],
    name: str = "ours (in process, 1 thread)",
    rotate: int = 0,
) -> CpuRun:
    width, height = frames[0].width, frames[0].height
    chain = FilterChain(specs, width, height, FPS, rotate=rotate)
    first = time.monotonic()
    cpu0 = cpu_seconds()
    for n, frame in enumerate(frames):
        chain.process(frame, first + n / FPS)
    return CpuRun(name, cpu_seconds() - cpu0, len(frames), [])


def ffmpeg_clock_graph(width: int, height: int) -> str:
    """drawtext as our clock draws: same font and size, white on a 60 % black box."""
    overlay = TextOverlay(TextSpec(CLOCK), width, height)
    font = next((str(p) for p in FONT_PATHS if p.exists()), "")
    text = "%{localtime\\:%Y-%m-%d %H\\\\\\:%M\\\\\\:%S}"
    return (
        f"[0:v]format=yuv420p,drawtext=fontfile='{font}':fontsize={overlay.size}:"
        f"fontcolor=white:box=1:boxcolor=black@0.6:boxborderw={overlay.pad}:"
        f"x={MARGIN + overlay.pad}:y=h-{MARGIN + overlay.height - overlay.pad}-text_h:"
        f"text='{text}',format=yuv420p[out]"
    )


def ffmpeg_graph(logo: Path, width: int, height: int, chain: bool) -> str:
    if not chain:
        return BASELINE_GRAPH
    sigma_s, sigma_r = BeautySpec(STRENGTH).sigmas
    logo_arg = str(logo).replace("\\", "\\\\").replace(":", "\\:").replace("'", "\\'")
    return (
        f"[0:v]format=yuv420p,bilateral=sigmaS={sigma_s:.3f}:sigmaR={sigma_r:.4f}:planes=1,"
        "hflip[main];"
        f"movie='{logo_arg}',format=rgba,colorchannelmixer=aa={OPACITY}[logo];"
        f"[main][logo]overlay=x=W-w-{MARGIN}:y=H-h-{MARGIN}:format=yuv420:eval=init,"
        "format=yuv420p[out]"
    )


def rotation_graph(degrees: int) -> str:
    return f"[0:v]format=yuv420p,{ROTATION_GRAPH[degrees]},format=yuv420p[out]"


def ffmpeg_cpu(
    ffmpeg: str,
    name: str,
    graph: str,
    width: int,
    height: int,
    threads: int | None,
    source: list[str] | None = None,
) -> CpuRun:
    """The ffmpeg CLI's CPU for ``graph`` on ``source`` (input options; default testsrc2)."""
    if source is None:
        lavfi = f"testsrc2=size={width}x{height}:rate={FPS}:duration={CLI_FRAMES / FPS}"
        source = ["-f", "lavfi", "-i", lavfi]
    cmd = [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats"]
    cmd += source
    if threads is not None:
        cmd += ["-filter_threads", str(threads)]
    cmd += ["-filter_complex", graph, "-map", "[out]", "-progress", "pipe:1", "-f", "null", "-"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}")
    frames = [int(line.split("=", 1)[1]) for line in out.splitlines() if line.startswith("frame=")]
    return CpuRun(name, usage.ru_utime + usage.ru_stime, frames[-1] if frames else 0, cmd)


@dataclass
class RotationCpu:
    rotate: int
    ours_ms: float  # CPU per frame, in process, 1 thread
    ffmpeg_ms: dict[str, float]  # label -> the rotation's own CPU per frame (minus baseline)
    ratios: dict[str, float]  # label -> ours / ffmpeg's


def measure_rotations(
    ffmpeg: str | None, frames_per_row: int, repeat: int
) -> tuple[list[CostRow], list[RotationCpu]]:
    """Each rotation alone: per-frame cost at every size, and CPU against the ffmpeg CLI.

    A rotation costs far less than generating testsrc2 (~3 ms a 720p frame), so for the
    CPU figures ffmpeg reads raw frames instead, looped (its baseline, reading them, is
    then small beside the rotation), and ours turns the same frames.
    """
    rows = [
        per_frame_cost(f"rotate={d}", [], w, h, frames_per_row, rotate=d)
        for w, h in SIZES
        for d in ROTATIONS
    ]
    w, h = SIZES[0]
    frames = testsrc2_frames(w, h)[:ROTATION_DISTINCT]
    looped = [frames[n % len(frames)] for n in range(ROTATION_FRAMES)]
    ours = {d: best([ours_cpu([], looped, rotate=d) for _ in range(repeat)]) for d in ROTATIONS}
    with tempfile.TemporaryDirectory(prefix="bench-rotate-") as tmp:
        raw = Path(tmp) / "frames.yuv"
        with raw.open("wb") as f:
            for frame in frames:
                f.write(frame.to_ndarray(format="yuv420p").tobytes())  # packed planes
        source = ["-stream_loop", str(ROTATION_FRAMES // ROTATION_DISTINCT - 1)]
        source += ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-video_size", f"{w}x{h}"]
        source += ["-framerate", str(FPS), "-i", str(raw)]
        cpu = rotation_cpu(ffmpeg, ours, source, w, h, repeat)
    return rows, cpu


def rotation_cpu(
    ffmpeg: str | None, ours: dict[int, CpuRun], source: list[str], w: int, h: int, repeat: int
) -> list[RotationCpu]:
    labels = {None: "default threads", 1: "1 filter thread"}

    def cli(name: str, graph: str, threads: int | None) -> CpuRun:
        assert ffmpeg is not None
        return best([ffmpeg_cpu(ffmpeg, name, graph, w, h, threads, source) for _ in range(repeat)])

    baseline = {label: cli("baseline", BASELINE_GRAPH, t) for t, label in labels.items()}
    result = []
    for d in ROTATIONS:
        ours_ms = 1000 * ours[d].cpu_s / ours[d].frames
        ffmpeg_ms: dict[str, float] = {}
        ratios: dict[str, float] = {}
        for t, label in labels.items() if ffmpeg else ():
            run = cli(f"ffmpeg rotate={d}, {label}", rotation_graph(d), t)
            ffmpeg_ms[label] = 1000 * (run.cpu_s - baseline[label].cpu_s) / max(1, run.frames)
            ratios[label] = ours_ms / ffmpeg_ms[label] if ffmpeg_ms[label] > 0 else float("nan")
        result.append(RotationCpu(d, round(ours_ms, 3), ffmpeg_ms, ratios))
    return result


def print_rotations(rows: list[CostRow], cpu: list[RotationCpu], repeat: int) -> None:
    print_rows(rows)
    w, h = SIZES[0]
    print()
    print(
        f"CPU of each rotation alone over {ROTATION_FRAMES} frames of {w}x{h} (testsrc2's "
        f"first {ROTATION_DISTINCT}, looped; ffmpeg reads them raw), per frame (median of "
        f"{repeat}; ffmpeg's minus its baseline, reading them with format=yuv420p)"
    )
    print(f"  {'rotate':>6}  {'ours ms':>8}  {'ffmpeg ms, 1 thread':>19} {'ratio':>6}  ", end="")
    print(f"{'ffmpeg ms, default':>18} {'ratio':>6}")
    for r in cpu:
        one, default = "1 filter thread", "default threads"
        print(
            f"  {r.rotate:>6}  {r.ours_ms:8.2f}  {r.ffmpeg_ms.get(one, float('nan')):19.2f} "
            f"{r.ratios.get(one, float('nan')):5.2f}x  "
            f"{r.ffmpeg_ms.get(default, float('nan')):18.2f} "
            f"{r.ratios.get(default, float('nan')):5.2f}x"
        )


def print_rows(rows: list[CostRow]) -> None:
    print(
        f"{'size':>9}  {'filters':<18} {'median ms':>9} {'p95 ms':>7} {'cpu ms':>7} {'budget':>7}"
    )
    for r in rows:
        print(
            f"{r.size:>9}  {r.filters:<18} {r.median_ms:9.2f} {r.p95_ms:7.2f} "
            f"{r.cpu_ms:7.2f} {r.budget_pct:6.1f}%"
        )


def best(runs: list[CpuRun]) -> CpuRun:
    """The median run of the repeats (by CPU)."""
    ordered = sorted(runs, key=lambda r: r.cpu_s)
    return ordered[len(ordered) // 2]


def ffmpeg_version(ffmpeg: str) -> str:
    out = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=100, help="frames per cost row (100)")
    parser.add_argument("--repeat", type=int, default=3, help="CPU runs each, median (3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--rotation-only", action="store_true", help="measure the rotations (--rotate) only"
    )
    args = parser.parse_args(argv)

    ffmpeg = shutil.which("ffmpeg")
    load_before = os.getloadavg()
    load = ", ".join(f"{v:.2f}" for v in load_before)
    if args.rotation_only:
        rot_rows, rot_cpu = measure_rotations(ffmpeg, args.frames, args.repeat)
        if args.json:
            print(
                json.dumps(
                    {
                        "rows": [asdict(r) for r in rot_rows],
                        "rotations": [asdict(r) for r in rot_cpu],
                        "ffmpeg_version": ffmpeg_version(ffmpeg) if ffmpeg else None,
                        "pyav_ffmpeg": str(av.ffmpeg_version_info),
                        "load_before": load_before,
                    },
                    indent=2,
                )
            )
            return 0
        print(f"Per-frame cost, {args.frames} frames, budget {BUDGET_MS:.1f} ms at {FPS} fps")
        print(f"(load average before the run: {load} on {os.cpu_count()} CPUs)")
        print_rotations(rot_rows, rot_cpu, args.repeat)
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-filters-") as tmp:
        logo = make_logo(Path(tmp) / "logo.png")
        rows = [
            per_frame_cost(name, specs, w, h, args.frames)
            for w, h in SIZES
            for name, specs in cases(logo)
        ]

        w, h = SIZES[0]
        chain_specs = next(specs for name, specs in cases(logo) if name.startswith("chain"))
        frames = testsrc2_frames(w, h)
        ours = best([ours_cpu(chain_specs, frames) for _ in range(args.repeat)])
        clock_ours = best(
            [ours_cpu([TextSpec(CLOCK)], frames, "ours clock") for _ in range(args.repeat)]
        )
        del frames
        cli: dict[str, CpuRun] = {}
        if ffmpeg:
            for threads in (None, 1):
                label = "default threads" if threads is None else "1 filter thread"
                for chain in (True, False):
                    name = f"ffmpeg {'chain' if chain else 'baseline'}, {label}"
                    graph = ffmpeg_graph(logo, w, h, chain)
                    cli[name] = best(
                        [ffmpeg_cpu(ffmpeg, name, graph, w, h, threads) for _ in range(args.repeat)]
                    )
            name, graph = "ffmpeg drawtext clock, 1 filter thread", ffmpeg_clock_graph(w, h)
            cli[name] = best([ffmpeg_cpu(ffmpeg, name, graph, w, h, 1) for _ in range(args.repeat)])

    rot_rows, rot_cpu = measure_rotations(ffmpeg, args.frames, args.repeat)
    chain_720 = next(r for r in rows if r.size == f"{w}x{h}" and r.filters.startswith("chain"))
    chain_ok = chain_720.median_ms <= CHAIN_TARGET * BUDGET_MS
    ratios: dict[str, float] = {}
    for label in ("default threads", "1 filter thread"):
        full, base = cli.get(f"ffmpeg chain, {label}"), cli.get(f"ffmpeg baseline, {label}")
        if full and base:
            ratios[f"vs ffmpeg whole run, {label}"] = ours.cpu_s / full.cpu_s
            ratios[f"vs ffmpeg chain only, {label}"] = ours.cpu_s / (full.cpu_s - base.cpu_s)
    strict = max((v for k, v in ratios.items() if "chain only" in k), default=float("nan"))
    clock_cli, base_1 = (
        cli.get("ffmpeg drawtext clock, 1 filter thread"),
        cli.get("ffmpeg baseline, 1 filter thread"),
    )
    clock_ratio = (
        clock_ours.cpu_s / (clock_cli.cpu_s - base_1.cpu_s)
        if clock_cli and base_1 and clock_cli.cpu_s > base_1.cpu_s
        else float("nan")
    )

    cpu_ok = strict <= CPU_TARGET

    if args.json:
        print(
            json.dumps(
                {
                    "rows": [asdict(r) for r in rows],
                    "ours": asdict(ours),
                    "ffmpeg": {k: asdict(v) for k, v in cli.items()},
                    "ffmpeg_version": ffmpeg_version(ffmpeg) if ffmpeg else None,
                    "pyav_ffmpeg": str(av.ffmpeg_version_info),
                    "ratios": ratios,
                    "clock": {"ours": asdict(clock_ours), "ratio_vs_drawtext": clock_ratio},
                    "rotations": [asdict(r) for r in rot_cpu],
                    "rotation_rows": [asdict(r) for r in rot_rows],
                    "load_before": load_before,
                    "chain_target_met": chain_ok,
                    "cpu_target_met": cpu_ok,
                },
                indent=2,
            )
        )
        return 0

    print(f"Per-frame cost, {args.frames} frames, budget {BUDGET_MS:.1f} ms at {FPS} fps")
    print(f"(load average before the run: {load} on {os.cpu_count()} CPUs; median ms is wall")
    print(" time and grows when other processes compete, cpu ms is this process's own CPU)")
    print_rows(rows)
    print()
    print(
        f"CPU of the chain over {CLI_FRAMES} frames of {w}x{h} testsrc2 (median of {args.repeat})"
    )
    pyav_ffmpeg = str(av.ffmpeg_version_info)
    print(f"  ours: PyAV {av.__version__} (FFmpeg {pyav_ffmpeg}); CLI: ", end="")
    print(ffmpeg_version(ffmpeg) if ffmpeg else "no ffmpeg on PATH")
    print(f"  {ours.name:<40} {ours.cpu_s:6.2f} s  ({ours.frames} frames)")
    for run in cli.values():
        print(f"  {run.name:<40} {run.cpu_s:6.2f} s  ({run.frames} frames)")
    for label in ("default threads", "1 filter thread"):
        full, base = cli.get(f"ffmpeg chain, {label}"), cli.get(f"ffmpeg baseline, {label}")
        if full and base:
            print(f"  {'ffmpeg chain only, ' + label:<40} {full.cpu_s - base.cpu_s:6.2f} s")
    for name, ratio in ratios.items():
        print(f"  ratio ours {name:<36} {ratio:5.2f}x")
    print()
    print(f"CPU of the clock ({CLOCK}, box) over the same frames (median of {args.repeat})")
    print(f"  {clock_ours.name:<40} {clock_ours.cpu_s:6.2f} s  ({clock_ours.frames} frames)")
    if clock_cli and base_1:
        print(
            f"  {'ffmpeg drawtext less its baseline':<40} {clock_cli.cpu_s - base_1.cpu_s:6.2f} s"
        )
    print(f"  ratio ours / ffmpeg drawtext (1 filter thread) {clock_ratio:5.2f}x")
    print()
    print(
        f"target: whole chain at 720p <= {CHAIN_TARGET:.0%} of the budget "
        f"({CHAIN_TARGET * BUDGET_MS:.1f} ms): {chain_720.median_ms:.2f} ms "
        f"({chain_720.budget_pct:.1f}%, CPU {chain_720.cpu_ms:.2f} ms) "
        f"-> {'met' if chain_ok else 'NOT met'}"
    )
    print(
        f"target: CPU <= {CPU_TARGET}x ffmpeg's (chain only, the stricter of the two): "
        f"{strict:.2f}x -> {'met' if cpu_ok else 'NOT met'}"
    )
    print()
    print("Rotation (--rotate), alone:")
    print_rotations(rot_rows, rot_cpu, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
