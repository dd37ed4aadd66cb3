"""A throwaway nginx-rtmp on loopback, for `streamer demo` and the integration tests.

It lives in its own temporary directory, listens on a free 127.0.0.1 port,
records every publish to FLV, and is stopped by its pid. Applications:
``live`` (records, viewers join at a keyframe) and ``locked`` (every publish
is refused, as a wrong stream key would be).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from streamer.exc import StreamerError

RTMP_MODULE_PATHS = (
    "/usr/lib/nginx/modules/ngx_rtmp_module.so",
    "/usr/share/nginx/modules/ngx_rtmp_module.so",
)

CONFIG = """\
{load_module}
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 128; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        chunk_size 4096;
        application live {{
            live on;
            wait_key on;
            wait_video on;
            record all;
            record_path {dir}/rec;
            record_unique on;
        }}
        application locked {{
            live on;
            deny publish all;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _module_line() -> str:
    for path in RTMP_MODULE_PATHS:
        if os.path.exists(path):
            return f"load_module {path};"
    return ""  # built in, or missing: nginx -t below says which


class LocalRtmpServer:
    """Start with ``with LocalRtmpServer() as server:``; URLs from ``url(key)``."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="streamer-rtmp-"))
        self.record_dir = self.dir / "rec"
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, key: str = "demo", app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.port}/{app}/{key}"

    def start(self, timeout: float = 10.0) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise StreamerError(
                "nginx is not installed: run `make setup` (apt: nginx libnginx-mod-rtmp)"
            )
        # The worker runs as nobody when we are root: it must reach and write the record dir.
        self.dir.chmod(0o755)
        self.record_dir.mkdir(exist_ok=True)
        self.record_dir.chmod(0o777)
        conf = self.dir / "nginx.conf"
        conf.write_text(CONFIG.format(load_module=_module_line(), dir=self.dir, port=self.port))
        self._proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(self.dir), "-e", str(self.dir / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise StreamerError(f"nginx-rtmp failed to start: {err.strip()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.05)
        self.stop()
        raise StreamerError(f"nginx-rtmp did not listen on 127.0.0.1:{self.port} in {timeout:g} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGQUIT)  # graceful: finishes recordings
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        if proc.stderr:
            proc.stderr.close()

    def recordings(self) -> list[Path]:
        return sorted(self.record_dir.glob("*.flv"))

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRtmpServer:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self.remove()
