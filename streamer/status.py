"""The status page: a tiny HTTP/1.1 server on the event loop, for people and for Prometheus.

Routes::

    GET  /         a self-contained HTML page (no external assets) that refreshes itself
    GET  /status   the snapshot as JSON
    GET  /metrics  the snapshot in the Prometheus text format
    POST /start    ask the device to stream  (204)
    POST /stop     ask the device to stop    (204)

One request per connection (every response says ``Connection: close``); the
request head is bounded in size (``max_request_bytes``) and the whole request
must arrive within ``timeout`` seconds, so a slow or silent client costs one
socket for a few seconds and no more. Garbage gets a 4xx and the connection
closed; nothing a client sends can stop the server. Requests are never logged
above debug.

Who may press Start/Stop: ``POST /start`` and ``POST /stop`` are accepted only

* from a loopback peer (127.0.0.0/8, ::1), whatever address the server listens on;
* with the header ``X-Requested-With: streamer``. A page on another origin cannot
  add that header without a CORS preflight (OPTIONS), which this server answers
  with 405 and no CORS headers, so the browser never sends the POST. An HTML
  form cannot set headers at all;
* with a ``Host`` header that names a loopback address or ``localhost``: a
  DNS-rebinding page (evil.example resolving to 127.0.0.1) is same-origin to
  the browser and could add the header, but its requests carry
  ``Host: evil.example``;
* with no ``Origin`` other than the server's own, and no ``Sec-Fetch-Site``
  other than ``same-origin``/``none`` (defence in depth).

Everything else gets 403. When listening on a loopback address (the default)
the same ``Host`` check also applies to GET, so a rebinding page cannot read
the status either. The page forbids being framed (clickjacking on the buttons)
and its Content-Security-Policy allows only its own inline script and style,
by hash; every value on it is escaped with ``html.escape`` and updated with
``textContent``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import html
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from streamer.exc import ConfigError
from streamer.log import redact
from streamer.state import STATES

log = structlog.get_logger("streamer.status")

DEFAULT_PORT: Final = 8089
REQUEST_TIMEOUT: Final = 5.0  # seconds for the whole request to arrive
WRITE_TIMEOUT: Final = 5.0  # seconds for the client to take the response
MAX_REQUEST_BYTES: Final = 8192  # request line and headers
MAX_BODY_BYTES: Final = 1024  # POSTs carry nothing we read
MAX_HEADERS: Final = 64
LINGER_TIMEOUT: Final = 0.5  # after an error reply, seconds to take what the client still sends
LINGER_BYTES: Final = 256 * 1024
MAX_CONNECTIONS: Final = 32
REFRESH_MS: Final = 2000  # the page's fetch('/status') interval
NOSCRIPT_REFRESH_S: Final = 5  # the page's meta refresh without JavaScript
CONTROL_HEADER: Final = "X-Requested-With"
CONTROL_VALUE: Final = "streamer"

Snapshot = Callable[[], Mapping[str, Any]]
UP_HELP: Final = "1 when the streamer's status could be read"

# -- Prometheus -------------------------------------------------------------------


def _number(snapshot: Mapping[str, Any], key: str) -> float | None:
    """The field as a finite float, or None (missing, not a number, NaN)."""
    value = snapshot.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


class SnapshotCollector(Collector):
    """Reads the snapshot at scrape time; registered in a private CollectorRegistry."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        try:
            snap = self._snapshot()
        except Exception as exc:
            log.warning("status snapshot failed", error=repr(exc))
            yield GaugeMetricFamily("streamer_up", UP_HELP, value=0)
            return
        yield GaugeMetricFamily("streamer_up", UP_HELP, value=1)

        current = str(snap.get("state", ""))
        states = GaugeMetricFamily(
            "streamer_state", "1 for the device's current state, 0 for the others", labels=["state"]
        )
        for state in [*STATES, *([current] if current and current not in STATES else [])]:
            states.add_metric([state], 1.0 if state == current else 0.0)
        yield states

        info = GaugeMetricFamily(
            "streamer_info", "The encoder and resolution in use", labels=["encoder", "resolution"]
        )
        info.add_metric([str(snap.get("encoder") or ""), str(snap.get("resolution") or "")], 1.0)
        yield info

        # Counters run for the life of the process: a stop/start never sets them back.
        counters = (
            ("streamer_frames_sent", "Video frames sent to the server", "frames_sent"),
            ("streamer_reconnects", "Reconnections after a lost connection", "reconnects"),
            (
                "streamer_discarded_offline",
                "Packets captured with no session to send them to (connecting, reconnecting)",
                "discarded_offline",
            ),
        )
        for name, text, key in counters:
            value = _number(snap, key)
            if value is not None:
                yield CounterMetricFamily(name, text, value=value)

        dropped = CounterMetricFamily(
            "streamer_dropped",
            "Packets dropped from the send queue because the link could not carry them",
            labels=["kind"],
        )
        for kind in ("video", "audio"):
            value = _number(snap, f"dropped_{kind}")
            if value is not None:
                dropped.add_metric([kind], value)
        if dropped.samples:
            yield dropped

        gauges = (
            ("streamer_queue_ms", "Media time waiting in the send queue, ms", "queue_ms"),
            ("streamer_sent_kbps", "kbit/s sent over the last stats interval", "sent_kbps"),
            ("streamer_target_kbps", "Video bitrate the encoder aims at, kbit/s", "target_kbps"),
            ("streamer_fps", "Video frames/s sent over the last stats interval", "fps"),
            ("streamer_uptime_seconds", "Seconds since the streamer's uptime origin", "uptime_s"),
        )
        for name, text, key in gauges:
            value = _number(snap, key)
            if value is not None:
                yield GaugeMetricFamily(name, text, value=value)

        raw = snap.get("destinations")
        if isinstance(raw, list | tuple):
            yield from destination_metrics([d for d in raw if isinstance(d, Mapping)])


