"""The device's button and LED, opened for a run; one that cannot be opened is left out.

A button or LED is a convenience: a board without usable GPIO (no pin
factory, a wrong pin, gpiozero missing) still streams. Each problem is one
error line and stays visible on /status (``Controls.summary``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from streamer.controls import pin_factory, require_gpiozero
from streamer.exc import StreamerError
from streamer.state import DeviceState

log = structlog.get_logger("streamer.controls")


@dataclass
class Controls:
    """Which controls are configured (name -> pin) and why any of them is not in use."""

    pins: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for /status: ``button GPIO17 ok; LED GPIO27 unavailable: ...``."""
        return "; ".join(
            f"{what} {pin} "
            + (f"unavailable: {self.problems[what]}" if what in self.problems else "ok")
            for what, pin in self.pins.items()
        )

    def unavailable(self, names: list[str], reason: str) -> None:
        """Say once (one error line) that these controls are left out, and why."""
        for name in names:
            self.problems[name] = reason
        shown = " and ".join(f"{name} {self.pins[name]}" for name in names)
        them = "them" if len(names) > 1 else "it"
        log.error(f"{shown} unavailable: streaming without {them}", reason=reason)


def open_controls(
    stack: contextlib.ExitStack,
    state: DeviceState,
    *,
    button: str | None,
    led: str | None,
    on_toggle: Callable[[], None],
    on_reset: Callable[[], None],
) -> Controls:
    """Open the LED (it follows ``state``) and the button; closed when ``stack`` closes.

    The button's callbacks run in gpiozero's threads: they must only hand
    the command on (``loop.call_soon_threadsafe``).
    """
    controls = Controls({name: pin for name, pin in (("LED", led), ("button", button)) if pin})
    if not controls.pins:
        return controls
    try:
        factory, fell_back = pin_factory(require_gpiozero())
    except StreamerError as exc:  # nothing can work: one line for all of them
        controls.unavailable(list(controls.pins), exc.message)
        return controls
    if fell_back:
        log.warning("GPIO pin factory fell back", factory=type(factory).__name__, notes=fell_back)
    if led:
        from streamer.controls.led import StatusLed

        try:
            status_led = stack.enter_context(StatusLed(led, pin_factory=factory))
        except StreamerError as exc:
            controls.unavailable(["LED"], exc.message)
        else:
            status_led.show(state.state)
            state.subscribe(lambda _old, new, _reason: status_led.show(new))
    if button:
        from streamer.controls.button import StartStopButton

        try:
            stack.enter_context(StartStopButton(button, on_toggle, on_reset, pin_factory=factory))
        except StreamerError as exc:
            controls.unavailable(["button"], exc.message)
    return controls
