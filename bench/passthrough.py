"""The publisher's own CPU when frames arrive already encoded, against ``ffmpeg -c copy``.

On a Pi 4 the camera's hardware encoder hands over H.264 (picamera2), so all
the streamer adds is its own overhead: packetising, queues, the RTMP client
and Python. This benchmark measures that overhead. It prepares one FLV once
(``--duration`` seconds of our sim camera's 1280x720@30 pictures, libx264
veryfast zerolatency, 2 s closed GOP, no B-frames, 4000k, plus AAC 128k of a
440 Hz tone), then streams it in real time to one local nginx-rtmp:

1. ``ffmpeg``: ``ffmpeg -re -i fixture.flv -c copy -f flv rtmp://...``;
2. ``streamer``: a child process running ``streamer.__main__.stream`` with
   ``Settings(camera=FlvEncodedCamera(...))``, an ``EncodedVideoSource`` that
   demuxes the FLV's H.264 with PyAV, turns it into Annex B (SPS/PPS before
   every keyframe, as picamera2 hands it over) and calls the sink at each
   frame's own time by the wall clock: the same path as picamera2's hardware
   hand-off (``CameraEncoder.on_frame``).

Audio cannot go in encoded: the public path takes a microphone's PCM
(``AudioSource``) and encodes AAC itself. So the streamer run uses the sim
microphone, and its CPU includes an AAC encode that ffmpeg's copy does not.
The like-for-like pair is therefore run too, both without audio:
``ffmpeg-an`` (``-c copy -an``) and ``streamer-an`` (``microphone="none"``).

Each child's user and system CPU are exact, from the rusage ``os.wait4``
returns (all its threads). After each run the server's recording is decoded
with PyAV and its frames counted (``bench.cpu.check_recording``), so that a
run that failed quietly cannot pass as a cheap one. The streamer child also
reports the CPU its feeding thread spent demuxing and converting the file
(``feed s``): that is the bench's, not the streamer's (picamera2 spends its
own there).

``--profile`` adds a run of the streamer (with audio) under py-spy and
prints the top self-time Python functions; it is not measured for CPU.

Ratios streamer/ffmpeg are printed against the target (at most 1.0x) and
not asserted: the exit status is non-zero only if a run fails.

Usage: ``python bench/passthrough.py [--duration 60] [--json] [--profile]``
from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
from av.bitstream import BitStreamFilterContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cpu
from streamer import log as logsetup
from streamer.exc import StreamerError
from streamer.hardware.base import EncodedSink, EncodedVideoSource
from streamer.localserver import LocalRtmpServer
from streamer.settings import Settings

SIZE = (1280, 720)
FPS = cpu.FPS
VIDEO_KBPS = 4000
AUDIO_KBPS = cpu.AUDIO_KBPS
TARGET_RATIO = 1.0
LEAD = 0.05  # seconds between the camera's start and its first frame
END_GRACE = 0.5  # seconds the child streams on after the file's last frame
PY_SPY = Path(sys.executable).parent / "py-spy"


@dataclass
class Run:
    name: str
    audio: bool
    result: cpu.RunResult
    feed_cpu_s: float | None = None  # the streamer child's file-feeding thread

    @property
    def ok(self) -> bool:
        return self.result.ok


@dataclass
class Fixture:
    path: Path
    seconds: float
    video_frames: int
    video_mbps: float
    audio_mbps: float
    prepare_s: float


@dataclass
class Profile:
    samples: int  # not in WAITS
    wait_samples: int
    top: list[tuple[str, int]] = field(default_factory=list)
    by_file: list[tuple[str, int]] = field(default_factory=list)


# -- the fixture ---------------------------------------------------------------------------


def prepare_fixture(workdir: Path, duration: float) -> Fixture:
    """Encode ``duration`` s of the sim camera's pictures and a tone into one FLV, once."""
    # Our sim pictures as raw frames, looped; read as fast as x264 goes, not in real time.
    video_input = [a for a in cpu.sim_picture_input(SIZE, workdir) if a != "-re"]
    path = workdir / "fixture.flv"
    cmd = cpu.ffmpeg_command(
        str(path), duration, video_input, video_kbps=VIDEO_KBPS, realtime=False
    )
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, check=False)
    if done.returncode != 0:
        raise StreamerError(f"preparing the fixture failed: {done.stderr.decode()[-500:]}")
    prepare_s = time.monotonic() - started
    frames, video_bytes, audio_bytes = 0, 0, 0
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.size == 0:
                continue
            if packet.stream.type == "video":
                frames += 1
                video_bytes += packet.size
            else:
                audio_bytes += packet.size
    seconds = frames / FPS
    return Fixture(
        path=path,
        seconds=seconds,
        video_frames=frames,
        video_mbps=video_bytes * 8 / seconds / 1e6,
        audio_mbps=audio_bytes * 8 / seconds / 1e6,
        prepare_s=prepare_s,
    )


