"""How live the picture stays over measured LTE uplinks: our publisher against the ffmpeg CLI.

A camera on a phone network sends through an uplink whose capacity changes
every second and drops to nothing in a tunnel or between cells. A publisher
that queues everything turns each dip into a viewer who falls behind live and
stays there; ours should lower the bitrate and drop frames instead, and catch
up. The squeeze bench (bench/squeeze.py) shows this for one synthetic dip;
this one replays real ones: the three LTE uplink traces of tests/traces/
(ATT-LTE-driving, Verizon-LTE-short, TMobile-LTE-short), in windows spread
evenly across each trace rather than one window picked by hand.

For each window, ``streamer run`` and ffmpeg (testsrc2 + sine, the same x264
and AAC 128k settings, bench/cpu.py's commands) each publish ``--window-s``
seconds of ``--size``@30 to one local nginx-rtmp through a fresh proxy that
replays the trace from the window's start (tests/netproxy.py: up to 1500
bytes per delivery opportunity, as Mahimahi; ``--delay-ms`` one-way delay
each way).
The video bitrate is what the trace carries on average: 1000k on
ATT-LTE-driving, 2500k on the other two. A viewer on nginx, started before
the publisher, times every video packet: its delay (arrival − pts, above the
minimum over the run, as bench/squeeze.py measures it), how many were at
most 1 s behind live, and the longest gap between two packets (a frozen
picture). The publisher ends after its media, or is stopped (SIGINT
``--window-s`` + 25 s after its start, then SIGKILL), as in squeeze.py.

Printed per window: the trace's mean capacity over the window and its seconds
under 100 kbit/s, then per publisher delay p50/p95/max (and when the worst
packet arrived, in seconds from the first byte), frames within 1 s of
live out of those received, longest freeze, decode errors, the mean bitrate
the proxy carried (from the first byte to the publisher's end) beside the
trace's capacity over that same time, and for streamer its lowest bitrate
target and the video frames it dropped. Then the worst of each across the
windows.

Targets for streamer, in every window (reported, not asserted): p95 ≤ 1.0 s,
max ≤ 2.5 s, no decode errors, longest freeze ≤ 2.5 s, and at least as many
frames within 1 s of live as ffmpeg in the same window. Where the trace
carries nothing, or less than 100 kbit/s, for longer (ATT has stretches of
4, 6 and 10 s, and one of 78 s), a frame on its way when it went dark waits
it out whatever the publisher does: there max and freeze may reach the
longest such outage (over the window and the 10 s after it, while the last
frames drain) plus 1 s. The exit status is
non-zero only if a run could not be measured at all.

The default set (14 windows, two publishers each) takes about 20 minutes;
``--only ATT-LTE-driving:240 --window-s 20`` takes about one.

Usage: ``python bench/cellular.py [--trace NAME]... [--windows N] [--window-s 30]
[--only NAME:START]... [--streamer-only] [--delay-ms 40] [--size 1280x720] [--json]``
from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cpu, squeeze
from bench.squeeze import DELAY_COLUMNS, delay_cells, fmt, print_table
from streamer.exc import StreamerError
from tests.netproxy import ThrottleProxy, Trace


@dataclass(frozen=True)
class TracePlan:
    windows: int  # windows spread evenly across the trace by default
    video_kbps: int  # about what the trace carries on average


PLANS = {
    "ATT-LTE-driving": TracePlan(8, 1000),
    "Verizon-LTE-short": TracePlan(3, 2500),
    "TMobile-LTE-short": TracePlan(3, 2500),
}
PUBLISHERS = ("ffmpeg", "streamer")
WINDOW_S = 30.0
DELAY_MS = 40.0
OUTAGE_KBPS = 100  # a second of the trace below this counts as an outage
LIVE_S = 1.0  # a frame at most this far behind live is "live"
TARGET_P95_S = 1.0
TARGET_MAX_S = 2.5
TARGET_FREEZE_S = 2.5
# A frame on its way when the link goes dark waits as long as the dark lasts, whatever the
# publisher does: where the window has a longer dark, max and freeze may be this much more.
DARK_MARGIN_S = 1.0
DRAIN_S = 10.0  # how far past the window the trace may still carry a run's last frames
TARGETS = (
    f"p95 ≤ {TARGET_P95_S:g} s",
    f"max ≤ {TARGET_MAX_S:g} s (or dark + {DARK_MARGIN_S:g} s)",
    "no decode errors",
    f"longest freeze ≤ {TARGET_FREEZE_S:g} s (or dark + {DARK_MARGIN_S:g} s)",
    f"frames within {LIVE_S:g} s ≥ ffmpeg's",
)


@dataclass
class CellRun(squeeze.RunResult):
    within_live: int = 0  # video packets at most LIVE_S behind live
    longest_freeze_s: float | None = None  # largest gap between two video packets' arrivals
    max_at_s: float | None = None  # first byte → arrival of the packet with the largest delay
    sent_kbps: float | None = None  # the proxy's mean, first byte → publisher's end
    link_kbps: float | None = None  # the trace's capacity over that same time


@dataclass
class Window:
    trace: str
    start_s: float
    seconds: float
    video_kbps: int
    link_kbps: float  # the trace's mean capacity over the window
    outage_s: int  # whole seconds of the window under OUTAGE_KBPS
    dark_s: float  # the longest outage (Trace.longest_outage), window and drain
    runs: list[CellRun] = field(default_factory=list)
    targets: dict[str, bool] = field(default_factory=dict)  # streamer's, by target

    @property
    def label(self) -> str:
        return f"{self.trace}:{self.start_s:g}"

    def run(self, name: str) -> CellRun | None:
        return next((r for r in self.runs if r.name == name), None)


@dataclass
class Summary:
    name: str
    windows: int
    unmeasured: int
    worst_p95_s: float | None
    worst_max_s: float | None
    within_live: int
    received: int
    longest_freeze_s: float | None
    decode_errors: int


def window_starts(trace_s: float, window_s: float, count: int) -> list[float]:
    """``count`` whole-second starts from the trace's start to its end, the windows inside it."""
    span = trace_s - window_s
    if count == 1:
        return [float(int(span / 2))]
    return [float(int(i * span / (count - 1))) for i in range(count)]


