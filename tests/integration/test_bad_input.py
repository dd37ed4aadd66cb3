"""Bad input gets one clear line and the right exit code, never a traceback."""

from __future__ import annotations

import asyncio
import threading

import pytest

from streamer.localserver import LocalRtmpServer, free_port
from tests.conftest import CliResult, run_cli, start_cli

SECRET = "s3cr3t-Key-4242"


def assert_one_clear_line(result: CliResult, code: int, *phrases: str) -> None:
    assert result.returncode == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("streamer: error:")]
    assert len(errors) == 1, result.stderr
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    assert SECRET not in result.output


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        (f"http://example.com/live/{SECRET}", "rtmp://"),
        (f"srt://example.com:9000/live/{SECRET}", "rtmp://"),
        ("rtmp://example.com/live", "stream key"),
        ("rtmp://example.com/", "stream key"),
        (f"rtmp:///live/{SECRET}", "no host"),
        (f"rtmp://example.com:99999/live/{SECRET}", "invalid stream URL"),
    ],
)
def test_unusable_url_exits_2(url: str, phrase: str) -> None:
    assert_one_clear_line(run_cli("run", "--url", url, "--duration", "1", timeout=20), 2, phrase)


def test_connection_refused() -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/{SECRET}"
    result = run_cli("run", "--url", url, "--duration", "1", timeout=30)
    assert_one_clear_line(result, 1, "could not connect", "refused")


def test_unknown_host() -> None:
    url = f"rtmp://no-such-host.invalid/live/{SECRET}"
    result = run_cli("run", "--url", url, "--duration", "1", timeout=40)
    assert_one_clear_line(result, 1, "could not connect", "no-such-host.invalid")


def test_publish_denied_by_server(rtmp_server: LocalRtmpServer) -> None:
    url = rtmp_server.url(SECRET, app="locked")
    result = run_cli("run", "--url", url, "--duration", "5", timeout=40)
    assert_one_clear_line(result, 1, "rejected")


def test_name_in_use_reports_the_servers_own_words(rtmp_server: LocalRtmpServer) -> None:
    url = rtmp_server.url(SECRET)
    first = start_cli("run", "--url", url, "--size", "320x180", "--duration", "20")
    try:
        for _ in range(100):  # until the first publisher is live
            if any(p.name.startswith(SECRET) for p in rtmp_server.record_dir.iterdir()):
                break
            threading.Event().wait(0.1)
        second = run_cli("run", "--url", url, "--size", "320x180", "--duration", "5", timeout=40)
    finally:
        first.terminate()
        first.communicate(timeout=20)
    assert_one_clear_line(second, 1, "NetStream.Publish.BadName", "Already publishing")


def test_garbage_from_the_server_is_a_clear_error() -> None:
    """A server that completes the handshake, then sends noise."""
    port = free_port()
    ready = threading.Event()

    async def serve() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(1 + 1536)
            writer.write(b"\x03" + bytes(1536) + bytes(1536))
            await reader.readexactly(1536)
            writer.write(bytes([0x45]) + b"\xff" * 64)  # fmt 1 on a chunk stream never opened
            await writer.drain()
            await asyncio.sleep(5)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        async with server:
            await asyncio.sleep(30)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    result = run_cli("run", "--url", f"rtmp://127.0.0.1:{port}/live/{SECRET}", timeout=30)
    assert_one_clear_line(result, 1, "invalid RTMP")
