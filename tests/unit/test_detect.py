"""What a first install writes into the config: the camera and microphone the board has."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from streamer.detect import configure, detect_camera, detect_microphone, main

TEMPLATE = Path(__file__).resolve().parents[2] / "firmware" / "config.toml"

# /proc/asound/cards as the kernel writes it: two lines per card.
PI_CARDS = """\
 0 [vc4hdmi0       ]: vc4-hdmi - vc4-hdmi-0
                      vc4-hdmi-0
 1 [Headphones     ]: bcm2835_headpho - bcm2835 Headphones
                      bcm2835 Headphones
 2 [Device         ]: USB-Audio - USB PnP Sound Device
                      C-Media Electronics Inc. USB PnP Sound Device at usb-0000:01:00.0-1.3
"""


def board(
    root: Path,
    *,
    model: str = "",
    video: dict[int, tuple[str, str, int]] | None = None,
    cards: str = "",
    capture: tuple[str, ...] = (),
) -> Path:
    """A fake tree: video {N: (name, modalias, index)}, capture ``cardN/pcmDc`` entries."""
    if model:
        (root / "proc/device-tree").mkdir(parents=True)
        (root / "proc/device-tree/model").write_bytes(model.encode() + b"\0")
    (root / "dev").mkdir(parents=True, exist_ok=True)
    for n, (name, modalias, index) in (video or {}).items():
        (root / f"dev/video{n}").touch()
        sysfs = root / f"sys/class/video4linux/video{n}"
        (sysfs / "device").mkdir(parents=True)
        (sysfs / "name").write_text(name + "\n")
        (sysfs / "index").write_text(f"{index}\n")
        (sysfs / "device/modalias").write_text(modalias + "\n")
    (root / "proc/asound").mkdir(parents=True, exist_ok=True)
    (root / "proc/asound/cards").write_text(cards)
    for entry in capture:
        (root / "proc/asound" / entry).mkdir(parents=True)
    return root


PI_VIDEO = {
    0: ("unicam-image", "of:NunicamT(null)Cbrcm,bcm2711-unicam", 0),
    10: ("bcm2835-codec-decode", "platform:bcm2835-codec", 0),
    11: ("bcm2835-codec-encode", "platform:bcm2835-codec", 0),
    13: ("bcm2835-isp", "platform:bcm2835-isp", 0),
}
WEBCAM = {
    0: ("HD Pro Webcam C920", "usb:v046Dp082Dd0011dcEFdsc02dp01ic0Eisc01ip00in00", 0),
    1: ("HD Pro Webcam C920", "usb:v046Dp082Dd0011dcEFdsc02dp01ic0Eisc01ip00in00", 1),
}


def test_pi_with_a_camera_module_and_a_usb_microphone(tmp_path: Path) -> None:
    root = board(
        tmp_path,
        model="Raspberry Pi 4 Model B Rev 1.5",
        video=PI_VIDEO,
        cards=PI_CARDS,
        capture=("card0/pcm0p", "card1/pcm0p", "card2/pcm0p", "card2/pcm0c"),
    )
    camera, mic = detect_camera(root), detect_microphone(root)
    assert camera.spec == "picamera2" and "unicam-image at /dev/video0" in camera.why
    assert mic.spec == "alsa:plughw:CARD=Device"
    assert mic.why == 'ALSA card 2 "USB PnP Sound Device" captures'


def test_a_usb_webcam_is_its_capture_node_not_the_metadata_one(tmp_path: Path) -> None:
    cards = " 0 [PCH            ]: HDA-Intel - HDA Intel PCH\n                      HDA Intel PCH\n"
    root = board(
        tmp_path, video={2: WEBCAM[1], 1: WEBCAM[0]}, cards=cards, capture=("card0/pcm1c",)
    )
    assert detect_camera(root).spec == "v4l2:/dev/video1"
    assert detect_camera(root).why == 'USB webcam "HD Pro Webcam C920" at /dev/video1'
    assert detect_microphone(root).spec == "alsa:plughw:CARD=PCH,DEV=1"


def test_without_picamera2_a_webcam_wins_over_the_camera_module(tmp_path: Path) -> None:
    root = board(tmp_path, video={**PI_VIDEO, 20: WEBCAM[0]})
    assert detect_camera(root, picamera2=False).spec == "v4l2:/dev/video20"
    assert detect_camera(root).spec == "picamera2"


def test_a_pi_with_nothing_plugged_in_yet(tmp_path: Path) -> None:
    hdmi_only = PI_CARDS.split(" 1 [")[0]
    root = board(tmp_path, model="Raspberry Pi 5 Model B Rev 1.0", cards=hdmi_only)
    camera, mic = detect_camera(root), detect_microphone(root)
    assert camera.spec == "picamera2" and "after the reboot" in camera.why
    assert mic.spec == "none" and "video only" in mic.why


def test_another_board_with_nothing(tmp_path: Path) -> None:
    root = board(tmp_path, video={11: PI_VIDEO[11]})
    assert detect_camera(root).spec == "v4l2"
    assert detect_microphone(tmp_path / "absent").spec == "none"


def test_the_config_written_is_the_template_with_the_two_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = board(tmp_path / "root", video=WEBCAM, cards=PI_CARDS, capture=("card2/pcm0c",))
    out = tmp_path / "config.toml"
    assert main(["--root", str(root), "--template", str(TEMPLATE), "--output", str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        'camera = "v4l2:/dev/video0": USB webcam "HD Pro Webcam C920" at /dev/video0',
        'microphone = "alsa:plughw:CARD=Device": ALSA card 2 "USB PnP Sound Device" captures',
    ]
    written, shipped = tomllib.loads(out.read_text()), tomllib.loads(TEMPLATE.read_text())
    assert written["video"]["camera"] == "v4l2:/dev/video0"
    assert written["audio"]["microphone"] == "alsa:plughw:CARD=Device"
    shipped["video"]["camera"] = "v4l2:/dev/video0"
    shipped["audio"]["microphone"] = "alsa:plughw:CARD=Device"
    assert written == shipped
    assert "# found by install.sh: USB webcam" in out.read_text()
    with pytest.raises(ValueError, match=r"audio\.microphone"):
        configure("[video]\ncamera = 'x'\n", detect_camera(root), detect_microphone(root))
