"""Shared fixtures: a real nginx-rtmp on a free loopback port, and running the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from streamer.localserver import LocalRtmpServer


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


def start_cli(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def run_cli(*args: str, timeout: float = 60.0) -> CliResult:
    """Run ``streamer ARGS`` as a user would; the timeout bounds every test."""
    proc = start_cli(*args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"streamer {' '.join(args)} did not end within {timeout} s:\n{err[-2000:]}")
    return CliResult(proc.returncode, out, err)
