"""The status page server (aiohttp on the device's event loop), for people and for Prometheus.

Routes::

    GET  /              the page (streamer/page.py): state, picture, charts, events, Start/Stop
    GET  /status        the snapshot as JSON
    GET  /history       the last 15 minutes of numbers and the last 20 events, as JSON
    GET  /snapshot.jpg  the latest picture, at most 640 px wide (503 while nothing is captured)
    GET  /metrics       the Prometheus text format (streamer/metrics.py)
    POST /start, /stop  ask the device to stream / to stop (204)
    GET  /login, POST /login, POST /logout   only when the page has a password

Who may see and press what:

* Listening on a loopback address (the default), nobody needs a password, and
  every request must name loopback in its ``Host`` header: a DNS-rebinding page
  (evil.example resolving to 127.0.0.1) is same-origin to the browser, but its
  requests carry ``Host: evil.example`` and are refused.
* Listening on any other address needs a password (``streamer set-password``):
  every route but ``/login`` needs the session cookie a login gives;
  ``/metrics`` also takes ``Authorization: Bearer <token>`` from
  ``[status] metrics_token_file``. Failed logins are rate-limited per address
  and overall, and logged with the address, never the password.
* ``POST /start``, ``/stop`` and ``/logout`` also need the header
  ``X-Requested-With: streamer`` (a page on another origin cannot add it
  without a CORS preflight, which gets 405 and no CORS headers; an HTML form
  cannot add it at all), no ``Origin`` other than the page's own and no
  ``Sec-Fetch-Site`` other than ``same-origin``/``none``. Without a password
  they are taken only from a loopback peer.

Every response forbids framing and carries the page's Content-Security-Policy.
Requests are logged at debug only. The HTTP parsing, limits and keep-alive are
aiohttp's; a silent or trickling client is closed after ``timeout`` seconds,
at most ``max_connections`` are served at once (the rest get 503), and a
problem of the page (a port in use, a failing snapshot) never stops the stream.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import web

from streamer.access import (
    is_loopback_host,
    is_loopback_listen,
    is_loopback_peer,
)
from streamer.auth import LoginLimiter, Sessions, token_matches, verify_password
from streamer.exc import ConfigError, StreamerError
from streamer.history import empty as empty_history
from streamer.log import redact
from streamer.page import CONTROL_HEADER, CONTROL_VALUE, CSP, render_login, render_page

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "CONTROL_HEADER",
    "CONTROL_VALUE",
    "DEFAULT_PORT",
    "StatusServer",
    "is_loopback_host",
    "is_loopback_peer",
]

log = structlog.get_logger("streamer.status")

DEFAULT_PORT: Final = 8089
REQUEST_TIMEOUT: Final = 5.0  # seconds a connection may be silent (or trickle a request)
MAX_REQUEST_BYTES: Final = 8190  # request line, and each header line
MAX_HEADERS: Final = 64
MAX_BODY_BYTES: Final = 1024  # the login form's password is the largest body we read
MAX_CONNECTIONS: Final = 32
COOKIE: Final = "streamer_session"
PUBLIC: Final = frozenset({"/login"})  # reachable without logging in

Snapshot = Callable[[], Mapping[str, Any]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def _text(status: int, why: str = "", **headers: str) -> web.Response:
    phrase = web.Response(status=status).reason
    return web.Response(
        status=status, text=f"{status} {phrase}{': ' + why if why else ''}\n", headers=headers
    )


def _quietly(record: logging.LogRecord) -> bool:
    """aiohttp logs a client's malformed request as an error with a traceback: a client's
    garbage is not our error. Said at debug, in one line, like every request."""
    error = record.exc_info[1] if record.exc_info else None
    log.debug("bad status request", error=str(error or record.getMessage()).strip())
    return False


_HTTP_LOG = logging.getLogger("streamer.status.http")
_HTTP_LOG.addFilter(_quietly)


def _registry_for(read: Snapshot) -> CollectorRegistry:
    from streamer.metrics import registry_for

    return registry_for(read)


def _html(page: str, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        status=status, text=page, content_type="text/html", charset="utf-8", headers=headers
    )


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _json(value: Any) -> web.Response:
    body = json.dumps(_json_safe(value), default=str, allow_nan=False)
    return web.Response(body=body.encode(), content_type="application/json")


SECURITY_HEADERS: Final = {
    "Server": "streamer",  # not aiohttp's version
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CSP,
}


class _Busy(asyncio.Protocol):
    """The connection over the limit: one 503 and close, before reading anything."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 23\r\nConnection: close\r\n\r\n503: too many clients\r\n"
        )
        transport.close()


