"""The status server: JSON, metrics, the page, Start/Stop and what it does with bad clients.

Each test runs a real StatusServer on a free loopback port in a thread with
its own event loop (``running``) and talks to it over plain sockets.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from streamer.exc import ConfigError
from streamer.metrics import render_metrics
from streamer.page import format_value, render_page
from streamer.state import STATES
from streamer.status import (
    CONTROL_HEADER,
    CONTROL_VALUE,
    StatusServer,
    is_loopback_host,
    is_loopback_peer,
)

pytestmark = pytest.mark.timeout(30)

MALICIOUS = '<script>alert("x")</script><img src=x onerror=alert(1)> & "quoted"'

SNAPSHOT: dict[str, Any] = {
    "state": "live",
    "reason": "publishing to rtmp://example.com:1935/live/***",
    "since": "2024-05-01T12:00:00+02:00",
    "uptime_s": 3725.4,
    "encoder": "h264_v4l2m2m",
    "resolution": "1280x720",
    "fps": 29.8,
    "sent_kbps": 2431,
    "target_kbps": 2500,
    "queue_ms": 120,
    "dropped": 7,
    "dropped_video": 5,
    "dropped_audio": 2,
    "discarded_offline": 40,
    "frames_sent": 10_000,
    "reconnects": 3,
    "url": "rtmp://example.com:1935/live/***",
}


@dataclass
class Calls:
    start: int = 0
    stop: int = 0
    texts: list[str] = field(default_factory=list)
    snapshot: dict[str, Any] = field(default_factory=lambda: dict(SNAPSHOT))

    def on_start(self) -> None:
        self.start += 1

    def on_stop(self) -> None:
        self.stop += 1

    def on_text(self, text: str, index: int) -> None:
        if index > 0:
            raise ConfigError(f"no text filter number {index} to change")
        self.texts.append(text)

    def read(self) -> dict[str, Any]:
        return self.snapshot


class ServerThread:
    """A StatusServer on its own event loop in a thread, for blocking test clients."""

    def __init__(
        self,
        snapshot: Callable[[], Mapping[str, Any]],
        *,
        on_start: Callable[[], object] = lambda: None,
        on_stop: Callable[[], object] = lambda: None,
        **kwargs: Any,
    ) -> None:
        self.server = StatusServer(snapshot, on_start=on_start, on_stop=on_stop, port=0, **kwargs)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await self.server.stop()

    @property
    def port(self) -> int:
        return self.server.port

    def __enter__(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("status server did not start within 10 s")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "status server did not stop within 10 s"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, data: bytes, timeout: float = 5.0, shut: bool = False) -> bytes:
    """Send raw bytes, read until the server closes; b'' when it closed without a word."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            if shut:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # closed with our unread garbage in its buffer
            pass
        return b"".join(chunks)


def parse(raw: bytes) -> Reply:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    assert version.startswith("HTTP/"), lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status), headers, body)


def request(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    host: str | None = None,
    body: bytes = b"",
) -> Reply:
    fields = {"Host": host or f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    text = f"{method} {path} HTTP/1.1\r\n"
    text += "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    if method == "POST":
        text += f"Content-Length: {len(body)}\r\n"
    return parse(exchange(port, (text + "\r\n").encode() + body))


CONTROL = {CONTROL_HEADER: CONTROL_VALUE}
# SNAPSHOT's numbers as one destination's.
ONE = {
    k: SNAPSHOT[k]
    for k in (
        "sent_kbps",
        "target_kbps",
        "queue_ms",
        "dropped",
        "dropped_video",
        "dropped_audio",
        "discarded_offline",
        "frames_sent",
        "reconnects",
        "fps",
    )
}


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def server(calls: Calls) -> Iterator[ServerThread]:
    with ServerThread(
        calls.read, on_start=calls.on_start, on_stop=calls.on_stop, on_text=calls.on_text
    ) as running:
        yield running


# -- GET ------------------------------------------------------------------------------


def test_status_is_the_snapshot_as_json(server: ServerThread) -> None:
    reply = request(server.port, "GET", "/status")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert int(reply.headers["content-length"]) == len(reply.body)
    assert json.loads(reply.body) == SNAPSHOT


def test_status_survives_values_json_cannot_spell(server: ServerThread, calls: Calls) -> None:
    calls.snapshot = {**SNAPSHOT, "fps": float("nan"), "queue_ms": float("inf"), "x": object()}
    body = json.loads(request(server.port, "GET", "/status").body)
    assert body["fps"] is None and body["queue_ms"] is None
    assert body["x"].startswith("<object")


def test_a_query_string_is_ignored(server: ServerThread) -> None:
    assert request(server.port, "GET", "/status?x=1").status == 200


def test_head_has_the_headers_and_no_body(server: ServerThread) -> None:
    reply = request(server.port, "HEAD", "/status")
    assert reply.status == 200 and reply.body == b""
    assert int(reply.headers["content-length"]) == len(json.dumps(SNAPSHOT))


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = request(port, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"] == CONTENT_TYPE_LATEST
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.body.decode())
        for sample in family.samples
    }


