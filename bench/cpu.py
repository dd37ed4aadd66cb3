"""CPU cost of streaming with our publisher, against the ffmpeg CLI doing the same job.

On a Raspberry Pi class device the CPU is the budget: whatever the streamer
spends beyond the encoder itself (making pictures, Python, packetising, the
RTMP client) is taken from the encoder and from everything else on the
device. This benchmark streams the same simulated 1280x720@30 picture and a
48 kHz stereo tone, with the same libx264 settings (veryfast, zerolatency,
2 s closed GOP without scene cuts, no B-frames, 2500k CBR-like VBV) and AAC
128k, for the same duration, three times to one local nginx-rtmp:

1. ``streamer run`` (our capture threads, encoders and RTMP publisher);
2. ``ffmpeg`` with lavfi ``testsrc2`` + ``sine`` inputs read in real time;
3. ``ffmpeg-sim``: ffmpeg encoding our sim camera's own pictures (raw frames
   written once and looped), because x264's cost depends on the picture and
   testsrc2 is not ours: this is the like-for-like comparison.

It measures each child's user and system CPU seconds exactly, from the
rusage ``os.wait4`` returns when it reaps the child (all of its threads),
plus its wall time. After each run it decodes the server's recording with
PyAV and checks the frame count, size and audio, so that a run that failed
quietly (sent nothing, or half) cannot pass as a cheap one.

Both ratios (against ffmpeg and ffmpeg-sim) are printed against the target
(at most 1.0x), and the peak RSS against ffmpeg-sim's + 10 %: reported, not
asserted; the exit status is non-zero only if a run fails.

Start to first frame: what a button press or a reboot costs before anyone
sees the picture. A viewer waits on nginx for the stream (``play`` before the
publisher exists); the time from spawning the publisher to the viewer's
first video packet is measured ``--first-frame-runs`` times (3) for
``streamer run`` and for ffmpeg-sim, and the median printed with the import
time of ``streamer`` on its own. The package's bytecode is compiled first, as
pip does when it installs it on a device: a checkout run with
``PYTHONDONTWRITEBYTECODE`` (as CI sets) would otherwise compile every module
at every start, 0.1-0.3 s that no device pays.

Usage: ``python bench/cpu.py [--duration 30] [--size 1280x720] [--json]``
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

import av
import av.error

from streamer.exc import StreamerError
from streamer.hardware.sim import SimCamera
from streamer.localserver import LocalRtmpServer

FPS = 30
VIDEO_KBPS = 2500
AUDIO_KBPS = 128
SAMPLE_RATE = 48000
AAC_FRAME = 1024
TARGET_RATIO = 1.0
RSS_MARGIN = 1.10  # streamer's peak RSS at most ffmpeg-sim's + 10 %
FIRST_FRAME_TIMEOUT = 20.0
MIN_FRACTION = 0.90  # of the expected video frames / audio packets a good run records
EXIT_GRACE = 60.0  # seconds a child may run beyond --duration before it is killed
SETTLE = 0.5  # a recording whose size is unchanged for this long is complete


@dataclass
class RecordingCheck:
    file: str
    width: int
    height: int
    video_packets: int
    video_frames: int
    keyframes: int
    audio_packets: int
    decode_errors: int


@dataclass
class RunResult:
    name: str
    command: list[str]
    returncode: int
    user_s: float
    sys_s: float
    wall_s: float
    max_rss_mb: float
    recording: RecordingCheck | None
    problems: list[str]

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def ok(self) -> bool:
        return not self.problems


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size {text} must be even and at least 16x16")
    return w, h


def streamer_command(
    url: str, size: tuple[int, int], duration: float, *, video_kbps: int = VIDEO_KBPS
) -> list[str]:
    cli = Path(sys.executable).parent / "streamer"
    prefix = [str(cli)] if cli.exists() else [sys.executable, "-m", "streamer"]
    return [
        *prefix,
        "run",
        "--url",
        url,
        "--camera",
        "sim",
        "--microphone",
        "sim",
        "--size",
        f"{size[0]}x{size[1]}",
        "--fps",
        str(FPS),
        "--video-bitrate",
        str(video_kbps),
        "--audio-bitrate",
        str(AUDIO_KBPS),
        "--duration",
        f"{duration:g}",
    ]


def testsrc2_input(size: tuple[int, int]) -> list[str]:
    return ["-re", "-f", "lavfi", "-i", f"testsrc2=size={size[0]}x{size[1]}:rate={FPS}"]


def sim_picture_input(size: tuple[int, int], workdir: Path) -> list[str]:
    """Our sim camera's own pictures as raw frames, looped: the same content to encode.

    One back-and-forth of the moving block is written to a file once; ffmpeg
    reads it in real time, which costs it next to nothing.
    """
    camera = SimCamera(size[0], size[1], FPS)
    path = workdir / "sim.yuv"
    period = max(1, 2 * (camera.width - camera._bw) // camera._step)
    with path.open("wb") as out:
        for n in range(period):
            out.write(camera.picture(n).tobytes())
    return [
        "-re",
        "-stream_loop",
        "-1",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "yuv420p",
        "-s",
        f"{size[0]}x{size[1]}",
        "-r",
        str(FPS),
        "-i",
        str(path),
    ]


def ffmpeg_command(
    url: str,
    duration: float,
    video_input: list[str],
    *,
    video_kbps: int = VIDEO_KBPS,
    realtime: bool = True,
) -> list[str]:
    """The same encode as streamer's H264Encoder/AacEncoder, by the ffmpeg CLI, to ``url``
    (an rtmp:// URL or an FLV file); ``realtime`` reads the tone at its own pace."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise StreamerError("the ffmpeg CLI is not installed (apt: ffmpeg)")
    gop = str(2 * FPS)
    rate = f"{video_kbps}k"
    return [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        *video_input,
        *(["-re"] if realtime else []),
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:sample_rate={SAMPLE_RATE}",
        "-t",
        f"{duration:g}",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-tune",
        "zerolatency",
        "-g",
        gop,
        "-keyint_min",
        gop,
        "-sc_threshold",
        "0",
        "-bf",
        "0",
        "-b:v",
        rate,
        "-maxrate",
        rate,
        "-bufsize",
        rate,
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        f"{AUDIO_KBPS}k",
        "-ac",
        "2",
        "-ar",
        str(SAMPLE_RATE),
        "-f",
        "flv",
        url,
    ]


def run_measured(
    cmd: Sequence[str], timeout: float, log: IO[bytes]
) -> tuple[int, resource.struct_rusage, float]:
    """Run ``cmd`` to its end; its exit code, its own rusage (from wait4) and wall seconds."""
    started = time.monotonic()
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = started + timeout
    killed = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if not killed and time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.02)
    wall = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return proc.returncode, usage, wall


