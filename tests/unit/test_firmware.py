"""Device files: the default config, the boot fragment, the systemd unit and install.sh.

The tools these tests run (systemd-analyze, shellcheck) must be installed: a
missing tool fails the test with the package to install, it never skips.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
INSTALL = FIRMWARE / "install.sh"
CONFIG = FIRMWARE / "config.toml"
BOOT = FIRMWARE / "boot-config.txt"
UNIT = ROOT / "systemd" / "streamer.service"

SCHEMA: dict[str, set[str]] = {
    "stream": {"url", "key_file"},
    "video": {"camera", "size", "fps", "bitrate_kbps", "encoder"},
    "audio": {"microphone", "bitrate_kbps"},
    "network": {
        "drop_threshold_ms",
        "min_video_bitrate_kbps",
        "adaptive_bitrate",
        "max_reconnects",
        "reconnect_delay_s",
        "reconnect_max_delay_s",
        "error_cooldown_s",
    },
    "controls": {"button", "led"},
    "status": {"port", "address"},
    "record": {"dir", "minutes", "keep_gb"},
    "log": {"level", "format"},
}

# Commands that change the system; install.sh must only print them in --dry-run
# and DESTDIR mode. Fakes of the same names come first on PATH and log each call.
MUTATING = ["apt-get", "useradd", "usermod", "groupadd", "systemctl", "chown", "python3"]
FAKE = """#!/bin/sh
name=$(basename "$0")
# The hardware probe only reads files: it runs for real (on PROBE_ROOT's tree in tests).
if [ "$name $1 $2" = "python3 -m streamer.detect" ]; then exec "$REAL_PYTHON" "$@"; fi
printf '%s\\n' "$name $*" >> "$FAKE_CALLS"
case "$name $1" in
    "apt-cache show") [ "$FAKE_PI_OS" = 1 ] && exit 0 || exit 100 ;;
    "getent "*) exit 2 ;;
    "systemctl is-active") exit 3 ;;
esac
exit 0
"""


def require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: apt-get install {package}", pytrace=False)
    return path


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every Key=value of a unit file, values of repeated keys in order."""
    settings: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def words(settings: dict[str, list[str]], key: str) -> set[str]:
    return {w for value in settings.get(key, []) for w in value.split()}


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    calls: list[str]


@pytest.fixture
def fakebin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    for name in [*MUTATING, "apt-cache", "getent", "install"]:
        fake = bin_dir / name
        fake.write_text(FAKE)
        fake.chmod(0o755)
    return bin_dir


def install_sh(
    fakebin: Path,
    *args: str,
    destdir: Path | None = None,
    pi_os: bool = True,
    fake_install: bool = True,
    probe_root: Path | None = None,
) -> Run:
    """Run install.sh with the mutating commands faked (and logged)."""
    calls = fakebin.parent / "calls.log"
    calls.write_text("")
    if not fake_install:
        (fakebin / "install").unlink(missing_ok=True)
    env = {
        "PATH": f"{fakebin}:/usr/sbin:/usr/bin:/sbin:/bin",
        "FAKE_CALLS": str(calls),
        "FAKE_PI_OS": "1" if pi_os else "0",
        "REAL_PYTHON": sys.executable,
        "LANG": "C.UTF-8",
    }
    if destdir is not None:
        env["DESTDIR"] = str(destdir)
    if probe_root is not None:
        env["PROBE_ROOT"] = str(probe_root)
    proc = subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, calls.read_text().splitlines())


def mutating_calls(run: Run) -> list[str]:
    allowed = ("apt-cache show", "getent ", "systemctl is-active")
    return [c for c in run.calls if not c.startswith(allowed)]


# --- config.toml and the boot fragment ---


