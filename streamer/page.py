"""The status page a person opens on a phone: state, picture, charts, events, Start/Stop.

Self-contained (no CDN, no external asset: the device may be offline). Values
are escaped with ``html.escape`` on the server and set with ``textContent``
by the script; the Content-Security-Policy lets only this page's own inline
script and style run, by hash. The script polls ``/status`` every 2 s,
``/history`` every 5 s and ``/snapshot.jpg`` every 3 s, and draws the
history as inline SVG.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Mapping
from email.utils import formatdate
from typing import Any, Final

REFRESH_MS: Final = 2000  # the page's fetch('/status') interval
HISTORY_MS: Final = 5000  # fetch('/history'): the device samples every 5 s
PREVIEW_MS: Final = 3000  # a new /snapshot.jpg
NOSCRIPT_REFRESH_S: Final = 5  # the page's meta refresh without JavaScript
CONTROL_HEADER: Final = "X-Requested-With"
CONTROL_VALUE: Final = "streamer"

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
.wide { overflow-x: auto; }
#destinations th { width: auto; font-size: .9rem; }
#destinations .sub { font-size: .8rem; color: #666; }
#destinations tr[data-state="live"] td:nth-child(2) { color: #2e7d32; }
#destinations tr[data-state="reconnecting"] td:nth-child(2) { color: #e65100; }
#destinations tr[data-state="error"] td:nth-child(2) { color: #b71c1c; }
a { color: inherit; }
#preview-box { margin: 1rem 0; background: #222; border-radius: .5rem; overflow: hidden;
  min-height: 3rem; color: #ccc; text-align: center; }
#preview { display: block; width: 100%; height: auto; }
#preview-none { padding: 1rem; }
h2 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(12rem, 1fr)); gap: .6rem; }
figure { margin: 0; background: #fff; border-radius: .5rem; padding: .4rem .6rem; }
figcaption { font-size: .85rem; color: #444; display: flex; justify-content: space-between; }
svg.chart { width: 100%; height: 5rem; display: block; }
svg.chart polyline { fill: none; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
.s0 { stroke: #1565c0; } .s1 { stroke: #e65100; stroke-dasharray: 4 3; }
.key0 { color: #1565c0; } .key1 { color: #e65100; }
#events { list-style: none; padding: 0; margin: 0; background: #fff; border-radius: .5rem;
  font-size: .9rem; }
#events li { padding: .3rem .8rem; border-bottom: 1px solid #e4e4e4; overflow-wrap: anywhere; }
#events time { color: #666; margin-right: .5rem; font-variant-numeric: tabular-nums; }
#events li[data-kind="error"] { color: #b71c1c; }
#events li[data-kind="reconnect"] { color: #e65100; }
form.login { background: #fff; border-radius: .5rem; padding: 1rem; display: grid; gap: .6rem; }
input { font: inherit; padding: .4rem; }
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
const SVG = "http://www.w3.org/2000/svg";
function chart(id, series, t, span) {
  const svg = $(id);
  const now = t.length ? t[t.length - 1] : 0;
  let top = 1;
  for (const values of series) {
    for (const v of values) if (Number.isFinite(v)) top = Math.max(top, v);
  }
  const lines = series.map((values, k) => {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", "s" + k);
    const points = [];
    values.forEach((v, i) => {
      if (!Number.isFinite(v)) return;
      const x = 100 - 100 * Math.min(span, now - t[i]) / span;
      points.push(x.toFixed(2) + "," + (40 - 38 * v / top).toFixed(2));
    });
    line.setAttribute("points", points.join(" "));
    line.dataset.points = String(points.length);
    return line;
  });
  svg.replaceChildren(...lines);
  svg.dataset.points = String(t.length);
  $(id + "-top").textContent = fmt("int", top);
}
function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], {hour12: false});
}
async function refreshHistory() {
  try {
    const r = await fetch("/history", {cache: "no-store"});
    if (!r.ok) return;
    const h = await r.json();
    const s = h.samples, span = h.window_s;
    chart("chart-kbps", [s.sent_kbps, s.target_kbps], s.t, span);
    chart("chart-queue", [s.queue_ms], s.t, span);
    chart("chart-dropped", [s.dropped], s.t, span);
    $("events").replaceChildren(...h.events.map((e) => {
      const li = document.createElement("li");
      li.dataset.kind = String(e.kind);
      const at = document.createElement("time");
      at.textContent = clock(e.t);
      li.append(at, String(e.text));
      return li;
    }));
    $("no-events").hidden = h.events.length > 0;
    document.body.dataset.history = "yes";
  } catch (e) {
    /* the next round tries again; the banner shows when the device is unreachable */
  }
}
function refreshPreview() {
  const next = new Image();
  next.onload = () => {
    const img = $("preview");
    img.src = next.src;
    img.hidden = false;
    $("preview-none").hidden = true;
    document.body.dataset.preview = "yes";
  };
  next.onerror = () => {
    $("preview").hidden = true;
    $("preview-none").hidden = false;
  };
  next.src = "/snapshot.jpg?t=" + Date.now();
}
async function logout() {
  await fetch("/logout", {method: "POST", headers: {"CONTROL_HEADER": "CONTROL_VALUE"}});
  location.href = "/login";
}
$("start").addEventListener("click", () => command("/start"));
$("stop").addEventListener("click", () => command("/stop"));
const out = $("logout");
if (out) out.addEventListener("click", logout);
refresh();
refreshHistory();
refreshPreview();
setInterval(refresh, REFRESH_MS);
setInterval(refreshHistory, HISTORY_MS);
setInterval(refreshPreview, PREVIEW_MS);
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
        ("HISTORY_MS", str(HISTORY_MS)),
        ("PREVIEW_MS", str(PREVIEW_MS)),
    ):
        text = text.replace(name, value)
    return text


SCRIPT: Final = _script()


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


# Nothing but this page's own script and style runs, even if an escape were missed; the login
# form may post only to this server.
CSP: Final = (
    "default-src 'none'; "
    f"script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; "
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


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _chart(key: str, caption: str, series: tuple[str, ...]) -> str:
    keys = " ".join(
        f'<span class="key{i}">{_esc(name)}</span>' for i, name in enumerate(series) if series[1:]
    )
    return (
        f"<figure><figcaption><span>{_esc(caption)} {keys}</span>"
        f'<span>max <span id="chart-{key}-top">–</span></span></figcaption>'
        f'<svg class="chart" id="chart-{key}" viewBox="0 0 100 40" preserveAspectRatio="none" '
        f'role="img" aria-label="{_esc(caption)}"></svg></figure>'
    )


CHARTS: Final = "\n".join(
    (
        _chart("kbps", "kbit/s", ("sent", "target")),
        _chart("queue", "queue, ms", ()),
        _chart("dropped", "dropped per 5 s", ()),
    )
)


def render_page(snapshot: Mapping[str, Any], *, logout: bool = False) -> str:
    """The HTML page for this snapshot; every value is escaped.

    ``logout`` adds a Log out button (when the page needs a password).
    """

    esc = _esc

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
{'<button id="logout" type="button">Log out</button>' if logout else ""}
<span id="message" role="status"></span>
</div>
<noscript><p>Start and Stop need JavaScript; without it this page reloads every \
{NOSCRIPT_REFRESH_S} s.</p></noscript>
<div id="preview-box"><img id="preview" alt="what the camera sees" hidden>
<div id="preview-none">no picture yet</div></div>
<h2>Last 15 minutes</h2>
<div class="charts">
{CHARTS}
</div>
<h2>Events</h2>
<ol id="events"></ol>
<p id="no-events" class="foot">none yet</p>
<h2>Now</h2>
<table>
{rows}
</table>
<div class="wide">
<table id="destinations"{hidden}>
<thead><tr>{headings}</tr></thead>
<tbody id="d-rows">
{destination_rows}
</tbody>
</table>
</div>
<p class="foot">Updated <span id="updated">{esc(formatdate(localtime=True))}</span> ·
<a href="/status">JSON</a> · <a href="/metrics">metrics</a></p>
</main>
<script>{SCRIPT}</script>
</body>
</html>
"""


def render_login(message: str = "") -> str:
    """The login form: a password, posted to /login; no script."""
    note = f'<p id="message" role="alert">{_esc(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>streamer: log in</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<form class="login" method="post" action="/login">
<label for="password">Password of this device's status page</label>
<input id="password" name="password" type="password" autocomplete="current-password" required
 autofocus>
<button type="submit">Log in</button>
{note}
</form>
</main>
</body>
</html>
"""
