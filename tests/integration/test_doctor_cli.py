"""`streamer doctor` on this machine, for the device's configuration: what is missing and how."""

from __future__ import annotations

from pathlib import Path

from streamer.localserver import free_port
from tests.conftest import run_cli

DEVICE_CONFIG = Path(__file__).parents[2] / "firmware" / "config.toml"


def device_config(tmp_path: Path, key_file: Path) -> Path:
    text = DEVICE_CONFIG.read_text()
    text = text.replace("/etc/streamer/stream.key", str(key_file))
    text = text.replace(
        'url = "rtmp://example.com/live"', f'url = "rtmp://127.0.0.1:{free_port()}/live"'
    )
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_doctor_lists_what_this_machine_lacks_for_a_pi_configuration(tmp_path: Path) -> None:
    key = tmp_path / "stream.key"
    key.write_text("doctorSecretKey\n")
    key.chmod(0o600)
    result = run_cli("doctor", "--config", str(device_config(tmp_path, key)), timeout=60)
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.output and "doctorSecretKey" not in result.output
    lines = result.stdout.splitlines()
    assert any(
        line.startswith("FAIL") and "picamera2" in line and "apt install" in line for line in lines
    )
    assert any(line.startswith("FAIL") and "alsa" in line and "arecord" in line for line in lines)
    assert any(line.startswith("ok") and "libx264" in line for line in lines)
    assert any(line.startswith("FAIL") and "/live/***" in line for line in lines)  # server down
    assert any(line.startswith("FAIL") and "button/LED" in line for line in lines)  # no GPIO


def test_doctor_reports_a_broken_config_and_still_checks(tmp_path: Path) -> None:
    config = device_config(tmp_path, tmp_path / "missing.key")
    result = run_cli("doctor", "--config", str(config), "--camera", "sim", timeout=60)
    assert result.returncode == 1, result.output
    assert "Traceback" not in result.output
    assert any(
        line.startswith("FAIL") and "stream.key_file" in line for line in result.stdout.splitlines()
    )
    assert "camera sim" in result.stdout
