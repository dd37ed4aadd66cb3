"""The status page in a real browser: headless Chromium renders it and runs its script.

Needs ``/usr/bin/chromium`` (Debian package ``chromium``); without it these
tests fail, they do not skip. ``STREAMER_CHROMIUM`` points them at another binary.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from streamer.status import CONTROL_HEADER, CONTROL_VALUE
from tests.browser import LIVE_GREEN, Browser, png_pixels, run_chromium
from tests.unit.test_status import SNAPSHOT, Calls, ServerThread

pytestmark = pytest.mark.timeout(120)


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