def test_metrics_parse_and_carry_the_snapshot(server: ServerThread, calls: Calls) -> None:
    calls.snapshot = {**SNAPSHOT, "destinations": [destination("main", "live", **ONE)]}
    samples = metrics(server.port)
    assert samples[("streamer_up", ())] == 1
    for state in STATES:
        assert samples[("streamer_state", (("state", state),))] == (1 if state == "live" else 0)
    main = (("destination", "main"),)
    assert samples[("streamer_frames_sent_total", main)] == 10_000
    assert samples[("streamer_dropped_packets_total", (*main, ("kind", "audio")))] == 2
    assert samples[("streamer_dropped_packets_total", (*main, ("kind", "video")))] == 5
    assert samples[("streamer_reconnects_total", main)] == 3
    assert samples[("streamer_discarded_offline_packets_total", main)] == 40
    # Base units: seconds and bits per second.
    assert samples[("streamer_queue_seconds", main)] == pytest.approx(0.120)
    assert samples[("streamer_sent_bits_per_second", main)] == 2_431_000
    assert samples[("streamer_target_bits_per_second", main)] == 2_500_000
    assert samples[("streamer_encoder_target_bits_per_second", ())] == 2_500_000
    assert samples[("streamer_uptime_seconds", ())] == pytest.approx(3725.4)
    info = (("encoder", "h264_v4l2m2m"), ("resolution", "1280x720"))
    assert samples[("streamer_info", info)] == 1
    # One metric per quantity: no device-wide sum beside the per-destination series.
    assert not [name for name, labels in samples if name.startswith("streamer_sent") and not labels]


def test_metrics_are_read_at_scrape_time(server: ServerThread, calls: Calls) -> None:
    main = (("destination", "main"),)
    calls.snapshot = {**SNAPSHOT, "destinations": [destination("main", "live", **ONE)]}
    assert metrics(server.port)[("streamer_frames_sent_total", main)] == 10_000
    more = {**ONE, "frames_sent": 12_345}
    calls.snapshot = {
        **SNAPSHOT,
        "state": "reconnecting",
        "destinations": [destination("main", "reconnecting", **more)],
    }
    samples = metrics(server.port)
    assert samples[("streamer_frames_sent_total", main)] == 12_345
    assert samples[("streamer_state", (("state", "reconnecting"),))] == 1
    assert samples[("streamer_state", (("state", "live"),))] == 0


def test_metrics_skip_what_is_missing_or_not_a_number(server: ServerThread, calls: Calls) -> None:
    odd = {"queue_ms": "n/a", "sent_kbps": float("nan"), "target_kbps": None}
    calls.snapshot = {"state": "idle", "uptime_s": None, "destinations": [{"name": "a", **odd}]}
    samples = metrics(server.port)
    assert samples[("streamer_up", ())] == 1
    assert samples[("streamer_state", (("state", "idle"),))] == 1
    names = {name for name, _ in samples}
    assert not names & {
        "streamer_queue_seconds",
        "streamer_sent_bits_per_second",
        "streamer_target_bits_per_second",
        "streamer_uptime_seconds",
    }


