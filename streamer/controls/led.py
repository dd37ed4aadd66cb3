"""The status LED: one light pattern per state of the streamer.

=============  =================================================
state          pattern
=============  =================================================
idle           off
preparing      fast blink: 0.1 s on, 0.1 s off
live           solid on
reconnecting   slow blink: 1 s on, 1 s off
error          double blink: 0.15 on, 0.15 off, 0.15 on, 1.0 off
=============  =================================================

Blinking runs in one background thread per pattern that sleeps on an
``Event`` (no busy loop); ``show`` of another state and ``close`` stop it
and wait for it before touching the pin.
"""

from __future__ import annotations

import threading
from typing import Any

from streamer.controls import gpio_error, require_gpiozero

Pattern = tuple[tuple[bool, float], ...]
"""(LED on?, seconds) steps, repeated until stopped."""

PATTERNS: dict[str, bool | Pattern] = {
    "idle": False,
    "preparing": ((True, 0.1), (False, 0.1)),
    "live": True,
    "reconnecting": ((True, 1.0), (False, 1.0)),
    "error": ((True, 0.15), (False, 0.15), (True, 0.15), (False, 1.0)),
}
"""State name -> steady level, or a blink pattern."""

STATES = frozenset(PATTERNS)

_JOIN_TIMEOUT = 2.0


class StatusLed:
    """An LED on ``pin`` (e.g. ``"GPIO27"``, ``"27"``, ``"BOARD13"``), initially off.

    ``show`` may be called from any thread. Raises ``ConfigError`` when
    gpiozero is not installed or the pin name is invalid, ``DeviceError``
    when the pin cannot be claimed.
    """

    def __init__(self, pin: str, *, pin_factory: Any | None = None) -> None:
        gpiozero = require_gpiozero()
        try:
            self._led: Any = gpiozero.LED(pin, initial_value=False, pin_factory=pin_factory)
        except Exception as exc:
            raise gpio_error(gpiozero, "LED", pin, exc) from exc
        self._lock = threading.Lock()
        self._state: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def state(self) -> str | None:
        """The state last shown (``None`` before the first ``show``)."""
        return self._state

    @property
    def pin(self) -> Any:
        """The underlying gpiozero pin (a ``MockPin`` in tests)."""
        return self._led.pin

    def show(self, state: str) -> None:
        """Switch to ``state``'s pattern; showing the current state again is a no-op.

        Raises ``ValueError`` for an unknown state. Ignored after ``close``.
        """
        try:
            pattern = PATTERNS[state]
        except KeyError:
            known = ", ".join(PATTERNS)
            raise ValueError(f"unknown state {state!r} (known: {known})") from None
        with self._lock:
            if self._closed or state == self._state:
                return
            self._stop_pattern()
            self._state = state
            if isinstance(pattern, bool):
                self._led.value = pattern
            else:
                self._start_pattern(pattern, state)

    def close(self) -> None:
        """Stop any blinking, turn the LED off and release the pin; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop_pattern()
            try:
                self._led.off()
            finally:
                self._led.close()

    def __enter__(self) -> StatusLed:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # with self._lock held ------------------------------------------------------

    def _start_pattern(self, pattern: Pattern, state: str) -> None:
        self._stop = stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(pattern, stop), name=f"status-led-{state}", daemon=True
        )
        self._thread.start()

    def _stop_pattern(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(_JOIN_TIMEOUT)

    # pattern thread ------------------------------------------------------------

    def _run(self, pattern: Pattern, stop: threading.Event) -> None:
        led = self._led
        while True:
            for on, seconds in pattern:
                led.value = on
                if stop.wait(seconds):
                    return
