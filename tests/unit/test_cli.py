"""From flags and the config file to the Settings the Device runs with."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.__main__ import build_parser, config_from, main, settings_from
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


def test_url_may_be_given_several_times(tmp_path: Path) -> None:
    settings = settings_for("--url", "rtmps://b.example.com/app/k2", "--url", "rtmp://c/live/k3")
    assert [(t.name, t.url.key) for t in settings.destinations] == [
        ("example.com", "k"),
        ("b.example.com", "k2"),
        ("c", "k3"),
    ]
    assert [d.name for d in Device(settings).destinations] == ["example.com", "b.example.com", "c"]


def test_destinations_come_from_the_file_with_their_names(tmp_path: Path) -> None:
    keys = tmp_path / "yt.key"
    keys.write_text("ytKey\n")
    keys.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(
        '[stream]\nurl = "rtmp://a.rtmp.youtube.com/live2"\nkey_file = "yt.key"\nname = "yt"\n'
        '[[destination]]\nurl = "rtmp://backup.example.com/live/bk"\n'
    )
    args = build_parser().parse_args(["run", "--config", str(config)])
    settings = settings_from(config_from(args, load_config(config)), args)
    assert [(t.name, t.url.key) for t in settings.destinations] == [
        ("yt", "ytKey"),
        ("backup.example.com", "bk"),
    ]
    flags = build_parser().parse_args(["run", "--config", str(config), "--url", URL])
    replaced = settings_from(config_from(flags, load_config(config)), flags)
    assert [t.name for t in replaced.destinations] == ["example.com"]  # flags replace the file's


def test_a_bad_destination_in_the_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[stream]\nurl = "rtmp://h/live/SECRETKEY1"\n'
        '[[destination]]\nurl = "rtmp://other/live"\nkey_file = "gone.key"\n'
    )
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"streamer: error: config {config}: destination[1].key_file {tmp_path / 'gone.key'} "
        "does not exist\n"
    )


def test_rotate_comes_from_the_file_and_the_flag_overrides_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[video]\nsize = "320x180"\nrotate = 180\n')
    from_file = settings_for(config=config)
    assert from_file.rotate == 180 and from_file.streamed_size == (320, 180)
    flag = settings_for("--rotate", "90", config=config)
    assert flag.rotate == 90
    assert (flag.width, flag.height) == (320, 180)  # --size stays the camera's
    assert flag.streamed_size == (180, 320)
    assert Device(flag).snapshot()["resolution"] == "180x320"  # what viewers get
    assert settings_for().rotate == 0
    demo = build_parser().parse_args(["demo", "--rotate", "270"])
    assert config_from(demo, Config()).video.rotate == 270


@pytest.mark.parametrize("value", ["45", "-90", "90.0", "left", ""])
def test_a_bad_rotate_flag_is_one_line_naming_the_allowed_values_and_exit_2(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--url", URL, "--camera", "sim", "--rotate", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streamer: error: command line: video.rotate ")
    assert "one of 0, 90, 180, 270 (degrees clockwise)" in err
    assert len(err.splitlines()) == 1


def test_settings_refuse_a_bad_rotation_from_python() -> None:
    from streamer.exc import ConfigError

    for bad in (45, -90, True, "90"):
        with pytest.raises(ConfigError, match=r"rotate must be one of 0, 90, 180, 270"):
            Settings(urls=[URL], rotate=bad)  # type: ignore[arg-type]
