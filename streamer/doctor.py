"""``streamer doctor``: what this device has, what the configured pipeline lacks, how to fix it.

One screen, one finding per line, plain ASCII for the journal::

    ok    camera sim: simulated test pattern, needs no hardware
    FAIL  picamera2 cannot be imported (No module named 'libcamera')  -> fix: sudo apt ...

``ok`` works, ``FAIL`` is something the configuration asks for that does
not work here (camera, microphone, encoder, button and LED pins, the URL),
``info`` is a fact or a problem that only matters for another
configuration. The exit status is 1 when any line is
FAIL, else 0. A check that breaks unexpectedly becomes a FAIL line, never a
traceback. The stream key is never printed: URLs appear redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import glob
import grp
import importlib
import os
import pwd
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from streamer import backends
from streamer.backends import split_spec
from streamer.config import StatusSection
from streamer.encode.select import (
    libx264_unavailable_reason,
    v4l2m2m_unavailable_reason,
    video_device_names,
)
from streamer.exc import ConfigError, StreamerError
from streamer.rtmp.handshake import client_handshake
from streamer.rtmp.url import REDACTED, RtmpUrl, parse_url
from streamer.settings import Target

Status = Literal["ok", "FAIL", "info"]
HANDSHAKE_TIMEOUT = 5.0
APT_PICAMERA2 = "sudo apt install python3-picamera2 (a venv needs --system-site-packages)"
PIP_ALSA = "sudo apt install libasound2-dev && pip install pyalsaaudio"


@dataclass(frozen=True, slots=True)
class Finding:
    status: Status
    text: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.text}"
        return f"{text}  -> fix: {self.fix}" if self.fix else text


def _needed(needed: bool) -> Status:
    """A problem is FAIL when the configured pipeline needs the thing, else info."""
    return "FAIL" if needed else "info"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StreamerError):
        return exc.message
    return str(exc) or type(exc).__name__


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C libraries (libasound, libcamera) that write to fd 2 directly."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _not_one_of(what: str, spec: str, choices: Sequence[backends.Backend[Any]]) -> Finding:
    """The line for a name ``streamer.backends`` does not list, as the config file says it."""
    return Finding(
        "FAIL",
        f"{what} {spec!r} is not one of: {backends.choices(choices)}",
        f"--{what} {choices[0].name} (or another of these)",
    )


# --- cameras ---------------------------------------------------------------------


def check_camera(camera: str) -> list[Finding]:
    """The configured camera, then what libcamera and /dev/video* offer."""
    name, arg = split_spec(camera)
    found: list[Finding] = []
    if backends.normalise(backends.CAMERAS, camera) is None:
        found.append(_not_one_of("camera", camera, backends.CAMERAS))
        name = ""
    elif name == "sim":
        found.append(Finding("ok", "camera sim: simulated test pattern, needs no hardware"))
    elif name == "v4l2":
        found += _check_v4l2_camera(arg or "/dev/video0")
    found += check_libcamera(needed=name == "picamera2", index=arg if name == "picamera2" else None)
    found += check_video_devices()
    return found


def _optional_import(
    module: str, what: str, needed: bool, fix: str, package: str | None = None
) -> tuple[Any, list[Finding]]:
    """(the module, []) or (None, [the finding that says it is missing and how to get it])."""
    package = package or module
    try:
        with _quiet_stderr():
            return importlib.import_module(module), []
    except ModuleNotFoundError as exc:
        text = (
            f"{package} is not installed"
            if exc.name == module
            else f"{package} cannot be imported ({exc})"
        )
    except Exception as exc:  # e.g. picamera2 without libcamera's bindings
        text = f"{package} cannot be imported ({exc})"
    return None, [Finding(_needed(needed), f"{what}: {text}", fix)]


def check_libcamera(needed: bool, index: str | None = None) -> list[Finding]:
    """Cameras libcamera sees, through picamera2 (Raspberry Pi OS: python3-picamera2)."""
    what = "camera picamera2" if needed else "picamera2 (for --camera picamera2)"
    os.environ.setdefault("LIBCAMERA_LOG_LEVELS", "*:ERROR")
    picamera2, problem = _optional_import("picamera2", what, needed, APT_PICAMERA2)
    if picamera2 is None:
        return problem
    with _quiet_stderr():
        cameras: Sequence[dict[str, Any]] = picamera2.Picamera2.global_camera_info()
    if not cameras:
        return [
            Finding(
                _needed(needed),
                f"{what}: libcamera sees no camera",
                "check the ribbon cable and camera_auto_detect=1 in /boot/firmware/config.txt, "
                "then: rpicam-hello --list-cameras",
            )
        ]
    found = [
        Finding(
            "ok" if needed else "info",
            f"libcamera camera {n}: {cam.get('Model', '?')} ({cam.get('Id', '?')})",
        )
        for n, cam in enumerate(cameras)
    ]
    if needed and index is not None and (not index.isdigit() or int(index) >= len(cameras)):
        found.append(
            Finding(
                "FAIL",
                f"camera picamera2:{index}: libcamera has cameras 0..{len(cameras) - 1} only",
                "--camera picamera2 (or picamera2:N with a number listed above)",
            )
        )
    return found


def _check_v4l2_camera(device: str) -> list[Finding]:
    import av

    what = f"camera v4l2:{device}"
    if not os.path.exists(device):
        return [
            Finding(
                "FAIL",
                f"{what}: {device} does not exist",
                "plug the USB camera in; list devices: ls /dev/video*",
            )
        ]
    found = []
    if not os.access(device, os.R_OK | os.W_OK):
        found.append(
            Finding(
                "FAIL",
                f"{what}: no permission to open {device}",
                "sudo usermod -aG video $USER, then log in again",
            )
        )
    if "v4l2" not in av.formats_available and "video4linux2" not in av.formats_available:
        found.append(
            Finding(
                "FAIL",
                f"{what}: this PyAV has no v4l2 input",
                "pip install --force-reinstall 'av>=18.1,<19'",
            )
        )
    if not found:
        name = video_device_names().get(device, "?")
        found.append(Finding("ok", f"{what}: {name}, can be opened"))
    return found


def check_video_devices() -> list[Finding]:
    """``/dev/video*`` with their names, devices of the same name on one line."""
    names = video_device_names()
    if not names:
        return [Finding("info", "no /dev/video* devices")]
    by_name: dict[str, list[str]] = {}
    for dev, name in names.items():
        by_name.setdefault(name, []).append(dev)
    found = []
    for name, devs in by_name.items():
        locked = [d for d in devs if not os.access(d, os.R_OK | os.W_OK)]
        text = f"{', '.join(devs)}: {name}"
        if locked:
            text += " (no permission)"
        found.append(Finding("info", text))
    return found


# --- microphones -----------------------------------------------------------------


def check_microphone(microphone: str) -> list[Finding]:
    name, arg = split_spec(microphone)
    found: list[Finding] = []
    if backends.normalise(backends.MICROPHONES, microphone) is None:
        found.append(_not_one_of("microphone", microphone, backends.MICROPHONES))
        name = ""
    elif name == "sim":
        found.append(Finding("ok", "microphone sim: simulated tone, needs no hardware"))
    elif name == "none":
        found.append(Finding("ok", "microphone none: video only"))
    found += check_alsa(
        needed=name == "alsa", device=(arg or "default") if name == "alsa" else None
    )
    return found


def check_alsa(needed: bool, device: str | None = None) -> list[Finding]:
    """ALSA cards and capture PCMs through pyalsaaudio; opens ``device`` when given."""
    what = "microphone alsa" if needed else "pyalsaaudio (for --microphone alsa)"
    alsaaudio, problem = _optional_import("alsaaudio", what, needed, PIP_ALSA, "pyalsaaudio")
    if alsaaudio is None:
        return problem
    with _quiet_stderr():
        cards: list[str] = list(alsaaudio.cards())
        pcms: list[str] = list(alsaaudio.pcms(alsaaudio.PCM_CAPTURE))
    found = []
    if cards:
        found.append(Finding("ok" if needed else "info", f"ALSA cards: {', '.join(cards)}"))
    else:  # not FAIL by itself: a PCM such as a file or a dsnoop may still capture
        found.append(
            Finding(
                "info",
                "no ALSA sound card",
                "plug the USB microphone in; list capture devices: arecord -l",
            )
        )
    found.append(Finding("info", f"ALSA capture PCMs: {_short_pcms(pcms)}"))
    if device is not None:
        found.append(_open_alsa(alsaaudio, device))
    return found


def _short_pcms(pcms: list[str], limit: int = 6) -> str:
    """The PCMs worth using first (plughw, dsnoop, default), at most ``limit``."""
    if not pcms:
        return "none"

    def rank(name: str) -> int:
        for n, prefix in enumerate(("plughw:", "dsnoop:", "default", "sysdefault:", "hw:")):
            if name.startswith(prefix):
                return n
        return 9

    shown = sorted(pcms, key=rank)[:limit]
    more = len(pcms) - len(shown)
    return ", ".join(shown) + (f" (+{more} more: arecord -L)" if more else "")


def _open_alsa(alsaaudio: Any, device: str) -> Finding:
    what = f"microphone alsa:{device}"
    try:
        with _quiet_stderr():
            pcm = alsaaudio.PCM(
                type=alsaaudio.PCM_CAPTURE,
                mode=alsaaudio.PCM_NONBLOCK,
                rate=48000,
                channels=2,
                format=alsaaudio.PCM_FORMAT_S16_LE,
                periodsize=1024,
                device=device,
            )
            pcm.close()
    except Exception as exc:
        text = _reason(exc)
        low = text.lower()
        if "busy" in low:
            fix = "another program holds it: stop it (fuser -v /dev/snd/*) or use a dsnoop PCM"
        elif "permission" in low:
            fix = "sudo usermod -aG audio $USER, then log in again"
        else:
            fix = "--microphone alsa:plughw:CARD=<card> with a card listed above (arecord -L)"
        return Finding("FAIL", f"{what}: cannot capture 48 kHz stereo ({text})", fix)
    return Finding("ok", f"{what}: opens for 48 kHz stereo capture")


# --- button and LED ----------------------------------------------------------------

PIP_GPIO = "pip install 'streamer[gpio]' (Raspberry Pi OS: sudo apt install python3-lgpio)"
NO_CONTROLS = 'or set [controls] button = "" and led = "" (the stream runs without them)'


def check_controls(button: str, led: str, *, chips: Sequence[str] | None = None) -> list[Finding]:
    """The ``[controls]`` pins: gpiozero, a pin factory that loads, /dev/gpiochip*, pin names.

    Pins are not claimed: a running service may hold them.
    """
    pins = {name: pin for name, pin in (("button", button), ("LED", led)) if pin}
    if not pins:
        return [Finding("info", "controls: no button or LED configured")]
    gpiozero, problem = _optional_import("gpiozero", "button/LED", True, PIP_GPIO)
    if gpiozero is None:
        return problem
    found = _check_gpiochips(sorted(glob.glob("/dev/gpiochip*")) if chips is None else chips)
    from streamer.controls import pin_factory

    try:
        factory, fell_back = pin_factory(gpiozero)
    except StreamerError as exc:
        found.append(
            Finding(
                "FAIL",
                f"button/LED: {exc.message}",
                f"on a Raspberry Pi: sudo apt install python3-lgpio; {NO_CONTROLS}",
            )
        )
        board, where = _reference_board(), "on a 40-pin Raspberry Pi header"
    else:
        notes = f" (fell back from {'; '.join(fell_back)})" if fell_back else ""
        found.append(Finding("ok", f"GPIO pin factory {type(factory).__name__} loads{notes}"))
        board, where = factory.board_info, "on this board"
    for name, pin in pins.items():
        key = "led" if name == "LED" else name
        try:
            gpio = board.to_gpio(pin)
        except Exception as exc:
            found.append(
                Finding(
                    "FAIL",
                    f"[controls] {key} = {pin!r}: {exc}",
                    f'a GPIO name such as "GPIO17" (BCM numbering), {NO_CONTROLS}',
                )
            )
        else:
            status: Status = "ok" if where == "on this board" else "info"
            found.append(Finding(status, f"{name} {pin}: {gpio} {where}"))
    return found


def _check_gpiochips(chips: Sequence[str]) -> list[Finding]:
    if not chips:
        return [
            Finding(
                "FAIL",
                "button/LED: no /dev/gpiochip* (the kernel offers no GPIO here)",
                f"on a Raspberry Pi: check the kernel and /boot/firmware/config.txt; {NO_CONTROLS}",
            )
        ]
    locked = [chip for chip in chips if not os.access(chip, os.R_OK | os.W_OK)]
    if locked:
        return [
            Finding(
                "FAIL",
                f"button/LED: no permission to open {', '.join(locked)}",
                "sudo usermod -aG gpio $USER, then log in again",
            )
        ]
    return [Finding("ok", f"{', '.join(chips)} can be opened")]


def _reference_board() -> Any:
    """A 40-pin Raspberry Pi's pins, to judge names where no real factory loads."""
    from gpiozero.pins.mock import MockFactory

    return MockFactory().board_info


