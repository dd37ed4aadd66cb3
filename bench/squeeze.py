"""Viewer delay through a squeezed uplink: our publisher against the ffmpeg CLI.

A publisher that queues everything turns a slow link into a viewer who falls
further and further behind live; ours drops frames and lowers the bitrate
instead. Both push 1280x720@30 at 2500k + AAC 128k to one local nginx-rtmp
through a throttling proxy (full rate 5 s, 1 Mbit/s 15 s, full rate 10 s)
while a viewer measures the queueing delay of every video packet it gets
(arrival − pts, above its minimum), decode errors and audio continuity.

Targets (reported, not asserted): streamer p95 ≤ 1.0 s and streamer p95 at
most 0.3x ffmpeg's. The exit status is non-zero only if a run could not be
measured at all.

Usage: ``python bench/squeeze.py [--json]`` from the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cpu
from streamer.exc import StreamerError
from streamer.localserver import LocalRtmpServer
from tests.media_check import MediaReport, watch_live
from tests.netproxy import ThrottleProxy

SIZE = "1280x720"
SIZE_WH = (1280, 720)
FPS = 30
VIDEO_KBPS = 2500
AUDIO_KBPS = 128
MEDIA_S = 30.0
AUDIO_FRAMES_PER_S = 48000 / 1024
# The throttle schedule, from the publisher's first byte through the proxy.
SQUEEZE_AT = 5.0
RESTORE_AT = 20.0
SQUEEZE_RATE = 125_000  # bytes/s: 1 Mbit/s
TARGET_P95_S = 1.0
TARGET_RATIO = 0.3
# Bounds, so that nothing runs away.
CONNECT_TIMEOUT = 20.0  # publisher start → first byte through the proxy
SIGINT_AFTER = 25.0  # publisher start → SIGINT, beyond the media's length (ffmpeg queues)
SIGKILL_AFTER = 32.0  # publisher start → SIGKILL, beyond the media's length
VIEWER_IDLE = 2.0  # after the publisher ends: no video packet for this long = done
VIEWER_GRACE = 10.0  # after the publisher ends: stop watching regardless
PHASES = (
    ("before", 0.0, SQUEEZE_AT),
    ("squeeze", SQUEEZE_AT, RESTORE_AT),
    ("recovery", RESTORE_AT, MEDIA_S),
    ("tail", MEDIA_S, float("inf")),
)


@dataclass
class Phase:
    name: str
    packets: int
    p50_s: float | None
    p95_s: float | None
    max_s: float | None


@dataclass
class RunResult:
    name: str
    command: list[str]
    returncode: int | None = None
    wall_s: float = 0.0
    video_packets: int = 0
    decode_errors: int = 0
    watched_s: float = 0.0
    audio_frames: int = 0
    audio_continuity_pct: float | None = None
    p50_s: float | None = None
    p95_s: float | None = None
    max_s: float | None = None
    phases: list[Phase] = field(default_factory=list)
    min_target_kbps: int | None = None  # streamer only: lowest adaptive bitrate target
    dropped_video: int | None = None  # streamer only: frames its queue dropped
    problems: list[str] = field(default_factory=list)

    @property
    def measured(self) -> bool:
        return self.p95_s is not None


@dataclass
class Publication:
    """What one publish through the proxy left, besides its ``RunResult``."""

    arrivals: np.ndarray  # monotonic arrival of each video packet at the viewer
    delays: np.ndarray  # each one's delay above the run's minimum, s
    first_byte: float | None  # monotonic: the publisher's first byte through the proxy
    ended: float  # monotonic: the publisher ended (or was stopped)
    forwarded: int  # bytes the proxy had delivered upstream by then


def publisher_command(
    streamer: bool,
    url: str,
    size: tuple[int, int] = SIZE_WH,
    media_s: float = MEDIA_S,
    video_kbps: int = VIDEO_KBPS,
) -> list[str]:
    """``streamer run`` (logging JSON), or the same encode as bench/cpu.py's ffmpeg run:
    testsrc2 + sine, x264 as streamer's."""
    if streamer:
        command = cpu.streamer_command(url, size, media_s, video_kbps=video_kbps)
        return [*command, "--log-format", "json"]
    return cpu.ffmpeg_command(url, media_s, cpu.testsrc2_input(size), video_kbps=video_kbps)