def test_a_failing_snapshot_is_500_and_up_0_and_the_server_goes_on() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    with ServerThread(broken) as running:
        assert request(running.port, "GET", "/status").status == 500
        assert request(running.port, "GET", "/").status == 500
        assert metrics(running.port) == {("streamer_up", ()): 0}


def test_metrics_use_a_private_registry() -> None:
    from prometheus_client import REGISTRY

    before = set(REGISTRY._names_to_collectors)
    StatusServer(lambda: SNAPSHOT, on_start=lambda: None, on_stop=lambda: None, port=0)
    assert set(REGISTRY._names_to_collectors) == before


def test_page_shows_the_state_and_the_fields(server: ServerThread) -> None:
    reply = request(server.port, "GET", "/")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    page = reply.body.decode()
    assert '<header id="banner" data-state="live">' in page
    assert '<div id="state">live</div>' in page
    for shown in ("h264_v4l2m2m", "1280x720", "29.8 fps", "2431 kbps", "120 ms", "1:02:05"):
        assert shown in page
    assert "fetch(" in page and '<noscript><meta http-equiv="refresh"' in page
    # Self-contained: nothing loaded from elsewhere, links only to this server's own paths.
    assert " src=" not in page and "<link" not in page and "@import" not in page
    assert re.findall(r'href="([^"]*)"', page) == ["/status", "/metrics"]
    assert "frame-ancestors 'none'" in reply.headers["content-security-policy"]
    assert reply.headers["x-frame-options"] == "DENY"


def test_page_escapes_what_the_snapshot_says(server: ServerThread, calls: Calls) -> None:
    calls.snapshot = {**SNAPSHOT, "reason": MALICIOUS, "state": 'live"><b>x</b>', "encoder": "<i>"}
    page = request(server.port, "GET", "/").body.decode()
    assert "<script>alert" not in page
    assert "<img src=x" not in page
    assert "<b>x</b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x" in page
    assert "&amp; &quot;quoted&quot;" in page
    assert 'data-state="live&quot;&gt;&lt;b&gt;x&lt;/b&gt;"' in page
    assert page.count("<script>") == 1  # only the page's own


@pytest.mark.parametrize(
    ("kind", "value", "text"),
    [
        ("duration", 59.9, "0:00:59"),
        ("duration", 3600, "1:00:00"),
        ("fps", 30, "30.0 fps"),
        ("kbps", 2499.5, "2500 kbps"),
        ("ms", 0, "0 ms"),
        ("int", 7, "7"),
        ("int", None, "–"),
        ("kbps", "n/a", "n/a"),
        ("text", "<x>", "<x>"),  # escaping is render_page's job
    ],
)
def test_format_value(kind: str, value: Any, text: str) -> None:
    assert format_value(kind, value) == text


# -- routing --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/status/", "/start/x", "/favicon.ico"])
def test_unknown_paths_are_404(server: ServerThread, path: str) -> None:
    assert request(server.port, "GET", path).status == 404


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/stop", "POST"),
        ("GET", "/start", "POST"),
        ("POST", "/status", "GET, HEAD"),
        ("PUT", "/", "GET, HEAD"),
        ("DELETE", "/metrics", "GET, HEAD"),
        ("OPTIONS", "/stop", "POST"),  # a CORS preflight gets no CORS headers
    ],
)
def test_wrong_methods_are_405(server: ServerThread, method: str, path: str, allow: str) -> None:
    reply = request(server.port, method, path, headers=CONTROL)
    assert reply.status == 405
    assert sorted(m.strip() for m in reply.headers["allow"].split(",")) == allow.split(", ")
    assert not any(h.startswith("access-control-") for h in reply.headers)


# -- Start / Stop ---------------------------------------------------------------------


def test_post_stop_calls_on_stop(server: ServerThread, calls: Calls) -> None:
    reply = request(server.port, "POST", "/stop", headers=CONTROL)
    assert reply.status == 204 and reply.body == b""
    assert "content-length" not in reply.headers
    assert (calls.start, calls.stop) == (0, 1)


