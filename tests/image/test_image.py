"""``firmware/install.sh`` on a booted Debian 12, and the boot service it installs, end to end.

Run by ``make test-image`` (root; a few minutes), never by ``make test``.
One container for the module, the checks in order: the install as a user
does it (``sudo firmware/install.sh`` from a clone, then the key and the
config, then ``systemctl start``), the unit ready and live, a recording on
the host's nginx-rtmp that decodes, a JSON journal without the key, a hung
service restarted by the watchdog, the service back by itself after a reboot,
and a board without Pi GPIO streaming with the shipped pins in its config.

Skipped, with the reason in pytest's summary, where it cannot run: not
root, no reachable Debian mirror, systemd-nspawn not allowed. Every step has
its own time limit; the container and its copy of the file system are
removed whatever happens (SIGTERM included).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from streamer.localserver import LocalRtmpServer, free_port
from tests.image.nspawn import (
    CACHE,
    SUITE,
    Container,
    Unavailable,
    base_rootfs,
    debian_mirror,
    debian_sources,
    extra_ca_certificates,
    host_pip_setup,
    measured,
    remove_stale_runs,
    say,
    tail,
)
from tests.media_check import analyze_file

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "firmware" / "config.toml"
SRC = "/src/streamer"  # where the clone is inside (the host's tree is never written)
UNIT = "streamer.service"
SIZE = "640x360"  # light on a shared 2-core machine; the install path is what is tested
TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
}


def edit_config(text: str, values: dict[tuple[str, str], str]) -> str:
    """``text`` with ``[section] key = ...`` lines set to the TOML ``values``; comments kept."""
    section, done, lines = "", set[tuple[str, str]](), list[str]()
    for line in text.splitlines(keepends=True):
        header = re.match(r"^\[(\w+)\]", line)
        if header:
            section = header.group(1)
        setting = re.match(r"^(\w+)\s*=", line)
        if setting and (section, setting.group(1)) in values:
            line = f"{setting.group(1)} = {values[section, setting.group(1)]}\n"
            done.add((section, setting.group(1)))
        lines.append(line)
    missing = sorted(set(values) - done)
    assert not missing, f"firmware/config.toml no longer has {missing}: update this test"
    result = "".join(lines)
    tomllib.loads(result)
    return result


@dataclass
class Device:
    """The booted container with streamer installed, and the host's nginx-rtmp it publishes to."""

    box: Container
    server: LocalRtmpServer
    key: str
    status_port: int
    seen_publishes: int = 0  # publishes already waited for

    def config(self, shipped_pins: bool) -> str:
        values: dict[tuple[str, str], str] = {
            ("stream", "url"): f'"rtmp://127.0.0.1:{self.server.port}/live"',
            ("video", "camera"): '"sim"',
            ("video", "size"): f'"{SIZE}"',
            ("audio", "microphone"): '"sim"',
            ("status", "port"): str(self.status_port),
        }
        if not shipped_pins:  # what the README says for a board without button and LED
            values |= {("controls", "button"): '""', ("controls", "led"): '""'}
        return edit_config(SHIPPED_CONFIG.read_text(), values)

    def write_config(self, shipped_pins: bool) -> None:
        path = self.box.path("/etc/streamer/config.toml")
        with path.open("r+") as handle:  # keeps the installed owner and mode
            handle.write(self.config(shipped_pins))
            handle.truncate()

    def unit(self, *names: str) -> dict[str, str]:
        props = [f"--property={name}" for name in names]
        done = self.box.run("systemctl", "show", UNIT, *props)
        return dict(line.split("=", 1) for line in done.output.splitlines() if "=" in line)

    def settled_unit(self, *names: str, timeout: float = 10.0) -> dict[str, str]:
        """The unit's properties once it is no longer activating. nginx counts a publish
        when it accepts it; the service sends READY=1 only once the publish has held (0.1 s
        later), so right after ``wait_publish`` the unit may still be activating."""
        end = time.monotonic() + timeout
        while True:
            state = self.unit("ActiveState", *names)
            if state.get("ActiveState") != "activating" or time.monotonic() >= end:
                return state
            time.sleep(0.2)

    def journal(self, *args: str) -> list[dict[str, Any]]:
        done = self.box.run("journalctl", "--output=json", "--no-pager", *args, timeout=60)
        return [json.loads(line) for line in done.output.splitlines() if line.startswith("{")]

    def cursor(self) -> str:
        """Where the journal ends now: ``lines(after=...)`` reads what comes later, and
        ``wait_publish`` waits for a publish after this moment."""
        self.seen_publishes = self.publishes()
        last = self.journal("--lines=1")
        return str(last[-1]["__CURSOR"]) if last else ""

    def lines(self, after: str = "") -> list[str]:
        """What the service itself wrote to the journal (not systemd's lines about it)."""
        args = [f"_SYSTEMD_UNIT={UNIT}"] + ([f"--after-cursor={after}"] if after else [])
        out = []
        for entry in self.journal(*args):
            message = entry.get("MESSAGE", "")
            if isinstance(message, list):  # journald's form for a line that is not UTF-8
                message = bytes(message).decode(errors="replace")
            if entry.get("_TRANSPORT") == "stdout":
                out.append(str(message))
        return out

    def wait_event(self, event: str, timeout: float) -> None:
        """Wait for the service's JSON log line with this ``event``."""
        end = time.monotonic() + timeout
        while not any(f'"event": "{event}"' in line for line in self.lines()):
            if time.monotonic() > end:
                pytest.fail(f"no '{event}' line within {timeout:.0f} s\n{self.journal_tail()}")
            time.sleep(0.5)

    def journal_tail(self, after: str = "", lines: int = 30) -> str:
        """The unit's last journal lines (after the cursor), systemd's own among them."""
        args = ["--output=short-monotonic", "--no-pager", f"--unit={UNIT}"]
        if after:
            args.append(f"--after-cursor={after}")
        return tail(self.box.run("journalctl", *args, check=False).output, lines)

    def recordings(self) -> list[Path]:
        return [p for p in self.server.recordings() if p.name.startswith(f"{self.key}-")]

    def publishes(self) -> int:
        """Publishes of our key the host's nginx has logged (recordings cannot tell: two
        publishes in one second share a file name)."""
        return self.server.error_log().count(f"publish: name='{self.key}'")

    def wait_publish(self, what: str, timeout: float, after: str = "") -> None:
        """Wait for a new publish of our key on the host's nginx."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            count = self.publishes()
            if count > self.seen_publishes:
                self.seen_publishes = count
                return
            time.sleep(0.2)
        state = self.unit("ActiveState", "SubState", "Result", "NRestarts", "StatusText")
        pytest.fail(
            f"{what}: nothing published on the host's nginx within {timeout:.0f} s; unit {state}\n"
            f"{self.journal_tail(after)}\n--- nginx error log ---\n{tail(self.server.error_log())}",
            pytrace=False,
        )


def prepare(box: Container, pip_files: list[Path], pip_copy: list[Path]) -> None:
    """What a device needs that debootstrap does not give: apt sources, CAs, pip's setup."""
    mirror = os.environ.get("STREAMER_IMAGE_MIRROR", "").rstrip("/")
    sources = debian_sources()
    lines = [f"deb {mirror} {SUITE} main"] if mirror else []
    lines += [f"deb {s.uri} {s.suite} {' '.join(s.components)}" for s in sources if not mirror]
    box.path("/etc/apt/sources.list").write_text("\n".join(lines) + "\n")
    store = Path("/usr/local/share/ca-certificates")
    for cert in extra_ca_certificates():
        box.copy_in(cert, store / cert.relative_to(store))
    home = Path.home()
    for config in pip_files:  # install.sh runs as root: a user's file is root's inside
        inside = Path("/root") / config.relative_to(home) if config.is_relative_to(home) else config
        box.copy_in(config, inside)
    for path in pip_copy:
        if not box.path(path).exists():
            box.copy_in(path)


