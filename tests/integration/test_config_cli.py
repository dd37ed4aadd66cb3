"""`streamer run --config FILE`: the file is used, flags override it, a bad file exits 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.localserver import LocalRtmpServer
from tests.conftest import run_cli
from tests.media_check import analyze_file


@pytest.mark.slow
def test_the_file_is_used_and_flags_override_it(
    rtmp_server: LocalRtmpServer, tmp_path: Path
) -> None:
    key_file = tmp_path / "stream.key"
    key_file.write_text("fileKey123\n")
    key_file.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[stream]\nurl = "rtmp://127.0.0.1:{rtmp_server.port}/live"\n'
        f'key_file = "{key_file}"\n'
        '[video]\nsize = "320x180"\nfps = 15\n[audio]\nmicrophone = "none"\n'
    )
    result = run_cli("run", "--config", str(config), "--fps", "25", "--duration", "4", timeout=40)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fileKey123" not in result.output
    rtmp_server.stop()
    [recording] = rtmp_server.recordings()
    assert recording.name.startswith("fileKey123")  # the key came from the key file
    report = analyze_file(recording)
    assert (report.width, report.height) == (320, 180)  # from the file
    assert report.audio_pts_ms == []  # microphone = "none" from the file
    assert 0.9 * 4 * 25 <= len(report.video_pts_ms) <= 4 * 25 + 5  # --fps 25 beat fps = 15


@pytest.mark.slow
def test_every_destination_of_the_file_gets_the_stream(
    rtmp_server: LocalRtmpServer, tmp_path: Path
) -> None:
    key_file = tmp_path / "main.key"
    key_file.write_text("mainKey123\n")
    key_file.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(
        f'[stream]\nurl = "rtmp://127.0.0.1:{rtmp_server.port}/live"\n'
        'key_file = "main.key"\nname = "main"\n'
        f'[[destination]]\nurl = "rtmp://127.0.0.1:{rtmp_server.port}/live/backupKey456"\n'
        'name = "backup"\n'
        '[video]\nsize = "320x180"\nfps = 15\n[audio]\nmicrophone = "none"\n'
    )
    result = run_cli(
        "run", "--config", str(config), "--duration", "4", "--log-format", "json", timeout=40
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mainKey123" not in result.output and "backupKey456" not in result.output
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    live = {e.get("name") for e in events if e["event"] == "destination" and e["state"] == "live"}
    assert live == {"main", "backup"}
    rtmp_server.stop()
    by_key = {r.name.split("-")[0].split(".")[0]: r for r in rtmp_server.recordings()}
    assert set(by_key) == {"mainKey123", "backupKey456"}, rtmp_server.recordings()
    for recording in by_key.values():  # one encode, both servers got all of it
        report = analyze_file(recording)
        assert (report.width, report.height) == (320, 180)
        assert 0.9 * 4 * 15 <= len(report.video_pts_ms) <= 4 * 15 + 5


@pytest.mark.parametrize(
    ("text", "phrases"),
    [
        ("[video]\nfps = 500\n", ["video.fps", "500", "1..120"]),
        ('[video]\nfps = "thirty"\n', ["video.fps", "thirty"]),
        ("[video]\nframerate = 30\n", ["unknown key video.framerate"]),
        ('[stream]\nurl = "http://h/live/SECRETKEY"\n', ["stream.url", "rtmp://"]),
        ('[stream]\nurl = "rtmp://h/live"\nkey_file = "/nonexistent/key"\n', ["stream.key_file"]),
        (
            '[stream]\nurl = "rtmp://h/live/k"\n[[destination]]\nurl = "rtmp://b/live"\n'
            'key_file = "/nonexistent/key"\n',
            ["destination[1].key_file", "/nonexistent/key", "does not exist"],
        ),
        ("[video\n", ["TOML"]),
    ],
)
def test_a_bad_file_exits_2_naming_the_field(tmp_path: Path, text: str, phrases: list[str]) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    url = [] if "url" in text else ["--url", "rtmp://h/live/k"]  # a flag would hide the file's
    result = run_cli("run", "--config", str(config), *url, timeout=20)
    assert result.returncode == 2, result.output
    [line] = [x for x in result.stderr.splitlines() if x.startswith("streamer: error:")]
    assert str(config) in line
    for phrase in phrases:
        assert phrase in line, line
    assert "SECRETKEY" not in result.output and "Traceback" not in result.output


def test_no_url_anywhere_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("run", "--config", str(tmp_path / "absent.toml"), timeout=20)
    assert result.returncode == 2
    assert "absent.toml" in result.stderr


def run_under_journald(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    """``streamer ARGS`` with stderr a file that JOURNAL_STREAM names, as systemd sets it up."""
    with open(tmp_path / "journal", "w+") as journal:
        st = os.fstat(journal.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = subprocess.run(
            [sys.executable, "-m", "streamer", *args],
            stdout=subprocess.DEVNULL,
            stderr=journal,
            env=env,
            timeout=30,
        )
        journal.seek(0)
        return proc.returncode, journal.read().splitlines()


@pytest.mark.parametrize("case", ["empty key file", "bad flag"])
def test_under_journald_the_exit_2_error_is_a_json_line_at_error_priority(
    tmp_path: Path, case: str
) -> None:
    key = tmp_path / "stream.key"
    key.write_text("")
    config = tmp_path / "config.toml"
    config.write_text(f'[stream]\nurl = "rtmp://h/live"\nkey_file = "{key}"\n')
    args = ["--config", str(config)] if case == "empty key file" else ["--fps", "500"]
    code, lines = run_under_journald(tmp_path, "run", *args)
    assert code == 2
    assert lines and all(re.match(r"<[2-7]>\{", line) for line in lines), lines
    assert lines[-1].startswith("<3>")
    last = json.loads(lines[-1][3:])
    assert last["level"] == "error" and last["exit_code"] == 2
    expected = "is empty" if case == "empty key file" else "--fps: 500 is out of range"
    assert last["event"].startswith("streamer: error: ") and expected in last["event"]
