"""Interop matrix: ``streamer run`` to four RTMP servers, judged by what each one got.

nginx-rtmp, node-media-server (npm, tests/interop), FFmpeg's own RTMP server
(``ffmpeg -listen 1``) and the scripted SRS-like server each take ~4 s of
sim video and audio; what the server recorded (or, for the scripted one,
received) is decoded as a viewer would. The run must exit 0, and the frames
it says reached the server must be the ones the server has (the nginx entry
is also the clean run of the exit-code rule in test_delivery.py).
README's "Servers it has been tested with" table comes from these runs.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from streamer.localserver import LocalRtmpServer
from tests.conftest import run_cli
from tests.media_check import CAPTURE_FLOOR, analyze_file, check_counters_as_captured
from tests.otherservers import FfmpegListen, NodeMediaServer
from tests.rtmpserver import ScriptedServer, ServerThread

pytestmark = pytest.mark.slow  # each streams 4 s and decodes what arrived

SECONDS = 4
FPS = 30
AUDIO_PER_S = 48000 / 1024
KEY = "interop-key"


@dataclass
class Target:
    url: str
    version: str
    recorded: Callable[[], Path]  # after the run: what the server has, as FLV


def _nginx_version() -> str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    text = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10).stderr
    module = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-rtmp"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    found = re.search(r"nginx/(\S+)", text)
    return f"{found.group(1) if found else '?'}, rtmp module {module or '?'}"


@contextlib.contextmanager
def nginx_rtmp(tmp_path: Path) -> Iterator[Target]:
    with LocalRtmpServer() as server:

        def recorded() -> Path:
            server.stop()  # finalises the recording
            [path] = server.recordings()
            return path

        yield Target(server.url(KEY), _nginx_version(), recorded)


@contextlib.contextmanager
def node_media_server(tmp_path: Path) -> Iterator[Target]:
    why = NodeMediaServer.missing()
    if why:
        pytest.skip(why)
    with NodeMediaServer() as server:

        def recorded() -> Path:
            server.stop()  # it ends a recording when the server stops (or after a grace time)
            [path] = server.recordings()
            return path

        yield Target(server.url(KEY), NodeMediaServer.version(), recorded)


@contextlib.contextmanager
def ffmpeg_listen(tmp_path: Path) -> Iterator[Target]:
    why = FfmpegListen.missing()
    if why:
        pytest.skip(why)
    with FfmpegListen(KEY) as server:

        def recorded() -> Path:
            if not server.wait(5):  # it usually ends by itself when the publisher leaves
                server.stop()
            [path] = server.recordings()
            return path

        yield Target(server.url(KEY), FfmpegListen.version(), recorded)


@contextlib.contextmanager
def scripted_srs_like(tmp_path: Path) -> Iterator[Target]:
    with ServerThread(lambda: ScriptedServer(srs=True, acks="srs")) as server:

        def recorded() -> Path:
            [session] = server.wait_sessions(1, timeout=10)
            return session.write_flv(tmp_path / "received.flv")

        yield Target(server.url(KEY), "tests/rtmpserver.py", recorded)


SERVERS = {
    "nginx-rtmp": nginx_rtmp,
    "node-media-server": node_media_server,
    "ffmpeg-listen": ffmpeg_listen,
    "scripted-srs-like": scripted_srs_like,
}


@pytest.mark.parametrize("name", list(SERVERS))
def test_a_viewer_of_each_server_gets_the_whole_stream(name: str, tmp_path: Path) -> None:
    with SERVERS[name](tmp_path) as target:
        result = run_cli(
            "run", "--url", target.url, "--size", "640x360", "--fps", str(FPS),
            "--duration", str(SECONDS), "--status-port", "0", timeout=60,
        )  # fmt: skip
        recording = target.recorded()
        report = analyze_file(recording)
    assert result.returncode == 0, result.stderr[-3000:]
    assert KEY not in result.output
    delivered, live = result.delivered()
    video = len(report.video_pts_ms)
    print(
        f"{name} ({target.version}): {video} video packets, {report.frames_decoded} decoded, "
        f"{report.audio_frames_decoded} audio frames, {len(report.decode_errors)} decode errors; "
        f"we counted {delivered} of {live} frames delivered"
    )
    assert report.decode_errors == []
    assert (report.width, report.height) == (640, 360)
    # everything captured while live is on the server; the rate a busy machine's camera
    # keeps is a benchmark's business, here only a floor a stalled capture would miss
    assert video >= live - 3 and live >= CAPTURE_FLOOR * SECONDS * FPS
    assert report.frames_decoded == video
    assert report.video_keyframes[0], "what the server has starts at a keyframe"
    assert report.audio_frames_decoded >= 0.95 * SECONDS * AUDIO_PER_S
    for track in (report.video_pts_ms, report.audio_pts_ms):
        assert all(b > a for a, b in itertools.pairwise(track)), "timestamps not rising"
    # The sim camera's frame counter, read back from the pictures: in order, and none
    # missing but what the camera skipped.
    counters = [c for c in report.counters if c is not None]
    assert len(counters) >= 0.97 * video
    check_counters_as_captured(report.counters, SECONDS * FPS, live)
    # What we say reached the server is what it has (its last ack may lag a frame or two).
    assert video - 3 <= delivered <= video