def wait_for_recording(server: LocalRtmpServer, before: set[Path], timeout: float) -> list[Path]:
    """The files this run added, once nginx has stopped writing them."""
    end = time.monotonic() + timeout
    sizes: dict[Path, int] = {}
    stable_since = time.monotonic()
    while time.monotonic() < end:
        new = [p for p in server.recordings() if p not in before]
        current = {p: p.stat().st_size for p in new}
        if current != sizes:
            sizes, stable_since = current, time.monotonic()
        elif new and time.monotonic() - stable_since >= SETTLE:
            return new
        time.sleep(0.1)
    return [p for p in server.recordings() if p not in before]


def check_recording(path: Path) -> RecordingCheck:
    """Decode every video packet of the recording and count what a viewer would get."""
    check = RecordingCheck(path.name, 0, 0, 0, 0, 0, 0, 0)
    with av.open(str(path)) as container:
        streams = [*container.streams.video[:1], *container.streams.audio[:1]]
        if container.streams.video:
            container.streams.video[0].thread_type = "AUTO"
        for packet in container.demux(*streams):
            if packet.stream.type == "audio":
                check.audio_packets += packet.size > 0
                continue
            if packet.size > 0:
                check.video_packets += 1
                check.keyframes += bool(packet.is_keyframe)
            try:
                frames = packet.decode()  # the empty packet at the end flushes the decoder
            except av.error.FFmpegError:
                check.decode_errors += 1
                continue
            for frame in frames:
                if isinstance(frame, av.VideoFrame):
                    check.video_frames += 1
                    check.width, check.height = frame.width, frame.height
    return check


def judge(
    check: RecordingCheck | None,
    size: tuple[int, int],
    frames: float,
    audio_packets: float,
    returncode: int,
) -> list[str]:
    """What is wrong with a run that should have recorded ``frames`` video frames of ``size``
    and ``audio_packets`` AAC packets (0: a run without audio, which must have none)."""
    problems = []
    if returncode != 0:
        problems.append(f"exit status {returncode}")
    if check is None:
        return [*problems, "the server recorded nothing"]
    want_frames = frames * MIN_FRACTION
    want_audio = audio_packets * MIN_FRACTION
    if check.video_frames < want_frames:
        problems.append(
            f"only {check.video_frames} video frames decoded (want ≥ {want_frames:.0f})"
        )
    if (check.width, check.height) != size:
        problems.append(f"recorded {check.width}x{check.height}, not {size[0]}x{size[1]}")
    if audio_packets and check.audio_packets < want_audio:
        problems.append(f"only {check.audio_packets} audio packets (want ≥ {want_audio:.0f})")
    if not audio_packets and check.audio_packets:
        problems.append(f"{check.audio_packets} audio packets in a run without audio")
    if check.decode_errors:
        problems.append(f"{check.decode_errors} video packets failed to decode")
    return problems


