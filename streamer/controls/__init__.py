"""Physical controls on the Pi: a start/stop push button and a status LED.

gpiozero is an optional dependency (the ``gpio`` extra); it is imported only
when a button or LED is actually configured, through ``require_gpiozero``.
"""

from __future__ import annotations

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
