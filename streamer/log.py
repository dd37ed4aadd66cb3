"""Logging: structlog everywhere, stdlib logs through the same renderer, secrets redacted.

Every line belongs to the device whose code wrote it: ``device_context``
(entered by ``Device.run``, so that every task it starts inherits it) names
the device's state provider and its ``Redactor``, through context variables,
so two devices in one process each show their own state and hide their own
stream keys. Lines that belong to no device (a thread that did not copy the
context, the application's own code) are redacted with the secrets of every
device still alive: we cannot tell whose they are, and a key must not show.
Secrets of the process itself (the config file's key file) are registered
with ``add_secret`` and hidden everywhere. The last processor replaces them
in every rendered line, whichever field or library they came from. Under
journald each line starts with its syslog priority (``<3>`` for an error),
which journald's stdout stream reads by default (``SyslogLevelPrefix=yes``),
so ``journalctl -p err`` finds errors. Python warnings (gpiozero's, say) go
through the same lines.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

_secrets: set[str] = set()  # the process's own (add_secret): hidden in every line
REDACTED = "***"


def _parts(secret: str) -> list[str]:
    """A secret and its part before a query string; very short ones would hide words."""
    return [part for part in {secret, secret.split("?", 1)[0]} if len(part) >= 3]


def add_secret(secret: str) -> None:
    """Never print ``secret`` (nor its part before a query string), whoever logs it."""
    _secrets.update(_parts(secret))


class Redactor:
    """One device's secrets (its stream keys).

    Lines written by the device's code are redacted with them (see
    ``device_context``); while the redactor is alive, so are lines that
    belong to no device.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: frozenset[str] = frozenset()
        for secret in secrets:
            self.add(secret)
        _alive.add(self)

    def add(self, secret: str) -> None:
        self.secrets = self.secrets | frozenset(_parts(secret))

    def redact(self, text: str) -> str:
        """``text`` with this redactor's secrets and the process's replaced."""
        return _redact_with(frozenset(_secrets) | self.secrets, text)


_alive: weakref.WeakSet[Redactor] = weakref.WeakSet()
_state_var: ContextVar[Callable[[], str] | None] = ContextVar("streamer_state", default=None)
_redactor_var: ContextVar[Redactor | None] = ContextVar("streamer_redactor", default=None)


@contextlib.contextmanager
def device_context(state: Callable[[], str], redactor: Redactor) -> Iterator[None]:
    """Lines logged inside (and in tasks started inside) carry ``state()`` and hide its secrets.

    Threads do not inherit it: a thread started here should run its body in
    ``contextvars.copy_context()`` taken when it is made.
    """
    state_token = _state_var.set(state)
    redactor_token = _redactor_var.set(redactor)
    try:
        yield
    finally:
        _redactor_var.reset(redactor_token)
        _state_var.reset(state_token)


def redact(text: str) -> str:
    """Replace every secret that stands as a token of its own.

    The secrets are the process's and those of the device whose code runs
    (``device_context``), or of every device alive outside any device's code.
    A short key such as ``cam`` is still a key in ``/live/cam`` but not in
    ``picamera2``: secrets are matched only where no letter or digit touches
    them, so logs stay readable whatever the key looks like.
    """
    redactor = _redactor_var.get()
    if redactor is not None:
        return redactor.redact(text)
    secrets = set(_secrets)
    for each in list(_alive):
        secrets |= each.secrets
    return _redact_with(frozenset(secrets), text)


def _redact_with(secrets: frozenset[str], text: str) -> str:
    if not secrets:
        return text
    return _pattern(secrets).sub(REDACTED, text)


@functools.lru_cache(maxsize=64)
def _pattern(secrets: frozenset[str]) -> re.Pattern[str]:
    # Longest first, so that a key with a query string goes whole, not its first part.
    alternatives = "|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])")


def _redact_rendered(_logger: Any, _name: str, rendered: Any) -> Any:
    return redact(rendered) if isinstance(rendered, str) else rendered


# Python's levels as syslog priorities, the <N> prefix journald reads.
PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
)


def priority(levelno: int) -> int:
    """The syslog priority of a logging level: crit 2, err 3, warning 4, info 6, debug 7."""
    return next((p for level, p in PRIORITIES if levelno >= level), 7)


class _Output:
    """Where lines go as configured: the stream, JSON or not, the journal or not."""

    stream: TextIO | None = None
    json = False
    journal = False


_output = _Output()


def to_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Is ``stream`` the journal? systemd names it in JOURNAL_STREAM as ``device:inode``.

    A stream with no file behind it cannot be compared: JOURNAL_STREAM alone
    decides. One with a file that is something else (a pipe a test reads, a
    redirect) is not the journal even where the variable is inherited.
    """
    value = env.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return True
    return value == f"{st.st_dev}:{st.st_ino}"


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """Renders as configured; under journald each line gets its ``<N>`` priority."""

    def __init__(self, *args: Any, journal: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"<{priority(record.levelno)}>{text}" if self._journal else text


def set_state_provider(provider: Callable[[], str] | None) -> None:
    """Lines logged from here on, in this context, carry the state ``provider`` returns.

    For code that logs outside any device (tests, a program of its own);
    ``Device.run`` uses ``device_context`` instead.
    """
    _state_var.set(provider)


def _add_state(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    provider = _state_var.get()
    if provider is not None and "state" not in event:
        event["state"] = provider()
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
    journal = to_journal(stream, env)
    if fmt == "auto":
        fmt = "json" if journal else "console" if stream.isatty() else "plain"
    _output.stream, _output.json, _output.journal = stream, fmt == "json", journal
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
    formatter = _Formatter(
        journal=journal,
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
    # warnings.warn() (gpiozero's pin factory fallbacks...) as log lines, not bare stderr
    # text; taken over again at each call, in case something replaced the hook since.
    logging.captureWarnings(False)
    logging.captureWarnings(True)
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


def json_output() -> bool:
    """Are lines JSON as configured (under journald, or asked for)?"""
    return _output.json


def fatal(message: str, exit_code: int) -> None:
    """The line a run ends with: ``streamer: error: ...``, as JSON where the log is JSON.

    Under journald it is an error line like the others (priority 3), so
    ``journalctl -p err`` shows why the service stopped.
    """
    text = f"streamer: error: {redact(message)}"
    if _output.json:
        structlog.get_logger("streamer").error(text, exit_code=exit_code)
        return
    stream = _output.stream or sys.stderr
    prefix = f"<{priority(logging.ERROR)}>" if _output.journal else ""
    print(f"{prefix}{text}", file=stream, flush=True)
