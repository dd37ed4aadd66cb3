"""The status page from another host, in headless Chromium, against a real `streamer run`.

The other host is a network namespace joined to this one by a veth pair (as
root, with iproute2); without those, this machine's own LAN address, which
is not loopback either. The page listens on that address, so it needs the
password `streamer set-password` stored; the test logs in as a person would,
looks at the preview and the charts, and presses Stop. A screenshot of the
page is saved and its path printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from streamer.hardware.sim import SimCamera
from streamer.localserver import LocalRtmpServer, free_port
from tests.browser import LIVE_GREEN, Browser, png_pixels
from tests.conftest import LiveCli
from tests.unit.test_status import non_loopback_address

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

PASSWORD = "a long enough password"
SIZE = (320, 180)
# Where the preview's pixels are compared with the sim camera's picture: the middle of each of
# the 8 colour bars, low in the picture (the moving block is in the middle third, the frame
# counter top left).
POINTS = [((i + 0.5) / 8, 0.9) for i in range(8)]


@dataclass(frozen=True)
class OtherHost:
    listen: str  # the address the status page listens on
    peer: str  # the address its requests come from
    prefix: tuple[str, ...]  # runs a command on that host


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextlib.contextmanager
def other_host() -> Iterator[OtherHost]:
    if os.geteuid() == 0 and shutil.which("ip"):
        pid = os.getpid()
        name, outside, inside = f"stst{pid}", f"sv{pid}h", f"sv{pid}n"
        net = f"10.251.{(pid >> 6) & 255}.{(pid & 63) * 4}"
        base = net.rsplit(".", 1)[0]
        host, guest = f"{base}.{(pid & 63) * 4 + 1}", f"{base}.{(pid & 63) * 4 + 2}"
        _ip("netns", "add", name)
        try:
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", name)
            _ip("addr", "add", f"{host}/30", "dev", outside)
            _ip("link", "set", outside, "up")
            _ip("-n", name, "addr", "add", f"{guest}/30", "dev", inside)
            _ip("-n", name, "link", "set", inside, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            yield OtherHost(host, guest, ("ip", "netns", "exec", name))
        finally:
            with contextlib.suppress(subprocess.SubprocessError):
                _ip("link", "del", outside)
            _ip("netns", "del", name)
        return
    address = non_loopback_address()
    if address is None:
        pytest.fail(
            "no second host for the status page test: run as root with iproute2 "
            "(a network namespace), or on a machine with a non-loopback address"
        )
    yield OtherHost(address, address, ())


def expected_bars() -> list[tuple[int, int, int]]:
    """The sim camera's colours at POINTS, as RGB."""
    width, height = SIZE
    camera = SimCamera(width, height, 30)
    frame = av.VideoFrame.from_ndarray(camera.picture(0), format="yuv420p")
    rgb = frame.to_ndarray(format="rgb24")
    return [
        (int(r), int(g), int(b))
        for r, g, b in (rgb[int(y * height), int(x * width)] for x, y in POINTS)
    ]


def artifacts() -> Path:
    where = Path(os.environ.get("STREAMER_ARTIFACTS") or tempfile.gettempdir()) / "streamer-tests"
    where.mkdir(parents=True, exist_ok=True)
    return where


