"""streamer: a camera + microphone device that broadcasts live over RTMP.

The public API (README: Use from Python): ``Device``, ``Settings``,
``Target``, the exception root ``StreamerError`` and ``Snapshot`` (the type
of ``Device.snapshot()``). Everything else is
internal. The names are imported on first use, so ``import streamer`` stays
cheap for the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Device", "Settings", "Snapshot", "StreamerError", "Target"]

if TYPE_CHECKING:
    from streamer.device import Device, Snapshot
    from streamer.exc import StreamerError
    from streamer.settings import Settings, Target

_HOMES = {
    "Device": "streamer.device",
    "Snapshot": "streamer.device",
    "Settings": "streamer.settings",
    "Target": "streamer.settings",
    "StreamerError": "streamer.exc",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'streamer' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)