def test_post_start_calls_on_start(server: ServerThread, calls: Calls) -> None:
    assert request(server.port, "POST", "/start", headers=CONTROL).status == 204
    assert (calls.start, calls.stop) == (1, 0)


def test_post_text_changes_the_text(server: ServerThread, calls: Calls) -> None:
    body = json.dumps({"text": "Nest 2 %H:%M", "index": 0}).encode()
    assert request(server.port, "POST", "/text", headers=CONTROL, body=body).status == 204
    assert calls.texts == ["Nest 2 %H:%M"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "send JSON"),
        (b'["a"]', "send JSON"),
        (b'{"text": 5}', "send JSON"),
        (b'{"text": "a", "index": "0"}', "index must be a whole number"),
        (b'{"text": "a", "index": true}', "index must be a whole number"),
        (b'{"text": "a", "index": 1}', "no text filter number 1"),
    ],
)
def test_post_text_says_what_is_wrong(
    server: ServerThread, calls: Calls, body: bytes, why: str
) -> None:
    reply = request(server.port, "POST", "/text", headers=CONTROL, body=body)
    assert reply.status == 400 and why in reply.body.decode()
    assert calls.texts == []


def test_post_text_from_another_site_is_refused_before_it_is_read(
    server: ServerThread, calls: Calls
) -> None:
    reply = request(server.port, "POST", "/text", body=b"not json")  # no X-Requested-With
    assert reply.status == 403
    assert calls.texts == []


def test_same_origin_browser_post_is_accepted(server: ServerThread, calls: Calls) -> None:
    origin = f"http://127.0.0.1:{server.port}"
    headers = {**CONTROL, "Origin": origin, "Sec-Fetch-Site": "same-origin"}
    assert request(server.port, "POST", "/stop", headers=headers).status == 204
    assert calls.stop == 1


@pytest.mark.parametrize(
    ("headers", "host"),
    [
        ({}, None),  # no X-Requested-With: a plain form post or curl -X POST
        ({CONTROL_HEADER: "other"}, None),
        ({**CONTROL, "Origin": "http://evil.example"}, None),
        ({**CONTROL, "Origin": "null"}, None),
        ({**CONTROL, "Sec-Fetch-Site": "cross-site"}, None),
        ({**CONTROL, "Sec-Fetch-Site": "same-site"}, None),
        ({**CONTROL, "Origin": "http://evil.example:8089"}, "evil.example:8089"),  # rebinding
        (CONTROL, "attacker.example"),
    ],
)
def test_post_is_refused_without_proof_it_is_not_cross_site(
    server: ServerThread, calls: Calls, headers: dict[str, str], host: str | None
) -> None:
    reply = request(server.port, "POST", "/stop", headers=headers, host=host)
    assert reply.status == 403
    assert (calls.start, calls.stop) == (0, 0)


