"""A throwaway nginx-rtmp on loopback, for `streamer demo` and the integration tests.

It lives in its own temporary directory, listens on a free 127.0.0.1 port,
records every publish to FLV (unless ``record=False``), and is stopped by
its pid. Applications:
``live`` (records, viewers join at a keyframe) and ``locked`` (every publish
is refused, as a wrong stream key would be).

With ``tls=(certfile, keyfile)`` nginx's stream module also terminates TLS on
a second loopback port and passes the bytes on to the RTMP port: the
``rtmps_url``. ``make_tls_files`` makes a throwaway CA and certificates for
it with the ``openssl`` command.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from streamer.exc import StreamerError

MODULE_DIRS = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")
RTMP_MODULE_PATHS = tuple(f"{d}/ngx_rtmp_module.so" for d in MODULE_DIRS)
STREAM_MODULE_PATHS = tuple(f"{d}/ngx_stream_module.so" for d in MODULE_DIRS)

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
{record}
        }}
        application locked {{
            live on;
            deny publish all;
        }}
    }}
}}
"""

RECORD = """\
            record all;
            record_path {dir}/rec;
            record_unique on;"""
NO_RECORD = "            record off;"

# TLS in front of the RTMP port, as an rtmps:// provider's edge would be.
TLS_CONFIG = """\
stream {{
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_handshake_timeout 10s;
        proxy_pass 127.0.0.1:{port};
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _module_line(paths: tuple[str, ...] = RTMP_MODULE_PATHS) -> str:
    for path in paths:
        if os.path.exists(path):
            return f"load_module {path};"
    return ""  # built in, or missing: nginx says which when it starts


_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: ``ca`` is what a client trusts (SSL_CERT_FILE), ``cert``/``key`` the server's.

    For a self-signed certificate ``ca`` is the certificate itself.
    """

    ca: Path
    cert: Path
    key: Path

    @property
    def pair(self) -> tuple[Path, Path]:
        return self.cert, self.key


def make_tls_files(
    directory: Path,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    *,
    self_signed: bool = False,
    name: str = "server",
    days: int = 2,
) -> TlsFiles:
    """A throwaway CA and a server certificate it signed, valid for ``hosts`` (EC P-256).

    ``self_signed`` makes a certificate that signs itself, trusted by nobody.
    Needs the ``openssl`` command (Debian: package openssl).
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise StreamerError("the openssl command is not installed (apt: openssl)")
    directory.mkdir(parents=True, exist_ok=True)
    san = ", ".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    config = directory / f"{name}-openssl.cnf"
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    ca, ca_key = directory / f"{name}-ca.pem", directory / f"{name}-ca.key"
    csr = directory / f"{name}.csr"
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    valid = ["-days", str(days)]

    def run(cn: str, *args: str | Path) -> None:
        config.write_text(_OPENSSL_CONFIG.format(cn=cn, san=san))
        cmd = [openssl, *map(str, args), "-config" if args[0] == "req" else "-extfile", config]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            raise StreamerError(f"openssl {args[0]} failed: {done.stderr.strip()}")

    if self_signed:
        run(hosts[0], "req", "-x509", *new_key, *valid, "-keyout", key, "-out", cert,
            "-extensions", "server")  # fmt: skip
        return TlsFiles(ca=cert, cert=cert, key=key)
    run("streamer test CA", "req", "-x509", *new_key, *valid, "-keyout", ca_key, "-out", ca,
        "-extensions", "ca")  # fmt: skip
    run(hosts[0], "req", "-new", *new_key, "-keyout", key, "-out", csr)
    serial = str(int.from_bytes(os.urandom(8), "big"))
    run(hosts[0], "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial", serial,
        *valid, "-out", cert, "-extensions", "server")  # fmt: skip
    return TlsFiles(ca=ca, cert=cert, key=key)


class LocalRtmpServer:
    """Start with ``with LocalRtmpServer() as server:``; URLs from ``url(key)``.

    ``tls=(certfile, keyfile)`` adds a TLS port (``tls_port``) in front of the
    RTMP one; its URLs come from ``rtmps_url(key)``. ``record=False`` keeps
    nothing on disk (gigabytes at loopback speed in seconds).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        tls: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None,
        tls_port: int | None = None,
        record: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.record = record
        self.tls = (Path(tls[0]).resolve(), Path(tls[1]).resolve()) if tls else None
        self.tls_port = (tls_port or free_port()) if tls else None
        self.dir = Path(tempfile.mkdtemp(prefix="streamer-rtmp-"))
        self.record_dir = self.dir / "rec"
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, key: str = "demo", app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.port}/{app}/{key}"

    def rtmps_url(self, key: str = "demo", app: str = "live") -> str:
        """``rtmps://localhost:TLS_PORT/...``: by name, as the certificate names it."""
        if self.tls_port is None:
            raise StreamerError("this LocalRtmpServer was made without tls=(certfile, keyfile)")
        return f"rtmps://localhost:{self.tls_port}/{app}/{key}"

    def _config(self) -> str:
        record = (RECORD if self.record else NO_RECORD).format(dir=self.dir)
        text = CONFIG.format(
            load_module=_module_line(), dir=self.dir, port=self.port, record=record
        )
        if self.tls is None or self.tls_port is None:
            return text
        module = _module_line(STREAM_MODULE_PATHS)
        tls = TLS_CONFIG.format(
            tls_port=self.tls_port, cert=self.tls[0], key=self.tls[1], port=self.port
        )
        return f"{module}\n{text}{tls}"

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
        conf.write_text(self._config())
        self._proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(self.dir), "-e", str(self.dir / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        end = time.monotonic() + timeout
        waiting = [p for p in (self.port, self.tls_port) if p is not None]
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise StreamerError(f"nginx-rtmp failed to start: {err.strip()}")
            for port in list(waiting):
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.5),
                ):
                    waiting.remove(port)
            if not waiting:
                return
            time.sleep(0.05)
        self.stop()
        raise StreamerError(f"nginx-rtmp did not listen on 127.0.0.1:{waiting} in {timeout:g} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        # Graceful first (SIGQUIT): an idle server exits at once. nginx-rtmp
        # then waits for its publishers to hang up, which a live one never
        # does: after half a second it is told to quit now (SIGTERM), as a server
        # that goes away would. Recordings are written frame by frame, so
        # they hold everything received either way.
        for sig, wait in ((signal.SIGQUIT, 0.5), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
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