# --- encoders --------------------------------------------------------------------


def check_encoders(encoder: str, audio: bool) -> list[Finding]:
    """Which H.264 encoders open here, which one the configuration gets; AAC if audio."""
    choice = backends.normalise(backends.ENCODERS, encoder)
    if choice is None:
        return [_not_one_of("encoder", encoder, backends.ENCODERS)]
    x264 = libx264_unavailable_reason()
    v4l2 = v4l2m2m_unavailable_reason()
    found = []
    if v4l2 is None:
        found.append(Finding("ok", "H.264 h264_v4l2m2m (hardware) opens"))
    elif choice == "v4l2m2m":
        found.append(
            Finding(
                "FAIL",
                f"H.264 h264_v4l2m2m (hardware) does not open: {v4l2}",
                "--encoder libx264 (or auto)",
            )
        )
    else:
        found.append(Finding("info", f"H.264 h264_v4l2m2m (hardware) does not open: {v4l2}"))
    reinstall = "pip install --force-reinstall 'av>=18.1,<19'"
    if x264 is None:
        found.append(Finding("ok", "H.264 libx264 (software) opens"))
    else:
        needed = choice == "libx264" or (choice == "auto" and v4l2 is not None)
        found.append(
            Finding(_needed(needed), f"H.264 libx264 (software) does not open: {x264}", reinstall)
        )
    if choice == "auto":
        used = "h264_v4l2m2m" if v4l2 is None else "libx264" if x264 is None else None
        if used:
            found.append(Finding("ok", f"encoder auto: uses {used}"))
    if audio:
        found.append(_check_aac(reinstall))
    return found


