"""Logging: structlog everywhere, stdlib logs through the same renderer, secrets redacted.

Secrets (the stream key) are registered once with ``add_secret``; the last
processor replaces them in every rendered line, whichever field or library
they came from.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import structlog

_secrets: set[str] = set()
REDACTED = "***"


def add_secret(secret: str) -> None:
    """Never print ``secret`` (nor its part before a query string)."""
    for part in (secret, secret.split("?", 1)[0]):
        if len(part) >= 3:
            _secrets.add(part)


def redact(text: str) -> str:
    """Replace every registered secret that stands as a token of its own.

    A short key such as ``cam`` is still a key in ``/live/cam`` but not in
    ``picamera2``: secrets are matched only where no letter or digit touches
    them, so logs stay readable whatever the key looks like.
    """
    if not _secrets:
        return text
    pattern = "|".join(re.escape(s) for s in sorted(_secrets, key=len, reverse=True))
    return re.sub(rf"(?<![A-Za-z0-9])(?:{pattern})(?![A-Za-z0-9])", REDACTED, text)


def _redact_rendered(_logger: Any, _name: str, rendered: Any) -> Any:
    return redact(rendered) if isinstance(rendered, str) else rendered


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Console lines on a TTY, key=value otherwise, JSON with ``fmt='json'``."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "plain"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    elif fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=True)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=False),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
            _redact_rendered,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # transitions logs every callback at INFO; our own state lines say what matters.
    logging.getLogger("transitions").setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.filter_by_level,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