@dataclass
class Stage:
    """A local nginx-rtmp, a work directory, and the viewers to join once the server stops."""

    server: LocalRtmpServer
    workdir: Path
    viewers: list[threading.Thread] = field(default_factory=list)


@contextlib.contextmanager
def stage(prefix: str, *, record: bool = True) -> Iterator[Stage]:
    """A ``Stage`` while in the block: the work directory (named ``prefix``…) is removed
    and the viewers are joined after the server has stopped (their reads end then)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    viewers: list[threading.Thread] = []
    try:
        with LocalRtmpServer(record=record) as server:
            yield Stage(server, workdir, viewers)
    finally:
        for viewer in viewers:
            viewer.join(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)


def sleep_until(deadline: float, proc: subprocess.Popen[bytes]) -> bool:
    """Sleep until ``deadline``; False at once if ``proc`` ends first."""
    while (left := deadline - time.monotonic()) > 0:
        if proc.poll() is not None:
            return False
        time.sleep(min(left, 0.02))
    return True


def stop_publisher(proc: subprocess.Popen[bytes], started: float, media_s: float = MEDIA_S) -> None:
    """Wait for the publisher of ``media_s`` seconds to end by itself, up to the bounds;
    SIGINT, then SIGKILL."""
    for after, sig in ((SIGINT_AFTER, signal.SIGINT), (SIGKILL_AFTER, signal.SIGKILL)):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, started + media_s + after - time.monotonic()))
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    proc.wait(timeout=5)


def wait_viewer_done(viewer: threading.Thread, report: MediaReport) -> None:
    """The viewer has everything once it ends, or once no video has come for a while.

    nginx-rtmp keeps players of an unpublished stream connected, so the
    viewer thread may stay blocked in its read until the server stops.
    """
    end = time.monotonic() + VIEWER_GRACE
    count, since = len(report.arrivals), time.monotonic()
    while viewer.is_alive() and time.monotonic() < end:
        viewer.join(timeout=0.1)
        if len(report.arrivals) != count:
            count, since = len(report.arrivals), time.monotonic()
        elif time.monotonic() - since >= VIEWER_IDLE:
            return


def percentiles(values: np.ndarray) -> tuple[float | None, float | None, float | None]:
    if len(values) == 0:
        return None, None, None
    return (
        float(np.percentile(values, 50)),
        float(np.percentile(values, 95)),
        float(values.max()),
    )


def measure(
    result: RunResult,
    report: MediaReport,
    t0: float | None,
    phases: Sequence[tuple[str, float, float]] = PHASES,
) -> tuple[np.ndarray, np.ndarray]:
    """Delay statistics from a snapshot of what the viewer received; by phase of ``phases``
    (by arrival from ``t0``) if ``t0`` is known. Returns the snapshot's arrival times and
    delays (empty if fewer than two video packets came)."""
    errors = list(report.decode_errors)
    arrivals_list, pts_list = list(report.arrivals), list(report.video_pts_ms)
    audio_frames = report.audio_frames_decoded
    n = min(len(arrivals_list), len(pts_list))
    result.video_packets = n
    result.decode_errors = len(errors)
    result.audio_frames = audio_frames
    if errors:
        result.problems.append(f"decode errors, first: {errors[0]}")
    if n < 2:
        result.problems.append(f"the viewer received {n} video packets")
        return np.zeros(0), np.zeros(0)
    arrivals = np.array(arrivals_list[:n])
    lag = arrivals - np.array(pts_list[:n]) / 1000
    delay = lag - lag.min()
    result.p50_s, result.p95_s, result.max_s = percentiles(delay)
    result.watched_s = float(arrivals[-1] - arrivals[0])
    if result.watched_s > 0:
        expected = AUDIO_FRAMES_PER_S * result.watched_s
        result.audio_continuity_pct = 100 * audio_frames / expected
    if t0 is not None:
        since = arrivals - t0
        for name, start, stop in phases:
            part = delay[(since >= start) & (since < stop)]
            result.phases.append(Phase(name, len(part), *percentiles(part)))
    return arrivals, delay


def read_streamer_log(result: RunResult, log_path: Path) -> None:
    targets: list[int] = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("event") == "bitrate" and isinstance(event.get("target_kbps"), int):
            targets.append(event["target_kbps"])
        if event.get("event") == "stats" and isinstance(event.get("dropped_video"), int):
            result.dropped_video = event["dropped_video"]
    result.min_target_kbps = min(targets, default=None)


def publish_watched(
    result: RunResult,
    proxy: ThrottleProxy,
    watch_url: str,
    log_path: Path,
    viewers: list[threading.Thread],
    *,
    streamer: bool,
    media_s: float = MEDIA_S,
    phases: Sequence[tuple[str, float, float]] = PHASES,
    shape: Callable[[float, subprocess.Popen[bytes]], None] | None = None,
) -> Publication:
    """Run ``result.command`` (``media_s`` seconds of media) through ``proxy`` while a viewer
    of ``watch_url``, started first, measures it into ``result``; ``shape(first_byte, proc)``
    runs from the first byte through the proxy (e.g. changing its rate). The proxy is
    started here and stopped at the end; the viewer is added to ``viewers``."""
    name = result.name
    report = MediaReport()
    proc: subprocess.Popen[bytes] | None = None
    t0: float | None = None
    proxy.start()
    try:
        viewer = watch_live(watch_url, media_s + 60, report, nobuffer=True)
        viewers.append(viewer)  # it may stay blocked until the server stops
        time.sleep(0.5)
        with log_path.open("wb") as log:
            started = time.monotonic()
            proc = subprocess.Popen(
                result.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
            while proxy.forwarded == 0 and proc.poll() is None:
                if time.monotonic() - started > CONNECT_TIMEOUT:
                    result.problems.append(f"nothing sent within {CONNECT_TIMEOUT:g} s")
                    break
                time.sleep(0.005)
            if proxy.forwarded > 0:
                t0 = time.monotonic()
                if shape is not None:
                    shape(t0, proc)
            stop_publisher(proc, started, media_s)
            ended, forwarded = time.monotonic(), proxy.forwarded
            result.wall_s = ended - started
            result.returncode = proc.returncode
        wait_viewer_done(viewer, report)
        arrivals, delays = measure(result, report, t0, phases)
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        proxy.stop()
    if streamer:
        read_streamer_log(result, log_path)
    if result.returncode not in (0, None):
        result.problems.append(f"exit status {result.returncode}")
    if result.problems:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-10:]
        for line in tail:
            print(f"[{name}]   {line}", file=sys.stderr)
    return Publication(arrivals, delays, t0, ended, forwarded)


def run_one(
    name: str,
    server: LocalRtmpServer,
    key: str,
    workdir: Path,
    streamer: bool,
    viewers: list[threading.Thread],
) -> RunResult:
    proxy = ThrottleProxy(server.port)
    url = f"rtmp://127.0.0.1:{proxy.port}/live/{key}"
    result = RunResult(name, publisher_command(streamer, url))

    def squeeze(t0: float, proc: subprocess.Popen[bytes]) -> None:
        if sleep_until(t0 + SQUEEZE_AT, proc):
            proxy.set_rate(SQUEEZE_RATE)
            sleep_until(t0 + RESTORE_AT, proc)
        proxy.set_rate(None)

    print(f"[{name}] streaming through the squeeze …", file=sys.stderr, flush=True)
    publish_watched(
        result,
        proxy,
        server.url(key),
        workdir / f"{name}.log",
        viewers,
        streamer=streamer,
        shape=squeeze,
    )
    return result


def fmt(value: float | None, spec: str = "6.2f") -> str:
    """``value`` formatted, or n/a padded to the same width."""
    if value is not None:
        return format(value, spec)
    width = spec.split(".")[0]
    return "n/a".rjust(int(width) if width else 0)


def print_table(columns: Sequence[tuple[str, int]], rows: Iterable[Sequence[str]]) -> None:
    """``rows`` under the ``columns``' titles and a rule, one space apart: the first column
    left-aligned, the others right-aligned, each at least its width."""

    def line(cells: Sequence[str]) -> str:
        return " ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, (_, width)) in enumerate(zip(cells, columns, strict=False))
        )

    header = line([title for title, _ in columns])
    print(header)
    print("-" * len(header))
    for row in rows:
        print(line(row))


DELAY_COLUMNS = (("p50 s", 6), ("p95 s", 6), ("max s", 6))


def delay_cells(r: RunResult) -> list[str]:
    """A run's cells under DELAY_COLUMNS."""
    return [fmt(r.p50_s), fmt(r.p95_s), fmt(r.max_s)]


