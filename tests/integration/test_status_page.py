"""The status page in a real browser: headless Chromium renders it and runs its script.

Needs ``/usr/bin/chromium`` (Debian package ``chromium``); without it these
tests fail, they do not skip. ``STREAMER_CHROMIUM`` points them at another binary.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import re
import select
import signal
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from streamer.status import CONTROL_HEADER, CONTROL_VALUE
from tests.unit.test_status import SNAPSHOT, Calls, ServerThread

CHROMIUM = os.environ.get("STREAMER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_TIMEOUT = 30.0  # seconds per Chromium run
LIVE_GREEN = (0x2E, 0x7D, 0x32)  # the banner colour of state "live" in streamer/status.py

pytestmark = pytest.mark.timeout(120)


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


class Snapshots:
    """The first snapshot (the server-rendered page) says 'preparing'; later ones 'live'.

    So 'live' in the DOM proves that the page's script fetched /status and showed it.
    """

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            n = self.calls
        state = "preparing" if n == 1 else "live"
        return {**SNAPSHOT, "state": state, "reason": f"snapshot {n}", "frames_sent": 1000 * n}


def test_the_rendered_dom_shows_the_fetched_state(tmp_path: Path) -> None:
    snapshots = Snapshots()
    with ServerThread(snapshots) as running:
        dom = run_chromium(
            tmp_path,
            "--virtual-time-budget=5000",  # let the page's fetch('/status') complete
            "--dump-dom",
            f"http://127.0.0.1:{running.port}/",
        )
    assert snapshots.calls >= 2, "the page never fetched /status"
    assert re.search(r'<div id="state">live</div>', dom), dom[:3000]
    assert 'id="banner" data-state="live"' in dom
    assert 'data-refreshed="yes"' in dom
    assert "<title>streamer: live</title>" in dom
    assert "snapshot 1<" not in dom  # the server-rendered values were replaced
    assert '<span id="updated">status unreachable' not in dom
    assert 'class="stale"' not in dom
    assert "h264_v4l2m2m" in dom and "29.8 fps" in dom


def test_the_script_rebuilds_the_destinations_table_from_status(tmp_path: Path) -> None:
    from tests.unit.test_status import TWO, destination

    calls = {"n": 0}

    def snapshots() -> dict[str, Any]:  # the page is rendered with one; /status gives two
        calls["n"] += 1
        if calls["n"] == 1:
            return {**TWO, "destinations": [destination("first", "preparing")]}
        rows = [*TWO["destinations"], destination("<b>x</b>", "error", reason="<i>refused</i>")]
        return {**TWO, "destinations": rows}

    with ServerThread(snapshots) as running:
        dom = run_chromium(
            tmp_path,
            "--virtual-time-budget=5000",
            "--dump-dom",
            f"http://127.0.0.1:{running.port}/",
        )
    assert 'data-refreshed="yes"' in dom, dom[:3000]
    body = dom[dom.index('<tbody id="d-rows">') :]
    body = body[: body.index("</tbody>")]
    rows = re.findall(r'<tr data-state="([^"]*)">(.*?)</tr>', body)
    assert [state for state, _ in rows] == ["live", "reconnecting", "error"]
    assert "first" not in body  # the server-rendered row was replaced
    cells = [re.findall(r"<td>(.*?)</td>", row) for _, row in rows]
    assert cells[0][0] == 'main<div class="sub">rtmp://main.example.com:1935/live/***</div>'
    assert cells[0][2:] == ["2431 kbps", "120 ms", "3", "0"]
    assert cells[1][1] == 'reconnecting<div class="sub">connection refused; retrying in 2.0 s</div>'
    assert cells[1][2:] == ["0 kbps", "0 ms", "6", "3"]
    assert cells[2][0].startswith("&lt;b&gt;x&lt;/b&gt;")  # text, never markup
    assert "&lt;i&gt;refused&lt;/i&gt;" in cells[2][1]


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


def test_the_page_renders_with_the_live_colour(tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    with ServerThread(lambda: {**SNAPSHOT, "state": "live"}) as running:
        run_chromium(
            tmp_path,
            f"--screenshot={shot}",
            "--window-size=800,600",
            f"http://127.0.0.1:{running.port}/",
        )
    assert shot.is_file(), "Chromium wrote no screenshot"
    data = shot.read_bytes()
    assert len(data) > 5000, f"screenshot suspiciously small: {len(data)} bytes"
    width, height, pixels = png_pixels(data)
    assert (width, height) == (800, 600)
    colours = set(pixels)
    assert len(colours) > 20, f"a near-blank screenshot: {len(colours)} colours"
    green = sum(1 for p in pixels if all(abs(p[i] - LIVE_GREEN[i]) <= 3 for i in range(3)))
    assert green > len(pixels) // 20, "the 'live' banner colour is not on the screenshot"


# -- the buttons, driven over the DevTools protocol ------------------------------------


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

    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
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
        command = [
            "/bin/bash",
            "-c",
            redirect,
            *chromium,
        ]
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

    def wait_for_load(self) -> None:
        """Until the page at ``url`` has loaded (not the about:blank that comes first)."""
        expression = (
            f"location.href === {json.dumps(self.url)} && document.readyState === 'complete'"
        )
        self.wait_until(lambda: self.evaluate(expression), f"{self.url} to load")


def test_the_buttons_call_on_start_and_on_stop(tmp_path: Path) -> None:
    calls = Calls()
    with (
        ServerThread(calls.read, on_start=calls.on_start, on_stop=calls.on_stop) as running,
        Browser(tmp_path, f"http://127.0.0.1:{running.port}/") as browser,
    ):
        browser.wait_for_load()
        browser.wait_until(
            lambda: browser.evaluate("document.body.dataset.refreshed === 'yes'"),
            "the page's first refresh",
        )
        browser.evaluate("document.getElementById('stop').click()")
        browser.wait_until(lambda: calls.stop == 1, "on_stop after a click on Stop")
        browser.evaluate("document.getElementById('start').click()")
        browser.wait_until(lambda: calls.start == 1, "on_start after a click on Start")
        time.sleep(0.3)  # the page's own follow-up refresh; the message stays empty
        assert browser.evaluate("document.getElementById('message').textContent") == ""
    assert (calls.start, calls.stop) == (1, 1)


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>another site</title><p>hello"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def attacker_site() -> Iterator[str]:
    """A plain page on another origin (another port), as a malicious site would be."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_page_on_another_origin_cannot_press_stop(tmp_path: Path) -> None:
    calls = Calls()
    with (
        ServerThread(calls.read, on_start=calls.on_start, on_stop=calls.on_stop) as running,
        attacker_site() as attacker,
        Browser(tmp_path, attacker) as browser,
        structlog.testing.capture_logs() as logs,
    ):
        browser.wait_for_load()
        stop = f"http://127.0.0.1:{running.port}/stop"
        outcome = browser.evaluate(
            f"""(async () => {{
                const out = {{}};
                try {{
                    const r = await fetch({json.dumps(stop)}, {{method: "POST",
                        headers: {{{json.dumps(CONTROL_HEADER)}: {json.dumps(CONTROL_VALUE)}}}}});
                    out.with_header = r.status;
                }} catch (e) {{ out.with_header = "blocked"; }}
                const r = await fetch({json.dumps(stop)}, {{method: "POST", mode: "no-cors"}});
                out.simple = r.type;
                return out;
            }})()"""
        )
    # The preflight for the custom header was refused, so the browser never sent that POST;
    # the simple POST (what a form can do) reached the server and was refused there.
    assert outcome == {"with_header": "blocked", "simple": "opaque"}
    seen = [(e.get("method"), e.get("path"), e.get("status")) for e in logs]
    assert ("OPTIONS", "/stop", 405) in seen
    assert ("POST", "/stop", 403) in seen
    assert ("POST", "/stop", 204) not in seen
    assert (calls.start, calls.stop) == (0, 0)