def skip(reason: str) -> NoReturn:
    """Skip every check, saying why once in the log and in pytest's summary."""
    say(f"SKIPPED: image test not run: {reason}")
    pytest.skip(f"image test not run: {reason}")


@pytest.fixture(scope="module")
def device() -> Iterator[Device]:
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        skip("it needs root on Linux (sudo make test-image)")
    missing = sorted({package for tool, package in TOOLS.items() if not shutil.which(tool)})
    if missing:
        pytest.fail(f"missing tools: apt-get install {' '.join(missing)}", pytrace=False)
    try:
        mirror = debian_mirror(debian_sources())
    except Unavailable as exc:
        skip(str(exc))
    remove_stale_runs()
    start = time.monotonic()
    base = base_rootfs(mirror)
    if base.cached:
        measured("debootstrap: none, base from the cache", time.monotonic() - start)
        measured("debootstrap: when that cache was built", base.build_seconds)
    else:
        measured("debootstrap: fresh build", base.build_seconds)
    pip = host_pip_setup()
    run_id = f"{os.getpid()}-{int(time.time())}"
    box = Container(
        base.path,
        CACHE / "runs" / run_id,
        machine=f"streamer-image-{run_id}",
        binds=pip.bind,
        overlays=[(ROOT, SRC)],
        env=pip.env,
    )
    server = LocalRtmpServer()
    # A CI runner's SIGTERM becomes KeyboardInterrupt: the cleanup below still runs.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        say(f"run directory {box.rundir} ({box.create()} of the base)")
        (box.rundir / "nginx.dir").write_text(str(server.dir))  # for a cleanup after a kill
        try:
            box.probe()
        except Unavailable as exc:
            skip(str(exc))
        prepare(box, pip.files, pip.copy)
        server.start()
        measured("boot", box.boot())
        box.run("update-ca-certificates", timeout=60)

        start = time.monotonic()
        done = box.run(f"{SRC}/firmware/install.sh", timeout=900)
        measured("install.sh", time.monotonic() - start)
        (box.rundir / "install.log").write_text(done.output)
        say("install.sh said:\n    " + tail(done.output, 8).replace("\n", "\n    "))

        dev = Device(box, server, key=f"imgtest{secrets.token_hex(6)}", status_port=free_port())
        dev.write_config(shipped_pins=False)
        key = box.path("/etc/streamer/stream.key")
        with key.open("r+") as handle:  # install.sh made it: 0600, owned by streamer
            handle.write(dev.key + "\n")
            handle.truncate()
        start = time.monotonic()
        box.run("systemctl", "start", UNIT, timeout=90)  # Type=notify: returns after READY=1
        measured("systemctl start until READY", time.monotonic() - start)
        dev.wait_publish("first start", timeout=60)
        measured("start until first publish", time.monotonic() - start)
        yield dev
    finally:
        signal.signal(signal.SIGTERM, previous)
        start = time.monotonic()
        try:
            box.destroy()
        finally:
            server.stop()
            server.remove()
        say(f"cleaned up in {time.monotonic() - start:.1f} s: container and run directory gone")


