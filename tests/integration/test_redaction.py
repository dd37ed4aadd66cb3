"""The stream key is a password: no log line of a whole run may contain it."""

from __future__ import annotations

import pytest

from streamer.localserver import LocalRtmpServer
from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # each test here takes more than 5 s

KEY = "live_8731_TopSecretKey"
TOKEN = "tokenValue991"


def test_stream_key_never_logged_even_at_debug(rtmp_server: LocalRtmpServer) -> None:
    url = f"rtmp://127.0.0.1:{rtmp_server.port}/live/{KEY}?auth={TOKEN}"
    result = run_cli(
        "run",
        "--url",
        url,
        "--size",
        "320x180",
        "--duration",
        "6",
        "--log-level",
        "debug",
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "published" in result.output and "stats" in result.output  # the run really logged
    assert "/live/***" in result.output
    assert KEY not in result.output
    assert TOKEN not in result.output