def _check_aac(fix: str) -> Finding:
    from streamer.encode.aac import AacEncoder

    try:
        AacEncoder()
    except Exception as exc:
        return Finding("FAIL", f"AAC encoder does not open: {_reason(exc)}", fix)
    return Finding("ok", "AAC encoder opens")


# --- permissions -----------------------------------------------------------------

GROUPS = (
    ("video", "cameras and the hardware encoder"),
    ("audio", "ALSA microphones"),
    ("gpio", "the button and the LED"),
)


def check_groups(
    needed: set[str],
    *,
    uid: int | None = None,
    groups: set[int] | None = None,
    user: str | None = None,
    lookup: Callable[[str], grp.struct_group] = grp.getgrnam,
) -> list[Finding]:
    """Membership of video/audio/gpio for the current user; ``needed`` ones are FAIL if missing.

    Membership counts as this process has it (``os.getgroups``): a user added
    with usermod has it only after logging in again, which is said so.
    """
    uid = os.getuid() if uid is None else uid
    if uid == 0:
        return [Finding("ok", "running as root: device permissions need no group")]
    if groups is None:
        groups = {*os.getgroups(), os.getegid()}
    if user is None:
        try:
            user = pwd.getpwuid(uid).pw_name
        except KeyError:
            user = str(uid)
    found = []
    for group, use in GROUPS:
        try:
            entry = lookup(group)
        except KeyError:
            found.append(Finding("info", f"group {group} does not exist here ({use})"))
            continue
        if entry.gr_gid in groups:
            found.append(Finding("ok", f"user {user} is in group {group} ({use})"))
        elif user in entry.gr_mem:
            found.append(
                Finding(
                    _needed(group in needed),
                    f"user {user} was added to group {group} but this login does not have it yet",
                    "log out and in again (or reboot)",
                )
            )
        else:
            found.append(
                Finding(
                    _needed(group in needed),
                    f"user {user} is not in group {group} ({use})",
                    f"sudo usermod -aG {group} $USER, then log in again",
                )
            )
    return found