# -- the streamer child: a file that plays the hardware camera --------------------------------


class FlvEncodedCamera:
    """An ``EncodedVideoSource`` that plays an FLV's H.264 as picamera2's hardware encoder would.

    Its thread demuxes the file with PyAV, converts each packet to Annex B
    (``h264_mp4toannexb`` puts SPS/PPS before every keyframe, as picamera2's
    ``repeat=True`` does) and calls the sink at the frame's own time, paced
    by the wall clock, with that instant as the capture time. After the last
    frame it calls ``finished``. The bitrate is the file's (``set_bitrate``
    does nothing). A hardware encoder asked for a keyframe makes the next
    frame one; a file cannot, so ``request_keyframe`` plays the file again
    from its first keyframe, now. The pipeline starts the camera before it
    connects and asks for a keyframe when it goes live, so the whole file
    is streamed from there (the frames sent before are discarded offline,
    as a real camera's are).
    """

    encoder_name = "FLV file (H.264 passthrough)"

    def __init__(self, path: Path, finished: Callable[[], object]) -> None:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            self.fps = float(stream.average_rate or FPS)
        self.path = path
        self._finished = finished
        self._stopping = threading.Event()
        self._keyframe_wanted = threading.Event()
        self.restarts = 0
        self._thread: threading.Thread | None = None
        self.frames = 0
        self.feed_cpu_s = 0.0

    def start(self, sink: EncodedSink) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._feed, args=(sink,), name="file-camera")
        self._thread.start()

    def _feed(self, sink: EncodedSink) -> None:
        cpu_started = time.thread_time()
        try:
            while self._play(sink):
                self.restarts += 1
        finally:
            self.feed_cpu_s = time.thread_time() - cpu_started
        if not self._stopping.wait(END_GRACE):
            self._finished()

    def _play(self, sink: EncodedSink) -> bool:
        """Play the file once; True when a keyframe was asked for mid-GOP (play again)."""
        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            annexb = BitStreamFilterContext("h264_mp4toannexb", stream)
            origin = time.monotonic() + LEAD
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                for out in annexb.filter(packet):
                    if out.dts is None or out.time_base is None:
                        continue
                    at = origin + float(out.dts * Fraction(out.time_base))
                    if self._stopping.wait(max(0.0, at - time.monotonic())):
                        return False
                    if self._keyframe_wanted.is_set():
                        self._keyframe_wanted.clear()
                        if not out.is_keyframe:
                            return True
                    sink(bytes(out), bool(out.is_keyframe), at)
                    self.frames += 1
        return False

    def set_bitrate(self, kbps: int) -> None:
        pass

    def request_keyframe(self) -> None:
        self._keyframe_wanted.set()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5.0)


def child(fixture: Path, url: str, audio: bool, report: Path) -> int:
    """The measured streamer process: stream the file, then write what the feeder spent."""
    logsetup.configure("info", "auto")
    from streamer.__main__ import stream

    async def go() -> FlvEncodedCamera:
        loop = asyncio.get_running_loop()
        shutdown = asyncio.Event()
        camera = FlvEncodedCamera(fixture, lambda: loop.call_soon_threadsafe(shutdown.set))
        source: EncodedVideoSource = camera  # mypy checks it against hardware/base.py
        settings = Settings(
            urls=[url],
            camera=source,
            microphone="sim" if audio else "none",
            width=camera.width,
            height=camera.height,
            fps=camera.fps,
            video_bitrate_kbps=VIDEO_KBPS,
            audio_bitrate_kbps=AUDIO_KBPS,
        )
        await stream(settings, shutdown=shutdown)
        return camera

    camera = asyncio.run(go())
    report.write_text(
        json.dumps(
            {"frames": camera.frames, "restarts": camera.restarts, "feed_cpu_s": camera.feed_cpu_s}
        )
    )
    return 0


# -- the parent ----------------------------------------------------------------------------


def ffmpeg_copy_command(fixture: Path, url: str, audio: bool) -> list[str]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise StreamerError("the ffmpeg CLI is not installed (apt: ffmpeg)")
    return [
        ffmpeg,
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-re",
        "-i",
        str(fixture),
        "-c",
        "copy",
        *([] if audio else ["-an"]),
        "-f",
        "flv",
        url,
    ]