def test_install_made_a_device(device: Device) -> None:
    box = device.box
    assert box.run("systemctl", "is-enabled", UNIT, check=False).output.strip() == "enabled"
    groups = box.run("id", "-nG", "streamer").output.split()
    assert {"streamer", "video", "audio", "gpio"} <= set(groups)
    uid = int(box.run("id", "-u", "streamer").output)
    config = box.path("/etc/streamer/config.toml").stat()
    key = box.path("/etc/streamer/stream.key").stat()
    assert (oct(config.st_mode & 0o777), config.st_uid) == ("0o644", 0)
    assert (oct(key.st_mode & 0o777), key.st_uid) == ("0o600", uid)
    verify = box.run("systemd-analyze", "verify", UNIT, check=False)
    assert verify.returncode == 0, verify.output
    box.run("/opt/streamer/venv/bin/streamer", "--help")


def test_unit_is_active_after_ready(device: Device) -> None:
    state = device.unit("Type", "ActiveState", "SubState", "NRestarts", "StatusText", "MainPID")
    assert state["Type"] == "notify"
    # A Type=notify unit is active only after READY=1.
    running = (state["ActiveState"], state["SubState"], state["NRestarts"])
    assert running == ("active", "running", "0")
    assert state["StatusText"].startswith("live"), state
    assert device.key not in state["StatusText"]
    owner = device.box.run("stat", "--format=%U", f"/proc/{state['MainPID']}").output.strip()
    assert owner == "streamer"
    # The status page listens on 127.0.0.1 inside: the host's loopback (shared network).
    device.wait_event("status page", timeout=30)  # the page says it is serving
    url = f"http://127.0.0.1:{device.status_port}/status"
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = answer.read().decode()
    assert json.loads(body)["state"] == "live"
    assert device.key not in body


def test_recording_decodes(device: Device) -> None:
    """A few seconds live, a clean stop (the server is told), and nginx's FLV decodes."""
    recording = device.recordings()[-1]
    time.sleep(8)
    device.box.run("systemctl", "stop", UNIT, timeout=30)
    state = device.unit("Result", "ExecMainStatus")
    assert state == {"Result": "success", "ExecMainStatus": "0"}, "a stop is a clean exit 0"
    report = analyze_file(recording)
    assert report.decode_errors == []
    assert f"{report.width}x{report.height}" == SIZE
    seconds = (report.video_pts_ms[-1] - report.video_pts_ms[0]) / 1000
    say(f"recording: {report.frames_decoded} frames in {seconds:.1f} s, "
        f"{report.audio_frames_decoded} audio frames")  # fmt: skip
    assert report.video_keyframes[0], "the recording starts at a keyframe"
    assert seconds >= 5 and report.frames_decoded >= 10 * seconds
    assert report.audio_frames_decoded > 0
    cursor = device.cursor()
    device.box.run("systemctl", "start", UNIT, timeout=90)
    device.wait_publish("start after stop", timeout=60, after=cursor)