def parse_only(text: str) -> tuple[str, float]:
    name, sep, start = text.rpartition(":")
    if not sep or name not in PLANS:
        raise argparse.ArgumentTypeError(f"want NAME:START with NAME one of {', '.join(PLANS)}")
    try:
        return name, float(start)
    except ValueError:
        raise argparse.ArgumentTypeError(f"START must be seconds, got {start!r}") from None


def max_or_none(values: Iterable[float | None]) -> float | None:
    return max((v for v in values if v is not None), default=None)


def run_publisher(
    name: str,
    window: Window,
    trace: Trace,
    st: squeeze.Stage,
    size: tuple[int, int],
    delay_s: float,
) -> CellRun:
    proxy = ThrottleProxy(st.server.port, trace=trace, start_s=window.start_s, delay_s=delay_s)
    key = f"cell-{trace.name}-{window.start_s:g}-{name}".replace(".", "_")
    url = f"rtmp://127.0.0.1:{proxy.port}/live/{key}"
    streamer = name == "streamer"
    command = squeeze.publisher_command(streamer, url, size, window.seconds, window.video_kbps)
    if streamer:
        # As a device runs it: a first connection that fails (the link dark at the start) is
        # retried, not the end of the run. ffmpeg's handshake just waits for the link.
        command.append("--service")
    run = CellRun(name, command)
    print(f"[{name}] {window.label} for {window.seconds:g} s …", file=sys.stderr, flush=True)
    published = squeeze.publish_watched(
        run,
        proxy,
        st.server.url(key),
        st.workdir / f"{key}.log",
        st.viewers,
        streamer=streamer,
        media_s=window.seconds,
        phases=(),
    )
    run.within_live = int(np.count_nonzero(published.delays <= LIVE_S))
    if len(published.arrivals) >= 2:
        run.longest_freeze_s = float(np.diff(published.arrivals).max())
    if published.first_byte is not None and len(published.delays):
        max_at = published.arrivals[np.argmax(published.delays)]
        run.max_at_s = float(max_at - published.first_byte)
    if published.first_byte is not None and published.ended > published.first_byte:
        sent_s = published.ended - published.first_byte
        run.sent_kbps = published.forwarded * 8 / sent_s / 1000
        run.link_kbps = trace.kbps(window.start_s, sent_s)
    return run


