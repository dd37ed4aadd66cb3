"""README's "Use from Python" example, run as written against a local server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.localserver import LocalRtmpServer
from tests.media_check import analyze_file

README = Path(__file__).resolve().parents[2] / "README.md"
EXAMPLE_URL = "rtmp://127.0.0.1/live/room"


def readme_example() -> str:
    section = README.read_text().split("## Use from Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Use from Python section lost its example"
    return match.group(1)


@pytest.mark.slow
def test_the_readme_example_streams_and_reports(rtmp_server: LocalRtmpServer) -> None:
    code = readme_example()
    assert EXAMPLE_URL in code
    # the one change: our server listens on a free port, not 1935
    code = code.replace(EXAMPLE_URL, rtmp_server.url("room"))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "idle -> preparing" in out and "preparing -> live" in out, out
    assert "'destinations': [{" in out and "'state': 'live'" in out, out
    assert "room" not in out.replace(rtmp_server.url("room"), ""), "the key leaked"
    rtmp_server.stop()
    [recording] = rtmp_server.recordings()
    report = analyze_file(recording)
    assert report.decode_errors == []
    # 720p30 by default: on a busy machine the sim camera skips frames, so only
    # a second of picture is required here (frame counts are test_stream's job)
    assert report.frames_decoded >= 30 and report.width == 1280
