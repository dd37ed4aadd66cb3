"""sd_notify without libsystemd: READY, STATUS, STOPPING and WATCHDOG over ``$NOTIFY_SOCKET``.

systemd passes a datagram socket address in ``$NOTIFY_SOCKET`` (a leading ``@``
means the Linux abstract namespace) to a ``Type=notify`` service; each message
is one datagram of newline-separated ``KEY=value`` lines. With ``WatchdogSec=``
it also sets ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``): a service that does not
send ``WATCHDOG=1`` within that time is killed and restarted.

Notifying is best effort: without ``$NOTIFY_SOCKET`` (run by hand, in tests)
every call is a no-op, and a failing send is logged once and never raised, so
the stream never stops because the service manager could not be told about it.

``watchdog_pings`` runs on the main event loop on purpose: when the loop is
blocked, no ping goes out and systemd restarts the service. A thread would keep
pinging for a process that no longer does anything.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

from streamer.log import redact

log = structlog.get_logger("streamer.systemd")

# A send never blocks the event loop for long: systemd reads its notify socket at
# once, so this only matters if the manager is wedged.
SEND_TIMEOUT_S = 0.5


class Notifier:
    """Tells systemd how the service is doing; every method is a no-op when disabled."""

    def __init__(
        self,
        address: str | None,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self._address = _socket_address(address)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._error_logged = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd asked for through the environment (disabled if it did not)."""
        return cls(
            env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=_int_or_none(env.get("WATCHDOG_USEC")),
            watchdog_pid=_int_or_none(env.get("WATCHDOG_PID")),
        )

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half the watchdog timeout), or None when there is no watchdog.

        ``$WATCHDOG_PID`` names the process the watchdog is meant for; a child that
        inherited the environment must not ping on its parent's behalf.
        """
        if not self.enabled or self._watchdog_usec is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2_000_000

    def ready(self) -> bool:
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status``; secrets are redacted, newlines flattened."""
        line = " ".join(redact(text).splitlines())
        return self.notify(f"STATUS={line}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True if it went out."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(SEND_TIMEOUT_S)
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._error_logged:
                self._error_logged = True
                log.warning(
                    "sd_notify failed; further failures are not logged",
                    socket=_printable(self._address),
                    error=str(exc),
                )
            return False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watchdog_pings(notifier: Notifier, healthy: Callable[[], bool]) -> None:
    """Send WATCHDOG=1 every ``notifier.watchdog_interval`` while ``healthy()`` is true.

    Runs until cancelled; returns at once when systemd asked for no watchdog.
    Pings are scheduled on this event loop, so a blocked loop sends none, and an
    unhealthy device (``healthy()`` false or raising) lets the watchdog fire.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    loop = asyncio.get_running_loop()
    log.info("systemd watchdog", interval_s=interval)
    complained = False
    next_at = loop.time()
    while True:
        try:
            ok = healthy()
        except Exception as exc:  # a broken health check counts as unhealthy
            ok = False
            if not complained:
                complained = True
                log.warning("health check raised; watchdog pings withheld", error=repr(exc))
        if ok:
            notifier.watchdog()
        # A steady pace that does not drift; after a stall, count the interval from now.
        next_at += interval
        now = loop.time()
        if next_at <= now:
            next_at = now + interval
        await asyncio.sleep(next_at - now)


def _socket_address(address: str | None) -> str | None:
    if not address:
        return None
    if address.startswith("@"):
        return "\0" + address[1:]
    if address.startswith("/"):
        return address
    log.warning("NOTIFY_SOCKET is not a unix socket path; not notifying", socket=address)
    return None


def _printable(address: str) -> str:
    return "@" + address[1:] if address.startswith("\0") else address


def _int_or_none(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