def _needed_groups(camera: str, microphone: str, encoder: str, controls: bool = False) -> set[str]:
    """The groups the configured backends need (``streamer.backends``), gpio for controls."""
    needed = {"gpio"} if controls else set()
    found = (
        backends.find(backends.CAMERAS, camera),
        backends.find(backends.MICROPHONES, microphone),
        backends.find(backends.ENCODERS, encoder),
    )
    needed.update(b.group for b in found if b is not None and b.group is not None)
    return needed


# --- RTMP ------------------------------------------------------------------------


def check_rtmp(
    url_text: str | RtmpUrl, timeout: float = HANDSHAKE_TIMEOUT, name: str = ""
) -> list[Finding]:
    """Does the server answer an RTMP handshake (TCP, TLS for rtmps://) within ``timeout``?

    ``name``: the destination's, to start each line with when there are several.
    """
    try:
        url = parse_url(url_text) if isinstance(url_text, str) else url_text
    except StreamerError as exc:
        return [Finding("FAIL", exc.message, "--url rtmp://host[:port]/app/KEY")]
    where = f"{name}: {url.redacted}" if name else url.redacted
    start = time.monotonic()
    try:
        asyncio.run(_handshake(url, timeout))
    except TimeoutError:
        return [
            Finding(
                "FAIL",
                f"{where}: no RTMP handshake within {timeout:g} s",
                "check host and port, and that no firewall drops the connection",
            )
        ]
    except socket.gaierror:
        return [
            Finding(
                "FAIL",
                f"{where}: unknown host {url.host!r}",
                f"check the host name and DNS: getent hosts {url.host}",
            )
        ]
    except ssl.SSLError as exc:
        return [
            Finding(
                "FAIL",
                f"{where}: TLS failed ({getattr(exc, 'verify_message', None) or exc.reason})",
                "check the host name and the clock (date); rtmps:// servers listen on 443",
            )
        ]
    except ConnectionRefusedError:
        return [
            Finding(
                "FAIL",
                f"{where}: connection refused by {url.host}:{url.port}",
                "is the RTMP server running and listening on this port? check the URL's port",
            )
        ]
    except OSError as exc:
        text = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        fix = "check the network: ip route; ping " + url.host
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            fix = "no route to the server: check the network connection (ip route)"
        return [Finding("FAIL", f"{where}: cannot connect ({text})", fix)]
    except StreamerError as exc:  # ProtocolError: something answered, not RTMP
        return [
            Finding(
                "FAIL",
                f"{where}: {exc.message}",
                "is this an RTMP server? rtmp:// is usually port 1935, rtmps:// 443",
            )
        ]
    ms = (time.monotonic() - start) * 1000
    return [
        Finding(
            "ok",
            f"{where} answers the RTMP handshake ({ms:.0f} ms); "
            "the stream key is only checked when publishing",
        )
    ]


