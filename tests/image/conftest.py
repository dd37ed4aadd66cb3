"""The image test's measurements, printed at the end of the pytest run."""

from __future__ import annotations

import pytest

from tests.image.nspawn import TIMES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIMES:
        return
    terminalreporter.section("image timings")
    for name, seconds in TIMES.items():
        terminalreporter.write_line(f"{name:<44} {seconds:7.1f} s")
