"""Shared fixtures: a real nginx-rtmp on a free loopback port, and running the real CLI."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from streamer import log as logsetup
from streamer.localserver import LocalRtmpServer
from tests.media_check import CAPTURE_FLOOR


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the screenshots a run saved are (tests add ``("screenshot", path)``)."""
    shots = [
        str(value)
        for reports in terminalreporter.stats.values()
        for report in reports
        for name, value in getattr(report, "user_properties", ())
        if name == "screenshot"
    ]
    for shot in dict.fromkeys(shots):
        terminalreporter.write_line(f"screenshot of the status page: {shot}")


# Markers whose tests take turns in one test process (an xdist group each).
TAKING_TURNS = ("heavy", "cpu_bound")


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads xdist_group into the node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``heavy`` run one after another in one test process (first, as they
    take longest), never side by side: each measures latency while using a core. Those
    marked ``cpu_bound`` (property tests that keep a core busy for seconds) take turns in
    another, so that never more than one of them starves the streams of the others."""
    for item in items:
        for marker in TAKING_TURNS:
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.xdist_group(marker))
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Refuse to run the heavy tests side by side: xdist groups tests by a suffix it writes
    into the node id, which pytest 9.2 no longer reads (the grouping silently stopped)."""
    if not getattr(session.config.option, "loadgroup", False):  # xdist sets it on workers
        return  # not a worker of --dist loadgroup
    ungrouped = [
        item.nodeid
        for item in session.items
        for marker in TAKING_TURNS
        if item.get_closest_marker(marker) and not item.nodeid.endswith(f"@{marker}")
    ]
    if ungrouped:
        why = (
            f"xdist did not group the tests that take turns ({ungrouped[0]} has no group "
            "suffix): they would run side by side; pytest and pytest-xdist as pyproject.toml "
            "pins them do"
        )
        print(f"\n{why}", file=sys.__stderr__)  # a worker's own errors reach no report
        raise pytest.UsageError(why)


@pytest.fixture(autouse=True)
def logging_as_it_was() -> Iterator[None]:
    """A test that configures logging (JSON, a StringIO, journald) or registers a secret
    leaves it as it found it: tests run in any order, four processes at once."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    output = vars(logsetup._output).copy()
    secrets = set(logsetup._secrets)  # a key registered by one test would hide words in another
    yield
    logsetup._secrets.clear()
    logsetup._secrets.update(secrets)
    structlog.configure(**config)
    root.handlers[:], root.level = handlers, level
    vars(logsetup._output).clear()
    vars(logsetup._output).update(output)


@pytest.fixture
def log_lines() -> io.StringIO:
    """Every log line as JSON, here.

    Devices of earlier tests in this process are collected first: one left as garbage counts
    as alive, and its stream key (``gpio``, say) would hide that word in these lines.
    """
    gc.collect()
    out = io.StringIO()
    logsetup.configure("info", "json", stream=out)
    return out


@pytest.fixture
def rtmp_server() -> Iterator[LocalRtmpServer]:
    server = LocalRtmpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.remove()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def delivered(self) -> tuple[int, int]:
        """(video frames the server acknowledged, video frames captured while live) from the
        run's ``delivered`` line. A camera on a busy machine skips frames (as a sensor
        does): what it did capture is what a viewer must get."""
        [line] = [x for x in self.stderr.splitlines() if "delivered" in x and "captured_live" in x]
        numbers = dict(re.findall(r'(video_frames|captured_live)"?[=:] ?(\d+)', line))
        return int(numbers["video_frames"]), int(numbers["captured_live"])

    def captured_live(self, seconds: float, fps: float) -> tuple[int, int]:
        """``delivered()``, after checking the capture against a floor that a stalled camera
        would miss (``CAPTURE_FLOOR``); the rate a camera keeps on a busy machine is the
        machine's speed, a benchmark's business (bench/)."""
        delivered, captured = self.delivered()
        floor = CAPTURE_FLOOR * seconds * fps
        assert captured >= floor, f"{captured} frames captured live, under {floor:.0f}"
        return delivered, captured


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"},
    )


def finish_cli(proc: subprocess.Popen[str], timeout: float) -> CliResult:
    """Wait for a started ``streamer``; the timeout bounds every test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        command = str(proc.args)
        pytest.fail(f"{command} did not end within {timeout} s:\n{err[-2000:]}")
    return CliResult(proc.returncode, out, err)


def run_cli(*args: str, timeout: float = 60.0, env: dict[str, str] | None = None) -> CliResult:
    """Run ``streamer ARGS`` as a user would."""
    return finish_cli(start_cli(*args, env=env), timeout)


class LiveCli:
    """``streamer run --log-format json`` in the background, its log lines read as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = start_cli(*args, "--log-format", "json")
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line)
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    event["_received"] = time.monotonic()
                    self.events.append(event)
                self._cond.notify_all()

    def transitions(self) -> list[str]:
        with self._cond:
            return [e["transition"] for e in self.events if e.get("event") == "state"]

    def wait_for_state(self, transition: str, timeout: float, after: int = 0) -> dict[str, Any]:
        """The first 'state' event with this transition (``'live -> reconnecting'``)."""
        return self._wait_for(
            lambda e: e.get("event") == "state" and e.get("transition") == transition,
            f"'{transition}'",
            timeout,
            after,
        )

    def wait_for_event(self, event: str, timeout: float, after: int = 0) -> dict[str, Any]:
        """The first log line whose event is ``event`` (``'retrying after cooldown'``)."""
        return self._wait_for(lambda e: e.get("event") == event, f"event '{event}'", timeout, after)

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float, after: int = 0
    ) -> dict[str, Any]:
        """The first log line (after the first ``after``) that ``match`` accepts."""
        return self._wait_for(match, what, timeout, after)

    def _wait_for(
        self, match: Callable[[dict[str, Any]], bool], what: str, timeout: float, after: int
    ) -> dict[str, Any]:
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events[after:] if match(e)]
                if found:
                    return found[0]
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    pytest.fail(
                        f"no {what} within {timeout} s; transitions: "
                        f"{self.transitions()}\n{''.join(self.lines[-20:])}"
                    )
                self._cond.wait(min(left, 0.2))

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"streamer did not stop within {timeout} s after signal {sig}")
        self._reader.join(timeout=5)
        return self.proc.returncode

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)
