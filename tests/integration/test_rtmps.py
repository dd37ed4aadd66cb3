"""rtmps:// end to end: nginx's stream module terminates TLS in front of nginx-rtmp.

The test CA is trusted through SSL_CERT_FILE, as a user would add a private
CA; a self-signed certificate is trusted by nobody.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from structlog.testing import capture_logs

from streamer.exc import ConnectFailed
from streamer.localserver import LocalRtmpServer, TlsFiles, make_tls_files
from streamer.rtmp import client
from streamer.rtmp.client import INSECURE_WARNING, RtmpPublisher
from streamer.rtmp.url import parse_url
from tests.conftest import CliResult, run_cli
from tests.media_check import analyze_file

DURATION = 5
FPS = 30


@dataclass(frozen=True)
class Certs:
    trusted: TlsFiles  # signed by a test CA, for localhost and 127.0.0.1
    self_signed: TlsFiles


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    # make_tls_files says plainly when the openssl command is missing.
    base = tmp_path_factory.mktemp("rtmps")
    return Certs(
        trusted=make_tls_files(base / "trusted"),
        self_signed=make_tls_files(base / "self", self_signed=True),
    )


def tls_server(files: TlsFiles) -> Iterator[LocalRtmpServer]:
    server = LocalRtmpServer(tls=files.pair)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.remove()


@pytest.fixture
def trusted_server(certs: Certs) -> Iterator[LocalRtmpServer]:
    yield from tls_server(certs.trusted)


@pytest.fixture
def self_signed_server(certs: Certs) -> Iterator[LocalRtmpServer]:
    yield from tls_server(certs.self_signed)


@pytest.fixture(autouse=True)
def no_system_trust_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def the_error_line(result: CliResult) -> str:
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("streamer: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.mark.slow
def test_streams_over_rtmps_to_a_server_with_a_private_ca(
    monkeypatch: pytest.MonkeyPatch, certs: Certs, trusted_server: LocalRtmpServer
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.trusted.ca))
    url = trusted_server.rtmps_url("tls-room")
    assert url.startswith("rtmps://localhost:")
    result = run_cli(
        "run", "--url", url, "--size", "320x180", "--duration", str(DURATION), timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert INSECURE_WARNING not in result.output
    trusted_server.stop()  # finalises the recording
    [recording] = trusted_server.recordings()
    assert recording.name.startswith("tls-room")
    report = analyze_file(recording)
    assert (report.width, report.height) == (320, 180)
    assert report.decode_errors == []
    # everything captured while live is recorded (at 320x180 the last 4 KiB ack window
    # holds several frames, so the server's acks are not counted)
    _, captured = result.captured_live(DURATION, FPS)
    assert len(report.video_pts_ms) >= captured - 1, (len(report.video_pts_ms), captured)
    assert report.frames_decoded == len(report.video_pts_ms)
    assert report.video_keyframes[0], "the first video packet must be a keyframe"


def test_a_self_signed_certificate_fails_fast_with_one_clear_line(
    self_signed_server: LocalRtmpServer,
) -> None:
    start = time.monotonic()
    result = run_cli(
        "run", "--url", self_signed_server.rtmps_url("tls-room"), "--duration", "5", timeout=30
    )
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.output
    line = the_error_line(result)
    assert "TLS certificate of localhost is not trusted: self-signed certificate" in line
    assert "--insecure" in line
    assert elapsed < 8, f"took {elapsed:.1f} s"
    assert self_signed_server.recordings() == []


def test_insecure_publishes_to_a_self_signed_server(
    monkeypatch: pytest.MonkeyPatch, self_signed_server: LocalRtmpServer
) -> None:
    """In-process until the CLI has --insecure: publish is accepted through the TLS front."""
    monkeypatch.setattr(client, "_insecure_warned", False)
    url = parse_url(self_signed_server.rtmps_url("insecure-room"))

    async def publish() -> None:
        publisher = RtmpPublisher(url, timeout=5, insecure=True)
        try:
            await publisher.connect()  # returns once nginx said NetStream.Publish.Start
            await publisher.send_metadata({"width": 320.0, "height": 180.0})
            assert publisher.stream_id > 0
        finally:
            await publisher.close()

    with capture_logs() as logs:
        asyncio.run(asyncio.wait_for(publish(), 20))
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [INSECURE_WARNING]
    assert any(e["event"] == "published" for e in logs)
    recordings = [p.name for p in self_signed_server.record_dir.iterdir()]
    assert any(name.startswith("insecure-room") for name in recordings), recordings


@pytest.mark.slow
def test_rtmps_to_the_plain_rtmp_port_is_a_clear_error_not_a_hang(
    certs: Certs, trusted_server: LocalRtmpServer
) -> None:
    """nginx-rtmp waits silently for 1537 bytes, more than a ClientHello: the silence is
    noticed, a plain handshake on a second connection gets its answer, and that is said."""
    url = f"rtmps://localhost:{trusted_server.port}/live/tls-room"
    took: list[float] = []

    async def in_process() -> None:
        publisher = RtmpPublisher(parse_url(url), timeout=10)
        start = time.monotonic()
        with pytest.raises(ConnectFailed, match=r"did not answer TLS \(it speaks plain RTMP\)"):
            await publisher.connect()
        took.append(time.monotonic() - start)

    asyncio.run(asyncio.wait_for(in_process(), 20))
    start = time.monotonic()
    result = run_cli("run", "--url", url, "--duration", "5", timeout=40)
    elapsed = time.monotonic() - start
    assert result.returncode == 1, result.output
    line = the_error_line(result)
    assert f"localhost:{trusted_server.port} did not answer TLS (it speaks plain RTMP)" in line
    assert "use rtmp:// for this port" in line
    print(f"rtmps:// to plain RTMP: {took[0]:.2f} s in process, CLI exited after {elapsed:.1f} s")
    assert took[0] < 1.5, f"took {took[0]:.2f} s"
    assert elapsed < 8, f"took {elapsed:.1f} s"


def test_insecure_flag_streams_to_a_self_signed_server(
    self_signed_server: LocalRtmpServer,
) -> None:
    result = run_cli(
        "run",
        "--url",
        self_signed_server.rtmps_url("cli-insecure"),
        "--insecure",
        "--size",
        "320x180",
        "--duration",
        "3",
        timeout=30,
    )
    assert result.returncode == 0, result.output[-2000:]
    assert INSECURE_WARNING in result.stderr
    self_signed_server.stop()
    [recording] = self_signed_server.recordings()
    report = analyze_file(recording)
    assert report.decode_errors == [] and report.video_keyframes[0]
    _, captured = result.captured_live(3, FPS)
    assert len(report.video_pts_ms) >= captured - 1, (len(report.video_pts_ms), captured)
