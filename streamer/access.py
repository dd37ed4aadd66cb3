"""Who may reach the status page: loopback tests and the ``[status]`` files, read before start.

Kept apart from the server (streamer/status.py) because ``run`` and ``doctor``
check these before anything streams, and the server's aiohttp takes 0.4 s and
10 MB to import: the stream does not wait for it (docs/design.md, "Status page").
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from streamer.auth import load_password_file, load_token_file, password_path
from streamer.config import DEFAULT_PATH, StatusSection
from streamer.exc import ConfigError

_PORT = re.compile(r"(?::[0-9]{1,5})?")


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
    return is_loopback_listen(name.rstrip("."))


def is_loopback_listen(host: str) -> bool:
    """Listening here reaches only this machine (no password needed)."""
    return host == "localhost" or _loopback_address(host)


@dataclass(frozen=True, slots=True)
class PageSecurity:
    """What ``[status]`` asks for, with its files read and checked (see ``page_security``)."""

    password_hash: str | None = None
    metrics_token: str | None = None
    ssl_context: ssl.SSLContext | None = None


def page_security(section: StatusSection, config_path: Path | None) -> PageSecurity:
    """Read the password, token and TLS files ``[status]`` names; ConfigError, one line each.

    Called before the stream starts: a page that cannot be protected as the
    file says is a configuration error (exit 2), never a page left open.
    """
    password = None
    if not is_loopback_listen(section.address):
        path = section.password_file or password_path(config_path or DEFAULT_PATH)
        password = load_password_file(path)
    token = load_token_file(section.metrics_token_file) if section.metrics_token_file else None
    context = None
    if (section.tls_cert is None) != (section.tls_key is None):
        raise ConfigError("[status] tls_cert and tls_key go together: set both, or neither")
    if section.tls_cert is not None and section.tls_key is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(section.tls_cert, section.tls_key)
        except FileNotFoundError as exc:
            raise ConfigError(f"[status] TLS file {exc.filename} does not exist") from None
        except PermissionError as exc:
            raise ConfigError(
                f"[status] TLS file {exc.filename} cannot be read by this user (permission denied)"
            ) from None
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"[status] tls_cert {section.tls_cert} and tls_key {section.tls_key} are not a "
                f"PEM certificate and its private key ({getattr(exc, 'reason', None) or exc})"
            ) from None
    return PageSecurity(password, token, context)