def streamer_command(fixture: Path, url: str, audio: bool, report: Path) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(fixture),
        url,
        "--audio" if audio else "--no-audio",
        "--report",
        str(report),
    ]


def bench_one(
    name: str,
    cmd: list[str],
    audio: bool,
    server: LocalRtmpServer,
    fixture: Fixture,
    workdir: Path,
) -> cpu.RunResult:
    """One measured run, judged against the fixture: all its frames, its audio or none."""
    audio_packets = fixture.seconds * cpu.SAMPLE_RATE / cpu.AAC_FRAME if audio else 0

    def judged(check: cpu.RecordingCheck | None, code: int) -> list[str]:
        return cpu.judge(check, SIZE, fixture.video_frames, audio_packets, code)

    return cpu.bench_one(name, cmd, server, fixture.seconds, workdir, judged)


def stream_mbps(fixture: Fixture, audio: bool) -> float:
    return fixture.video_mbps + (fixture.audio_mbps if audio else 0.0)


def cpu_per_mbps(run: Run, fixture: Fixture) -> float:
    """CPU seconds per second (of wall) divided by the stream's Mbit/s."""
    r = run.result
    return r.cpu_s / r.wall_s / stream_mbps(fixture, run.audio)


def ratio(a: Run, b: Run) -> float | None:
    if a.ok and b.ok and b.result.cpu_s > 0:
        return a.result.cpu_s / b.result.cpu_s
    return None