# Per destination, labelled ``destination`` (its name): (metric, help, snapshot key).
DESTINATION_COUNTERS: Final = (
    ("streamer_destination_frames_sent", "Video frames sent to this destination", "frames_sent"),
    (
        "streamer_destination_reconnects",
        "This destination's reconnections after a lost connection",
        "reconnects",
    ),
    (
        "streamer_destination_discarded_offline",
        "Packets captured while this destination had no session to send them to",
        "discarded_offline",
    ),
    (
        "streamer_destination_keyframes_requested",
        "Keyframes this destination's send queue asked the encoder for",
        "keyframes_requested",
    ),
)
DESTINATION_GAUGES: Final = (
    (
        "streamer_destination_queue_ms",
        "Media time waiting in this destination's queue, ms",
        "queue_ms",
    ),
    (
        "streamer_destination_sent_kbps",
        "kbit/s sent to this destination, last stats interval",
        "sent_kbps",
    ),
    (
        "streamer_destination_fps",
        "Video frames/s sent to this destination, last stats interval",
        "fps",
    ),
    (
        "streamer_destination_target_kbps",
        "Video bitrate this destination's link allows, kbit/s (the encoder takes the lowest)",
        "target_kbps",
    ),
)


def destination_metrics(destinations: list[Mapping[str, Any]]) -> Iterable[Metric]:
    """Each destination's state, counters and gauges, labelled with its name."""
    names = [str(d.get("name", "")) for d in destinations]
    states = GaugeMetricFamily(
        "streamer_destination_state",
        "1 for each destination's current state, 0 for the others",
        labels=["destination", "state"],
    )
    info = GaugeMetricFamily(
        "streamer_destination_info",
        "Each destination's server (the stream key shown as ***)",
        labels=["destination", "url"],
    )
    dropped = CounterMetricFamily(
        "streamer_destination_dropped",
        "Packets dropped from this destination's queue because its link could not carry them",
        labels=["destination", "kind"],
    )
    for name, d in zip(names, destinations, strict=True):
        current = str(d.get("state", ""))
        for state in [*STATES, *([current] if current and current not in STATES else [])]:
            states.add_metric([name, state], 1.0 if state == current else 0.0)
        info.add_metric([name, str(d.get("url") or "")], 1.0)
        for kind in ("video", "audio"):
            value = _number(d, f"dropped_{kind}")
            if value is not None:
                dropped.add_metric([name, kind], value)
    yield states
    yield info
    if dropped.samples:
        yield dropped
    families: list[tuple[type[Any], tuple[tuple[str, str, str], ...]]] = [
        (CounterMetricFamily, DESTINATION_COUNTERS),
        (GaugeMetricFamily, DESTINATION_GAUGES),
    ]
    for family_type, specs in families:
        for metric, text, key in specs:
            family = family_type(metric, text, labels=["destination"])
            for name, d in zip(names, destinations, strict=True):
                value = _number(d, key)
                if value is not None:
                    family.add_metric([name], value)
            if family.samples:
                yield family