async def _handshake(url: RtmpUrl, timeout: float) -> None:
    context = ssl.create_default_context() if url.tls else None
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(url.host, url.port, ssl=context)
        try:
            await client_handshake(reader, writer, timeout=timeout)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def check_status_page(section: StatusSection, config_path: Path | None) -> list[Finding]:
    """The page's address, password, token and TLS files, read as `run` reads them."""
    if not section.port:
        return [Finding("info", "status page off ([status] port = 0)")]
    from streamer.access import is_loopback_listen, page_security

    scheme = "https" if section.tls_cert else "http"
    where = f"{scheme}://{section.address}:{section.port}/"
    try:
        page_security(section, config_path)
    except ConfigError as exc:
        return [Finding("FAIL", f"status page {where}: {exc.message}", "see the line above")]
    if is_loopback_listen(section.address):
        who = "this device only; `streamer set-password` and [status] address open it to the LAN"
    else:
        who = "with a password"
        if section.metrics_token_file:
            who += "; /metrics also with the bearer token"
    return [Finding("ok", f"status page {where} ({who})")]


# --- the report ------------------------------------------------------------------


def _safe(title: str, check: Callable[[], list[Finding]]) -> list[Finding]:
    try:
        return check()
    except Exception as exc:
        return [
            Finding(
                "FAIL",
                f"{title}: the check itself failed ({type(exc).__name__}: {_reason(exc)})",
                "report this as a bug with the line above",
            )
        ]


