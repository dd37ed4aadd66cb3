"""The start/stop push button: a short press toggles streaming, a long hold resets.

Wiring: one side of a momentary switch to the GPIO pin, the other to ground
(the Pi's internal pull-up holds the pin high until the button is pressed).

Each press produces exactly one action:

* released before ``hold_time`` seconds: ``on_toggle()`` (fired on release, so
  that a hold never also toggles);
* held for ``hold_time`` seconds: ``on_reset()`` once, while still held; the
  release that follows does nothing.

Both callbacks run in gpiozero's own threads (the pin's edge-callback thread
and the hold thread): they must return at once and only *enqueue* work for
the application (e.g. ``queue.put_nowait``, ``loop.call_soon_threadsafe``),
never drive the stream themselves. An exception raised by a callback is
logged and swallowed so that it cannot kill gpiozero's threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

from streamer.controls import gpio_error, require_gpiozero

log = structlog.get_logger("streamer.controls")

BOUNCE_TIME = 0.05
"""Seconds of switch bounce ignored after an edge."""

HOLD_TIME = 3.0
"""Seconds the button must stay pressed to reset."""

# Per-press state: exactly one of toggle/reset may win each press.
_IDLE = "idle"  # not pressed (or the press was already handled)
_PRESSED = "pressed"  # pressed, neither released nor held yet
_HELD = "held"  # held long enough; on_reset already fired


class StartStopButton:
    """A push button on ``pin`` (e.g. ``"GPIO17"``, ``"17"``, ``"BOARD11"``).

    ``pin_factory`` is passed to gpiozero (tests use ``MockFactory()``);
    ``hold_time`` is how long a press must last to count as a reset.
    Raises ``ConfigError`` when gpiozero is not installed or the pin name is
    invalid, ``DeviceError`` when the pin cannot be claimed.
    """

    def __init__(
        self,
        pin: str,
        on_toggle: Callable[[], None],
        on_reset: Callable[[], None],
        *,
        pin_factory: Any | None = None,
        hold_time: float = HOLD_TIME,
    ) -> None:
        if hold_time <= 0:
            raise ValueError(f"hold_time must be positive, not {hold_time!r}")
        gpiozero = require_gpiozero()
        self._on_toggle = on_toggle
        self._on_reset = on_reset
        self._lock = threading.Lock()
        self._press = _IDLE
        try:
            self._button: Any = gpiozero.Button(
                pin,
                pull_up=True,
                bounce_time=BOUNCE_TIME,
                hold_time=hold_time,
                hold_repeat=False,
                pin_factory=pin_factory,
            )
        except Exception as exc:
            raise gpio_error(gpiozero, "button", pin, exc) from exc
        self._button.when_pressed = self._pressed
        self._button.when_held = self._held
        self._button.when_released = self._released

    @property
    def hold_time(self) -> float:
        return float(self._button.hold_time)

    @property
    def pin(self) -> Any:
        """The underlying gpiozero pin (a ``MockPin`` in tests)."""
        return self._button.pin

    def close(self) -> None:
        """Release the pin and stop gpiozero's hold thread; idempotent."""
        button = self._button
        if button.closed:
            return
        button.when_pressed = None
        button.when_held = None
        button.when_released = None
        button.close()

    def __enter__(self) -> StartStopButton:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # gpiozero callbacks (its threads) ----------------------------------------

    def _pressed(self) -> None:
        with self._lock:
            self._press = _PRESSED

    def _held(self) -> None:
        with self._lock:
            if self._press != _PRESSED:
                return  # released in the meantime: that press was a toggle
            self._press = _HELD
        log.info("button held", action="reset")
        _call(self._on_reset, "on_reset")

    def _released(self) -> None:
        with self._lock:
            fire = self._press == _PRESSED
            self._press = _IDLE
        if fire:
            log.info("button pressed", action="toggle")
            _call(self._on_toggle, "on_toggle")


def _call(callback: Callable[[], None], name: str) -> None:
    try:
        callback()
    except Exception:
        log.exception("button callback failed", callback=name)