def set_password(config: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamer", "set-password", "--config", str(config), "--stdin"],
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


PIXELS_JS = """(() => {
  const img = document.getElementById("preview");
  const c = document.createElement("canvas");
  c.width = img.naturalWidth;
  c.height = img.naturalHeight;
  const g = c.getContext("2d");
  g.drawImage(img, 0, 0);
  const px = POINTS.map(([x, y]) =>
    Array.from(g.getImageData(Math.floor(x * c.width), Math.floor(y * c.height), 1, 1).data));
  return {w: c.width, h: c.height, px};
})()"""

CHART_JS = """(() => {
  const lines = Array.from(document.querySelectorAll("#chart-kbps polyline"));
  return lines.map((l) => l.getAttribute("points").split(" ").filter(Boolean)
    .map((p) => p.split(",").map(Number)));
})()"""


def submit(browser: Browser, password: str) -> None:
    browser.evaluate(
        f"document.getElementById('password').value = {json.dumps(password)};"
        "document.querySelector('form').submit(); true"
    )


def page_is(browser: Browser, path: str, extra: str = "true") -> bool:
    expression = (
        f"location.pathname === {json.dumps(path)} && document.readyState === 'complete' "
        f"&& ({extra})"
    )
    return bool(browser.evaluate(expression))


def test_the_page_from_another_host(
    rtmp_server: LocalRtmpServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    set_password(config)
    with other_host() as remote:
        port = free_port()
        cli = LiveCli(
            "run",
            "--config",
            str(config),
            "--url",
            rtmp_server.url("remotekey"),
            "--size",
            f"{SIZE[0]}x{SIZE[1]}",
            "--status-address",
            remote.listen,
            "--status-port",
            str(port),
        )
        try:
            cli.wait_for_state("preparing -> live", timeout=15)
            cli.wait_for_event("status page", timeout=10)  # the page says it is serving
            url = f"http://{remote.listen}:{port}/"
            with Browser(tmp_path, url, remote.prefix) as browser:
                # Without the password: the login form, and nothing else answers.
                browser.wait_until(lambda: page_is(browser, "/login"), "the login form")
                refused: dict[str, Any] = browser.evaluate(
                    """(async () => {
                        const out = {};
                        for (const p of ["/status", "/snapshot.jpg", "/history", "/metrics"]) {
                            out[p] = (await fetch(p)).status;
                        }
                        out.stop = (await fetch("/stop", {method: "POST",
                            headers: {"X-Requested-With": "streamer"}})).status;
                        return out;
                    })()"""
                )
                assert refused == {
                    "/status": 401,
                    "/snapshot.jpg": 401,
                    "/history": 401,
                    "/metrics": 401,
                    "stop": 401,
                }
                submit(browser, "not the password")
                browser.wait_until(
                    lambda: page_is(
                        browser, "/login", "document.body.textContent.includes('Wrong password')"
                    ),
                    "the wrong password refused",
                )
                submit(browser, PASSWORD)
                browser.wait_until(
                    lambda: page_is(browser, "/", "document.body.dataset.refreshed === 'yes'"),
                    "the page after logging in",
                )
                assert browser.evaluate("document.getElementById('state').textContent") == "live"

                # The preview shows the sim camera's colour bars.
                browser.wait_until(
                    lambda: browser.evaluate("document.body.dataset.preview === 'yes'"),
                    "the preview picture",
                )
                seen = browser.evaluate(PIXELS_JS.replace("POINTS", json.dumps(POINTS)))
                assert (seen["w"], seen["h"]) == SIZE  # narrower than 640: not scaled up
                want = np.array(expected_bars(), dtype=float)
                got = np.array([p[:3] for p in seen["px"]], dtype=float)
                assert np.abs(got - want).max() <= 40, (got.tolist(), want.tolist())

                # The charts have points, and the sent line is above zero.
                def sent_points() -> bool:
                    lines = browser.evaluate(CHART_JS)
                    return (
                        len(lines) == 2 and len(lines[0]) >= 2 and min(y for _, y in lines[0]) < 39
                    )

                browser.wait_until(sent_points, "two samples of the sent bitrate in the chart")
                events = browser.evaluate(
                    "Array.from(document.querySelectorAll('#events li')).map((e) => e.textContent)"
                )
                assert any("preparing → live" in e for e in events), events

                shot = browser.screenshot(artifacts() / "status-page.png")
                request.node.user_properties.append(("screenshot", str(shot)))
                width, _, pixels = png_pixels(shot.read_bytes())
                assert width > 300, "a screenshot of a page"
                green = sum(
                    1 for p in pixels if all(abs(p[i] - LIVE_GREEN[i]) <= 3 for i in range(3))
                )
                assert green > 0, "the 'live' banner is not on the screenshot"

                # Stop stops the stream.
                seen_events = len(cli.events)
                browser.evaluate("document.getElementById('stop').click(); true")
                cli.wait_for_state("live -> idle", timeout=10, after=seen_events)
                browser.wait_until(
                    lambda: (
                        browser.evaluate("document.getElementById('state').textContent") == "idle"
                    ),
                    "the page to show idle",
                )
            failed = [e for e in cli.events if "wrong password" in str(e.get("event"))]
            assert [e.get("peer") for e in failed] == [remote.peer]
            assert PASSWORD not in cli.output and "not the password" not in cli.output
            assert cli.stop(signal.SIGTERM) == 0
        finally:
            cli.stop(signal.SIGKILL)