def test_config_parses_and_follows_the_schema() -> None:
    config = tomllib.loads(CONFIG.read_text())
    assert set(config) == set(SCHEMA)
    for section, keys in SCHEMA.items():
        assert set(config[section]) == keys, section
    assert config["stream"] == {
        "url": "rtmp://example.com/live",
        "key_file": "/etc/streamer/stream.key",
    }
    assert config["video"] == {
        "camera": "picamera2",
        "size": "1280x720",
        "fps": 30,
        "bitrate_kbps": 2500,
        "encoder": "auto",
    }
    assert config["audio"] == {"microphone": "alsa:default", "bitrate_kbps": 128}
    assert config["network"] == {
        "drop_threshold_ms": 700,
        "min_video_bitrate_kbps": 100,
        "adaptive_bitrate": True,
        "max_reconnects": 10,
        "reconnect_delay_s": 1,
        "reconnect_max_delay_s": 30,
        "error_cooldown_s": 60,
    }
    assert config["controls"] == {"button": "GPIO17", "led": "GPIO27"}
    assert config["status"] == {"port": 8089, "address": "127.0.0.1"}
    assert config["record"] == {"dir": "", "minutes": 5, "keep_gb": 4}  # off until a dir is set
    assert config["log"] == {"level": "info", "format": "auto"}


def test_the_commented_status_options_parse_once_uncommented(tmp_path: Path) -> None:
    text = CONFIG.read_text()
    optional = ("password_file", "tls_cert", "tls_key", "metrics_token_file")
    for key in optional:
        assert f"\n# {key} = " in text, key
        text = text.replace(f"\n# {key} = ", f"\n{key} = ")
    from streamer.config import load_config

    text = text.replace("/etc/streamer/", f"{tmp_path}/")
    (tmp_path / "stream.key").write_text("key\n")
    (tmp_path / "stream.key").chmod(0o600)
    (tmp_path / "config.toml").write_text(text)
    status = load_config(tmp_path / "config.toml").status
    assert status.password_file == tmp_path / "status-password"
    assert status.metrics_token_file == tmp_path / "metrics-token"  # next to the config
    assert status.tls_cert is not None and status.tls_key is not None


def test_the_commented_second_destination_works_once_uncommented(tmp_path: Path) -> None:
    from streamer.config import destinations, load_config

    lines = CONFIG.read_text().splitlines(keepends=True)
    start = lines.index("# [[destination]]\n")
    end = lines.index("\n", start)
    lines[start:end] = [line.removeprefix("# ") for line in lines[start:end]]
    text = "".join(lines).replace("/etc/streamer/", f"{tmp_path}/")
    for name in ("stream.key", "backup.key"):
        (tmp_path / name).write_text(f"key-of-{name}\n")
        (tmp_path / name).chmod(0o600)
    (tmp_path / "config.toml").write_text(text)
    found = destinations(load_config(tmp_path / "config.toml"))
    assert [(t.name, t.url.host, t.url.key) for t in found] == [
        ("example.com", "example.com", "key-of-stream.key"),
        ("backup", "backup.example.com", "key-of-backup.key"),
    ]


def test_boot_fragment_sets_up_the_camera_and_the_configured_pins() -> None:
    lines = BOOT.read_text().splitlines()
    assert lines[0].startswith("# --- streamer")  # install.sh's marker
    settings = [line for line in lines if line and not line.startswith("#")]
    assert settings[0] == "[all]"  # not inside a model-specific section
    assert "camera_auto_detect=1" in settings
    controls = tomllib.loads(CONFIG.read_text())["controls"]
    button = int(controls["button"].removeprefix("GPIO"))
    led = int(controls["led"].removeprefix("GPIO"))
    assert f"gpio={button}=ip,pu" in settings
    assert f"gpio={led}=op,dl" in settings


# --- the systemd unit ---