def judge(window: Window) -> dict[str, bool]:
    """Which of the TARGETS streamer met in ``window`` (the one against ffmpeg only if
    ffmpeg ran in it)."""
    s, f = window.run("streamer"), window.run("ffmpeg")
    if s is None:
        return {}
    met = [
        s.p95_s is not None and s.p95_s <= TARGET_P95_S,
        s.max_s is not None and s.max_s <= max(TARGET_MAX_S, window.dark_s + DARK_MARGIN_S),
        s.measured and s.decode_errors == 0,
        s.longest_freeze_s is not None
        and s.longest_freeze_s <= max(TARGET_FREEZE_S, window.dark_s + DARK_MARGIN_S),
    ]
    if f is not None:
        met.append(s.within_live >= f.within_live)
    return dict(zip(TARGETS, met, strict=False))


def summarise(windows: Sequence[Window], name: str) -> Summary | None:
    runs = [r for w in windows if (r := w.run(name)) is not None]
    if not runs:
        return None
    return Summary(
        name=name,
        windows=len(runs),
        unmeasured=sum(not r.measured for r in runs),
        worst_p95_s=max_or_none(r.p95_s for r in runs),
        worst_max_s=max_or_none(r.max_s for r in runs),
        within_live=sum(r.within_live for r in runs),
        received=sum(r.video_packets for r in runs),
        longest_freeze_s=max_or_none(r.longest_freeze_s for r in runs),
        decode_errors=sum(r.decode_errors for r in runs),
    )


def print_window(window: Window) -> None:
    print(
        f"{window.trace} from {window.start_s:g} s for {window.seconds:g} s: link "
        f"{window.link_kbps:.0f} kbit/s mean, {window.outage_s} s under {OUTAGE_KBPS} kbit/s, "
        f"dark for {window.dark_s:.1f} s at most; video {window.video_kbps}k"
    )
    columns = [("run", 9), *DELAY_COLUMNS, ("max at s", 8), (f"≤{LIVE_S:g} s/recv", 11)]
    columns += [("freeze s", 8), ("errors", 6)]
    columns += [("sent kbps", 9), ("link kbps", 9), ("lowest", 6), ("dropped", 7)]
    print_table(
        columns,
        (
            [
                r.name,
                *delay_cells(r),
                fmt(r.max_at_s, "8.1f"),
                f"{r.within_live}/{r.video_packets}",
                fmt(r.longest_freeze_s, "8.2f"),
                str(r.decode_errors),
                fmt(r.sent_kbps, "9.0f"),
                fmt(r.link_kbps, "9.0f"),
                "n/a" if r.min_target_kbps is None else str(r.min_target_kbps),
                "n/a" if r.dropped_video is None else str(r.dropped_video),
            ]
            for r in window.runs
        ),
    )
    print(flush=True)