def bench_one(
    name: str,
    cmd: list[str],
    server: LocalRtmpServer,
    duration: float,
    workdir: Path,
    judged: Callable[[RecordingCheck | None, int], list[str]],
) -> RunResult:
    """Run ``cmd`` for ``duration`` s, measured; ``judged(recording, exit status)`` says
    what is wrong with what the server recorded."""
    print(f"[{name}] streaming {duration:g} s …", file=sys.stderr, flush=True)
    before = set(server.recordings())
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        code, usage, wall = run_measured(cmd, duration + EXIT_GRACE, log)
    new = wait_for_recording(server, before, timeout=10.0)
    check: RecordingCheck | None = None
    problems: list[str] = []
    if len(new) > 1:
        problems.append(f"expected one recording, got {len(new)}: {[p.name for p in new]}")
    if new:
        try:
            check = check_recording(new[0])
        except av.error.FFmpegError as exc:
            problems.append(f"recording {new[0].name} could not be read: {exc}")
    problems += judged(check, code)
    if problems:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        print(f"[{name}] FAILED: {'; '.join(problems)}", file=sys.stderr)
        for line in tail:
            print(f"[{name}]   {line}", file=sys.stderr)
    return RunResult(
        name=name,
        command=cmd,
        returncode=code,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        wall_s=wall,
        max_rss_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
        recording=check,
        problems=problems,
    )


def first_frame_seconds(cmd: Sequence[str], url: str, log: IO[bytes]) -> float | None:
    """Seconds from spawning ``cmd`` to the first video packet at a viewer (None: never).

    The packet, not its decoded picture: nginx starts a waiting player within the
    first GOP, so the first picture a decoder shows waits for the next keyframe
    (2 s later), for ffmpeg and streamer alike, which would hide what each costs.
    """
    seen: list[float] = []
    ready = threading.Event()

    def watch() -> None:
        with contextlib.suppress(av.error.FFmpegError, OSError):
            ready.set()
            # As ffplay -fflags nobuffer: no probing delay of its own in the measurement.
            options = {"fflags": "nobuffer", "analyzeduration": "0", "probesize": "32768"}
            with av.open(url, options=options, timeout=FIRST_FRAME_TIMEOUT) as container:
                for packet in container.demux(video=0):
                    if packet.size:
                        seen.append(time.monotonic())
                        return

    viewer = threading.Thread(target=watch, daemon=True)
    viewer.start()
    ready.wait(5)
    time.sleep(0.5)  # the viewer is connected and waiting for the stream at nginx
    started = time.monotonic()
    proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    viewer.join(FIRST_FRAME_TIMEOUT)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return seen[0] - started if seen else None


def import_seconds() -> float:
    """Wall seconds of ``import streamer.__main__`` in a fresh interpreter, less a bare start."""

    def run(code: str) -> float:
        began = time.monotonic()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.monotonic() - began

    return statistics.median(run("import streamer.__main__") for _ in range(3)) - min(
        run("pass") for _ in range(3)
    )


def cmd_for_url(cmd: Sequence[str], url: str) -> list[str]:
    """The same command publishing to ``url`` (the last rtmp:// argument replaced)."""
    out = list(cmd)
    last = max(i for i, arg in enumerate(out) if arg.startswith("rtmp://"))
    out[last] = url
    return out