def test_get_with_a_foreign_host_is_refused_when_listening_on_loopback(
    server: ServerThread,
) -> None:
    assert request(server.port, "GET", "/status", host="evil.example").status == 403
    assert request(server.port, "GET", "/status", host=f"localhost:{server.port}").status == 200
    assert request(server.port, "GET", "/status", host=f"[::1]:{server.port}").status == 200


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_a_network_address_without_a_password_is_refused() -> None:
    for host in ("0.0.0.0", "::", "192.168.1.20"):
        with pytest.raises(ConfigError) as caught:
            StatusServer(lambda: SNAPSHOT, on_start=lambda: None, on_stop=lambda: None, host=host)
        assert "set-password" in caught.value.message and host in caught.value.message
        assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        (("127.0.0.1", 5000), True),
        (("127.8.9.10", 5000), True),
        (("::1", 5000, 0, 0), True),
        (("::ffff:127.0.0.1", 5000, 0, 0), True),
        (("192.168.1.20", 5000), False),
        (("::ffff:192.168.1.20", 5000, 0, 0), False),
        (("fe80::1%eth0", 5000, 0, 2), False),
        ("/run/streamer.sock", False),
        (None, False),
        ((), False),
    ],
)
def test_is_loopback_peer(peer: object, loopback: bool) -> None:
    assert is_loopback_peer(peer) is loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:8089", True),
        ("127.0.0.1", True),
        ("LOCALHOST:8089", True),
        ("localhost.", True),
        ("[::1]:8089", True),
        ("[::1]", True),
        ("evil.example:8089", False),
        ("127.0.0.1.evil.example", False),
        ("localhost.evil.example", False),
        ("::1", False),
        ("[::1", False),
        ("127.0.0.1:80x", False),
        ("192.168.1.20:8089", False),
        ("", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_a_failing_command_is_500_and_the_server_goes_on() -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    with ServerThread(lambda: SNAPSHOT, on_stop=broken) as running:
        assert request(running.port, "POST", "/stop", headers=CONTROL).status == 500
        assert request(running.port, "GET", "/status").status == 200


# -- bad clients ----------------------------------------------------------------------

GARBAGE = [
    b"\x00\xff\xfe garbage \r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS ClientHello
    b"GET\r\n\r\n",
    b"GET /status\r\n\r\n",  # HTTP/0.9
    b"GET /status HTTP/1.1\r\n\r\n",  # no Host
    b"GET /status HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost: x\r\n folded: header\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /st\x00tus HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /status HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
    b"GET relative HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /stop HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /stop HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
    b"POST /stop HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /stop HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nshort",  # then EOF
    b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: y\r\n" * 200 + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"y" * 20_000 + b"\r\n\r\n",
    b"\r\n" * 10_000,
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_garbage_gets_4xx_or_a_close_and_the_server_goes_on(
    server: ServerThread, calls: Calls, data: bytes
) -> None:
    raw = exchange(server.port, data, shut=True)
    if raw:  # refused (a Host "x" is not loopback: 403), never served
        assert 400 <= parse(raw).status < 500 or parse(raw).status == 505
    assert (calls.start, calls.stop) == (0, 0)
    assert request(server.port, "GET", "/status").status == 200


def test_garbage_is_not_logged_above_debug(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), structlog.testing.capture_logs() as logs:
        for data in GARBAGE[:6]:
            exchange(server.port, data)
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG] == []
    assert [e for e in logs if e["log_level"] != "debug"] == []
    assert any(e["event"] == "bad status request" for e in logs)


def test_random_bytes_never_hurt_the_server(calls: Calls) -> None:
    with ServerThread(calls.read, on_start=calls.on_start, on_stop=calls.on_stop) as running:

        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(st.binary(max_size=3000) | st.text(max_size=300).map(str.encode))
        def check(data: bytes) -> None:
            raw = exchange(running.port, data, shut=True)
            if raw:
                assert 400 <= parse(raw).status < 500 or parse(raw).status == 505

        check()
        assert request(running.port, "GET", "/status").status == 200
        assert (calls.start, calls.stop) == (0, 0)


def test_a_slow_client_is_dropped_after_the_timeout() -> None:
    with ServerThread(lambda: SNAPSHOT, timeout=0.3) as running:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
            sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            raw = b"".join(iter(lambda: sock.recv(65536), b""))  # returns at the server's close
        waited = time.monotonic() - began
        assert 0.25 <= waited < 3
        assert raw == b"" or parse(raw).status == 408
        # A connection that never says anything is closed without a word.
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
            assert sock.recv(65536) == b""
        assert request(running.port, "GET", "/status").status == 200


def test_a_trickling_client_cannot_outstay_the_timeout() -> None:
    """One byte every 0.1 s never idles long, but the whole request has a deadline."""
    with ServerThread(lambda: SNAPSHOT, timeout=0.5) as running:
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
            closed = False
            for byte in b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"y" * 100:
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                sock.settimeout(0.1)
                try:
                    sock.recv(65536)  # the 408, or b"" at the close
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    pass
                closed = True
                break
            assert closed
        assert time.monotonic() - began < 3


def test_connections_beyond_the_limit_are_turned_away() -> None:
    with ServerThread(lambda: SNAPSHOT, max_connections=2, timeout=5) as running:
        idle = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(2)]
        try:
            time.sleep(0.2)  # let the server accept both
            raw = exchange(running.port, b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert parse(raw).status == 503
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 5
        while request(running.port, "GET", "/status").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_requests_are_not_logged_at_info(server: ServerThread) -> None:
    with structlog.testing.capture_logs() as logs:
        request(server.port, "GET", "/status")
        request(server.port, "GET", "/metrics")
        request(server.port, "POST", "/stop", headers=CONTROL)
        request(server.port, "POST", "/stop")
        exchange(server.port, b"garbage\r\n\r\n")
    assert [e for e in logs if e["log_level"] not in ("debug",)] == []


# -- lifecycle ------------------------------------------------------------------------


def test_port_0_picks_a_free_port_and_stop_closes_it() -> None:
    with ServerThread(lambda: SNAPSHOT) as running:
        port = running.port
        assert port != 0
        assert running.server.url == f"http://127.0.0.1:{port}/"
        assert request(port, "GET", "/status").status == 200
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_stop_does_not_wait_for_a_silent_client() -> None:
    running = ServerThread(lambda: SNAPSHOT, timeout=60)
    with running:
        silent = socket.create_connection(("127.0.0.1", running.port))
        time.sleep(0.1)
        began = time.monotonic()
    try:
        assert time.monotonic() - began < 3
        silent.settimeout(2)
        assert silent.recv(10) == b""
    finally:
        silent.close()


def test_a_port_in_use_is_a_config_error_naming_the_option() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = StatusServer(
            lambda: SNAPSHOT, on_start=lambda: None, on_stop=lambda: None, port=port
        )
        with pytest.raises(ConfigError) as caught:
            asyncio.run(server.start())
    assert str(port) in caught.value.message
    assert "--status-port" in caught.value.message
    assert caught.value.exit_code == 2


def test_stop_before_start_is_harmless() -> None:
    server = StatusServer(lambda: SNAPSHOT, on_start=lambda: None, on_stop=lambda: None)
    asyncio.run(server.stop())
    assert server.port == 8089


# -- several destinations -------------------------------------------------------------

KEY1, KEY2 = "mainKey-8812", "backupKey-3307"


def destination(name: str, state: str, **numbers: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "url": f"rtmp://{name}.example.com:1935/live/***",
        "state": state,
        "reason": f"publishing to rtmp://{name}.example.com:1935/live/***",
        "sent_kbps": 0,
        "fps": 0.0,
        "queue_ms": 0,
        "frames_sent": 0,
        "dropped": 0,
        "dropped_video": 0,
        "dropped_audio": 0,
        "discarded_offline": 0,
        "keyframes_requested": 0,
        "target_kbps": None,
        "reconnects": 0,
    }
    return {**base, **numbers}


TWO = {
    **SNAPSHOT,
    "state": "reconnecting",
    "destinations": [
        destination(
            "main",
            "live",
            sent_kbps=2431,
            fps=29.8,
            queue_ms=120,
            frames_sent=9000,
            dropped=3,
            dropped_video=3,
            target_kbps=2500,
            keyframes_requested=1,
        ),
        destination(
            "backup",
            "reconnecting",
            reason="connection refused; retrying in 2.0 s",
            queue_ms=0,
            frames_sent=1000,
            dropped=6,
            dropped_video=5,
            dropped_audio=1,
            discarded_offline=40,
            reconnects=3,
        ),
    ],
}


def samples_of(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def test_metrics_have_each_destinations_own_series() -> None:
    samples = samples_of(render_metrics(lambda: TWO))
    assert samples[("streamer_state", (("state", "reconnecting"),))] == 1

    def of(name: str, dest: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"destination": dest, **labels}.items())))]

    assert of("streamer_destination_state", "main", state="live") == 1
    assert of("streamer_destination_state", "main", state="reconnecting") == 0
    assert of("streamer_destination_state", "backup", state="reconnecting") == 1
    assert of("streamer_frames_sent_total", "main") == 9000
    assert of("streamer_frames_sent_total", "backup") == 1000
    assert of("streamer_dropped_packets_total", "backup", kind="video") == 5
    assert of("streamer_dropped_packets_total", "backup", kind="audio") == 1
    assert of("streamer_discarded_offline_packets_total", "backup") == 40
    assert of("streamer_reconnects_total", "backup") == 3
    assert of("streamer_keyframes_requested_total", "main") == 1
    assert of("streamer_queue_seconds", "main") == pytest.approx(0.12)
    assert of("streamer_sent_bits_per_second", "main") == 2_431_000
    assert of("streamer_target_bits_per_second", "main") == 2_500_000
    assert ("streamer_target_bits_per_second", (("destination", "backup"),)) not in samples
    url = "rtmp://backup.example.com:1935/live/***"
    assert of("streamer_destination_info", "backup", url=url) == 1
    # Prometheus conventions: every counter ends in _total, no gauge does; base units only.
    text = render_metrics(lambda: TWO).decode()
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    assert types and all(name.endswith("_total") == (kind == "counter") for name, kind in types)
    assert not re.search(r"_(ms|kbps|fps)\b", text)