def render_metrics(snapshot: Snapshot) -> bytes:
    """/metrics for this snapshot, from a registry of its own (the Prometheus text format)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)


# -- the page ---------------------------------------------------------------------

# (snapshot key, label, how to show it); state, reason, since and uptime are in the banner.
FIELDS: Final[tuple[tuple[str, str, str], ...]] = (
    ("reason", "Reason", "text"),
    ("since", "Since", "text"),
    ("uptime_s", "Uptime", "duration"),
    ("encoder", "Encoder", "text"),
    ("resolution", "Resolution", "text"),
    ("fps", "Frame rate", "fps"),
    ("sent_kbps", "Sent", "kbps"),
    ("target_kbps", "Target", "kbps"),
    ("queue_ms", "Queue", "ms"),
    ("frames_sent", "Frames sent", "int"),
    ("dropped", "Dropped", "int"),
    ("dropped_video", "Dropped video", "int"),
    ("dropped_audio", "Dropped audio", "int"),
    ("discarded_offline", "Discarded offline", "int"),
    ("reconnects", "Reconnects", "int"),
    ("controls", "Button, LED", "text"),
)
BANNER_KEYS: Final = frozenset({"reason", "since", "uptime_s"})

# The destinations table, one row each: (key, heading, how to show it, key shown under it).
DESTINATION_COLUMNS: Final[tuple[tuple[str, str, str, str], ...]] = (
    ("name", "Destination", "text", "url"),
    ("state", "State", "text", "reason"),
    ("sent_kbps", "Sent", "kbps", ""),
    ("queue_ms", "Queue", "ms", ""),
    ("dropped", "Dropped", "int", ""),
    ("reconnects", "Reconnects", "int", ""),
)
MISSING: Final = "–"

STYLE: Final = """
body { margin: 0; background: #f3f3f3; color: #222; font: 16px/1.4 system-ui, sans-serif; }
main { max-width: 42rem; margin: 0 auto; padding: 1rem; }
#banner { border-radius: .5rem; padding: 1rem 1.25rem; color: #fff; background: #616161; }
#banner[data-state="idle"] { background: #616161; }
#banner[data-state="preparing"] { background: #1565c0; }
#banner[data-state="live"] { background: #2e7d32; }
#banner[data-state="reconnecting"] { background: #e65100; }
#banner[data-state="error"] { background: #b71c1c; }
#banner.stale { opacity: .5; }
#state { font-size: 2.6rem; font-weight: 700; text-transform: uppercase; letter-spacing: .06em; }
#f-reason { font-size: 1.1rem; overflow-wrap: anywhere; }
.since { opacity: .85; font-size: .9rem; }
.controls { margin: 1rem 0; display: flex; gap: .75rem; align-items: center; }
button { font: inherit; padding: .45rem 1.4rem; border-radius: .35rem; border: 1px solid #888;
  background: #fff; cursor: pointer; }
#message { color: #b71c1c; }
table { border-collapse: collapse; width: 100%; background: #fff; border-radius: .5rem; }
th, td { text-align: left; padding: .4rem .8rem; border-bottom: 1px solid #e4e4e4; }
th { font-weight: 600; width: 40%; }
td { font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.foot { font-size: .85rem; color: #666; }
#destinations { margin-top: 1rem; }
#destinations th { width: auto; font-size: .9rem; }
#destinations .sub { font-size: .8rem; color: #666; }
#destinations tr[data-state="live"] td:nth-child(2) { color: #2e7d32; }
#destinations tr[data-state="reconnecting"] td:nth-child(2) { color: #e65100; }
#destinations tr[data-state="error"] td:nth-child(2) { color: #b71c1c; }
a { color: inherit; }
""".strip()

_SCRIPT_TEMPLATE: Final = """
"use strict";
const FIELDS = FIELDS_JSON;
const COLUMNS = COLUMNS_JSON;
const $ = (id) => document.getElementById(id);
function fmt(kind, v) {
  if (v === null || v === undefined || v === "") return "MISSING_TEXT";
  if (kind === "text") return String(v);
  const n = Number(v);
  if (typeof v === "boolean" || !Number.isFinite(n)) return String(v);
  const r = Math.floor(n + 0.5);
  const pad = (x) => String(x).padStart(2, "0");
  switch (kind) {
    case "duration": {
      const s = Math.max(0, Math.floor(n));
      return Math.floor(s / 3600) + ":" + pad(Math.floor(s % 3600 / 60)) + ":" + pad(s % 60);
    }
    case "fps": return n.toFixed(1) + " fps";
    case "kbps": return r + " kbps";
    case "ms": return r + " ms";
    default: return String(r);
  }
}
function show(s) {
  const state = String(s.state ?? "unknown");
  $("banner").dataset.state = state;
  $("state").textContent = state;
  document.title = "streamer: " + state;
  for (const [key, kind] of Object.entries(FIELDS)) {
    const el = $("f-" + key);
    if (el) el.textContent = fmt(kind, s[key]);
  }
  const list = Array.isArray(s.destinations) ? s.destinations : [];
  const rows = list.filter((d) => d !== null && typeof d === "object");
  $("destinations").hidden = rows.length === 0;
  $("d-rows").replaceChildren(...rows.map((d) => {
    const tr = document.createElement("tr");
    tr.dataset.state = String(d.state ?? "");
    for (const [key, kind, sub] of COLUMNS) {
      const td = document.createElement("td");
      td.textContent = fmt(kind, d[key]);
      if (sub) {
        const under = document.createElement("div");
        under.className = "sub";
        under.textContent = fmt("text", d[sub]);
        td.append(under);
      }
      tr.append(td);
    }
    return tr;
  }));
}
let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    const r = await fetch("/status", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    show(await r.json());
    $("banner").classList.remove("stale");
    $("updated").textContent = new Date().toLocaleTimeString();
    document.body.dataset.refreshed = "yes";
  } catch (e) {
    $("banner").classList.add("stale");
    $("updated").textContent = "status unreachable (" + e.message + ")";
  } finally {
    busy = false;
  }
}
async function command(path) {
  const msg = $("message");
  msg.textContent = "";
  try {
    const r = await fetch(path, {method: "POST", headers: {"CONTROL_HEADER": "CONTROL_VALUE"}});
    if (r.status !== 204) msg.textContent = path.slice(1) + " refused: HTTP " + r.status;
  } catch (e) {
    msg.textContent = path.slice(1) + " failed: " + e.message;
  }
  refresh();
}
$("start").addEventListener("click", () => command("/start"));
$("stop").addEventListener("click", () => command("/stop"));
refresh();
setInterval(refresh, REFRESH_MS);
"""


def _script() -> str:
    text = _SCRIPT_TEMPLATE.strip()
    for name, value in (
        ("FIELDS_JSON", json.dumps({key: kind for key, _, kind in FIELDS})),
        (
            "COLUMNS_JSON",
            json.dumps([[key, kind, sub] for key, _, kind, sub in DESTINATION_COLUMNS]),
        ),
        ("MISSING_TEXT", MISSING),
        ("CONTROL_HEADER", CONTROL_HEADER),
        ("CONTROL_VALUE", CONTROL_VALUE),
        ("REFRESH_MS", str(REFRESH_MS)),
    ):
        text = text.replace(name, value)
    return text


SCRIPT: Final = _script()


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# Nothing but this page's own script and style runs, even if an escape were missed.
CSP: Final = (
    "default-src 'none'; "
    f"script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def format_value(kind: str, value: Any) -> str:
    """The same text the page's fmt() shows (for the first render and <noscript>)."""
    if value is None or value == "":
        return MISSING
    if kind == "text":
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return str(value)
    rounded = math.floor(value + 0.5)
    if kind == "duration":
        s = max(0, math.floor(value))
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    if kind == "fps":
        return f"{value:.1f} fps"
    if kind == "kbps":
        return f"{rounded} kbps"
    if kind == "ms":
        return f"{rounded} ms"
    return str(rounded)


def render_page(snapshot: Mapping[str, Any]) -> str:
    """The HTML page for this snapshot; every value is escaped."""

    def esc(value: object) -> str:
        return html.escape(str(value), quote=True)

    def cell(key: str) -> str:
        kind = next(k for name, _, k in FIELDS if name == key)
        return f'<span id="f-{key}">{esc(format_value(kind, snapshot.get(key)))}</span>'

    state = str(snapshot.get("state", "unknown"))
    listed = snapshot.get("destinations")
    destinations = [
        d for d in (listed if isinstance(listed, list | tuple) else []) if isinstance(d, Mapping)
    ]
    headings = "".join(
        f'<th scope="col">{esc(label)}</th>' for _, label, _, _ in DESTINATION_COLUMNS
    )

    def destination_row(d: Mapping[str, Any]) -> str:
        cells = []
        for key, _, kind, sub in DESTINATION_COLUMNS:
            under = f'<div class="sub">{esc(format_value("text", d.get(sub)))}</div>' if sub else ""
            cells.append(f"<td>{esc(format_value(kind, d.get(key)))}{under}</td>")
        return f'<tr data-state="{esc(d.get("state", ""))}">{"".join(cells)}</tr>'

    destination_rows = "\n".join(destination_row(d) for d in destinations)
    hidden = "" if destinations else " hidden"
    rows = "\n".join(
        f'<tr><th scope="row">{esc(label)}</th>'
        f'<td id="f-{key}">{esc(format_value(kind, snapshot.get(key)))}</td></tr>'
        for key, label, kind in FIELDS
        if key not in BANNER_KEYS
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>streamer: {esc(state)}</title>
<noscript><meta http-equiv="refresh" content="{NOSCRIPT_REFRESH_S}"></noscript>
<style>{STYLE}</style>
</head>
<body>
<main>
<header id="banner" data-state="{esc(state)}">
<div id="state">{esc(state)}</div>
<div>{cell("reason")}</div>
<div class="since">since {cell("since")} · uptime {cell("uptime_s")}</div>
</header>
<div class="controls">
<button id="start" type="button">Start</button>
<button id="stop" type="button">Stop</button>
<span id="message" role="status"></span>
</div>
<noscript><p>Start and Stop need JavaScript; without it this page reloads every \
{NOSCRIPT_REFRESH_S} s.</p></noscript>
<table>
{rows}
</table>
<table id="destinations"{hidden}>
<thead><tr>{headings}</tr></thead>
<tbody id="d-rows">
{destination_rows}
</tbody>
</table>
<p class="foot">Updated <span id="updated">{esc(formatdate(localtime=True))}</span> ·
<a href="/status">JSON</a> · <a href="/metrics">metrics</a></p>
</main>
<script>{SCRIPT}</script>
</body>
</html>
"""


# -- HTTP -------------------------------------------------------------------------

_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_REQUEST_LINE = re.compile(rb"(" + _TCHAR + rb"+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
_HEADER = re.compile(rb"(" + _TCHAR + rb"+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
_PORT = re.compile(r"(?::[0-9]{1,5})?")


class _Reject(Exception):
    """A request we answer with an error status (and close)."""

    def __init__(self, status: HTTPStatus, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    version: tuple[int, int]
    headers: dict[str, str]  # lower-case names


@dataclass(slots=True)
class _Response:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def _text(status: HTTPStatus, why: str = "", **headers: str) -> _Response:
    body = f"{status.value} {status.phrase}{': ' + why if why else ''}\n".encode()
    return _Response(status, body, headers=headers)


class _RequestReader:
    """Reads one request; ``received`` tells a silent client from a slow one."""

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int) -> None:
        self.reader = reader
        self.max_bytes = max_bytes
        self.received = 0

    async def _line(self) -> bytes | None:
        """One line without its CRLF (or bare LF); None at a clean end of input."""
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            self.received += len(exc.partial)
            raise _Reject(HTTPStatus.BAD_REQUEST, "incomplete request") from None
        except asyncio.LimitOverrunError:
            raise _Reject(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large"
            ) from None
        self.received += len(line)
        if self.received > self.max_bytes:
            raise _Reject(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
        return line[:-2] if line.endswith(b"\r\n") else line[:-1]

    async def read(self) -> _Request | None:
        """The request; None when the client closed without sending anything."""
        line: bytes | None = b""
        while not line:  # RFC 9112 2.2: ignore empty lines before the request line
            line = await self._line()
            if line is None:
                return None
        match = _REQUEST_LINE.fullmatch(line)
        if match is None:
            raise _Reject(HTTPStatus.BAD_REQUEST, "malformed request line")
        method, target, major, minor = match.groups()
        version = (int(major), int(minor))
        if version[0] != 1:
            raise _Reject(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.x")
        headers: dict[str, str] = {}
        count = 0
        while True:
            line = await self._line()
            if line is None:
                raise _Reject(HTTPStatus.BAD_REQUEST, "incomplete request")
            if not line:
                break
            count += 1
            if count > MAX_HEADERS:
                raise _Reject(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "too many headers")
            header = _HEADER.fullmatch(line)
            if header is None:
                raise _Reject(HTTPStatus.BAD_REQUEST, "malformed header line")
            name = header.group(1).decode("ascii").lower()
            value = header.group(2).decode("latin-1")
            if name in headers:
                if name in ("host", "content-length", "origin", "x-requested-with"):
                    raise _Reject(HTTPStatus.BAD_REQUEST, f"repeated {name} header")
                headers[name] += ", " + value
            else:
                headers[name] = value
        if version >= (1, 1) and "host" not in headers:
            raise _Reject(HTTPStatus.BAD_REQUEST, "HTTP/1.1 request without Host")
        if "transfer-encoding" in headers:
            raise _Reject(HTTPStatus.BAD_REQUEST, "request bodies must have a Content-Length")
        length_text = headers.get("content-length", "0")
        if not length_text.isascii() or not length_text.isdigit():
            raise _Reject(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            raise _Reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        if length:
            try:
                await self.reader.readexactly(length)  # read so that closing sends no RST
            except asyncio.IncompleteReadError:
                raise _Reject(HTTPStatus.BAD_REQUEST, "incomplete request body") from None
        return _Request(
            method=method.decode("ascii"),
            path=_path_of(target.decode("ascii")),
            version=version,
            headers=headers,
        )


def _path_of(target: str) -> str:
    """The path of an origin-form (``/x?y``) or absolute-form (``http://h/x``) target."""
    if target.startswith("/"):
        return target.split("?", 1)[0].split("#", 1)[0]
    lowered = target.lower()
    if lowered.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        return "/" if slash < 0 else _path_of(rest[slash:])
    raise _Reject(HTTPStatus.BAD_REQUEST, "malformed request target")


def _loopback_address(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback_peer(peername: object) -> bool:
    """True for a TCP peer on 127.0.0.0/8 or ::1 (also as ::ffff:127.x.y.z)."""
    if not isinstance(peername, tuple) or not peername:
        return False
    return _loopback_address(str(peername[0]))


def is_loopback_host(host: str) -> bool:
    """True when a Host header names this machine's loopback: localhost, 127.x, [::1]."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return False
        name, port = host[1:end], host[end + 1 :]
    else:
        name, _, rest = host.partition(":")
        port = f":{rest}" if rest or host.endswith(":") else ""
    if not _PORT.fullmatch(port):
        return False
    name = name.rstrip(".")
    return name == "localhost" or _loopback_address(name)


def _redact_strings(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return redact(value)
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return {k: clean(v) for k, v in snapshot.items()}


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


ROUTES: Final[dict[str, frozenset[str]]] = {
    "/": frozenset({"GET", "HEAD"}),
    "/status": frozenset({"GET", "HEAD"}),
    "/metrics": frozenset({"GET", "HEAD"}),
    "/start": frozenset({"POST"}),
    "/stop": frozenset({"POST"}),
}


class StatusServer:
    """The status page and metrics on ``host:port``; Start/Stop call ``on_start``/``on_stop``.

    ``snapshot``, ``on_start`` and ``on_stop`` are called on the event loop
    that ran ``start()``. ``port`` is the bound port once started (ask for 0
    to get a free one).
    """

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        on_start: Callable[[], object],
        on_stop: Callable[[], object],
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        timeout: float = REQUEST_TIMEOUT,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.snapshot = snapshot
        self.on_start = on_start
        self.on_stop = on_stop
        self.port = port
        self.host = host
        self.timeout = timeout
        self.max_request_bytes = max_request_bytes
        self.max_connections = max_connections
        # Listening on loopback: every request must name loopback (DNS-rebinding guard).
        self._loopback_only = host == "localhost" or _loopback_address(host)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(SnapshotCollector(self._read))
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("status server already started")
        try:
            server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=self.max_request_bytes
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE or "in use" in str(exc):
                raise ConfigError(
                    f"status page port {self.port} on {self.host} is already in use; "
                    "choose another with --status-port (0 picks a free one)"
                ) from None
            raise ConfigError(
                f"cannot serve the status page on {self.host}:{self.port} "
                f"({exc.strerror or exc}); choose another port with --status-port"
            ) from None
        self._server = server
        self.port = int(server.sockets[0].getsockname()[1])
        log.info("status page", url=self.url)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        clients = list(self._clients)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await server.wait_closed()

    # -- one connection -------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            if len(self._clients) > self.max_connections:
                await self._send(writer, _text(HTTPStatus.SERVICE_UNAVAILABLE, "too busy"), False)
                return
            await self._handle(reader, writer)
        except (OSError, TimeoutError) as exc:  # the client went away or stopped reading
            log.debug("status connection dropped", error=repr(exc))
        except Exception as exc:  # a bug here must not take the server down
            log.warning("status request failed", error=repr(exc))
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_reader = _RequestReader(reader, self.max_request_bytes)
        try:
            async with asyncio.timeout(self.timeout):
                request = await request_reader.read()
        except TimeoutError:
            # Nothing at all (a browser's speculative connection): close quietly.
            if request_reader.received:
                await self._send(writer, _text(HTTPStatus.REQUEST_TIMEOUT), False)
            return
        except _Reject as exc:
            log.debug("bad status request", status=exc.status.value, why=exc.why)
            await self._send(writer, _text(exc.status, exc.why), False)
            await self._linger(reader, writer)
            return
        if request is None:
            return
        try:
            response = self._respond(request, writer.get_extra_info("peername"))
        except Exception as exc:  # the snapshot or a command failed: say so, keep serving
            log.warning("status request failed", path=request.path, error=repr(exc))
            response = _text(HTTPStatus.INTERNAL_SERVER_ERROR)
        log.debug(
            "status request", method=request.method, path=request.path, status=response.status.value
        )
        await self._send(writer, response, request.method == "HEAD")

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """After an error reply, take (a bounded amount of) what the client still sends.

        Closing with unread input makes the kernel send a reset, which can
        destroy the reply before the client reads it.
        """
        if writer.can_write_eof():
            writer.write_eof()
        taken = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_TIMEOUT):
                while taken < LINGER_BYTES and (data := await reader.read(65536)):
                    taken += len(data)

    async def _send(self, writer: asyncio.StreamWriter, response: _Response, head: bool) -> None:
        lines = [
            f"HTTP/1.1 {response.status.value} {response.status.phrase}",
            f"Date: {formatdate(usegmt=True)}",
            "Connection: close",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            "X-Frame-Options: DENY",
            "Referrer-Policy: no-referrer",
            f"Content-Security-Policy: {CSP}",
        ]
        if response.status != HTTPStatus.NO_CONTENT:
            lines.append(f"Content-Type: {response.content_type}")
            lines.append(f"Content-Length: {len(response.body)}")
        lines.extend(f"{name}: {value}" for name, value in response.headers.items())
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not head and response.status != HTTPStatus.NO_CONTENT:
            data += response.body
        writer.write(data)
        async with asyncio.timeout(WRITE_TIMEOUT):
            await writer.drain()

    # -- routes -----------------------------------------------------------------------

    def _respond(self, request: _Request, peername: object) -> _Response:
        methods = ROUTES.get(request.path)
        if methods is None:
            return _text(HTTPStatus.NOT_FOUND)
        if request.method not in methods:
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, Allow=", ".join(sorted(methods)))
        host = request.headers.get("host")
        if self._loopback_only and host is not None and not is_loopback_host(host):
            return _text(HTTPStatus.FORBIDDEN, "Host must be a loopback address or localhost")
        if request.method == "POST":
            command = self.on_start if request.path == "/start" else self.on_stop
            return self._control(request, peername, command)
        if request.path == "/status":
            body = json.dumps(_json_safe(dict(self._read())), default=str, allow_nan=False)
            return _Response(HTTPStatus.OK, body.encode(), "application/json")
        if request.path == "/metrics":
            return _Response(HTTPStatus.OK, generate_latest(self._registry), CONTENT_TYPE_LATEST)
        page = render_page(self._read())
        return _Response(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8")

    def _read(self) -> Mapping[str, Any]:
        """The snapshot with every registered secret redacted from its text.

        Snapshots show URLs redacted already; this is the last guard, for a
        key that a reason (an error's own text) might still carry.
        """
        return _redact_strings(self.snapshot())

    def _control(
        self, request: _Request, peername: object, command: Callable[[], object]
    ) -> _Response:
        headers = request.headers
        host = headers.get("host", "")
        why = ""
        if not is_loopback_peer(peername):
            why = "only from this machine"
        elif headers.get(CONTROL_HEADER.lower()) != CONTROL_VALUE:
            why = f"requires the header {CONTROL_HEADER}: {CONTROL_VALUE}"
        elif host and not is_loopback_host(host):
            why = "Host must be a loopback address or localhost"
        elif "origin" in headers and headers["origin"].lower() != f"http://{host}".lower():
            why = "cross-origin request"
        elif headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            why = "cross-site request"
        if why:
            log.debug("status command refused", path=request.path, why=why)
            return _text(HTTPStatus.FORBIDDEN, why)
        command()
        return _Response(HTTPStatus.NO_CONTENT)