def test_unit_has_the_required_settings() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30"]
    assert s["Restart"] == ["on-failure"]
    assert s["RestartSec"] == ["5"]
    assert s["ExecStart"] == [
        "/opt/streamer/venv/bin/streamer run --service --config /etc/streamer/config.toml"
    ]
    assert "network-online.target" in words(s, "Wants")
    assert {"network-online.target", "sound.target"} <= words(s, "After")
    assert s["User"] == ["streamer"]
    assert s["Group"] == ["streamer"]
    assert {"video", "audio", "gpio"} <= words(s, "SupplementaryGroups")
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "DevicePolicy": "closed",
        "StateDirectory": "streamer",
        "ConfigurationDirectory": "streamer",
        "WorkingDirectory": "/var/lib/streamer",
    }.items():
        assert s.get(key) == [value], key
    assert "LG_WD=/var/lib/streamer" in words(s, "Environment")
    # Log lines reach journald with their <N> priority read (journalctl -p err).
    assert s.get("StandardError", ["journal"]) == ["journal"]
    assert s.get("SyslogLevelPrefix", ["yes"]) == ["yes"]
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= words(s, "RestrictAddressFamilies")
    allowed = set(s["DeviceAllow"])
    for group in ["video4linux", "media", "dma_heap", "alsa", "gpiochip"]:
        assert f"char-{group} rw" in allowed, group
    assert s["WantedBy"] == ["multi-user.target"]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require("systemd-analyze", "systemd")
    # verify insists that ExecStart's binary exists; the venv is only on a device.
    text = UNIT.read_text().replace(
        "ExecStart=/opt/streamer/venv/bin/streamer ", "ExecStart=/bin/true "
    )
    assert "ExecStart=/bin/true run --service" in text
    copy = tmp_path / "streamer.service"
    copy.write_text(text)
    proc = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    output = proc.stdout + proc.stderr
    # Unknown keys and bad values are warnings that still exit 0: none may name our unit.
    ours = [line for line in output.splitlines() if "streamer.service" in line]
    assert proc.returncode == 0 and ours == [], output


def test_unit_security_exposure_is_low() -> None:
    analyze = require("systemd-analyze", "systemd")
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    found = re.search(r"Overall exposure level for streamer\.service:\s*([0-9.]+)", output)
    assert found, output
    score = float(found.group(1))
    print(f"systemd-analyze security: streamer.service exposure {score}")
    assert score <= 3.0, output


# --- install.sh ---