def test_page_has_a_row_per_destination() -> None:
    page = render_page(TWO)
    table = page[page.index('<table id="destinations">') :]
    rows = re.findall(r'<tr data-state="([^"]*)">(.*?)</tr>', table)
    assert [state for state, _ in rows] == ["live", "reconnecting"]
    cells = [
        [
            re.sub(r'<div class="sub">(.*?)</div>', r" / \1", td)
            for td in re.findall(r"<td>(.*?)</td>", row)
        ]
        for _, row in rows
    ]
    assert cells == [
        [
            "main / rtmp://main.example.com:1935/live/***",
            "live / publishing to rtmp://main.example.com:1935/live/***",
            "2431 kbps",
            "120 ms",
            "3",
            "0",
        ],
        [
            "backup / rtmp://backup.example.com:1935/live/***",
            "reconnecting / connection refused; retrying in 2.0 s",
            "0 kbps",
            "0 ms",
            "6",
            "3",
        ],
    ]
    escaped = render_page({**TWO, "destinations": [destination(MALICIOUS, MALICIOUS)]})
    assert "<script>alert" not in escaped and "<img src=x" not in escaped


def test_page_without_destinations_hides_the_table() -> None:
    assert '<table id="destinations" hidden>' in render_page(SNAPSHOT)
    assert '<table id="destinations">' in render_page(TWO)