def print_summary(windows: Sequence[Window], summaries: Sequence[Summary]) -> None:
    print(f"over {len(windows)} windows:")
    columns = [("run", 9), ("worst p95 s", 11), ("worst max s", 11)]
    columns += [(f"≤{LIVE_S:g} s/recv", 13), ("longest freeze s", 16), ("errors", 6)]
    columns += [("unmeasured", 10)]
    print_table(
        columns,
        (
            [
                s.name,
                fmt(s.worst_p95_s, "11.2f"),
                fmt(s.worst_max_s, "11.2f"),
                f"{s.within_live}/{s.received}",
                fmt(s.longest_freeze_s, "16.2f"),
                str(s.decode_errors),
                str(s.unmeasured),
            ]
            for s in summaries
        ),
    )
    if not any(w.targets for w in windows):
        return
    print()
    print("streamer targets, in every window:")
    for target in TARGETS:
        judged = [w for w in windows if target in w.targets]
        missed = [w.label for w in judged if not w.targets[target]]
        verdict = f"NOT met in {', '.join(missed)}" if missed else "met"
        print(f"  {target}: {verdict if judged else 'n/a (no ffmpeg runs)'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--trace",
        action="append",
        choices=list(PLANS),
        help="a trace to replay (repeatable; default all three)",
    )
    parser.add_argument(
        "--windows", type=int, help="windows per trace (default 8 on ATT-LTE-driving, 3 others)"
    )
    parser.add_argument(
        "--window-s", type=float, default=WINDOW_S, help=f"seconds per window ({WINDOW_S:g})"
    )
    parser.add_argument(
        "--only",
        action="append",
        type=parse_only,
        metavar="NAME:START",
        help="just this window, START seconds into trace NAME (repeatable)",
    )
    parser.add_argument("--streamer-only", action="store_true", help="skip the ffmpeg runs")
    parser.add_argument(
        "--delay-ms", type=float, default=DELAY_MS, help=f"one-way delay each way ({DELAY_MS:g})"
    )
    parser.add_argument("--size", type=cpu.parse_size, default=(1280, 720), help="WxH (1280x720)")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args(argv)
    window_s: float = args.window_s
    size: tuple[int, int] = args.size
    if window_s <= 0:
        parser.error("--window-s must be positive")
    if args.windows is not None and args.windows < 1:
        parser.error("--windows must be at least 1")
    if args.delay_ms < 0:
        parser.error("--delay-ms must not be negative")

    names = {name for name, _ in args.only} if args.only else set(args.trace or PLANS)
    traces = {name: Trace.load(name) for name in PLANS if name in names}
    plan: list[tuple[str, float]] = []
    if args.only:
        plan = list(args.only)
    else:
        for name, trace in traces.items():
            count = args.windows or PLANS[name].windows
            plan += [(name, start) for start in window_starts(trace.seconds, window_s, count)]
    for name, start in plan:
        if start < 0 or start + window_s > traces[name].seconds:
            parser.error(
                f"a {window_s:g} s window from {start:g} s does not fit in {name} "
                f"({traces[name].seconds:g} s)"
            )
    publishers = ("streamer",) if args.streamer_only else PUBLISHERS

    print(
        f"{size[0]}x{size[1]}@{cpu.FPS} x264 veryfast + AAC {cpu.AUDIO_KBPS}k, "
        f"{len(plan)} windows of {window_s:g} s, one-way delay {args.delay_ms:g} ms each way, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print()
    windows: list[Window] = []
    try:
        with squeeze.stage("streamer-cellular-", record=False) as st:
            for name, start in plan:
                trace = traces[name]
                window = Window(
                    trace=name,
                    start_s=start,
                    seconds=window_s,
                    video_kbps=PLANS[name].video_kbps,
                    link_kbps=trace.kbps(start, window_s),
                    outage_s=sum(
                        trace.kbps(start + i, 1.0) < OUTAGE_KBPS for i in range(int(window_s))
                    ),
                    dark_s=trace.longest_outage(start, window_s + DRAIN_S, OUTAGE_KBPS),
                )
                for publisher in publishers:
                    run = run_publisher(publisher, window, trace, st, size, args.delay_ms / 1000)
                    window.runs.append(run)
                    time.sleep(1.0)
                window.targets = judge(window)
                windows.append(window)
                print_window(window)
    except StreamerError as exc:
        print(f"bench: error: {exc.message}", file=sys.stderr)
        return 2

    summaries = [s for name in publishers if (s := summarise(windows, name)) is not None]
    print_summary(windows, summaries)
    for w in windows:
        for r in w.runs:
            for problem in r.problems:
                print(f"[{w.label} {r.name}] {problem}")
    if args.json:
        record = {
            "size": f"{size[0]}x{size[1]}",
            "fps": cpu.FPS,
            "audio_kbps": cpu.AUDIO_KBPS,
            "window_s": window_s,
            "delay_ms": args.delay_ms,
            "windows": [
                {
                    **asdict(w),
                    "runs": [{**asdict(r), "measured": r.measured} for r in w.runs],
                }
                for w in windows
            ],
            "summary": [asdict(s) for s in summaries],
            "targets": {
                target: [w.label for w in windows if not w.targets.get(target, True)]
                for target in TARGETS
            },
            "targets_met": all(all(w.targets.values()) for w in windows),
        }
        print(json.dumps(record))
    return 0 if all(r.measured for w in windows for r in w.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