def print_tables(results: list[RunResult]) -> None:
    columns = [("run", 9), *DELAY_COLUMNS, ("errors", 6)]
    columns += [("video", 6), ("watched s", 9), ("audio %", 7), ("exit", 4)]
    print_table(
        columns,
        (
            [
                r.name,
                *delay_cells(r),
                f"{r.decode_errors:6d}",
                f"{r.video_packets:6d}",
                f"{r.watched_s:9.1f}",
                fmt(r.audio_continuity_pct, "7.1f"),
                "n/a" if r.returncode is None else str(r.returncode),
            ]
            for r in results
        ),
    )
    print()
    print("delay by phase (by arrival, from the publisher's first byte): p95 / max s, packets")
    titles = [
        f"{name} {start:g}-{stop:g} s" if stop != float("inf") else f"{name} {start:g} s+"
        for name, start, stop in PHASES
    ]
    print_table(
        [("run", 9), *((t, 22) for t in titles)],
        (
            [
                r.name,
                *(
                    f"{fmt(p.p95_s, '5.2f')} / {fmt(p.max_s, '5.2f')} {p.packets:5d}"
                    for p in r.phases
                ),
            ]
            for r in results
        ),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)

    results: list[RunResult] = []
    try:
        with stage("streamer-squeeze-") as st:
            for name, streamer in (("ffmpeg", False), ("streamer", True)):
                key = f"squeeze-{name}"
                results.append(run_one(name, st.server, key, st.workdir, streamer, st.viewers))
                time.sleep(1.0)
    except StreamerError as exc:
        print(f"bench: error: {exc.message}", file=sys.stderr)
        return 2

    ffmpeg_run, streamer_run = results
    ratio = (
        streamer_run.p95_s / ffmpeg_run.p95_s
        if streamer_run.p95_s is not None and ffmpeg_run.p95_s
        else None
    )
    print(
        f"{SIZE}@{FPS} x264 {VIDEO_KBPS}k + AAC {AUDIO_KBPS}k, link full {SQUEEZE_AT:g} s → "
        f"{SQUEEZE_RATE * 8 / 1e6:g} Mbit/s {RESTORE_AT - SQUEEZE_AT:g} s → full, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}"
    )
    print_tables(results)
    print()
    if streamer_run.min_target_kbps is not None or streamer_run.dropped_video is not None:
        print(
            f"streamer: lowest bitrate target {streamer_run.min_target_kbps} kbps, "
            f"{streamer_run.dropped_video} video frames dropped (last stats line)"
        )
    p95_met = streamer_run.p95_s is not None and streamer_run.p95_s <= TARGET_P95_S
    ratio_met = ratio is not None and ratio <= TARGET_RATIO
    print(
        f"streamer p95 {fmt(streamer_run.p95_s, '.2f')} s "
        f"(target ≤ {TARGET_P95_S:g} s: {'met' if p95_met else 'NOT met'})"
    )
    print(
        f"ratio streamer/ffmpeg p95: {fmt(ratio, '.3f')}x "
        f"(target ≤ {TARGET_RATIO:g}x: {'met' if ratio_met else 'NOT met'})"
    )
    for r in results:
        for problem in r.problems:
            print(f"[{r.name}] {problem}")
    if args.json:
        record = {
            "size": SIZE,
            "fps": FPS,
            "schedule": {
                "squeeze_at_s": SQUEEZE_AT,
                "restore_at_s": RESTORE_AT,
                "squeeze_bytes_per_s": SQUEEZE_RATE,
            },
            "runs": [{**asdict(r), "measured": r.measured} for r in results],
            "ratio_p95": ratio,
            "target_p95_s": TARGET_P95_S,
            "target_ratio": TARGET_RATIO,
            "p95_met": p95_met,
            "ratio_met": ratio_met,
        }
        print(json.dumps(record))
    return 0 if all(r.measured for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