def run_doctor(
    urls: Sequence[str | Target] = (),
    *,
    camera: str = "sim",
    microphone: str = "sim",
    encoder: str = "auto",
    button: str = "",
    led: str = "",
    status: StatusSection | None = None,
    config_path: Path | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Print the findings; 0 when the configured pipeline can run, 1 when something stops it.

    ``urls``: every destination; each server is asked for an RTMP handshake.
    """
    secrets = []
    for url in urls:
        with contextlib.suppress(Exception):
            secrets.append(url.url.key if isinstance(url, Target) else parse_url(url).key)
    audio = split_spec(microphone)[0] != "none"
    controls = bool(button or led)
    sections: list[tuple[str, Callable[[], list[Finding]]]] = [
        ("camera", lambda: check_camera(camera)),
        ("microphone", lambda: check_microphone(microphone)),
        ("encoders", lambda: check_encoders(encoder, audio)),
        ("controls", lambda: check_controls(button, led)),
        ("groups", lambda: check_groups(_needed_groups(camera, microphone, encoder, controls))),
        ("status page", lambda: check_status_page(status or StatusSection(), config_path)),
    ]
    for url in urls:
        if isinstance(url, Target):
            name = url.name if len(urls) > 1 else ""
            sections.append(("rtmp", functools.partial(check_rtmp, url.url, name=name)))
        else:
            sections.append(("rtmp", functools.partial(check_rtmp, url)))
    if not urls:
        sections.append(
            ("rtmp", lambda: [Finding("info", "no URL given: RTMP server not checked")])
        )
    print(
        f"streamer doctor: camera={camera} microphone={microphone} encoder={encoder}"
        f" button={button or 'none'} led={led or 'none'}",
        file=out,
    )
    failures = 0
    for title, check in sections:
        for finding in _safe(title, check):
            failures += finding.status == "FAIL"
            line = finding.line()
            for secret in secrets:  # belt and braces: no line ever carries a key
                if len(secret) >= 3:
                    line = line.replace(secret, REDACTED)
            print(line, file=out, flush=True)
    if failures:
        print(f"FAIL  {failures} problem(s) in this configuration: see the fixes above", file=out)
        return 1
    print("ok    this configuration can run", file=out)
    return 0
