"""Physical controls on the Pi: a start/stop push button and a status LED.

gpiozero is an optional dependency (the ``gpio`` extra); it is imported only
when a button or LED is actually configured, through ``require_gpiozero``.
"""

from __future__ import annotations

import warnings
from typing import Any

from streamer.exc import ConfigError, DeviceError

MISSING_GPIOZERO = (
    "GPIO pins are configured (--button/--led) but gpiozero is not installed: "
    "pip install 'streamer[gpio]'"
)


def require_gpiozero() -> Any:
    """Import and return the ``gpiozero`` module, or raise ``ConfigError``."""
    try:
        import gpiozero
    except ImportError as exc:
        raise ConfigError(MISSING_GPIOZERO) from exc
    return gpiozero


def gpio_error(gpiozero: Any, what: str, pin: str, exc: Exception) -> Exception:
    """Map an error gpiozero raised while claiming ``pin`` to one a user can act on.

    An invalid pin name is a configuration mistake (``ConfigError``); anything
    else (pin in use, no usable pin factory, ...) is a ``DeviceError``.
    Returns ``exc`` itself when it does not come from gpiozero.
    """
    if isinstance(exc, gpiozero.exc.PinInvalidPin):
        return ConfigError(f"invalid GPIO pin {pin!r} for the {what}: {exc}")
    if isinstance(exc, gpiozero.exc.GPIOZeroError):
        return DeviceError(f"cannot use GPIO pin {pin!r} for the {what}: {exc}")
    return exc


def pin_factory(gpiozero: Any) -> tuple[Any, list[str]]:
    """The pin factory gpiozero uses here, loaded now, with the factories it fell back from.

    gpiozero tries lgpio, RPi.GPIO, pigpio and its native factory in turn and
    warns about each that fails; those warnings become notes (or the reason
    of the ``DeviceError`` raised when none loads), never stray stderr text.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            gpiozero.Device.ensure_pin_factory()
        except Exception as exc:
            tried = "; ".join(_fallback(w.message) for w in caught)
            raise DeviceError(f"no GPIO pin factory loads on this board ({tried or exc})") from exc
    return gpiozero.Device.pin_factory, [_fallback(w.message) for w in caught]


def _fallback(message: Warning | str) -> str:
    """gpiozero's "Falling back from lgpio: No module named 'lgpio'" as "lgpio: ..."."""
    return str(message).removeprefix("Falling back from ")