def test_journal_is_json_without_the_key(device: Device) -> None:
    lines = device.lines()
    assert len(lines) > 5
    not_json, no_state = [], []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            not_json.append(line)
            continue
        if not isinstance(event, dict) or not {"state", "event", "level"} <= set(event):
            no_state.append(line)
    assert not_json == [], "every line the service writes is one JSON object"
    assert no_state == [], "every line has event, level and the device state"
    assert any(json.loads(line).get("event") == "published" for line in lines)
    whole = device.box.run("journalctl", "--output=export", "--no-pager", timeout=60).output
    assert device.key not in whole, "the stream key is in the journal"


def test_watchdog_restarts_a_hung_service(device: Device) -> None:
    before = device.unit("MainPID", "NRestarts", "WatchdogUSec")
    cursor = device.cursor()
    start = time.monotonic()
    device.box.run("kill", "-STOP", before["MainPID"])
    # Watchdog (30 s), SIGABRT (delivered with SIGCONT), RestartSec, a new start: about a minute.
    device.wait_publish("after kill -STOP", timeout=120, after=cursor)
    measured("watchdog: kill -STOP until published again", time.monotonic() - start)
    after = device.settled_unit("MainPID", "NRestarts")
    assert after["MainPID"] != before["MainPID"]
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert after["ActiveState"] == "active"
    said = "\n".join(str(e.get("MESSAGE")) for e in device.journal(f"--after-cursor={cursor}"))
    assert "Failed with result 'watchdog'" in said, device.journal_tail(cursor)


def test_starts_by_itself_after_reboot(device: Device) -> None:
    box = device.box
    boot_id = box.run("cat", "/proc/sys/kernel/random/boot_id").output
    start = time.monotonic()
    box.reboot()
    measured("reboot: container down", time.monotonic() - start)
    box.boot()
    device.wait_publish("after reboot", timeout=90)
    measured("reboot: systemctl reboot until published", time.monotonic() - start)
    assert box.run("cat", "/proc/sys/kernel/random/boot_id").output != boot_id
    state = device.settled_unit("NRestarts")
    assert state == {"ActiveState": "active", "NRestarts": "0"}


def test_board_without_gpio_streams_with_the_shipped_pins(device: Device) -> None:
    """The shipped [controls] pins on a board that has none: one error per pin, and it streams.

    Expects the fix of item 1 (a button or LED that cannot be opened is logged
    and the stream goes on); before it, every start fails and systemd
    restarts the unit in a loop, so this check fails.
    """
    shipped = tomllib.loads(SHIPPED_CONFIG.read_text())["controls"]
    pins = {name: pin for name, pin in shipped.items() if pin}
    if not pins:
        pytest.skip("firmware/config.toml sets no GPIO pins: nothing to check")
    device.write_config(shipped_pins=True)
    cursor = device.cursor()
    start = time.monotonic()
    device.box.run("systemctl", "restart", "--no-block", UNIT)
    device.wait_publish(f"with the shipped pins {pins}", timeout=60, after=cursor)
    measured("no GPIO: restart until published", time.monotonic() - start)
    time.sleep(10)  # long enough for a failing start to have been retried
    state = device.unit("ActiveState", "NRestarts")
    assert state == {"ActiveState": "active", "NRestarts": "0"}, device.journal_tail(cursor)
    lines = device.lines(after=cursor)
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a line is not JSON: {line!r}\n{tail(chr(10).join(lines))}", pytrace=False)
    errors = [e for e in events if e.get("level") in ("error", "critical")]
    assert errors, "no error line says that the GPIO pins cannot be used"
    # One line for both pins, or one per pin; each names its pin; none repeats.
    named = [[pin for pin in pins.values() if pin in json.dumps(e)] for e in errors]
    assert all(named), f"every error line names the pin it is about: {errors}"
    flat = [pin for names in named for pin in names]
    assert len(flat) == len(set(flat)) and len(errors) <= len(pins), f"errors repeat: {errors}"


def test_no_journal_of_any_boot_holds_the_key(device: Device) -> None:
    boots = device.box.run("journalctl", "--list-boots", "--no-pager").output.splitlines()
    assert len(boots) >= 3, f"a persistent journal over every boot: {boots}"  # header + 2 boots
    whole = device.box.run("journalctl", "--output=export", "--no-pager", timeout=60).output
    assert device.key not in whole
