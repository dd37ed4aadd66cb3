"""Headless Chromium for the status page tests: one-shot runs and a DevTools-driven browser.

Needs ``/usr/bin/chromium`` (Debian package ``chromium``); without it the
tests fail, they do not skip. ``STREAMER_CHROMIUM`` points them at another binary.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("STREAMER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_TIMEOUT = 30.0  # seconds per Chromium run
LIVE_GREEN = (0x2E, 0x7D, 0x32)  # the banner colour of state "live" in streamer/page.py


def chromium_binary() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"{CHROMIUM} not found: the status page test renders the page in headless Chromium. "
            "Install it with `apt-get install -y chromium` (CI must install it too), "
            "or point STREAMER_CHROMIUM at a Chromium binary."
        )
    return CHROMIUM


def chromium_command(tmp: Path, *args: str) -> list[str]:
    return [
        chromium_binary(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
    ]


def run_chromium(tmp: Path, *args: str) -> str:
    """Run headless Chromium (at most CHROMIUM_TIMEOUT s); its stdout."""
    command = chromium_command(tmp, *args)
    # Its own process group, so that a hang is ended with all of Chromium's helpers.
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"Chromium did not finish within {CHROMIUM_TIMEOUT:g} s:\n{err[-3000:]}")
    assert proc.returncode == 0, f"Chromium exited with {proc.returncode}:\n{err[-3000:]}"
    return out


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Width, height and RGB pixels of an 8-bit RGB/RGBA, non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    previous = bytearray(stride)
    pixels: list[tuple[int, int, int]] = []
    for y in range(height):
        start = y * (stride + 1)
        kind_byte, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind_byte == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind_byte == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind_byte == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind_byte == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                best = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + best) & 0xFF
        pixels.extend(
            (line[x], line[x + 1], line[x + 2]) for x in range(0, stride, bpp * 4)
        )  # every 4th pixel is plenty
        previous = line
    return width, height, pixels


def _high_fd(fd: int) -> int:
    """The same pipe end moved to a descriptor >= 10 (so it cannot be 3 or 4)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """Headless Chromium on ``url``, driven over the DevTools protocol on a pipe.

    ``--remote-debugging-pipe`` reads commands on fd 3 and answers on fd 4,
    NUL-separated JSON. The whole session is bounded by CHROMIUM_TIMEOUT.
    """

    def __init__(self, tmp: Path, url: str, prefix: Sequence[str] = ()) -> None:
        """``prefix`` runs Chromium through another command (``ip netns exec NAME``)."""
        self.tmp, self.url, self.prefix = tmp, url, list(prefix)
        self.deadline = time.monotonic() + CHROMIUM_TIMEOUT
        self._next_id = 0
        self._buffer = b""
        self.session = ""

    def __enter__(self) -> Browser:
        chromium = chromium_command(self.tmp, "--remote-debugging-pipe", self.url)
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()
        to_child, from_child = _high_fd(to_child), _high_fd(from_child)
        self._stderr = open(self.tmp / "chromium.log", "wb")
        # bash, not sh: dash cannot redirect descriptors above 9.
        redirect = f'exec "$0" "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-'
        command = [*self.prefix, "/bin/bash", "-c", redirect, *chromium]
        self.proc = subprocess.Popen(
            command,
            pass_fds=(to_child, from_child),
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            start_new_session=True,
        )
        os.close(to_child)
        os.close(from_child)
        try:
            self.session = self._attach()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            self._send({"id": 0, "method": "Browser.close"})
        try:
            self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        finally:
            os.close(self._in)
            os.close(self._out)
            self._stderr.close()

    def fail(self, why: str) -> None:
        log = (self.tmp / "chromium.log").read_text(errors="replace")
        lines = [line for line in log.splitlines() if "dbus" not in line]
        pytest.fail(f"{why}\nChromium's log:\n" + "\n".join(lines[-30:]))

    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._out, json.dumps(message).encode() + b"\0")

    def _receive(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self.fail(f"Chromium did not answer within {CHROMIUM_TIMEOUT:g} s")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                data = os.read(self._in, 1 << 16)
                if not data:
                    self.fail(f"Chromium closed the DevTools pipe (exit {self.proc.poll()})")
                self._buffer += data
        message, _, self._buffer = self._buffer.partition(b"\0")
        result: dict[str, Any] = json.loads(message)
        return result

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        self._send(message)
        while True:
            answer = self._receive()
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    self.fail(f"{method} failed: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result

    def _attach(self) -> str:
        while True:
            pages = [
                t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"
            ]
            if pages:
                target = pages[0]["targetId"]
                break
            if time.monotonic() > self.deadline:
                self.fail("Chromium opened no page")
            time.sleep(0.05)
        attached = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        return str(attached["sessionId"])

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            self.fail(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, check: Callable[[], Any], what: str) -> None:
        while not check():
            if time.monotonic() > self.deadline:
                self.fail(f"timed out waiting for {what}")
            time.sleep(0.05)

    def screenshot(self, path: Path, width: int = 412) -> Path:
        """The whole page as a phone ``width`` CSS pixels wide draws it now, as a PNG file."""
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": True},
        )
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1}
        shot = self.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def wait_for_load(self) -> None:
        """Until the page at ``url`` has loaded (not the about:blank that comes first)."""
        expression = (
            f"location.href === {json.dumps(self.url)} && document.readyState === 'complete'"
        )
        self.wait_until(lambda: self.evaluate(expression), f"{self.url} to load")
