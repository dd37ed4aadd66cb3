"""sd_notify: messages reach a real datagram socket; watchdog pings keep pace, stop when stuck."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import streamer.log
from streamer.systemd import Notifier, watchdog_pings


@dataclass
class Receiver:
    """A bound NOTIFY_SOCKET; a thread stamps every datagram with its arrival time."""

    sock: socket.socket
    env_address: str
    received: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received.append((time.monotonic(), data.decode()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sock.close()

    def next_message(self, timeout: float = 2.0) -> str:
        """The next datagram (the receiving thread must not be running)."""
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode()

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.env_address, **extra}

    def times(self, message: str = "WATCHDOG=1") -> list[float]:
        return [t for t, m in self.received if m == message]


def _bind(kind: str, tmp_path: Path) -> Receiver:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if kind == "path":
        path = str(tmp_path / "notify.sock")
        sock.bind(path)
        return Receiver(sock, path)
    name = f"streamer-test-{uuid.uuid4().hex}"
    sock.bind("\0" + name)
    return Receiver(sock, "@" + name)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    r = _bind(request.param, tmp_path)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def pinged(tmp_path: Path) -> Iterator[Receiver]:
    """A receiver already stamping arrivals, for the watchdog pace tests."""
    r = _bind("path", tmp_path)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def run(coro: Coroutine[Any, Any, None], timeout: float = 10.0) -> None:
    asyncio.run(asyncio.wait_for(coro, timeout))


async def pings_while(
    notifier: Notifier,
    healthy: Callable[[], bool],
    duration: float,
    meanwhile: Coroutine[Any, Any, None] | None = None,
) -> None:
    """Run watchdog_pings for ``duration`` seconds (and ``meanwhile`` next to it)."""
    task = asyncio.create_task(watchdog_pings(notifier, healthy))
    side = asyncio.create_task(meanwhile) if meanwhile is not None else None
    await asyncio.sleep(duration)
    assert not task.done(), "watchdog_pings ended on its own"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if side is not None:
        await side


def test_ready_status_stopping_arrive(receiver: Receiver) -> None:
    notifier = Notifier.from_env(receiver.env())
    assert notifier.enabled
    assert notifier.ready()
    assert receiver.next_message() == "READY=1"
    assert notifier.status("live 2500 kbps")
    assert receiver.next_message() == "STATUS=live 2500 kbps"
    assert notifier.watchdog()
    assert receiver.next_message() == "WATCHDOG=1"
    assert notifier.stopping()
    assert receiver.next_message() == "STOPPING=1"
    notifier.close()


def test_status_is_one_line_and_never_shows_the_key(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streamer.log, "_secrets", set())
    streamer.log.add_secret("s3cretKEY")
    notifier = Notifier.from_env(receiver.env())
    notifier.status("error: rtmp://host/live/s3cretKEY\nrefused")
    assert receiver.next_message() == "STATUS=error: rtmp://host/live/*** refused"


def test_disabled_without_notify_socket() -> None:
    notifier = Notifier.from_env({"WATCHDOG_USEC": "400000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.stopping()
    assert not notifier.watchdog()
    started = time.monotonic()
    run(watchdog_pings(notifier, lambda: True), timeout=1.0)  # returns at once
    assert time.monotonic() - started < 0.5


def test_non_unix_address_disables() -> None:
    assert not Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_send_failure_is_logged_once_and_not_raised(tmp_path: Path) -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")})
    assert notifier.enabled
    with capture_logs() as logs:
        assert not notifier.ready()
        assert not notifier.status("x")
        assert not notifier.watchdog()
    failures = [e for e in logs if e["log_level"] == "warning"]
    assert len(failures) == 1, logs
    assert "nobody-listens" in failures[0]["socket"]


def test_watchdog_interval_is_half_the_timeout_for_our_pid() -> None:
    base = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(base).watchdog_interval == 15.0
    ours = {**base, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(ours).watchdog_interval == 15.0
    theirs = {**base, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(theirs).watchdog_interval is None
    assert Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify"}).watchdog_interval is None
    bad = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "soon"}
    assert Notifier.from_env(bad).watchdog_interval is None


def test_watchdog_pid_of_another_process_sends_nothing(pinged: Receiver) -> None:
    env = pinged.env(WATCHDOG_USEC="400000", WATCHDOG_PID=str(os.getpid() + 1))
    notifier = Notifier.from_env(env)
    started = time.monotonic()
    run(watchdog_pings(notifier, lambda: True), timeout=1.0)
    assert time.monotonic() - started < 0.5
    time.sleep(0.3)
    assert pinged.received == []


def test_pings_keep_pace(pinged: Receiver) -> None:
    notifier = Notifier.from_env(pinged.env(WATCHDOG_USEC="400000"))
    assert notifier.watchdog_interval == pytest.approx(0.2)
    run(pings_while(notifier, lambda: True, 1.5))
    times = pinged.times()
    # One at once, then every 0.2 s: 8 in 1.5 s.
    assert 6 <= len(times) <= 9, times
    gaps = sorted(b - a for a, b in itertools.pairwise(times))
    assert 0.15 <= gaps[len(gaps) // 2] <= 0.3, gaps


def test_no_pings_while_the_loop_is_blocked(pinged: Receiver) -> None:
    notifier = Notifier.from_env(pinged.env(WATCHDOG_USEC="400000"))
    block: list[float] = []

    async def block_the_loop() -> None:
        await asyncio.sleep(0.5)
        block.append(time.monotonic())
        time.sleep(1.0)  # the mistake under test: blocking work on the event loop
        block.append(time.monotonic())

    run(pings_while(notifier, lambda: True, 2.0, block_the_loop()))
    start, end = block
    times = pinged.times()
    during = [t for t in times if start + 0.1 < t < end]
    assert during == [], (block, times)
    assert len([t for t in times if t <= start + 0.1]) >= 2, times
    assert len([t for t in times if t >= end]) >= 2, times


def test_no_pings_while_unhealthy(pinged: Receiver) -> None:
    notifier = Notifier.from_env(pinged.env(WATCHDOG_USEC="400000"))
    window: list[float] = []
    state = {"healthy": True}

    async def sicken() -> None:
        await asyncio.sleep(0.5)
        state["healthy"] = False
        window.append(time.monotonic())
        await asyncio.sleep(0.8)
        window.append(time.monotonic())
        state["healthy"] = True

    run(pings_while(notifier, lambda: state["healthy"], 1.9, sicken()))
    sick, well = window
    times = pinged.times()
    assert [t for t in times if sick + 0.1 < t < well] == [], (window, times)
    assert len([t for t in times if t <= sick + 0.1]) >= 2, times
    assert len([t for t in times if t >= well]) >= 2, times


def test_a_raising_health_check_withholds_pings(pinged: Receiver) -> None:
    notifier = Notifier.from_env(pinged.env(WATCHDOG_USEC="400000"))

    def broken() -> bool:
        raise RuntimeError("health check bug")

    with capture_logs() as logs:
        run(pings_while(notifier, broken, 0.5))
    time.sleep(0.1)
    assert pinged.received == []
    assert len([e for e in logs if e["log_level"] == "warning"]) == 1, logs
