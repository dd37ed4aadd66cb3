"""Soak: does a stream that runs for hours keep its memory, files and threads?

`streamer run` pushes 1280x720@30 sim video + AAC to a local nginx-rtmp for
``--minutes``; every ``--every`` seconds this samples the process's resident
memory, open file descriptors and threads (from /proc) and its counters (from
its own /status page). After the warm-up it fits a line through each series
and prints the growth per hour.

Targets (reported, not asserted): RSS growth < 5 MB/h, no growth in fds or
threads, nothing dropped on a clean link, no reconnect. The exit status is
non-zero only when the run could not be measured.

Usage: ``python bench/soak.py --minutes 60`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamer.localserver import LocalRtmpServer, free_port

TARGET_RSS_MB_PER_H = 5.0


@dataclass
class Sample:
    t: float  # seconds since start
    rss_mb: float
    fds: int
    threads: int
    frames_sent: int
    dropped: int
    reconnects: int
    state: str


def proc_sample(pid: int) -> tuple[float, int, int]:
    """RSS in MB, open fds and threads of a running process."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kb = int(fields["VmRSS"].split()[0])
    threads = int(fields["Threads"])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kb / 1024, fds, threads


def status(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as reply:
        result: dict[str, object] = json.load(reply)
        return result


def slope_per_hour(t: list[float], values: list[float]) -> float:
    if len(t) < 2:
        return 0.0
    return float(np.polyfit(np.array(t), np.array(values), 1)[0] * 3600)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes left out of the fit")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--size", default="1280x720")
    args = parser.parse_args(argv)

    server = LocalRtmpServer()
    server.start()
    port = free_port()
    command = [
        sys.executable,
        *("-m", "streamer", "run", "--url", server.url("soak"), "--size", args.size),
        *("--status-port", str(port), "--log-format", "json", "--log-level", "warning"),
    ]
    log_path = server.dir / "streamer.log"
    samples: list[Sample] = []
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(args.every)
                if proc.poll() is not None:
                    print(f"streamer exited with {proc.returncode}; see {log_path}")
                    return 1
                # /proc first: the status request's own connection is not the process's
                rss, fds, threads = proc_sample(proc.pid)
                try:
                    snap = status(port)
                except OSError:
                    continue  # the page is not up yet
                sample = Sample(
                    t=time.monotonic() - started,
                    rss_mb=rss,
                    fds=fds,
                    threads=threads,
                    frames_sent=int(str(snap.get("frames_sent", 0))),
                    dropped=int(str(snap.get("dropped", 0))),
                    reconnects=int(str(snap.get("reconnects", 0))),
                    state=str(snap.get("state")),
                )
                samples.append(sample)
                print(
                    f"{sample.t / 60:6.1f} min  rss {rss:6.1f} MB  fds {fds:3d}  threads "
                    f"{threads:3d}  frames {sample.frames_sent:7d}  dropped {sample.dropped}  "
                    f"reconnects {sample.reconnects}  {sample.state}",
                    flush=True,
                )
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
            server.stop()
            server.remove()

    steady = [s for s in samples if s.t >= args.warmup * 60]
    if len(steady) < 2:
        print("not enough samples after the warm-up")
        return 1
    t = [s.t for s in steady]
    rss_growth = slope_per_hour(t, [s.rss_mb for s in steady])
    fd_growth = steady[-1].fds - steady[0].fds
    thread_growth = steady[-1].threads - steady[0].threads
    last = samples[-1]
    print()
    print(f"after a {args.warmup:g} min warm-up, over {(t[-1] - t[0]) / 60:.1f} min:")
    print(
        f"  RSS {steady[0].rss_mb:.1f} -> {steady[-1].rss_mb:.1f} MB, fitted growth "
        f"{rss_growth:+.2f} MB/h (target < {TARGET_RSS_MB_PER_H:g})"
    )
    print(f"  fds {steady[0].fds} -> {steady[-1].fds} ({fd_growth:+d}; target 0)")
    print(f"  threads {steady[0].threads} -> {steady[-1].threads} ({thread_growth:+d}; target 0)")
    print(
        f"  frames sent {last.frames_sent} ({last.frames_sent / last.t:.1f}/s), dropped "
        f"{last.dropped} (target 0), reconnects {last.reconnects} (target 0)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
