"""Logging: structlog everywhere, stdlib logs through the same renderer, secrets redacted.

Secrets (the stream key) are registered once with ``add_secret``; the last
processor replaces them in every rendered line, whichever field or library
they came from.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
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


_state: Callable[[], str] | None = None


def set_state_provider(provider: Callable[[], str] | None) -> None:
    """Every log line carries the device state this returns (idle, live, ...)."""
    global _state
    _state = provider


def _add_state(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    if _state is not None and "state" not in event:
        event["state"] = _state()
    return event


def configure(
    level: str = "info",
    fmt: str = "auto",
    stream: TextIO | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Console lines on a TTY, JSON lines under journald or with ``fmt='json'``, else key=value.

    systemd sets JOURNAL_STREAM for a service whose output goes to the journal.
    """
    stream = stream or sys.stderr
    env = os.environ if env is None else env
    if fmt == "auto":
        fmt = "json" if env.get("JOURNAL_STREAM") else "console" if stream.isatty() else "plain"
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
        _add_state,
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