def test_install_script_is_shellcheck_clean() -> None:
    shellcheck = require("shellcheck", "shellcheck")
    proc = subprocess.run(
        [shellcheck, "--shell=bash", str(INSTALL)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.access(INSTALL, os.X_OK), "install.sh must be executable"


def test_unknown_argument_is_refused(fakebin: Path) -> None:
    run = install_sh(fakebin, "--bogus")
    assert run.returncode == 2
    assert "unknown argument: --bogus" in run.stderr
    assert mutating_calls(run) == []


def test_dry_run_prints_every_action_and_changes_nothing(fakebin: Path) -> None:
    watched = [
        Path("/etc/streamer"),
        Path("/opt/streamer"),
        Path("/etc/systemd/system/streamer.service"),
    ]
    before = {p: p.exists() for p in watched}
    boot = Path("/boot/firmware/config.txt")
    boot_before = boot.read_bytes() if boot.exists() else None

    run = install_sh(fakebin, "--dry-run")

    assert run.returncode == 0, run.stderr
    assert mutating_calls(run) == [], run.calls
    assert {p: p.exists() for p in watched} == before
    assert (boot.read_bytes() if boot.exists() else None) == boot_before
    out = run.stdout
    # A device that already has streamer keeps its venv, config and key.
    installed = {
        Path("/opt/streamer/venv/bin/python"): "venv /opt/streamer/venv exists",
        Path("/etc/streamer/config.toml"): "keeping existing /etc/streamer/config.toml",
        Path("/etc/streamer/stream.key"): "keeping existing /etc/streamer/stream.key",
    }
    fresh = {
        Path("/opt/streamer/venv/bin/python"): (
            "would run: python3 -m venv --system-site-packages /opt/streamer/venv"
        ),
        Path("/etc/streamer/config.toml"): (
            "camera and microphone of this board, for /etc/streamer/config.toml"
        ),
        Path("/etc/streamer/stream.key"): (
            "would run: install -m 0600 /dev/null /etc/streamer/stream.key"
        ),
    }
    for path, line in installed.items():
        assert (line if path.exists() else fresh[path]) in out, (line, out)
    for expected in [
        "would run: apt-get update",
        "apt-get install -y -q --no-install-recommends",
        "python3-picamera2",
        "python3-venv",
        "libasound2 libasound2-dev ffmpeg",
        "would run: useradd --system --user-group --home-dir /var/lib/streamer",
        "--shell /usr/sbin/nologin",
        "would run: usermod --append --groups video streamer",
        "would run: usermod --append --groups audio streamer",
        "would run: usermod --append --groups gpio streamer",
        f"would run: /opt/streamer/venv/bin/pip install --quiet '{ROOT}[pi,alsa,gpio]'",
        f"would run: install -m 0644 {UNIT} /etc/systemd/system/streamer.service",
        "would run: chown streamer:streamer /etc/streamer/stream.key",
        "would run: systemctl daemon-reload",
        "would run: systemctl enable ",
        "nothing was changed",
    ]:
        assert expected in out, (expected, out)
    assert "+ " not in out  # nothing was run


def test_dry_run_with_destdir_writes_nothing(fakebin: Path, tmp_path: Path) -> None:
    dest = tmp_path / "image"
    run = install_sh(fakebin, "--dry-run", destdir=dest)
    assert run.returncode == 0, run.stderr
    assert not dest.exists()
    assert mutating_calls(run) == [], run.calls
    assert f"would run: install -m 0600 /dev/null {dest}/etc/streamer/stream.key" in run.stdout
    assert f"would run: append_fragment {dest}/boot/firmware/config.txt" in run.stdout


def test_without_raspberry_pi_os_the_camera_extra_is_left_out(fakebin: Path) -> None:
    run = install_sh(fakebin, "--dry-run", pi_os=False)
    assert run.returncode == 0, run.stderr
    assert "python3-picamera2" not in run.stdout
    assert f"'{ROOT}[alsa,gpio]'" in run.stdout
    assert "python3-picamera2 is not available" in run.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_destdir_install_writes_the_tree(fakebin: Path, tmp_path: Path) -> None:
    dest = tmp_path / "image"
    run = install_sh(fakebin, destdir=dest, fake_install=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert mutating_calls(run) == [], run.calls  # apt, users, pip, systemctl only printed
    for skipped in ["apt-get install", "useradd", "pip install", "systemctl daemon-reload"]:
        assert re.search(rf"^skip \(DESTDIR\): .*{re.escape(skipped)}", run.stdout, re.M), skipped

    unit = dest / "etc/systemd/system/streamer.service"
    config = dest / "etc/streamer/config.toml"
    key = dest / "etc/streamer/stream.key"
    boot = dest / "boot/firmware/config.txt"
    assert unit.read_text() == UNIT.read_text()
    assert mode(unit) == 0o644
    assert config.read_text() == CONFIG.read_text()
    assert mode(config) == 0o644
    assert key.read_bytes() == b""
    assert mode(key) == 0o600
    assert boot.read_text() == BOOT.read_text()
    # The unit reads the config install.sh put there, which names the key file it made.
    assert f"--config /{config.relative_to(dest)}" in unit.read_text()
    key_file = tomllib.loads(config.read_text())["stream"]["key_file"]
    assert key_file == f"/{key.relative_to(dest)}"
    # An empty key: enabled, not started.
    assert "skip (DESTDIR): systemctl enable streamer" in run.stdout
    assert "enable --now" not in run.stdout


def test_second_run_keeps_config_and_key_and_appends_the_fragment_once(
    fakebin: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "image"
    boot = dest / "boot/firmware/config.txt"
    boot.parent.mkdir(parents=True)
    original = "dtparam=audio=on\n[cm4]\notg_mode=1\n"
    boot.write_text(original)

    first = install_sh(fakebin, destdir=dest, fake_install=False)
    assert first.returncode == 0, first.stderr
    config = dest / "etc/streamer/config.toml"
    key = dest / "etc/streamer/stream.key"
    config.write_text(config.read_text() + "# edited by the user\n")
    key.write_text("my-secret-key\n")

    second = install_sh(fakebin, destdir=dest, fake_install=False)
    assert second.returncode == 0, second.stderr
    assert config.read_text().endswith("# edited by the user\n")
    assert key.read_text() == "my-secret-key\n"
    assert mode(key) == 0o600
    assert f"keeping existing {config}" in second.stdout
    assert f"keeping existing {key}" in second.stdout
    text = boot.read_text()
    assert text.startswith(original)
    assert text.count(BOOT.read_text().splitlines()[0]) == 1
    assert text == original + "\n" + BOOT.read_text()
    assert "already has the streamer fragment" in second.stdout
    # The key is set now: enable and start.
    assert "skip (DESTDIR): systemctl enable --now streamer" in second.stdout


def test_legacy_boot_config_location_is_used_when_present(fakebin: Path, tmp_path: Path) -> None:
    dest = tmp_path / "image"
    legacy = dest / "boot/config.txt"
    legacy.parent.mkdir(parents=True)
    legacy.write_text("dtparam=audio=on\n")
    run = install_sh(fakebin, destdir=dest, fake_install=False)
    assert run.returncode == 0, run.stderr
    assert BOOT.read_text() in legacy.read_text()
    assert not (dest / "boot/firmware").exists()


def test_a_first_install_writes_the_camera_and_microphone_the_board_has(
    fakebin: Path, tmp_path: Path
) -> None:
    from tests.unit.test_detect import PI_CARDS, PI_VIDEO, board

    dest = tmp_path / "image"
    pi = board(tmp_path / "pi", video=PI_VIDEO, cards=PI_CARDS, capture=("card2/pcm0c",))
    run = install_sh(fakebin, destdir=dest, fake_install=False, probe_root=pi)
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'camera = "picamera2": Raspberry Pi camera module (unicam-image' in run.stdout
    assert 'microphone = "alsa:plughw:CARD=Device": ALSA card 2' in run.stdout
    config = dest / "etc/streamer/config.toml"
    written = tomllib.loads(config.read_text())
    assert written["video"]["camera"] == "picamera2"
    assert written["audio"]["microphone"] == "alsa:plughw:CARD=Device"
    assert mode(config) == 0o644
    # A later run never rewrites it, whatever the board has by then.
    config.write_text(config.read_text() + "# edited\n")
    again = install_sh(fakebin, destdir=dest, fake_install=False, probe_root=tmp_path / "empty")
    assert again.returncode == 0 and config.read_text().endswith("# edited\n")
    assert "camera =" not in again.stdout


def test_off_raspberry_pi_os_a_usb_webcam_is_chosen(fakebin: Path, tmp_path: Path) -> None:
    from tests.unit.test_detect import PI_VIDEO, WEBCAM, board

    if Path("/etc/streamer/config.toml").exists():
        pytest.skip("this machine has a config: a dry run keeps it and detects nothing")
    both = board(tmp_path / "board", video={**PI_VIDEO, 20: WEBCAM[0]})
    run = install_sh(fakebin, "--dry-run", pi_os=False, probe_root=both)
    assert run.returncode == 0, run.stderr
    assert 'camera = "v4l2:/dev/video20": USB webcam "HD Pro Webcam C920"' in run.stdout
    assert 'microphone = "none": no ALSA capture card' in run.stdout
    assert re.search(
        r"^would run: install -m 0644 \S+ /etc/streamer/config.toml$", run.stdout, re.M
    )
    assert mutating_calls(run) == [], run.calls


def test_a_failed_step_says_which_and_a_rerun_completes_the_install(
    fakebin: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "image"
    blocker = dest / "etc/streamer"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")  # install -d fails here, half way through
    failed = install_sh(fakebin, destdir=dest, fake_install=False)
    assert failed.returncode != 0
    assert "FAILED while installing the unit, the config and the key file" in failed.stderr
    assert "run install.sh again: every step is safe to repeat" in failed.stderr
    assert (dest / "etc/systemd/system/streamer.service").exists()  # the steps before it stay
    blocker.unlink()
    rerun = install_sh(fakebin, destdir=dest, fake_install=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "FAILED" not in rerun.stderr
    assert (dest / "etc/streamer/config.toml").read_text() == CONFIG.read_text()
    assert (dest / "etc/streamer/stream.key").read_bytes() == b""
    assert BOOT.read_text() in (dest / "boot/firmware/config.txt").read_text()