def test_status_json_passes_the_destinations_through(calls: Calls, server: ServerThread) -> None:
    calls.snapshot = TWO
    body = json.loads(request(server.port, "GET", "/status").body)
    assert body["destinations"] == TWO["destinations"]


def test_no_stream_key_reaches_status_page_or_metrics(calls: Calls) -> None:
    """From a real Device's snapshot, and a reason that carries a key despite everything."""
    from streamer import log as logsetup
    from streamer.device import Device
    from streamer.rtmp.url import parse_url
    from streamer.settings import Settings, Target

    device = Device(
        Settings(
            urls=[
                Target(parse_url(f"rtmp://a.example.com/live/{KEY1}"), "main"),
                f"rtmps://b.example.com/app/{KEY2}",
            ]
        )
    )
    snapshot = device.snapshot()
    assert [d["name"] for d in snapshot["destinations"]] == ["main", "b.example.com"]
    logsetup.add_secret(KEY2)  # as Device.run and the config's key files do
    snapshot["destinations"][1]["reason"] = f"refused by rtmps://b.example.com/app/{KEY2}"
    calls.snapshot = dict(snapshot)
    with ServerThread(calls.read) as running:
        texts = [
            request(running.port, "GET", path).body.decode()
            for path in ("/", "/status", "/metrics")
        ]
    page, status, metrics = texts
    assert "rtmp://a.example.com:1935/live/***" in page and "b.example.com" in metrics
    assert "refused by rtmps://b.example.com/app/***" in status
    for text in texts:
        assert KEY1 not in text and KEY2 not in text
