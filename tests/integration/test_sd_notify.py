"""What systemd hears from the service: READY, STATUS per state, WATCHDOG pings, STOPPING."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamer.localserver import LocalRtmpServer

pytestmark = pytest.mark.slow  # each test here takes more than 5 s


def test_service_talks_to_systemd(rtmp_server: LocalRtmpServer, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamer",
            "run",
            "--service",
            "--url",
            rtmp_server.url("notify"),
            "--size",
            "320x180",
            "--status-port",
            "0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    messages: list[tuple[float, str]] = []
    try:
        end = time.monotonic() + 8
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                messages.append((time.monotonic(), sock.recv(4096).decode()))
        proc.send_signal(signal.SIGTERM)
        stop_end = time.monotonic() + 15
        while proc.poll() is None and time.monotonic() < stop_end:
            with contextlib.suppress(TimeoutError):
                messages.append((time.monotonic(), sock.recv(4096).decode()))
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=10)
        sock.close()
    assert proc.returncode == 0, err[-2000:]
    lines = [line for _, text in messages for line in text.splitlines()]
    statuses = [line for line in lines if line.startswith("STATUS=")]
    assert statuses[0] == "STATUS=preparing: service start"
    assert statuses[1].startswith("STATUS=live: publishing to rtmp://127.0.0.1:")
    assert statuses[1].endswith("/live/***"), "the key is redacted"
    assert "READY=1" in lines[lines.index(statuses[1]) :], "ready once live"
    pings = [t for t, text in messages if "WATCHDOG=1" in text]
    assert 12 <= len(pings) <= 20, len(pings)  # every 0.5 s for ~8 s
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 1.0
    assert "STOPPING=1" in lines
