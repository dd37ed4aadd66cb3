"""What the status page draws: the last minutes of numbers and the last events.

The device adds a sample at every stats interval and an event at every state
change, bitrate change and error; the page reads ``as_json()``. Bounded by
time and count, so months of uptime cost the same few kilobytes.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Final, TypedDict

WINDOW_S: Final = 15 * 60  # the charts' span
MAX_SAMPLES: Final = 1000  # a bound whatever the sampling interval
MAX_EVENTS: Final = 20


class Samples(TypedDict):
    """One list per series, index by index; ``t`` is Unix time in seconds."""

    t: list[float]
    sent_kbps: list[float]
    target_kbps: list[float]
    queue_ms: list[float]
    dropped: list[float]  # packets dropped since the sample before


class Event(TypedDict):
    t: float
    kind: str  # state, reconnect, error, bitrate, destination
    text: str


class HistoryJson(TypedDict):
    window_s: int
    samples: Samples
    events: list[Event]


class History:
    """Samples of the last ``window_s`` seconds and the last ``max_events`` events.

    Thread-safe: the device writes on its event loop, the page may read from anywhere.
    """

    def __init__(self, window_s: float = WINDOW_S, max_events: int = MAX_EVENTS) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float, float, float, float]] = deque(maxlen=MAX_SAMPLES)
        self._events: deque[Event] = deque(maxlen=max_events)
        self._dropped_total: float | None = None
        self._lock = threading.Lock()

    def sample(
        self, t: float, *, sent_kbps: float, target_kbps: float, queue_ms: float, dropped: float
    ) -> None:
        """Add a point; ``dropped`` is the running total (the chart shows it per interval)."""
        with self._lock:
            before = self._dropped_total
            self._dropped_total = dropped
            # A total that went down (a new process, a reset) starts counting again.
            step = dropped - before if before is not None and dropped >= before else 0.0
            self._samples.append((t, sent_kbps, target_kbps, queue_ms, step))
            while self._samples and self._samples[0][0] < t - self.window_s:
                self._samples.popleft()

    def event(self, t: float, kind: str, text: str) -> None:
        with self._lock:
            self._events.append({"t": t, "kind": kind, "text": text})

    def as_json(self) -> HistoryJson:
        with self._lock:
            rows = list(self._samples)
            events = list(self._events)
        samples: Samples = {
            "t": [r[0] for r in rows],
            "sent_kbps": [r[1] for r in rows],
            "target_kbps": [r[2] for r in rows],
            "queue_ms": [r[3] for r in rows],
            "dropped": [r[4] for r in rows],
        }
        return {"window_s": round(self.window_s), "samples": samples, "events": events[::-1]}


def empty() -> dict[str, Any]:
    """What /history says when there is no device history (a bare status server)."""
    return dict(History().as_json())
