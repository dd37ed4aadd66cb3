"""Parse rtmp:// and rtmps:// publish URLs into what the protocol needs.

The last path segment (with any query string) is the stream key, everything
between the host and the key is the application (``app`` or
``app/instance``). The key is a secret: ``redacted`` is the only form of the
URL that may be logged.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from streamer.exc import ConfigError

DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443}
REDACTED = "***"


@dataclass(frozen=True, slots=True)
class RtmpUrl:
    scheme: str
    host: str
    port: int
    app: str
    key: str

    @property
    def tls(self) -> bool:
        return self.scheme == "rtmps"

    @property
    def tc_url(self) -> str:
        """The ``tcUrl`` of the connect command: the URL without the key."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/{self.app}"

    @property
    def redacted(self) -> str:
        return f"{self.tc_url}/{REDACTED}"

    def __repr__(self) -> str:
        return f"RtmpUrl({self.redacted!r})"

    __str__ = __repr__


def parse_url(text: str) -> RtmpUrl:
    """Parse a publish URL; anything unusable is a ConfigError that says why.

    The error messages never repeat the key: at most the scheme and host.
    """
    text = text.strip()
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"invalid stream URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        shown = f"{scheme}://" if scheme else "no scheme"
        raise ConfigError(
            f"stream URL must start with rtmp:// or rtmps:// (got {shown}); "
            "expected rtmp://host[:port]/app/streamkey"
        )
    host = parts.hostname or ""
    if not host:
        raise ConfigError("stream URL has no host; expected rtmp://host[:port]/app/streamkey")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2:
        raise ConfigError(
            f"stream URL {scheme}://{host}/... lacks an application or a stream key; "
            "expected rtmp://host[:port]/app/streamkey"
        )
    key = urllib.parse.unquote(segments[-1])
    if parts.query:
        key += "?" + parts.query
    return RtmpUrl(
        scheme=scheme,
        host=host,
        port=port if port is not None else DEFAULT_PORTS[scheme],
        app="/".join(segments[:-1]),
        key=key,
    )
