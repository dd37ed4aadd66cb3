"""Camera, microphone and encoder names: the help, config errors, doctor and the pipeline agree."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from streamer import backends
from streamer.__main__ import build_parser
from streamer.config import load_config
from streamer.doctor import run_doctor
from streamer.encode.select import open_h264
from streamer.exc import ConfigError
from streamer.hardware.base import make_camera, make_microphone

# (config field, flag, registry, a spec no backend takes)
KINDS = [
    ("video.camera", "--camera", backends.CAMERAS, "webcam"),
    ("audio.microphone", "--microphone", backends.MICROPHONES, "pulse"),
    ("video.encoder", "--encoder", backends.ENCODERS, "nvenc"),
]
IDS = [k[0] for k in KINDS]


def flat(text: str) -> str:
    return " ".join(text.split())


def help_of(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return flat(capsys.readouterr().out)


def test_the_lists_are_what_the_readme_promises() -> None:
    assert backends.choices(backends.CAMERAS) == "sim, sim:sync, picamera2[:N], v4l2[:/dev/videoN]"
    assert backends.choices(backends.MICROPHONES) == "sim, sim:sync, alsa[:DEVICE], none"
    assert backends.choices(backends.ENCODERS) == "auto, v4l2m2m, libx264"


@pytest.mark.parametrize(("field", "flag", "registry", "bad"), KINDS, ids=IDS)
def test_help_config_errors_doctor_and_pipeline_list_the_same_names(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    field: str,
    flag: str,
    registry: tuple[backends.Backend[object], ...],
    bad: str,
) -> None:
    listed = backends.choices(registry)
    for command in ("run", "demo", "doctor"):
        assert f"{flag} NAME" in help_of(command, capsys)
        assert f"one of: {listed} (" in help_of(command, capsys), command

    section, key = field.split(".")
    path = tmp_path / "config.toml"
    path.write_text(f'[{section}]\n{key} = "{bad}"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.message == f'config {path}: {field} = "{bad}" is not one of: {listed}'

    out = io.StringIO()
    run_doctor([], **{flag.removeprefix("--"): bad}, out=out)  # type: ignore[arg-type]
    [line] = [x for x in out.getvalue().splitlines() if "is not one of" in x]
    assert line.startswith(f"FAIL  {flag.removeprefix('--')} {bad!r} is not one of: {listed}  ")

    with pytest.raises(ConfigError) as built:
        if registry is backends.CAMERAS:
            make_camera(bad, 64, 48, 10)
        elif registry is backends.MICROPHONES:
            make_microphone(bad)
        else:
            open_h264(bad, 64, 48, 10, 300)
    assert built.value.message.endswith(f"{bad!r} is not one of: {listed}")


@pytest.mark.parametrize(("field", "flag", "registry", "bad"), KINDS, ids=IDS)
def test_every_listed_name_is_accepted_by_the_config_and_known_to_doctor(
    tmp_path: Path,
    field: str,
    flag: str,
    registry: tuple[backends.Backend[object], ...],
    bad: str,
) -> None:
    section, key = field.split(".")
    for backend in registry:
        path = tmp_path / "config.toml"
        path.write_text(f'[{section}]\n{key} = "{backend.name.upper()}"\n')
        config = load_config(path)
        assert getattr(getattr(config, section), key) == backend.name
        out = io.StringIO()
        run_doctor([], **{flag.removeprefix("--"): backend.name}, out=out)  # type: ignore[arg-type]
        assert "is not one of" not in out.getvalue(), backend.name


def test_the_pipeline_builds_the_simulated_sources_by_name() -> None:
    camera = make_camera("SIM:sync", 64, 48, 10)
    assert (camera.width, camera.height, camera.fps) == (64, 48, 10)
    microphone = make_microphone("sim")
    assert microphone is not None and (microphone.sample_rate, microphone.channels) == (48000, 2)
    assert make_microphone("none") is None


@pytest.mark.parametrize(
    ("spec", "normal"),
    [
        ("sim", "sim"),
        (" Sim:sync ", "sim:sync"),
        ("picamera2:1", "picamera2:1"),
        ("v4l2:/dev/video2", "v4l2:/dev/video2"),
        ("sim:flash", None),
        ("picamera2:", None),
        ("v4l2:video0", None),
        ("v4l2:/dev/my video", None),
        ("", None),
    ],
)
def test_normalise_cameras(spec: str, normal: str | None) -> None:
    assert backends.normalise(backends.CAMERAS, spec) == normal


def test_doctor_asks_for_the_groups_the_backends_name() -> None:
    from streamer.doctor import _needed_groups

    assert _needed_groups("sim", "sim", "auto") == set()
    assert _needed_groups("picamera2:1", "alsa:hw:1", "libx264") == {"video", "audio"}
    assert _needed_groups("sim", "none", "v4l2m2m", controls=True) == {"video", "gpio"}
