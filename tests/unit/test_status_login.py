"""The status page with a password: login, sessions, the metrics token, the rate limit.

The server listens on 0.0.0.0, so it needs a password, and the rules then
hold for every peer: these tests talk to it over loopback (the browser test in
tests/integration/test_status_page.py comes from another address).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator, Mapping

import pytest
import structlog

from streamer.auth import hash_password
from tests.unit.test_status import CONTROL, SNAPSHOT, Calls, Reply, ServerThread, request

pytestmark = pytest.mark.timeout(30)

PASSWORD = "correct horse battery"
TOKEN = "prometheus-token-0123456789abcdef"
STORED = hash_password(PASSWORD, n=2**10)  # cheap parameters: the format is the real one


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def guarded(calls: Calls) -> Iterator[ServerThread]:
    with ServerThread(
        calls.read,
        on_start=calls.on_start,
        on_stop=calls.on_stop,
        host="0.0.0.0",
        password_hash=STORED,
        metrics_token=TOKEN,
    ) as running:
        yield running


def get(port: int, path: str, headers: Mapping[str, str] | None = None) -> Reply:
    return request(port, "GET", path, headers=headers)


def login(port: int, password: str, headers: Mapping[str, str] | None = None) -> Reply:
    body = urllib.parse.urlencode({"password": password})
    fields = {
        "Host": f"127.0.0.1:{port}",
        "Connection": "close",
        "Content-Type": "application/x-www-form-urlencoded",
        "Content-Length": str(len(body)),
        **(headers or {}),
    }
    text = "POST /login HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    from tests.unit.test_status import exchange, parse

    return parse(exchange(port, (text + "\r\n" + body).encode()))


def cookie_of(reply: Reply) -> str:
    header = reply.headers["set-cookie"]
    return header.split(";", 1)[0]


def test_everything_but_login_needs_it(guarded: ServerThread) -> None:
    port = guarded.port
    for path in ("/status", "/history", "/snapshot.jpg", "/metrics"):
        reply = get(port, path)
        assert reply.status == 401, path
        assert b"10000" not in reply.body and b"live" not in reply.body
    page = get(port, "/")
    assert page.status == 303 and page.headers["location"] == "/login"
    form = get(port, "/login")
    assert form.status == 200
    assert b'<input id="password" name="password" type="password"' in form.body
    assert request(port, "POST", "/stop", headers=CONTROL).status == 401


def test_a_login_gives_a_session_that_opens_everything(guarded: ServerThread, calls: Calls) -> None:
    port = guarded.port
    reply = login(port, PASSWORD)
    assert reply.status == 303 and reply.headers["location"] == "/"
    flags = {f.strip().lower() for f in reply.headers["set-cookie"].split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert "secure" not in flags  # plain HTTP here; with TLS the cookie is Secure
    cookie = {"Cookie": cookie_of(reply)}
    status = get(port, "/status", cookie)
    assert status.status == 200 and json.loads(status.body)["frames_sent"] == 10_000
    assert get(port, "/history", cookie).status == 200
    page = get(port, "/", cookie)
    assert page.status == 200 and b'id="logout"' in page.body
    # Start/Stop: the session alone is not enough, the cross-site guard still applies.
    assert request(port, "POST", "/stop", headers=cookie).status == 403
    foreign = {**cookie, **CONTROL, "Origin": "http://evil.example"}
    assert request(port, "POST", "/stop", headers=foreign).status == 403
    assert calls.stop == 0
    assert request(port, "POST", "/stop", headers={**cookie, **CONTROL}).status == 204
    assert calls.stop == 1
    # Log out: the same cookie opens nothing any more.
    assert request(port, "POST", "/logout", headers={**cookie, **CONTROL}).status == 204
    assert get(port, "/status", cookie).status == 401


def test_a_forged_or_foreign_cookie_opens_nothing(guarded: ServerThread) -> None:
    port = guarded.port
    real = cookie_of(login(port, PASSWORD))
    name, _, value = real.partition("=")
    for cookie in (f"{name}=forged", f"{name}={value[:-2]}", f"streamer_session_1={value}"):
        assert get(port, "/status", {"Cookie": cookie}).status == 401


def test_a_wrong_password_is_refused_and_logged_without_it(guarded: ServerThread) -> None:
    with structlog.testing.capture_logs() as logs:
        reply = login(guarded.port, "not the password")
    assert reply.status == 401 and "set-cookie" not in reply.headers
    assert b"Wrong password." in reply.body
    failures = [e for e in logs if e["log_level"] == "warning"]
    assert len(failures) == 1 and failures[0]["peer"] == "127.0.0.1"
    assert "not the password" not in repr(logs)


def test_failed_logins_are_rate_limited(guarded: ServerThread) -> None:
    port = guarded.port
    statuses = [login(port, f"guess {n}").status for n in range(6)]
    assert statuses == [401] * 5 + [429]
    limited = login(port, PASSWORD)  # even the right password waits its turn
    assert limited.status == 429 and int(limited.headers["retry-after"]) >= 1
    assert re.search(rb"try again in \d+ s", limited.body)


def test_metrics_take_the_bearer_token(guarded: ServerThread) -> None:
    port = guarded.port
    ok = get(port, "/metrics", {"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200 and b"streamer_up 1.0" in ok.body
    for wrong in (f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer "):
        assert get(port, "/metrics", {"Authorization": wrong}).status == 401
    # The token is for /metrics only.
    assert get(port, "/status", {"Authorization": f"Bearer {TOKEN}"}).status == 401


def test_a_cross_origin_login_is_refused(guarded: ServerThread) -> None:
    reply = login(guarded.port, PASSWORD, {"Origin": "http://evil.example"})
    assert reply.status == 403 and "set-cookie" not in reply.headers


def test_the_snapshot_is_served_as_jpeg_once_logged_in(calls: Calls) -> None:
    pictures = iter([None, b"\xff\xd8 a jpeg \xff\xd9"])
    with ServerThread(
        calls.read, host="0.0.0.0", password_hash=STORED, preview=lambda: next(pictures)
    ) as running:
        cookie = {"Cookie": cookie_of(login(running.port, PASSWORD))}
        none = get(running.port, "/snapshot.jpg", cookie)
        assert none.status == 503 and none.headers["retry-after"]
        picture = get(running.port, "/snapshot.jpg", cookie)
    assert picture.status == 200 and picture.headers["content-type"] == "image/jpeg"
    assert picture.body == b"\xff\xd8 a jpeg \xff\xd9"


def test_login_routes_do_not_exist_without_a_password() -> None:
    with ServerThread(lambda: SNAPSHOT) as running:
        assert get(running.port, "/login").status == 404
        assert get(running.port, "/status").status == 200
