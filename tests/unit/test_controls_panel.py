"""A button or LED that cannot be opened: one error line, the rest of the device goes on."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from streamer.controls import MISSING_GPIOZERO
from streamer.controls.panel import Controls, open_controls
from streamer.state import DeviceState


@pytest.fixture
def no_factory() -> Iterator[None]:
    """gpiozero as on a fresh process: no pin factory chosen yet."""
    previous = Device.pin_factory
    Device.pin_factory = None
    try:
        yield
    finally:
        if Device.pin_factory is not None:
            Device.pin_factory.close()
        Device.pin_factory = previous


def records(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def open_both(stack: contextlib.ExitStack, led: str, button: str, **callbacks: Any) -> Controls:
    return open_controls(
        stack,
        DeviceState(),
        button=button,
        led=led,
        on_toggle=callbacks.get("on_toggle", lambda: None),
        on_reset=lambda: None,
    )


def test_a_bad_led_pin_is_one_error_line_and_the_button_still_works(
    no_factory: None, log_lines: io.StringIO
) -> None:
    Device.pin_factory = factory = MockFactory()
    pressed = threading.Event()
    with contextlib.ExitStack() as stack:
        controls = open_both(stack, "GPIO99", "GPIO17", on_toggle=pressed.set)
        pin = factory.pin(17)
        pin.drive_low()
        pin.drive_high()
        assert pressed.wait(2), "the button must still toggle"
    [line] = [r for r in records(log_lines) if r["level"] == "error"]
    assert line["event"] == "LED GPIO99 unavailable: streaming without it"
    assert "GPIO99 is not a valid pin name" in line["reason"]
    assert controls.summary() == f"LED GPIO99 unavailable: {line['reason']}; button GPIO17 ok"


def test_without_gpiozero_both_are_left_out_in_one_line(
    monkeypatch: pytest.MonkeyPatch, log_lines: io.StringIO
) -> None:
    monkeypatch.setitem(sys.modules, "gpiozero", None)
    with contextlib.ExitStack() as stack:
        controls = open_both(stack, "GPIO27", "GPIO17")
    [line] = records(log_lines)
    assert (line["level"], line["reason"]) == ("error", MISSING_GPIOZERO)
    assert line["event"] == "LED GPIO27 and button GPIO17 unavailable: streaming without them"
    assert set(controls.problems) == {"LED", "button"}


def test_no_pin_factory_is_one_line_with_gpiozeros_warnings_folded_in(
    no_factory: None, log_lines: io.StringIO, recwarn: pytest.WarningsRecorder
) -> None:
    with contextlib.ExitStack() as stack:
        controls = open_both(stack, "GPIO27", "GPIO17")
    if not controls.problems:
        pytest.skip("a GPIO pin factory loads on this machine (a Raspberry Pi?)")
    [line] = records(log_lines)
    assert line["event"] == "LED GPIO27 and button GPIO17 unavailable: streaming without them"
    assert line["reason"].startswith("no GPIO pin factory loads on this board (lgpio: ")
    assert "Falling back" not in line["reason"]
    assert len(recwarn) == 0, [str(w.message) for w in recwarn]  # none left as stray text
    assert controls.summary().startswith("LED GPIO27 unavailable: no GPIO pin factory loads")


def test_no_controls_configured_says_nothing(log_lines: io.StringIO) -> None:
    with contextlib.ExitStack() as stack:
        controls = open_both(stack, "", "")
    assert controls.summary() == "" and log_lines.getvalue() == ""


def test_the_status_page_shows_the_controls_line() -> None:
    from streamer.page import render_page

    page = render_page({"state": "live", "controls": "LED GPIO27 unavailable: no factory"})
    assert '<td id="f-controls">LED GPIO27 unavailable: no factory</td>' in page
