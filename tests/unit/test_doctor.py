"""``streamer doctor``: readable lines, the right exit status, never a traceback, never the key."""

from __future__ import annotations

import grp
import io
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streamer import doctor
from streamer.doctor import check_groups, check_rtmp, run_doctor
from streamer.localserver import LocalRtmpServer, free_port

KEY = "s3cretKEY-42"


def doctor_output(url: str | None = None, **kwargs: Any) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = run_doctor([url] if url else [], out=out, **kwargs)
    text = out.getvalue()
    assert "Traceback" not in text
    assert KEY not in text
    lines = text.splitlines()
    assert lines[0].startswith("streamer doctor: ")
    for line in lines[1:]:
        assert line.split("  ", 1)[0].strip() in ("ok", "FAIL", "info"), line
        assert line.isascii(), line
    return code, lines[1:]


def fails(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL")]


def test_sim_pipeline_without_url_can_run() -> None:
    code, lines = doctor_output(None, camera="sim", microphone="sim", encoder="auto")
    assert code == 0, "\n".join(lines)
    assert not fails(lines)
    assert any(line.startswith("ok    camera sim") for line in lines)
    assert any("H.264 libx264 (software) opens" in line for line in lines)
    assert any("encoder auto: uses" in line for line in lines)
    assert any("RTMP server not checked" in line for line in lines)
    assert lines[-1] == "ok    this configuration can run"


def test_closed_port_fails_readably_without_the_key() -> None:
    url = f"rtmp://127.0.0.1:{free_port()}/live/{KEY}"
    start = time.monotonic()
    code, lines = doctor_output(url, camera="sim", microphone="sim", encoder="auto")
    assert time.monotonic() - start < 10
    assert code == 1
    (rtmp,) = fails(lines)[:-1]
    assert "/live/***" in rtmp and "connection refused" in rtmp
    assert "-> fix: " in rtmp
    assert lines[-1].startswith("FAIL  1 problem(s)")


def test_picamera2_configured_but_not_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # as on a machine without it
    code, lines = doctor_output(None, camera="picamera2", microphone="sim", encoder="auto")
    assert code == 1
    (line,) = [x for x in fails(lines) if "picamera2" in x]
    assert "picamera2 is not installed" in line
    assert "sudo apt install python3-picamera2" in line


def test_picamera2_missing_is_only_info_for_the_sim_camera(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)
    code, lines = doctor_output(None, camera="sim", microphone="none", encoder="libx264")
    assert code == 0
    assert any(x.startswith("info") and "python3-picamera2" in x for x in lines)


@pytest.fixture
def nginx() -> Iterator[LocalRtmpServer]:
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed")
    with LocalRtmpServer() as server:
        yield server


@pytest.mark.integration
def test_real_nginx_rtmp_answers_the_handshake(nginx: LocalRtmpServer) -> None:
    code, lines = doctor_output(nginx.url(KEY), camera="sim", microphone="sim", encoder="auto")
    (rtmp,) = [x for x in lines if "/live/***" in x]
    assert rtmp.startswith("ok    ") and "answers the RTMP handshake" in rtmp
    assert code == 0, "\n".join(lines)


@pytest.mark.integration
def test_every_destination_is_checked_and_named(nginx: LocalRtmpServer) -> None:
    from streamer.rtmp.url import parse_url
    from streamer.settings import Target

    up = Target(parse_url(nginx.url(KEY)), "main")
    down = Target(parse_url(f"rtmp://127.0.0.1:{free_port()}/live/{KEY}x"), "backup")
    out = io.StringIO()
    code = run_doctor([up, down], camera="sim", microphone="none", encoder="libx264", out=out)
    text = out.getvalue()
    assert code == 1
    assert KEY not in text
    lines = text.splitlines()
    assert any(x.startswith("ok    main: rtmp://127.0.0.1:") and "answers" in x for x in lines)
    (failed,) = fails(lines)[:-1]
    assert failed.startswith("FAIL  backup: rtmp://127.0.0.1:") and "connection refused" in failed


class OneShotServer:
    """A TCP server on loopback that answers every connection with ``reply`` (or silence)."""

    def __init__(self, reply: bytes | None) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self._conns.append(conn)
            if self.reply is not None:
                conn.sendall(self.reply)
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self._conns:
            conn.close()
        self.sock.close()


def test_a_server_that_is_not_rtmp() -> None:
    server = OneShotServer(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    try:
        (finding,) = check_rtmp(f"rtmp://127.0.0.1:{server.port}/live/{KEY}")
    finally:
        server.close()
    assert finding.status == "FAIL"
    assert "RTMP version 72" in finding.text and "is this an RTMP server?" in finding.fix
    assert KEY not in finding.line()


def test_a_silent_server_times_out() -> None:
    server = OneShotServer(None)
    try:
        start = time.monotonic()
        (finding,) = check_rtmp(f"rtmp://127.0.0.1:{server.port}/live/{KEY}", timeout=0.5)
        assert time.monotonic() - start < 3
    finally:
        server.close()
    assert finding.status == "FAIL" and "0.5 s" in finding.text


def test_a_bad_url_is_a_fail_line_without_the_key() -> None:
    code, lines = doctor_output(f"http://example.com/live/{KEY}", microphone="none")
    assert code == 1
    assert any("must start with rtmp://" in x for x in fails(lines))


def test_unknown_choices_fail_with_the_choices() -> None:
    code, lines = doctor_output(None, camera="webcam", microphone="mic", encoder="nvenc")
    assert code == 1
    text = "\n".join(fails(lines))
    assert "camera 'webcam' is not one of: sim, sim:sync, picamera2[:N], v4l2" in text
    assert "microphone 'mic' is not one of: sim, sim:sync, alsa[:DEVICE], none" in text
    assert "encoder 'nvenc' is not one of: auto, v4l2m2m, libx264" in text


@pytest.mark.parametrize(
    ("camera", "microphone"), [("sim:flash", "alsa:"), ("picamera2:front", "none:x")]
)
def test_a_known_name_with_an_argument_it_does_not_take_fails(camera: str, microphone: str) -> None:
    code, lines = doctor_output(None, camera=camera, microphone=microphone, encoder="libx264")
    assert code == 1
    text = "\n".join(fails(lines))
    assert f"camera {camera!r} is not one of: " in text
    assert f"microphone {microphone!r} is not one of: " in text
    assert not any(line.startswith("ok    camera") for line in lines)


def test_explicit_v4l2m2m_without_the_hardware_fails() -> None:
    from streamer.encode.select import v4l2m2m_unavailable_reason

    if v4l2m2m_unavailable_reason() is None:
        pytest.skip("this machine has a V4L2 H.264 encoder")
    code, lines = doctor_output(None, microphone="none", encoder="v4l2m2m")
    assert code == 1
    (line,) = fails(lines)[:-1]
    assert "h264_v4l2m2m (hardware) does not open" in line and "--encoder libx264" in line


def test_alsa_microphone_is_opened() -> None:
    pytest.importorskip("alsaaudio")
    code, lines = doctor_output(None, microphone="alsa:null")  # ALSA's null PCM always exists
    assert code == 0, "\n".join(lines)
    assert any(x.startswith("ok    microphone alsa:null: opens") for x in lines)
    code, lines = doctor_output(None, microphone="alsa:plughw:CARD=NoSuchCard")
    assert code == 1
    (line,) = fails(lines)[:-1]
    assert "cannot capture" in line and "arecord -L" in line


def test_an_unexpected_exception_in_a_check_is_a_fail_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken() -> list[doctor.Finding]:
        raise RuntimeError("sysfs exploded")

    monkeypatch.setattr(doctor, "check_video_devices", broken)
    code, lines = doctor_output(None)
    assert code == 1
    (line,) = fails(lines)[:-1]
    assert line.startswith("FAIL  camera: the check itself failed (RuntimeError: sysfs exploded)")
    assert any(x.startswith("ok    microphone sim") for x in lines)  # later checks still ran


def _groups(**entries: tuple[int, list[str]]) -> dict[str, grp.struct_group]:
    return {
        name: grp.struct_group((name, "x", gid, members))
        for name, (gid, members) in entries.items()
    }


def test_group_membership_and_fixes() -> None:
    db = _groups(video=(44, []), audio=(29, ["pi"]))

    def lookup(name: str) -> grp.struct_group:
        return db[name]  # no gpio group on this system: KeyError, as grp.getgrnam

    found = check_groups({"video", "audio"}, uid=1000, groups={1000, 44}, user="pi", lookup=lookup)
    video, audio, gpio = found
    assert video.status == "ok" and "group video" in video.text
    assert audio.status == "FAIL" and "log out and in again" in audio.fix
    assert gpio.status == "info" and "group gpio does not exist" in gpio.text
    found = check_groups({"video"}, uid=1000, groups={1000}, user="bob", lookup=lookup)
    assert found[0].status == "FAIL"
    assert found[0].fix == "sudo usermod -aG video $USER, then log in again"
    assert found[1].status == "info"  # audio not needed by this configuration
    assert found[1].fix == "sudo usermod -aG audio $USER, then log in again"
    (root,) = check_groups({"video"}, uid=0)
    assert root.status == "ok"


@pytest.fixture
def pin_factory() -> Iterator[None]:
    """gpiozero's pin factory restored after a test that sets or loads one."""
    from gpiozero import Device

    previous = Device.pin_factory
    Device.pin_factory = None
    try:
        yield
    finally:
        if Device.pin_factory not in (None, previous):
            Device.pin_factory.close()
        Device.pin_factory = previous


def test_controls_pins_are_checked_by_name_on_the_board(pin_factory: None) -> None:
    from gpiozero import Device
    from gpiozero.pins.mock import MockFactory

    Device.pin_factory = MockFactory()
    found = doctor.check_controls("GPIO17", "GPIO99", chips=["/dev/null"])
    lines = [f.line() for f in found]
    assert lines[:3] == [
        "ok    /dev/null can be opened",
        "ok    GPIO pin factory MockFactory loads",
        "ok    button GPIO17: GPIO17 on this board",
    ]
    assert lines[3].startswith("FAIL  [controls] led = 'GPIO99': GPIO99 is not a valid pin name")
    assert '-> fix: a GPIO name such as "GPIO17"' in lines[3]
    (chips,) = doctor.check_controls("GPIO17", "", chips=[])[:1]
    assert chips.status == "FAIL" and "no /dev/gpiochip*" in chips.text
    assert doctor.check_controls("", "") == [
        doctor.Finding("info", "controls: no button or LED configured")
    ]


def test_the_shipped_pins_on_a_board_without_gpio_fail(pin_factory: None) -> None:
    """`[controls] button = "GPIO17"`, `led = "GPIO27"` where no pin factory loads."""
    code, lines = doctor_output(None, camera="sim", microphone="sim", button="GPIO17", led="GPIO27")
    gpio = [line for line in fails(lines) if "button/LED" in line]
    if not gpio:
        pytest.skip("this machine has GPIO (a Raspberry Pi?)")
    assert code == 1
    assert any("no GPIO pin factory loads on this board (lgpio: " in line for line in gpio)
    assert all('[controls] button = "" and led = ""' in line for line in gpio)
    assert "info  LED GPIO27: GPIO27 on a 40-pin Raspberry Pi header" in lines
    assert lines[-1].startswith("FAIL") and "this configuration can run" not in lines


def test_the_status_page_is_checked_as_run_reads_it(tmp_path: Path) -> None:
    from streamer.auth import hash_password, password_path
    from streamer.config import StatusSection

    config = tmp_path / "config.toml"
    lan = StatusSection(address="0.0.0.0")
    out = io.StringIO()
    assert run_doctor([], status=lan, config_path=config, out=out) == 1
    [line] = [x for x in out.getvalue().splitlines() if "status page" in x]
    assert line.startswith("FAIL") and "set-password" in line and str(password_path(config)) in line
    password_path(config).write_text(hash_password("a long password", n=2**10))
    password_path(config).chmod(0o600)
    out = io.StringIO()
    run_doctor([], status=lan, config_path=config, out=out)
    [line] = [x for x in out.getvalue().splitlines() if "status page" in x]
    assert line == "ok    status page http://0.0.0.0:8089/ (with a password)"
    out = io.StringIO()
    run_doctor([], status=StatusSection(), config_path=config, out=out)
    assert "ok    status page http://127.0.0.1:8089/ (this device only;" in out.getvalue()
