"""[status] as configured: the password, token and TLS files read before the stream starts.

Each bad file is one clear line and exit code 2 before any hardware opens;
a good set serves the page over HTTPS with a password.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from streamer.access import page_security
from streamer.auth import hash_password, password_path
from streamer.config import StatusSection
from streamer.exc import ConfigError
from streamer.localserver import free_port, make_tls_files
from tests.conftest import run_cli
from tests.unit.test_status import SNAPSHOT, ServerThread

pytestmark = pytest.mark.timeout(60)
PASSWORD = "correct horse battery"


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def refused(section: StatusSection, config: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        page_security(section, config)
    assert caught.value.exit_code == 2
    message = caught.value.message
    assert "\n" not in message
    return message


def test_loopback_needs_no_password_file(tmp_path: Path) -> None:
    security = page_security(StatusSection(), tmp_path / "config.toml")
    assert security.password_hash is None and security.ssl_context is None


def test_a_network_address_reads_the_password_next_to_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    stored = hash_password(PASSWORD, n=2**10)
    private(password_path(config), stored + "\n")
    security = page_security(StatusSection(address="0.0.0.0"), config)
    assert security.password_hash == stored


def test_each_bad_file_is_one_clear_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    lan = StatusSection(address="0.0.0.0")
    missing = refused(lan, config)
    assert "set-password" in missing and str(password_path(config)) in missing
    private(password_path(config), hash_password(PASSWORD, n=2**10), 0o644)
    loose = refused(lan, config)
    assert "0644" in loose and "chmod 600" in loose
    private(password_path(config), "not a hash\n")
    assert "malformed" in refused(lan, config)
    token = tmp_path / "token"
    for text in ("", "has spaces in it but long", "short"):
        private(token, text)
        assert str(token) in refused(StatusSection(metrics_token_file=token), config)
    cert = tmp_path / "none.pem"
    assert "together" in refused(StatusSection(tls_cert=cert), config)
    assert "does not exist" in refused(StatusSection(tls_cert=cert, tls_key=cert), config)
    garbage = private(tmp_path / "garbage.pem", "-----BEGIN NOTHING-----\n")
    assert "PEM" in refused(StatusSection(tls_cert=garbage, tls_key=garbage), config)


def test_the_page_over_https_with_a_password(tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    config = tmp_path / "config.toml"
    private(password_path(config), hash_password(PASSWORD, n=2**10))
    section = StatusSection(address="0.0.0.0", tls_cert=files.cert, tls_key=files.key)
    security = page_security(section, config)
    trust = ssl.create_default_context(cafile=str(files.ca))
    with ServerThread(
        lambda: SNAPSHOT,
        host="0.0.0.0",
        password_hash=security.password_hash,
        ssl_context=security.ssl_context,
    ) as running:
        assert running.server.url.startswith("https://")
        base = f"https://localhost:{running.port}"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"{base}/status", context=trust, timeout=5)
        assert caught.value.code == 401
        login = urllib.request.Request(
            f"{base}/login", data=f"password={PASSWORD.replace(' ', '+')}".encode()
        )
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=trust), NoRedirect()
        )
        with pytest.raises(urllib.error.HTTPError) as moved:
            opener.open(login, timeout=5)
        assert moved.value.code == 303
        cookie = moved.value.headers["Set-Cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie
        status = urllib.request.Request(
            f"{base}/status", headers={"Cookie": cookie.split(";", 1)[0]}
        )
        with urllib.request.urlopen(status, context=trust, timeout=5) as reply:
            assert json.loads(reply.read())["state"] == "live"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_: object, **__: object) -> None:
        return None


def test_run_refuses_a_network_address_without_a_password(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    result = run_cli(
        "run",
        "--config",
        str(config),
        "--url",
        "rtmp://127.0.0.1:9/live/never",
        "--status-address",
        "0.0.0.0",
        "--status-port",
        str(free_port()),
        timeout=30,
    )
    assert result.returncode == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "set-password" in lines[0] and str(password_path(config)) in lines[0]
    assert "preparing" not in result.stderr  # nothing was opened
