"""Logging: structlog everywhere, stdlib logs through the same renderer, secrets redacted.

Every line belongs to the device whose code wrote it. A device's
``DeviceLog`` (its state and its stream keys) is made current by
``device_context`` through a context variable: ``Device.run`` enters it, so
every task it starts inherits it, and two devices in one process each show
their own state on their lines and hide their own keys. A line written
outside any device's context (a thread that did not copy the context, the
application's own code) belongs to the only device alive when there is one;
with several it carries no state and is redacted with all of their keys: we
cannot tell whose it is, and no key may show. The process's own secrets
(the config file's key file) are registered with ``add_secret`` and hidden
in every line. The last processor replaces secrets in every rendered line,
whichever field or library they came from. Under journald each line starts
with its syslog priority (``<3>`` for an error), which journald's stdout
stream reads by default (``SyslogLevelPrefix=yes``), so ``journalctl -p err``
finds errors. Python warnings (gpiozero's, say) go through the same lines.
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


class DeviceLog:
    """What one device's lines carry: its state (``state()``), and its secrets hidden."""

    def __init__(self, state: Callable[[], str], secrets: Iterable[str] = ()) -> None:
        self.state = state
        self.secrets = frozenset(part for secret in secrets for part in _parts(secret))
        _alive.add(self)

    def redact(self, text: str) -> str:
        """``text`` with this device's secrets and the process's replaced."""
        return _redact_with(self.secrets | _secrets, text)


# Every DeviceLog not yet garbage: whose are the lines of no device's context.
_alive: weakref.WeakSet[DeviceLog] = weakref.WeakSet()
_current: ContextVar[DeviceLog | None] = ContextVar("streamer_device_log", default=None)
_state_override: ContextVar[Callable[[], str] | None] = ContextVar("streamer_state", default=None)


@contextlib.contextmanager
def device_context(device: DeviceLog) -> Iterator[None]:
    """Lines logged inside, and in tasks started inside, are ``device``'s.

    Threads do not inherit it (``asyncio.to_thread`` does): a thread should
    run its body in the ``contextvars.copy_context()`` of the code that made it.
    """
    token = _current.set(device)
    try:
        yield
    finally:
        _current.reset(token)


def _owner() -> DeviceLog | None:
    """The device the current line belongs to: its context's, else the only one alive."""
    device = _current.get()
    if device is None:
        alive = list(_alive)
        if len(alive) == 1:
            device = alive[0]
    return device


def redact(text: str) -> str:
    """Replace every secret that stands as a token of its own.

    The secrets are the process's and those of the device the line belongs
    to (with several devices alive and none of them writing: all of theirs).
    A short key such as ``cam`` is still a key in ``/live/cam`` but not in
    ``picamera2``: secrets are matched only where no letter or digit touches
    them, so logs stay readable whatever the key looks like.
    """
    device = _owner()
    if device is not None:
        return device.redact(text)
    secrets = frozenset(_secrets).union(*(each.secrets for each in list(_alive)))
    return _redact_with(secrets, text)


def _redact_with(secrets: frozenset[str] | set[str], text: str) -> str:
    if not secrets:
        return text
    return _pattern(frozenset(secrets)).sub(REDACTED, text)


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
    ``Device`` uses ``device_context``. None: back to the device's state.
    """
    _state_override.set(provider)


def _add_state(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    if "state" not in event:
        provider = _state_override.get()
        if provider is None and (device := _owner()) is not None:
            provider = device.state
        if provider is not None:
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
