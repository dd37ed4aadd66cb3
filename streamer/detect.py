"""Which camera and microphone this board has, for the config a first install writes.

install.sh runs it with the system Python from the checkout (standard
library only, so before the venv exists and even if pip failed)::

    python3 -m streamer.detect --template firmware/config.toml --output NEW

It reads only files: /proc/device-tree/model, /dev/video* with
/sys/class/video4linux/videoN/{name,index,device/modalias}, /proc/asound/cards
and /proc/asound/cardN/pcm*c, all under ``--root`` (tests point it at a fake
tree). One line per choice says what was chosen and why.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# Video nodes of a Raspberry Pi camera module's CSI receiver (Pi 4 and earlier: unicam,
# Pi 5: rp1-cfe). They exist only when the kernel found a sensor on the ribbon cable.
CSI_NAMES = ("unicam", "rp1-cfe")
CARD = re.compile(r"^\s*(\d+)\s+\[(\S+)\s*\]:\s*(.*?)\s+-\s+(.*)$")


@dataclass(frozen=True, slots=True)
class Choice:
    spec: str  # the config value, e.g. "v4l2:/dev/video0"
    why: str  # what was found, for the person installing


@dataclass(frozen=True, slots=True)
class VideoNode:
    dev: str  # /dev/videoN as the device will see it
    name: str
    usb: bool
    capture: bool  # index 0: a UVC camera's second node (index 1) is metadata


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").replace("\0", "").strip()
    except OSError:
        return ""


def _number(path: Path) -> int:
    digits = path.name.removeprefix("video")
    return int(digits) if digits.isdigit() else 1 << 30


def video_nodes(root: Path) -> list[VideoNode]:
    """/dev/video* in number order, with what sysfs says about each."""
    nodes = []
    for dev in sorted((root / "dev").glob("video*"), key=_number):
        sysfs = root / "sys/class/video4linux" / dev.name
        nodes.append(
            VideoNode(
                dev=f"/dev/{dev.name}",
                name=_read(sysfs / "name") or "?",
                usb=_read(sysfs / "device/modalias").startswith("usb:"),
                capture=_read(sysfs / "index") in ("", "0"),
            )
        )
    return nodes


def pi_model(root: Path) -> str:
    """``Raspberry Pi 4 Model B Rev 1.5`` on a Pi, else ""."""
    model = _read(root / "proc/device-tree/model")
    return model if model.startswith("Raspberry Pi") else ""


def detect_camera(root: Path, picamera2: bool = True) -> Choice:
    """A Pi camera module (picamera2), else a USB webcam (v4l2), else the likeliest default."""
    nodes = video_nodes(root)
    csi = [n for n in nodes if n.name.startswith(CSI_NAMES)]
    webcams = [n for n in nodes if n.usb and n.capture]
    if csi and picamera2:
        return Choice("picamera2", f"Raspberry Pi camera module ({csi[0].name} at {csi[0].dev})")
    if webcams:
        cam = webcams[0]
        return Choice(f"v4l2:{cam.dev}", f'USB webcam "{cam.name}" at {cam.dev}')
    if csi:
        return Choice(
            "v4l2", f"a camera module ({csi[0].name}) needs picamera2 (Raspberry Pi OS); no webcam"
        )
    model = pi_model(root)
    if model and picamera2:
        return Choice(
            "picamera2",
            f"no camera found yet on this {model}: a camera module shows after the reboot",
        )
    return Choice("v4l2", "no camera found: plug a USB webcam in (/dev/video0)")


def detect_microphone(root: Path) -> Choice:
    """The first ALSA card that can capture, as a plughw: PCM (converts rate and channels)."""
    asound = root / "proc/asound"
    for line in _read(asound / "cards").splitlines():
        card = CARD.match(line)
        if card is None:
            continue
        number, card_id, name = card.group(1), card.group(2), card.group(4).strip()
        capture = sorted((asound / f"card{number}").glob("pcm*c"))
        if capture:
            device = capture[0].name.removeprefix("pcm").removesuffix("c")
            pcm = f"plughw:CARD={card_id}" + (f",DEV={device}" if device != "0" else "")
            return Choice(f"alsa:{pcm}", f'ALSA card {number} "{name}" captures')
    return Choice(
        "none",
        "no ALSA capture card: video only; plug a USB microphone in and set "
        'microphone = "alsa:plughw:CARD=<name>" (arecord -l lists them)',
    )


def configure(template: str, camera: Choice, microphone: Choice) -> str:
    """``template`` (firmware/config.toml) with [video] camera and [audio] microphone set.

    Comments and every other line stay as they are; a trailing comment says
    where the two values came from.
    """
    values = {("video", "camera"): camera, ("audio", "microphone"): microphone}
    section, done, lines = "", set(), []
    for line in template.splitlines(keepends=True):
        if header := re.match(r"\s*\[([A-Za-z_]+)\]", line):
            section = header.group(1)
        key = re.match(r"\s*([A-Za-z_]+)\s*=", line)
        choice = values.get((section, key.group(1))) if key else None
        if choice is not None:
            assert key is not None
            note = "".join(c for c in choice.why if c.isprintable())
            line = f'{key.group(1)} = "{choice.spec}"  # found by install.sh: {note}\n'
            done.add((section, key.group(1)))
        lines.append(line)
    missing = set(values) - done
    if missing:
        raise ValueError(f"the template has no {', '.join(f'{s}.{k}' for s, k in missing)}")
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m streamer.detect", description=__doc__)
    parser.add_argument("--root", type=Path, default=Path("/"), help="look under this tree (/)")
    parser.add_argument(
        "--no-picamera2", action="store_true", help="picamera2 cannot be installed here"
    )
    parser.add_argument("--template", type=Path, help="firmware/config.toml")
    parser.add_argument("--output", type=Path, help="write the template, values set, here")
    args = parser.parse_args(argv)
    camera = detect_camera(args.root, picamera2=not args.no_picamera2)
    microphone = detect_microphone(args.root)
    print(f'camera = "{camera.spec}": {camera.why}')
    print(f'microphone = "{microphone.spec}": {microphone.why}')
    if args.template and args.output:
        args.output.write_text(configure(args.template.read_text(), camera, microphone))
    return 0


if __name__ == "__main__":
    sys.exit(main())