def print_table(results: list[RunResult], ratio: float | None) -> None:
    header = (
        f"{'run':<9} {'user s':>7} {'sys s':>6} {'cpu s':>7} {'wall s':>7} {'cpu %':>6} "
        f"{'rss MB':>7} {'frames':>6} {'keys':>4} {'audio':>5}  status"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        rec = r.recording
        frames, keys, audio = (
            (rec.video_frames, rec.keyframes, rec.audio_packets) if rec else (0, 0, 0)
        )
        status = "ok" if r.ok else "FAILED"
        print(
            f"{r.name:<9} {r.user_s:7.2f} {r.sys_s:6.2f} {r.cpu_s:7.2f} {r.wall_s:7.2f} "
            f"{100 * r.cpu_s / r.wall_s:6.1f} {r.max_rss_mb:7.1f} {frames:6d} {keys:4d} "
            f"{audio:5d}  {status}"
        )
    if ratio is None:
        print("ratio streamer/ffmpeg: n/a (a run failed)")
    else:
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        print(f"ratio streamer/ffmpeg CPU: {ratio:.3f}x (target ≤ {TARGET_RATIO}x: {verdict})")


def compile_as_installed() -> None:
    """Write the package's bytecode, as ``pip install`` does on a device (see the docstring)."""
    import streamer

    compileall.compile_dir(Path(streamer.__file__).parent, quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per run (30)")
    parser.add_argument("--size", type=parse_size, default=(1280, 720), help="WxH (1280x720)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument(
        "--first-frame-runs", type=int, default=3, help="start-to-first-frame runs each (3)"
    )
    args = parser.parse_args(argv)
    duration: float = args.duration
    size: tuple[int, int] = args.size
    if duration <= 0:
        parser.error("--duration must be positive")

    compile_as_installed()
    workdir = Path(tempfile.mkdtemp(prefix="streamer-bench-"))
    results: list[RunResult] = []
    try:
        with LocalRtmpServer() as server:
            runs = [
                ("streamer", streamer_command(server.url("bench-streamer"), size, duration)),
                (
                    "ffmpeg",
                    ffmpeg_command(server.url("bench-ffmpeg"), duration, testsrc2_input(size)),
                ),
                (
                    "ffmpeg-sim",
                    ffmpeg_command(
                        server.url("bench-ffmpeg-sim"),
                        duration,
                        sim_picture_input(size, workdir),
                    ),
                ),
            ]
            frames, audio = duration * FPS, duration * SAMPLE_RATE / AAC_FRAME

            def judged(check: RecordingCheck | None, code: int) -> list[str]:
                return judge(check, size, frames, audio, code)

            for name, cmd in runs:
                results.append(bench_one(name, cmd, server, duration, workdir, judged))
            first: dict[str, float | None] = {}
            for name, cmd in (runs[0], runs[2]):
                print(f"[{name}] start to first frame …", file=sys.stderr, flush=True)
                times = []
                for n in range(args.first_frame_runs):
                    url = server.url(f"first-{name}-{n}")
                    with (workdir / f"first-{name}.log").open("ab") as log:
                        started = cmd_for_url(cmd, url)
                        times.append(first_frame_seconds(started, url, log))
                got = [t for t in times if t is not None]
                first[name] = statistics.median(got) if got and len(got) == len(times) else None
    except StreamerError as exc:
        print(f"bench: error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ok = all(r.ok for r in results)
    streamer_run, ffmpeg_run, same_content_run = results
    ratio = streamer_run.cpu_s / ffmpeg_run.cpu_s if ok and ffmpeg_run.cpu_s > 0 else None
    same_content_ratio = (
        streamer_run.cpu_s / same_content_run.cpu_s if ok and same_content_run.cpu_s > 0 else None
    )
    print(
        f"{duration:g} s of {size[0]}x{size[1]}@{FPS}, x264 veryfast {VIDEO_KBPS}k + AAC "
        f"{AUDIO_KBPS}k, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    print_table(results, ratio)
    rss_limit = same_content_run.max_rss_mb * RSS_MARGIN
    verdict = "met" if streamer_run.max_rss_mb <= rss_limit else "NOT met"
    print(
        f"peak RSS streamer {streamer_run.max_rss_mb:.1f} MB, ffmpeg-sim "
        f"{same_content_run.max_rss_mb:.1f} MB (target ≤ {rss_limit:.1f} MB: {verdict})"
    )
    imported = import_seconds()
    for name, seconds in first.items():
        shown = "n/a (no frame)" if seconds is None else f"{seconds:.2f} s"
        print(f"start to first video packet at a viewer, {name}: {shown} (median of runs)")
    print(f"of which importing streamer: {imported:.2f} s")
    s_first, f_first = first.get("streamer"), first.get("ffmpeg-sim")
    if s_first is not None and f_first is not None:
        verdict = "met" if s_first <= f_first else "NOT met"
        print(f"start to first frame streamer/ffmpeg-sim: {s_first / f_first:.2f}x ({verdict})")
    if same_content_ratio is not None:
        verdict = "met" if same_content_ratio <= TARGET_RATIO else "NOT met"
        print(
            f"ratio streamer/ffmpeg-sim CPU (same pictures): {same_content_ratio:.3f}x "
            f"(target ≤ {TARGET_RATIO}x: {verdict})"
        )
    if args.json:
        record = {
            "duration_s": duration,
            "size": f"{size[0]}x{size[1]}",
            "fps": FPS,
            "runs": [{**asdict(r), "cpu_s": r.cpu_s, "ok": r.ok} for r in results],
            "ratio": ratio,
            "same_content_ratio": same_content_ratio,
            "target_ratio": TARGET_RATIO,
            "target_met": ratio is not None and ratio <= TARGET_RATIO,
            "first_frame_s": first,
            "import_s": imported,
        }
        print(json.dumps(record))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
