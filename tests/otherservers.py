"""RTMP servers that are neither nginx-rtmp nor ours, on loopback, for the interop tests.

- ``NodeMediaServer``: node-media-server (npm), installed by ``make`` into
  tests/interop/node_modules from tests/interop/package-lock.json, started
  through tests/interop/nms.js (RTMP only, 127.0.0.1, records every publish).
- ``FfmpegListen``: FFmpeg as a one-shot RTMP server (``ffmpeg -listen 1``),
  recording what it gets with ``-c copy``.

Each runs in its own session and is always stopped by its process group
(SIGTERM, then SIGKILL); starting waits at most ``timeout`` seconds for the
port to listen, read from /proc/net/tcp so that no probe connection is
spent (``ffmpeg -listen`` takes exactly one).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from streamer.localserver import free_port

INTEROP = Path(__file__).resolve().parent / "interop"
NMS_PACKAGE = INTEROP / "node_modules" / "node-media-server" / "package.json"


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:``port`` (Linux /proc/net/tcp)."""
    wanted = f"0100007F:{port:04X}"
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: LISTEN
                return True
    return False


class _ServerProcess:
    name = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="streamer-interop-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def url(self, key: str, app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.port}/{app}/{key}"

    def start(self, timeout: float = 15.0) -> None:
        with (self.dir / "server.log").open("wb") as out:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        end = time.monotonic() + timeout
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop()
                log = self.log()
                raise RuntimeError(f"{self.name} did not listen within {timeout:g} s:\n{log}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> bool:
        """Whether it ended by itself within ``timeout`` seconds."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=5)
                return
            except subprocess.TimeoutExpired:
                continue

    def log(self) -> str:
        path = self.dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def recordings(self) -> list[Path]:
        return sorted(self.dir.rglob("*.flv"))

    def __enter__(self) -> _ServerProcess:
        try:
            self.start()
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class NodeMediaServer(_ServerProcess):
    name = "node-media-server"

    @staticmethod
    def missing() -> str | None:
        """Why it cannot run here, or None."""
        if shutil.which("node") is None:
            return "node is not installed (make installs nodejs and npm)"
        if not NMS_PACKAGE.exists():
            return "node-media-server is not installed: run `make test` (tests/interop)"
        return None

    @staticmethod
    def version() -> str:
        return str(json.loads(NMS_PACKAGE.read_text())["version"])

    def command(self) -> list[str]:
        return ["node", str(INTEROP / "nms.js"), str(self.port), str(self.dir)]


class FfmpegListen(_ServerProcess):
    """``ffmpeg -listen 1``: takes one publisher on ``url(key)`` and records it."""

    name = "ffmpeg -listen"

    def __init__(self, key: str, app: str = "live") -> None:
        super().__init__()
        self.key, self.app = key, app

    @staticmethod
    def missing() -> str | None:
        return None if shutil.which("ffmpeg") else "ffmpeg is not installed (apt: ffmpeg)"

    @staticmethod
    def version() -> str:
        out = subprocess.run(
            ["ffmpeg", "-version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        return out.split()[2] if out.startswith("ffmpeg version") else "?"

    def command(self) -> list[str]:
        return [
            "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "warning",
            "-listen", "1", "-i", self.url(self.key, self.app),
            "-c", "copy", "-f", "flv", str(self.dir / "received.flv"),
        ]  # fmt: skip