class _LimitedSite(web.BaseSite):
    """aiohttp's TCPSite with a cap on the connections served at once."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        limit: int,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self._limit = host, port, limit

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        limit = self._limit

        def protocol() -> asyncio.Protocol:
            if len(server.connections) >= limit:
                return _Busy()
            return server()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            protocol, self._host, self._port, ssl=self._ssl_context, reuse_address=True
        )

    @property
    def bound_port(self) -> int:
        assert self._server is not None
        sockets: tuple[Any, ...] = tuple(getattr(self._server, "sockets", None) or ())
        return int(sockets[0].getsockname()[1])


class StatusServer:
    """The status page, history, preview and metrics on ``host:port``.

    ``snapshot``, ``on_start`` and ``on_stop`` are called on the event loop
    that ran ``start()``; ``history`` too; ``preview`` (a JPEG or None) in a
    worker thread. ``port`` is the bound port once started (ask for 0 to get
    a free one). A host that is not loopback needs ``password_hash`` (see
    streamer/auth.py); ``metrics_token`` lets Prometheus scrape with a bearer
    token; ``ssl_context`` serves HTTPS.
    """

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        on_start: Callable[[], object],
        on_stop: Callable[[], object],
        on_text: Callable[[str, int], object] | None = None,
        port: int = DEFAULT_PORT,
        host: str = "127.0.0.1",
        history: Callable[[], Mapping[str, Any]] | None = None,
        preview: Callable[[], bytes | None] | None = None,
        password_hash: str | None = None,
        metrics_token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if password_hash is None and not is_loopback_listen(host):
            raise ConfigError(
                f"the status page on {host} would be open to the network without a password: "
                "run `streamer set-password`, or keep [status] address = 127.0.0.1"
            )
        self.snapshot = snapshot
        self.on_start = on_start
        self.on_stop = on_stop
        self.on_text = on_text
        self.port = port
        self.host = host
        self.history = history or empty_history
        self.preview = preview
        self.password_hash = password_hash
        self.metrics_token = metrics_token
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.max_connections = max_connections
        self._clock = clock
        # Listening on loopback: every request must name loopback (DNS-rebinding guard).
        self._loopback_only = is_loopback_listen(host)
        self._registry: CollectorRegistry | None = None  # made at the first scrape
        self._sessions = Sessions()
        self._limiter = LoginLimiter()
        self._runner: web.AppRunner | None = None
        self._cookie = f"{COOKIE}_{port}"

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"

    def _foreign_origin(self, request: web.Request, *allowed: str) -> bool:
        """An ``Origin`` header other than this page's own (scheme and Host) or ``allowed``."""
        origin = request.headers.get("Origin")
        own = f"{self.scheme}://{request.headers.get('Host', '')}"
        return origin is not None and origin.lower() not in (own.lower(), *allowed)

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY_BYTES)
        routes = [
            web.get("/", self._page),
            web.get("/status", self._status),
            web.get("/history", self._history),
            web.get("/snapshot.jpg", self._snapshot_jpg),
            web.get("/metrics", self._metrics),
            web.post("/start", self._start),
            web.post("/stop", self._stop),
            web.post("/text", self._set_text),
        ]
        if self.password_hash is not None:
            routes += [
                web.get("/login", self._login_form),
                web.post("/login", self._login),
                web.post("/logout", self._logout),
            ]
        app.add_routes(routes)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("status server already started")
        runner = web.AppRunner(
            self._app(),
            access_log=None,
            logger=_HTTP_LOG,
            handle_signals=False,
            shutdown_timeout=1.0,
            keepalive_timeout=self.timeout,
            max_line_size=MAX_REQUEST_BYTES,
            max_field_size=MAX_REQUEST_BYTES,
            max_headers=MAX_HEADERS,
        )
        await runner.setup()
        site = _LimitedSite(runner, self.host, self.port, self.ssl_context, self.max_connections)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE or "in use" in str(exc):
                raise ConfigError(
                    f"status page port {self.port} on {self.host} is already in use; "
                    "choose another with --status-port (0 turns the page off)"
                ) from None
            raise ConfigError(
                f"cannot serve the status page on {self.host}:{self.port} "
                f"({exc.strerror or exc}); check --status-address and --status-port"
            ) from None
        self._runner = runner
        self.port = site.bound_port
        self._cookie = f"{COOKIE}_{self.port}"
        log.info("status page", url=self.url, password=self.password_hash is not None)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- every request ----------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await self._checked(request, handler)
        except web.HTTPException as exc:  # aiohttp's 404, 405, 413: as text, with our headers
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            response = _text(exc.status, **headers)
        except Exception as exc:  # the snapshot or a command failed: say so, keep serving
            log.warning("status request failed", path=request.path, error=repr(exc))
            response = _text(500)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        log.debug(
            "status request", method=request.method, path=request.path, status=response.status
        )
        return response

    async def _checked(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.version not in ((1, 0), (1, 1)):
            return _text(505, "only HTTP/1.0 and HTTP/1.1")
        if request.version == (1, 1) and "Host" not in request.headers:
            return _text(400, "HTTP/1.1 request without Host")
        for name in ("Host", "Origin", CONTROL_HEADER, "Cookie", "Authorization"):
            if len(request.headers.getall(name, [])) > 1:
                return _text(400, f"repeated {name} header")
        host = request.headers.get("Host")
        if self._loopback_only and host is not None and not is_loopback_host(host):
            return _text(403, "Host must be a loopback address or localhost")
        if request.path not in PUBLIC and not self._allowed(request):
            if request.method in ("GET", "HEAD") and request.path == "/":
                return _redirect("/login")
            return _text(401, "log in first", **{"WWW-Authenticate": 'Bearer realm="streamer"'})
        return await handler(request)

    def _allowed(self, request: web.Request) -> bool:
        """No password set, or a valid session cookie, or /metrics with its bearer token."""
        if self.password_hash is None:
            return True
        if self._sessions.valid(request.cookies.get(self._cookie), self._clock()):
            return True
        return (
            request.path == "/metrics"
            and self.metrics_token is not None
            and token_matches(request.headers.get("Authorization"), self.metrics_token)
        )

    def _read(self) -> Mapping[str, Any]:
        """The snapshot with every registered secret redacted from its text.

        Snapshots show URLs redacted already; this is the last guard, for a
        key that a reason (an error's own text) might still carry.
        """
        return _redact_strings(self.snapshot())

    # -- routes -----------------------------------------------------------------------

    async def _page(self, _: web.Request) -> web.Response:
        return _html(render_page(self._read(), logout=self.password_hash is not None))

    async def _status(self, _: web.Request) -> web.Response:
        return _json(dict(self._read()))

    async def _history(self, _: web.Request) -> web.Response:
        return _json(_redact_strings(self.history()))

    async def _snapshot_jpg(self, _: web.Request) -> web.Response:
        picture = await asyncio.to_thread(self.preview) if self.preview else None
        if picture is None:
            return _text(503, "no picture: the camera is not running", **{"Retry-After": "3"})
        return web.Response(body=picture, content_type="image/jpeg")

    async def _metrics(self, _: web.Request) -> web.Response:
        if self._registry is None:
            # prometheus_client costs 70 ms and 2.4 MB to import: only once scraped, in a thread.
            self._registry = await asyncio.to_thread(_registry_for, self._read)
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        response = web.Response(body=generate_latest(self._registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _start(self, request: web.Request) -> web.Response:
        return self._control(request, self.on_start)

    async def _stop(self, request: web.Request) -> web.Response:
        return self._control(request, self.on_stop)

    async def _set_text(self, request: web.Request) -> web.Response:
        """``{"text": "...", "index": 0}``: what text filter ``index`` shows from the next frame."""
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return _text(400, 'send JSON: {"text": "...", "index": 0}')
        index = body.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool):
            return _text(400, "index must be a whole number (the text filter's, from 0)")
        try:
            if self.on_text is None:
                raise ConfigError("this device has no text to change")
            self.on_text(body["text"], index)
        except StreamerError as exc:
            return _text(400, exc.message)
        return web.Response(status=204)

    def _control(self, request: web.Request, command: Callable[[], object]) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        command()
        return web.Response(status=204)

    def _refused(self, request: web.Request) -> web.Response | None:
        """A 403 for a command that may come from another site or, without a password,
        from another machine; None when it may be carried out."""
        why = self._cross_site(request)
        if (
            not why
            and self.password_hash is None
            and not is_loopback_peer(
                request.transport.get_extra_info("peername") if request.transport else None
            )
        ):
            why = "only from this machine"
        if not why:
            return None
        log.debug("status command refused", path=request.path, why=why)
        return _text(403, why)

    def _cross_site(self, request: web.Request) -> str:
        """Why this POST may come from another site ("" when it cannot)."""
        headers = request.headers
        if headers.get(CONTROL_HEADER) != CONTROL_VALUE:
            return f"requires the header {CONTROL_HEADER}: {CONTROL_VALUE}"
        if self._foreign_origin(request):
            return "cross-origin request"
        if headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return "cross-site request"
        return ""

    # -- logging in (only with a password) ------------------------------------------------

    async def _login_form(self, request: web.Request) -> web.Response:
        if self._sessions.valid(request.cookies.get(self._cookie), self._clock()):
            return _redirect("/")
        return _html(render_login())

    async def _login(self, request: web.Request) -> web.Response:
        assert self.password_hash is not None
        peer = request.remote or "?"
        # "null": Chromium's Origin for a form POST from a page with Referrer-Policy: no-referrer
        # (ours); the login form itself posts that way.
        if self._foreign_origin(request, "null"):
            return _text(403, "cross-origin login")
        now = self._clock()
        wait = self._limiter.retry_after(peer, now)
        if wait > 0:
            log.warning("status page login refused: too many wrong passwords", peer=peer)
            page = render_login(f"Too many wrong passwords; try again in {math.ceil(wait)} s.")
            return _html(page, 429, **{"Retry-After": str(math.ceil(wait))})
        form = await request.post()
        password = form.get("password")
        ok = isinstance(password, str) and await asyncio.to_thread(
            verify_password, password, self.password_hash
        )
        if not ok:
            self._limiter.failed(peer, self._clock())
            log.warning("status page login failed: wrong password", peer=peer)
            return _html(render_login("Wrong password."), 401)
        self._limiter.succeeded(peer)
        log.info("status page login", peer=peer)
        response = _redirect("/")
        response.set_cookie(
            self._cookie,
            self._sessions.create(self._clock()),
            httponly=True,
            samesite="Strict",
            secure=self.ssl_context is not None,
            path="/",
        )
        return response

    async def _logout(self, request: web.Request) -> web.Response:
        why = self._cross_site(request)
        if why:
            return _text(403, why)
        self._sessions.revoke(request.cookies.get(self._cookie, ""))
        response = web.Response(status=204)
        response.del_cookie(self._cookie, path="/")
        return response
