"""The config file: what a boot service reads, and the one-line errors it gives."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from streamer import config as cfg
from streamer.config import (
    AudioSection,
    Config,
    ControlsSection,
    LogSection,
    NetworkSection,
    RecordSection,
    StatusSection,
    StreamSection,
    VideoSection,
    load_config,
    stream_url,
    with_overrides,
)
from streamer.exc import ConfigError

KEY = "sk-live-Qz7v9XcT4p"  # unique enough that finding it in a message means a leak

FULL = """\
[stream]
url = "rtmp://example.com:1936/live/abc-123"

[video]
camera = "picamera2:1"
size = "1920x1080"
fps = 25
bitrate_kbps = 4000
encoder = "v4l2m2m"

[audio]
microphone = "alsa:hw:1,0"
bitrate_kbps = 96

[network]
drop_threshold_ms = 900
min_video_bitrate_kbps = 500
adaptive_bitrate = false
max_reconnects = 0
reconnect_delay_s = 0.5
reconnect_max_delay_s = 10
error_cooldown_s = 300

[controls]
button = "GPIO17"
led = "GPIO27"

[status]
port = 0

[record]
dir = "/var/lib/streamer/rec"
minutes = 10
keep_gb = 2.5

[log]
level = "debug"
format = "json"
"""


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def key_file(tmp_path: Path, content: str = KEY + "\n", mode: int = 0o600) -> Path:
    path = tmp_path / "stream.key"
    path.write_text(content)
    path.chmod(mode)
    return path


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.exit_code == 2
    assert "\n" not in caught.value.message
    return caught.value


# -- valid files ------------------------------------------------------------------


def test_full_file_round_trips_into_the_dataclasses(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path)
    assert config == Config(
        stream=StreamSection(url="rtmp://example.com:1936/live/abc-123", key_file=None),
        video=VideoSection(
            camera="picamera2:1", size=(1920, 1080), fps=25.0, bitrate_kbps=4000, encoder="v4l2m2m"
        ),
        audio=AudioSection(microphone="alsa:hw:1,0", bitrate_kbps=96),
        network=NetworkSection(
            drop_threshold_ms=900,
            min_video_bitrate_kbps=500,
            adaptive_bitrate=False,
            max_reconnects=0,
            reconnect_delay_s=0.5,
            reconnect_max_delay_s=10.0,
            error_cooldown_s=300.0,
        ),
        controls=ControlsSection(button="GPIO17", led="GPIO27"),
        status=StatusSection(port=0),
        record=RecordSection(dir=Path("/var/lib/streamer/rec"), minutes=10.0, keep_gb=2.5),
        log=LogSection(level="debug", format="json"),
        path=path,
    )
    assert isinstance(config.video.fps, float)
    assert "abc-123" not in repr(config)  # the key in the URL
    assert "rtmp://example.com:1936/live/***" in repr(config)
    assert stream_url(config) == "rtmp://example.com:1936/live/abc-123"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.video.fps = 1  # type: ignore[misc]


def test_missing_sections_and_keys_take_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[video]\nfps = 12.5\n[audio]\nmicrophone = "none"\n'))
    assert config.video == VideoSection(fps=12.5)
    assert config.audio == AudioSection(microphone="none")
    assert config.stream == StreamSection()
    assert config.network == NetworkSection()
    assert (config.controls, config.status, config.log) == (
        ControlsSection(button="", led=""),
        StatusSection(port=8089),
        LogSection(level="info", format="auto"),
    )
    assert load_config(write(tmp_path, "")) == Config(path=tmp_path / "config.toml")


def test_defaults_are_the_documented_ones() -> None:
    c = Config()
    assert c.stream == StreamSection(url=None, key_file=None)
    assert c.video == VideoSection("sim", (1280, 720), 30.0, 2500, "auto")
    assert c.audio == AudioSection("sim", 128)
    assert c.network == NetworkSection(700, 100, True, 10, 1.0, 30.0, 60.0)
    assert c.record == RecordSection(dir=None, minutes=5.0, keep_gb=0.0)  # no recording


def test_schema_names_every_dataclass_field() -> None:
    for section, (cls, checks) in cfg.SCHEMA.items():
        assert {f.name for f in dataclasses.fields(cls)} == set(checks)
        assert isinstance(getattr(Config(), section), cls)


def test_absent_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cfg, "DEFAULT_PATH", tmp_path / "nowhere" / "config.toml")
    assert load_config(None) == Config()


def test_absent_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "typo.toml"
    assert error_of(missing).message == f"config {missing}: file does not exist"


def test_default_path_is_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[status]\nport = 9000\n")
    monkeypatch.setattr(cfg, "DEFAULT_PATH", path)
    assert load_config(None).status.port == 9000


@pytest.mark.parametrize(
    ("section", "key", "value", "stored"),
    [
        ("video", "camera", '"sim:sync"', "sim:sync"),
        ("video", "camera", '"picamera2"', "picamera2"),
        ("video", "camera", '"v4l2"', "v4l2"),
        ("video", "camera", '"v4l2:/dev/video2"', "v4l2:/dev/video2"),
        ("video", "camera", '"PiCamera2:0"', "picamera2:0"),
        ("video", "fps", "120", 120.0),
        ("video", "fps", "1", 1.0),
        ("video", "fps", "29.97", 29.97),
        ("video", "size", '"16X4096"', (16, 4096)),
        ("video", "rotate", "0", 0),
        ("video", "rotate", "90", 90),
        ("video", "rotate", "180", 180),
        ("video", "rotate", "270", 270),
        ("audio", "microphone", '"alsa"', "alsa"),
        ("audio", "microphone", '"sim:sync"', "sim:sync"),
        ("audio", "microphone", '"alsa:plughw:CARD=Device,DEV=0"', "alsa:plughw:CARD=Device,DEV=0"),
        ("status", "port", "65535", 65535),
        ("network", "max_reconnects", "1000000", 1_000_000),
        ("network", "reconnect_delay_s", "0.1", 0.1),
        ("network", "reconnect_max_delay_s", "3600", 3600.0),
        ("network", "error_cooldown_s", "1", 1.0),
        ("network", "error_cooldown_s", "86400", 86400.0),
        ("controls", "button", '"BOARD11"', "BOARD11"),
        ("controls", "led", '"J8:13"', "J8:13"),
        ("log", "format", '"plain"', "plain"),
        ("record", "dir", '"/media/usb/rec"', Path("/media/usb/rec")),
        ("record", "dir", '""', None),
        ("record", "minutes", "0.05", 0.05),
        ("record", "minutes", "1440", 1440.0),
        ("record", "keep_gb", "0", 0.0),
    ],
)
def test_accepted_values(
    tmp_path: Path, section: str, key: str, value: str, stored: object
) -> None:
    config = load_config(write(tmp_path, f"[{section}]\n{key} = {value}\n"))
    assert getattr(getattr(config, section), key) == stored


# -- errors: each names the file, the field, the value and what is allowed -----------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[video]\nfps = 500\n", "video.fps = 500 is out of range 1..120"),
        ("[video]\nfps = 0.5\n", "video.fps = 0.5 is out of range 1..120"),
        ("[video]\nfps = nan\n", "video.fps = nan is out of range 1..120"),
        ('[video]\nfps = "thirty"\n', 'video.fps must be a number, got "thirty"'),
        ("[video]\nfps = true\n", "video.fps must be a number, got true"),
        ("[video]\nbitrate_kbps = 2500.5\n", "video.bitrate_kbps must be an integer, got 2500.5"),
        (
            "[video]\nrotate = 45\n",
            "video.rotate = 45 is not one of 0, 90, 180, 270 (degrees clockwise)",
        ),
        (
            "[video]\nrotate = -90\n",
            "video.rotate = -90 is not one of 0, 90, 180, 270 (degrees clockwise); "
            "-90 turns it as 270 does",
        ),
        (
            '[video]\nrotate = "90"\n',
            'video.rotate must be one of 0, 90, 180, 270 (degrees clockwise), got "90"',
        ),
        (
            "[video]\nrotate = 90.0\n",
            "video.rotate must be one of 0, 90, 180, 270 (degrees clockwise), got 90.0",
        ),
        (
            "[video]\nrotate = true\n",
            "video.rotate must be one of 0, 90, 180, 270 (degrees clockwise), got true",
        ),
        ("[video]\nbitrate_kbps = true\n", "video.bitrate_kbps must be an integer, got true"),
        ("[video]\nbitrate_kbps = 10\n", "video.bitrate_kbps = 10 is out of range 50..50000"),
        ("[audio]\nbitrate_kbps = 600\n", "audio.bitrate_kbps = 600 is out of range 16..512"),
        (
            "[network]\ndrop_threshold_ms = 50\n",
            "network.drop_threshold_ms = 50 is out of range 100..10000",
        ),
        (
            "[network]\nmax_reconnects = -1\n",
            "network.max_reconnects = -1 is out of range 0..1000000",
        ),
        (
            "[network]\nerror_cooldown_s = 0.5\n",
            "network.error_cooldown_s = 0.5 is out of range 1..86400",
        ),
        (
            '[network]\nerror_cooldown_s = "1m"\n',
            'network.error_cooldown_s must be a number, got "1m"',
        ),
        (
            "[network]\nreconnect_delay_s = 0\n",
            "network.reconnect_delay_s = 0 is out of range 0.1..3600",
        ),
        (
            "[network]\nreconnect_max_delay_s = 7200\n",
            "network.reconnect_max_delay_s = 7200 is out of range 0.1..3600",
        ),
        (
            "[network]\nreconnect_delay_s = 60\n",
            "network.reconnect_delay_s = 60.0 is above network.reconnect_max_delay_s = 30.0; "
            "the first delay cannot be longer than the longest",
        ),
        (
            '[network]\nadaptive_bitrate = "yes"\n',
            'network.adaptive_bitrate must be true or false, got "yes"',
        ),
        (
            "[network]\nadaptive_bitrate = 1\n",
            "network.adaptive_bitrate must be true or false, got 1",
        ),
        (
            "[status]\nport = 70000\n",
            "status.port = 70000 is out of range 0..65535 (0 disables the status page)",
        ),
        ('[status]\nport = "8089"\n', 'status.port must be an integer, got "8089"'),
        (
            '[video]\nsize = "1280x721"\n',
            'video.size = "1280x721" must be WIDTHxHEIGHT, even numbers between 16 and 4096, '
            'e.g. "1280x720"',
        ),
        (
            '[video]\nsize = "big"\n',
            'video.size = "big" must be WIDTHxHEIGHT, even numbers between 16 and 4096, '
            'e.g. "1280x720"',
        ),
        (
            "[video]\nsize = [1280, 720]\n",
            'video.size must be a string like "1280x720", got an array',
        ),
        (
            '[video]\nencoder = "nvenc"\n',
            'video.encoder = "nvenc" is not one of: auto, v4l2m2m, libx264',
        ),
        (
            '[video]\ncamera = "webcam"\n',
            'video.camera = "webcam" is not one of: '
            "sim, sim:sync, picamera2[:N], v4l2[:/dev/videoN]",
        ),
        (
            '[video]\ncamera = "picamera2:front"\n',
            'video.camera = "picamera2:front" is not one of: '
            "sim, sim:sync, picamera2[:N], v4l2[:/dev/videoN]",
        ),
        (
            '[audio]\nmicrophone = "pulse"\n',
            'audio.microphone = "pulse" is not one of: sim, sim:sync, alsa[:DEVICE], none',
        ),
        (
            '[controls]\nbutton = "GPIO 17"\n',
            'controls.button = "GPIO 17" is not a GPIO pin name like "GPIO17" ("" for none)',
        ),
        ("[controls]\nled = 27\n", "controls.led must be a string, got 27"),
        (
            '[log]\nlevel = "INFO"\n',
            'log.level = "INFO" is not one of: debug, info, warning, error',
        ),
        (
            '[log]\nformat = "xml"\n',
            'log.format = "xml" is not one of: auto, console, plain, json',
        ),
        ("[record]\ndir = 1\n", "record.dir must be a string, got 1"),
        ("[record]\nminutes = 0\n", "record.minutes = 0 is out of range 0.05..1440"),
        ('[record]\nminutes = "5"\n', 'record.minutes must be a number, got "5"'),
        (
            "[record]\nkeep_gb = -1\n",
            "record.keep_gb = -1 is out of range 0..100000 (0 keeps every segment)",
        ),
        ("[record]\nkeep = 1\n", "unknown key record.keep (known: dir, keep_gb, minutes)"),
        ("dir = 1\n", "dir is outside any section; it belongs under [record]"),
        (
            "[video]\nframerate = 30\n",
            "unknown key video.framerate "
            "(known: bitrate_kbps, camera, encoder, filters, fps, rotate, size)",
        ),
        (
            "[video.extra]\nx = 1\n",
            "unknown key video.extra "
            "(known: bitrate_kbps, camera, encoder, filters, fps, rotate, size)",
        ),
        (
            "[foo]\nbar = 1\n",
            "unknown section [foo] "
            "(known: audio, controls, destination, log, network, record, status, stream, video)",
        ),
        ("fps = 30\n", "fps is outside any section; it belongs under [video]"),
        ("video = 30\n", "video must be a section [video], not a single value"),
        (
            "[video]\nfps = 30\nfps = 31\n",
            "TOML syntax error at line 3: Cannot overwrite a value (column 9)",
        ),
        ("[video]\nfps = \n", "TOML syntax error at line 2: Invalid value (column 7)"),
    ],
)
def test_errors_name_the_file_field_value_and_rule(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    assert error_of(path).message == f"config {path}: {expected}"


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[video]\ncamera = "\xff"\n')
    assert error_of(path).message == f"config {path}: is not UTF-8 text"


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    assert error_of(tmp_path).message == f"config {tmp_path}: is a directory, not a file"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"http://example.com/live/{KEY}",
            "stream.url http://example.com/live/*** must start with rtmp:// or rtmps:// "
            "(got http://); expected rtmp://host[:port]/app/streamkey",
        ),
        (
            f"rtmp:///live/{KEY}",
            "stream.url rtmp:///live/*** has no host; expected rtmp://host[:port]/app/streamkey",
        ),
        (
            f"rtmp://example.com/{KEY}",
            "stream.url rtmp://example.com/***: stream URL rtmp://example.com/... lacks an "
            "application or a stream key; expected rtmp://host[:port]/app/streamkey",
        ),
        (
            f"rtmp://example.com:99999/live/{KEY}",
            "stream.url rtmp://***: invalid stream URL: Port out of range 0-65535",
        ),
        (f"{KEY}", "stream.url ***"),
    ],
)
def test_bad_url_is_reported_without_the_key(tmp_path: Path, url: str, expected: str) -> None:
    path = write(tmp_path, f'[stream]\nurl = "{url}"\n')
    message = error_of(path).message
    assert message.startswith(f"config {path}: {expected}")
    assert KEY not in message


def test_url_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, "[stream]\nurl = 12345\n")
    assert error_of(path).message == f"config {path}: stream.url must be a string, got a number"


# -- key_file ---------------------------------------------------------------------


def test_key_file_completes_the_url(tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    path = write(tmp_path, f'[stream]\nurl = "rtmp://example.com/live/"\nkey_file = "{keys}"\n')
    config = load_config(path)
    assert config.stream == StreamSection(url="rtmp://example.com/live/", key_file=keys)
    assert stream_url(config) == f"rtmp://example.com/live/{KEY}"
    assert KEY not in repr(config)


def test_relative_key_file_is_next_to_the_config(tmp_path: Path) -> None:
    key_file(tmp_path)
    path = write(tmp_path, '[stream]\nurl = "rtmp://h/app/inst"\nkey_file = "stream.key"\n')
    config = load_config(path)
    assert config.stream.key_file == tmp_path / "stream.key"
    assert stream_url(config) == f"rtmp://h/app/inst/{KEY}"


@pytest.mark.parametrize("key", ["abc?token=x&y=1", "a/b%c", "ünïcode-kéy"])
def test_key_with_query_or_odd_characters_survives_intact(tmp_path: Path, key: str) -> None:
    from streamer.rtmp.url import parse_url

    keys = key_file(tmp_path, key)
    path = write(tmp_path, f'[stream]\nurl = "rtmps://h/live"\nkey_file = "{keys}"\n')
    assert parse_url(stream_url(load_config(path))).key == key


def test_key_file_reread_when_the_url_is_built(tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    config = load_config(write(tmp_path, f'[stream]\nurl = "rtmp://h/live"\nkey_file = "{keys}"\n'))
    keys.write_text("rotated-key-987\n")
    assert stream_url(config) == "rtmp://h/live/rotated-key-987"


def test_bad_url_with_key_file_never_shows_the_key(tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    path = write(tmp_path, f'[stream]\nurl = "http://example.com/live"\nkey_file = "{keys}"\n')
    message = error_of(path).message
    assert message == (
        f"config {path}: stream.url http://example.com/live must start with rtmp:// or "
        "rtmps:// (got http://); expected rtmp://host[:port]/app/streamkey"
    )
    assert KEY not in message


def test_url_without_app_cannot_take_the_key(tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    path = write(tmp_path, f'[stream]\nurl = "rtmp://example.com"\nkey_file = "{keys}"\n')
    message = error_of(path).message
    assert message.startswith(f"config {path}: stream.url rtmp://example.com")
    assert "lacks an application" in message
    assert KEY not in message


def test_url_with_query_cannot_take_the_key(tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    path = write(tmp_path, f'[stream]\nurl = "rtmp://h/live/x?a=1"\nkey_file = "{keys}"\n')
    message = error_of(path).message
    assert message == (
        f"config {path}: stream.url rtmp://h/live/x cannot take the key from stream.key_file; "
        "with a key file it must be rtmp://host[:port]/app (no key, no query string)"
    )
    assert KEY not in message


def test_missing_key_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    path = write(tmp_path, f'[stream]\nurl = "rtmp://h/live"\nkey_file = "{missing}"\n')
    assert error_of(path).message == f"config {path}: stream.key_file {missing} does not exist"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("  \n\n", "is empty; it must hold the stream key"),
        (f"{KEY}\nsecond line\n", "must hold only the stream key, on one line without spaces"),
    ],
)
def test_unusable_key_file(tmp_path: Path, content: str, problem: str) -> None:
    keys = key_file(tmp_path, content)
    path = write(tmp_path, f'[stream]\nurl = "rtmp://h/live"\nkey_file = "{keys}"\n')
    message = error_of(path).message
    assert message == f"config {path}: stream.key_file {keys} {problem}"
    assert KEY not in message


def test_unreadable_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = key_file(tmp_path)
    path = write(tmp_path, f'[stream]\nurl = "rtmp://h/live"\nkey_file = "{keys}"\n')
    read_bytes = Path.read_bytes

    def denied(self: Path) -> bytes:  # chmod 000 would not stop root, who runs CI
        if self == keys:
            raise PermissionError(13, "Permission denied")
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert error_of(path).message == (
        f"config {path}: stream.key_file {keys} cannot be read (permission denied); "
        "the user the service runs as needs read access"
    )


def test_world_readable_key_file_warns(tmp_path: Path) -> None:
    keys = key_file(tmp_path, mode=0o644)
    path = write(tmp_path, f'[stream]\nurl = "rtmp://h/live"\nkey_file = "{keys}"\n')
    with capture_logs() as logs:
        load_config(path)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1
    assert warnings[0]["path"] == str(keys)
    assert "readable by every user" in warnings[0]["event"]
    assert KEY not in repr(logs)


def test_private_key_file_does_not_warn(tmp_path: Path) -> None:
    keys = key_file(tmp_path, mode=0o640)
    path = write(tmp_path, f'[stream]\nurl = "rtmp://h/live"\nkey_file = "{keys}"\n')
    with capture_logs() as logs:
        load_config(path)
    assert logs == []


def test_key_file_without_url_is_refused_when_the_url_is_needed(tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    path = write(tmp_path, f'[stream]\nkey_file = "{keys}"\n')
    config = load_config(path)  # the URL may still come from the command line
    with pytest.raises(ConfigError) as caught:
        stream_url(config)
    assert caught.value.exit_code == 2
    assert caught.value.message == (
        f"config {path}: stream.key_file is set but stream.url is not; "
        "give stream.url = rtmp://host[:port]/app (without the key)"
    )
    full = with_overrides(config, {"stream.url": "rtmp://h/live", "stream.key_file": keys})
    assert stream_url(full) == f"rtmp://h/live/{KEY}"


def test_no_url_at_all(tmp_path: Path) -> None:
    path = write(tmp_path, "[video]\nfps = 30\n")
    with pytest.raises(ConfigError) as caught:
        stream_url(load_config(path))
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(f"config {path}: stream.url is not set; ")
    with pytest.raises(ConfigError, match=r"\(absent\): stream.url is not set"):
        stream_url(Config())


def test_key_file_deleted_after_loading(tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    path = write(tmp_path, f'[stream]\nurl = "rtmp://h/live"\nkey_file = "{keys}"\n')
    config = load_config(path)
    keys.unlink()
    with pytest.raises(ConfigError) as caught:
        stream_url(config)
    assert caught.value.message == f"config {path}: stream.key_file {keys} does not exist"


# -- command-line overrides ---------------------------------------------------------


def test_command_line_beats_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    merged = with_overrides(
        config,
        {
            "video.fps": 50.0,
            "video.size": (640, 480),
            "network.adaptive_bitrate": True,
            "stream.url": "rtmp://other/live/key2",
            "controls.button": None,  # not given: the file's value stays
            "log.level": None,
        },
    )
    assert merged.video == dataclasses.replace(config.video, fps=50.0, size=(640, 480))
    assert merged.network.adaptive_bitrate is True
    assert merged.controls.button == "GPIO17"
    assert merged.log.level == "debug"
    assert stream_url(merged) == "rtmp://other/live/key2"
    assert config.video.fps == 25.0  # the original is untouched
    assert with_overrides(config, {}) == config


def test_command_line_url_replaces_the_file_key(tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    path = write(tmp_path, f'[stream]\nurl = "rtmp://h/live"\nkey_file = "{keys}"\n')
    merged = with_overrides(load_config(path), {"stream.url": "rtmp://backup/live/other"})
    assert merged.stream.key_file is None
    assert stream_url(merged) == "rtmp://backup/live/other"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"video.fps": 500.0}, "video.fps = 500.0 is out of range 1..120"),
        ({"video.size": (1280, 721)}, "video.size = 1280x721 must be WIDTHxHEIGHT"),
        ({"video.bitrate_kbps": 10}, "video.bitrate_kbps = 10 is out of range 50..50000"),
        ({"video.encoder": "nvenc"}, 'video.encoder = "nvenc" is not one of'),
        ({"video.camera": "webcam"}, 'video.camera = "webcam" is not one of'),
        ({"video.rotate": 100}, "video.rotate = 100 is not one of 0, 90, 180, 270"),
        (
            {"video.rotate": "left"},
            'video.rotate must be one of 0, 90, 180, 270 (degrees clockwise), got "left"',
        ),
        ({"audio.microphone": "pulse"}, 'audio.microphone = "pulse" is not one of'),
        ({"network.max_reconnects": True}, "network.max_reconnects must be an integer, got true"),
        ({"network.adaptive_bitrate": 1}, "network.adaptive_bitrate must be true or false, got 1"),
        ({"log.level": "loud"}, 'log.level = "loud" is not one of'),
        (
            {"stream.url": f"http://h/live/{KEY}"},
            "stream.url http://h/live/*** must start with rtmp:// or rtmps://",
        ),
    ],
)
def test_bad_override_is_refused_as_command_line(
    tmp_path: Path, overrides: dict[str, object], expected: str
) -> None:
    config = load_config(write(tmp_path, FULL))
    with pytest.raises(ConfigError) as caught:
        with_overrides(config, overrides)
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(f"command line: {expected}")
    assert KEY not in caught.value.message


def test_relative_record_dir_is_next_to_the_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[record]\ndir = "rec"\n'))
    assert config.record.dir == tmp_path / "rec"


def test_record_flags_beat_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write(tmp_path, FULL))
    monkeypatch.chdir(tmp_path)
    merged = with_overrides(
        config, {"record.dir": "here", "record.minutes": 1.0, "record.keep_gb": None}
    )
    assert merged.record == RecordSection(dir=tmp_path / "here", minutes=1.0, keep_gb=2.5)
    with pytest.raises(ConfigError) as caught:
        with_overrides(config, {"record.minutes": 2000.0})
    assert (
        caught.value.message == "command line: record.minutes = 2000.0 is out of range 0.05..1440"
    )


def test_reconnect_delays_are_checked_together_wherever_they_come_from(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[network]\nreconnect_delay_s = 5\n"))
    assert config.network.reconnect_delay_s == 5.0
    assert with_overrides(config, {"network.reconnect_max_delay_s": 5.0}).network == (
        dataclasses.replace(config.network, reconnect_max_delay_s=5.0)
    )
    with pytest.raises(ConfigError) as caught:
        with_overrides(config, {"network.reconnect_max_delay_s": 2.0})
    assert caught.value.message == (
        "command line: network.reconnect_delay_s = 5.0 is above "
        "network.reconnect_max_delay_s = 2.0; the first delay cannot be longer than the longest"
    )


def test_bad_key_file_override_names_the_command_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    overrides = {"stream.url": "rtmp://h/live", "stream.key_file": missing}
    with pytest.raises(ConfigError) as caught:
        with_overrides(Config(), overrides, source="--key-file")
    assert caught.value.message == f"--key-file: stream.key_file {missing} does not exist"


def test_unknown_override_is_a_programming_error() -> None:
    for name in ("video.framerate", "foo.bar", "fps"):
        with pytest.raises(ValueError, match="unknown config field"):
            with_overrides(Config(), {name: 1})


# -- several destinations: [stream] first, then [[destination]] tables ---------------

OTHER = "fb-Wq83kLm2"  # the second destination's key


def test_stream_and_destination_tables_give_named_destinations_in_order(tmp_path: Path) -> None:
    key_file(tmp_path)
    (tmp_path / "fb.key").write_text(OTHER + "\n")
    (tmp_path / "fb.key").chmod(0o600)
    path = write(
        tmp_path,
        '[stream]\nurl = "rtmp://a.rtmp.youtube.com/live2"\nkey_file = "stream.key"\n'
        'name = "youtube"\n'
        '[[destination]]\nurl = "rtmps://live-api-s.facebook.com:443/rtmp"\n'
        'key_file = "fb.key"\nname = "facebook"\n'
        '[[destination]]\nurl = "rtmp://backup.example.com/live/k3"\n'
        '[[destination]]\nurl = "rtmp://backup.example.com/live/k4"\n',
    )
    config = load_config(path)
    assert config.destination[0] == StreamSection(
        url="rtmps://live-api-s.facebook.com:443/rtmp",
        key_file=tmp_path / "fb.key",  # next to the file, like [stream] key_file
        name="facebook",
    )
    found = cfg.destinations(config)
    assert [t.name for t in found] == [
        "youtube",
        "facebook",
        "backup.example.com",
        "backup.example.com-2",
    ]
    assert [t.url.key for t in found] == [KEY, OTHER, "k3", "k4"]
    assert found[1].url.tls and found[1].url.port == 443
    assert KEY not in repr(config) and OTHER not in repr(config) and "k3" not in repr(config)
    assert KEY not in repr(found) and OTHER not in repr(found)


def test_destination_tables_alone_are_enough(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[destination]]\nurl = "rtmp://one/live/k1"\n'
        '[[destination]]\nurl = "rtmp://two/live/k2"\nname = "second"\n',
    )
    found = cfg.destinations(load_config(path))
    assert [(t.name, t.url.host) for t in found] == [("one", "one"), ("second", "two")]
    assert stream_url(load_config(path)) == "rtmp://one/live/k1"  # the first destination


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f'[destination]\nurl = "rtmp://h/live/{KEY}"\n',
            "destination must be written [[destination]], one table per destination, "
            "not a single [destination] table",
        ),
        (
            f'destination = "rtmp://h/live/{KEY}"\n',
            "destination must be written [[destination]], one table per destination, "
            "not a single value",
        ),
        (
            f'[[stream]]\nurl = "rtmp://h/live/{KEY}"\n',
            "stream must be a section [stream], not an array "
            "(more destinations go in [[destination]] tables)",
        ),
        (
            '[[destination]]\nurl = "rtmp://h/live/k"\n[[destination]]\nurll = "x"\n',
            "unknown key destination[2].urll (known: key_file, name, url)",
        ),
        (
            '[[destination]]\nname = "backup"\n',
            "destination[1].url is not set; give rtmp://host[:port]/app/KEY, "
            "or rtmp://host[:port]/app together with destination[1].key_file",
        ),
        ("[[destination]]\nurl = 5\n", "destination[1].url must be a string, got a number"),
        (
            f'[[destination]]\nurl = "rtmp://h/live/k"\n[[destination]]\nurl = "http://h/live/{KEY}"\n',
            "destination[2].url http://h/live/*** must start with rtmp:// or rtmps:// "
            "(got http://); expected rtmp://host[:port]/app/streamkey",
        ),
        (
            '[[destination]]\nurl = "rtmp://h/live/k"\nname = "my stream"\n',
            'destination[1].name = "my stream" must be 1 to 40 letters, digits, ".", "_" or "-", '
            "starting with a letter or digit",
        ),
        (
            '[stream]\nurl = "rtmp://h/live/k"\nname = "main"\n'
            '[[destination]]\nurl = "rtmp://other/live/k"\nname = "main"\n',
            'destination[1].name = "main" is also stream.name; '
            "each destination needs a name of its own",
        ),
        (
            f'[stream]\nurl = "rtmp://h/live/{KEY}"\n'
            f'[[destination]]\nurl = "rtmp://h:1935/live/{KEY}"\n',
            "destination[1] publishes to rtmp://h:1935/live/***, as stream does; "
            "each destination needs its own server or stream key",
        ),
    ],
)
def test_destination_errors_name_the_table_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    message = error_of(path).message
    assert message == f"config {path}: {expected}"
    assert KEY not in message


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "does not exist"),
        ("\n", "is empty; it must hold the stream key"),
        (f"{KEY} {KEY}\n", "must hold only the stream key, on one line without spaces"),
    ],
)
def test_a_destination_key_file_is_checked_like_the_stream_one(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    keys = tmp_path / "second.key"
    if content is not None:
        keys.write_text(content)
    path = write(
        tmp_path,
        '[stream]\nurl = "rtmp://h/live/k"\n'
        f'[[destination]]\nurl = "rtmp://other/live"\nkey_file = "{keys.name}"\n',
    )
    message = error_of(path).message
    assert message == f"config {path}: destination[1].key_file {keys} {problem}"
    assert KEY not in message


def test_a_destination_key_file_must_complete_a_keyless_url(tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    path = write(tmp_path, f'[[destination]]\nurl = "rtmp://h/live/x?a=1"\nkey_file = "{keys}"\n')
    assert error_of(path).message == (
        f"config {path}: destination[1].url rtmp://h/live/x cannot take the key from "
        "destination[1].key_file; with a key file it must be rtmp://host[:port]/app "
        "(no key, no query string)"
    )


def test_a_name_without_a_url_is_refused_when_the_urls_are_needed(tmp_path: Path) -> None:
    path = write(tmp_path, '[stream]\nname = "main"\n')
    with pytest.raises(ConfigError) as caught:
        cfg.destinations(load_config(path))
    assert caught.value.message == (
        f"config {path}: stream.name is set but stream.url is not; "
        "give stream.url = rtmp://host[:port]/app (without the key)"
    )


def test_urls_from_the_command_line_replace_every_destination_of_the_file(tmp_path: Path) -> None:
    keys = key_file(tmp_path)
    path = write(
        tmp_path,
        f'[stream]\nurl = "rtmp://h/live"\nkey_file = "{keys}"\nname = "main"\n'
        '[[destination]]\nurl = "rtmp://other/live/k2"\n',
    )
    config = load_config(path)
    two = with_overrides(config, {"stream.url": ["rtmp://a/live/x", "rtmps://b/app/y"]})
    assert [(t.name, t.url.key) for t in cfg.destinations(two)] == [("a", "x"), ("b", "y")]
    assert two.stream == StreamSection(url="rtmp://a/live/x")  # no key file, no name
    one = with_overrides(config, {"stream.url": "rtmp://c/live/z"})
    assert [(t.name, t.url.key) for t in cfg.destinations(one)] == [("c", "z")]
    with pytest.raises(ConfigError) as caught:
        with_overrides(config, {"stream.url": ["rtmp://a/live/x", f"http://b/live/{KEY}"]})
    assert caught.value.message == (
        "command line: destination[1].url http://b/live/*** must start with rtmp:// or "
        "rtmps:// (got http://); expected rtmp://host[:port]/app/streamkey"
    )
    with pytest.raises(ConfigError) as twice:
        with_overrides(config, {"stream.url": ["rtmp://a/live/x", "rtmp://a/live/x"]})
    assert twice.value.message.startswith("command line: destination[1] publishes to ")