def print_table(runs: list[Run], fixture: Fixture) -> None:
    header = (
        f"{'run':<11} {'user s':>7} {'sys s':>6} {'cpu s':>7} {'wall s':>7} {'cpu %':>6} "
        f"{'rss MB':>7} {'frames':>6} {'errs':>4} {'Mbit/s':>6} {'cpu/Mbit':>8} "
        f"{'feed s':>6}  status"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        r, rec = run.result, run.result.recording
        frames, errors = (rec.video_frames, rec.decode_errors) if rec else (0, 0)
        feed = f"{run.feed_cpu_s:6.2f}" if run.feed_cpu_s is not None else f"{'-':>6}"
        print(
            f"{r.name:<11} {r.user_s:7.2f} {r.sys_s:6.2f} {r.cpu_s:7.2f} {r.wall_s:7.2f} "
            f"{100 * r.cpu_s / r.wall_s:6.1f} {r.max_rss_mb:7.1f} {frames:6d} {errors:4d} "
            f"{stream_mbps(fixture, run.audio):6.2f} {cpu_per_mbps(run, fixture):8.4f} "
            f"{feed}  {'ok' if run.ok else 'FAILED'}"
        )


def print_ratio(label: str, value: float | None) -> None:
    if value is None:
        print(f"ratio {label}: n/a (a run failed)")
        return
    verdict = "met" if value <= TARGET_RATIO else "NOT met"
    print(f"ratio {label} CPU: {value:.2f}x (target ≤ {TARGET_RATIO}x: {verdict})")


# -- the profile ---------------------------------------------------------------------------


def profile_streamer(
    fixture: Fixture, server: LocalRtmpServer, workdir: Path, out: Path
) -> Profile | None:
    """Run the streamer (with audio) under py-spy; the top self-time Python functions."""
    if not PY_SPY.exists():
        print(f"[profile] {PY_SPY} not found: no profile", file=sys.stderr)
        return None
    url = server.url("bench-pass-profile")
    inner = streamer_command(fixture.path, url, True, workdir / "profile.json")
    cmd = [str(PY_SPY), "record", "-r", "200", "-f", "raw", "-o", str(out), "--", *inner]
    print(f"[profile] streaming {fixture.seconds:g} s under py-spy …", file=sys.stderr)
    with (workdir / "profile.log").open("wb") as log:
        code, _usage, _wall = cpu.run_measured(cmd, fixture.seconds + cpu.EXIT_GRACE, log)
    if code != 0 or not out.exists():
        print(f"[profile] py-spy failed (exit {code}); see its log", file=sys.stderr)
        return None
    return read_profile(out)


# py-spy counts some blocked threads as busy (its idle test is a heuristic): these leaf
# functions only block (sleep, select, lock and queue waits), so they are left out.
WAITS = (
    "Pacer.wait ",
    "_worker (",
    "Condition.wait ",
    "Event.wait ",
    "EpollSelector.select ",
    "Thread.join ",
    "Thread._wait_for_tstate_lock ",
)


def read_profile(path: Path, top: int = 20) -> Profile:
    """Self samples by function (the innermost frame of each stack) and by file; no waits."""
    waits = 0
    selfs: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        leaf = stack.rsplit(";", 1)[-1]
        if leaf.startswith(WAITS):
            waits += n
            continue
        total += n
        selfs[leaf] += n
        files[short_file(leaf)] += n
    return Profile(total, waits, selfs.most_common(top), files.most_common(top))


def short_file(frame: str) -> str:
    """``func (path/to/file.py:12)`` → the file from the package root on."""
    _, _, where = frame.rpartition("(")
    file = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/streamer/", "/site-packages/", "/lib/python"):
        if marker in file:
            return marker.strip("/") + "/" + file.split(marker, 1)[1]
    return file or frame


def print_profile(profile: Profile) -> None:
    print(
        f"py-spy, 200 Hz: {profile.samples} samples busy, {profile.wait_samples} more in "
        "blocking waits (left out)"
    )
    print(f"{'self %':>7} {'samples':>7}  function")
    for frame, n in profile.top:
        print(f"{100 * n / profile.samples:7.1f} {n:7d}  {frame}")
    print(f"{'self %':>7} {'samples':>7}  by file")
    for file, n in profile.by_file[:12]:
        print(f"{100 * n / profile.samples:7.1f} {n:7d}  {file}")


# -- main ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per run (60)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument("--profile", action="store_true", help="also profile streamer (py-spy)")
    parser.add_argument("--child", nargs=2, metavar=("FLV", "URL"), help=argparse.SUPPRESS)
    parser.add_argument("--audio", action=argparse.BooleanOptionalAction, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(Path(args.child[0]), args.child[1], bool(args.audio), args.report)
    duration: float = args.duration
    if duration <= 0:
        parser.error("--duration must be positive")

    cpu.compile_as_installed()  # as pip does on a device (bench/cpu.py says why)
    workdir = Path(tempfile.mkdtemp(prefix="streamer-pass-"))
    runs: list[Run] = []
    profile: Profile | None = None
    try:
        print(f"[fixture] encoding {duration:g} s …", file=sys.stderr, flush=True)
        fixture = prepare_fixture(workdir, duration)
        with LocalRtmpServer() as server:
            plan = [("ffmpeg", "streamer", True), ("ffmpeg-an", "streamer-an", False)]
            for ffmpeg_name, streamer_name, audio in plan:
                url = server.url(f"bench-{ffmpeg_name}")
                cmd = ffmpeg_copy_command(fixture.path, url, audio)
                result = bench_one(ffmpeg_name, cmd, audio, server, fixture, workdir)
                runs.append(Run(ffmpeg_name, audio, result))
                report = workdir / f"{streamer_name}.json"
                url = server.url(f"bench-{streamer_name}")
                cmd = streamer_command(fixture.path, url, audio, report)
                result = bench_one(streamer_name, cmd, audio, server, fixture, workdir)
                feed = json.loads(report.read_text())["feed_cpu_s"] if report.exists() else None
                runs.append(Run(streamer_name, audio, result, feed))
            if args.profile:
                profile = profile_streamer(fixture, server, workdir, workdir / "streamer.raw")
    except StreamerError as exc:
        print(f"bench: error: {exc.message}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ok = all(r.ok for r in runs)
    with_audio = ratio(runs[1], runs[0])
    without_audio = ratio(runs[3], runs[2])
    print(
        f"{fixture.seconds:g} s of {SIZE[0]}x{SIZE[1]}@{FPS} H.264 {fixture.video_mbps:.2f} "
        f"Mbit/s + AAC {fixture.audio_mbps:.3f} Mbit/s, passed through (no video encode); "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    print_table(runs, fixture)
    print_ratio("streamer/ffmpeg (streamer also encodes AAC)", with_audio)
    print_ratio("streamer-an/ffmpeg-an (like for like)", without_audio)
    if profile is not None:
        print_profile(profile)
    if args.json:
        record = {
            "duration_s": fixture.seconds,
            "size": f"{SIZE[0]}x{SIZE[1]}",
            "fps": FPS,
            "video_mbps": fixture.video_mbps,
            "audio_mbps": fixture.audio_mbps,
            "runs": [
                {
                    **asdict(r.result),
                    "cpu_s": r.result.cpu_s,
                    "ok": r.ok,
                    "audio": r.audio,
                    "feed_cpu_s": r.feed_cpu_s,
                    "cpu_per_mbps": cpu_per_mbps(r, fixture),
                }
                for r in runs
            ],
            "ratio": with_audio,
            "ratio_without_audio": without_audio,
            "target_ratio": TARGET_RATIO,
            "target_met": without_audio is not None and without_audio <= TARGET_RATIO,
            "profile": asdict(profile) if profile is not None else None,
        }
        print(json.dumps(record))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
