"""From flags and the config file to the Settings the Device runs with."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.__main__ import build_parser, config_from, settings_from
from streamer.config import Config, load_config
from streamer.device import Device
from streamer.settings import Settings

URL = "rtmp://example.com/live/k"


def settings_for(*flags: str, config: Path | None = None) -> Settings:
    args = build_parser().parse_args(["run", "--url", URL, *flags])
    base = load_config(config) if config else Config()
    return settings_from(config_from(args, base), args)


def test_reconnect_and_cooldown_defaults_are_the_documented_ones() -> None:
    settings = settings_for("--service")
    assert (settings.reconnect_delay, settings.reconnect_max_delay) == (1.0, 30.0)
    assert settings.error_cooldown == 60.0
    backoff = Device(settings).destinations[0].backoff
    assert (backoff.initial, backoff.cap, backoff.max_attempts) == (1.0, 30.0, None)


def test_reconnect_and_cooldown_flags_beat_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[network]\nreconnect_delay_s = 2\nreconnect_max_delay_s = 8\nerror_cooldown_s = 90\n"
    )
    from_file = settings_for(config=config)
    assert (from_file.reconnect_delay, from_file.reconnect_max_delay) == (2.0, 8.0)
    assert from_file.error_cooldown == 90.0
    flags = settings_for(
        "--reconnect-delay",
        "0.2",
        "--reconnect-max-delay",
        "0.5",
        "--error-cooldown",
        "1",
        config=config,
    )
    assert (flags.reconnect_delay, flags.reconnect_max_delay, flags.error_cooldown) == (
        0.2,
        0.5,
        1.0,
    )
    backoff = Device(flags).destinations[0].backoff
    delays = [backoff.next_delay(0.0) for _ in range(4)]
    assert all(d is not None and d <= 0.5 for d in delays), delays  # short, as a test wants


@pytest.mark.parametrize(
    "flags",
    [["--error-cooldown", "0.5"], ["--reconnect-delay", "0"], ["--reconnect-max-delay", "x"]],
)
def test_out_of_range_flags_are_refused(
    flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["run", "--url", URL, *flags])
    assert exited.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_recording_comes_from_the_file_and_flags_override_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[record]\ndir = "rec"\nminutes = 2\nkeep_gb = 0\n')
    from_file = settings_for(config=config)
    assert from_file.record_dir == str(tmp_path / "rec")
    assert (from_file.record_minutes, from_file.record_keep_gb) == (2.0, None)  # 0: keep all
    flags = settings_for("--record", "/srv/rec", "--record-keep", "1.5", config=config)
    assert flags.record_dir == "/srv/rec"
    assert (flags.record_minutes, flags.record_keep_gb) == (2.0, 1.5)
    assert settings_for().record_dir is None  # recording stays off unless asked
