"""/metrics: the device's snapshot in the Prometheus text format, named by its conventions.

Base units (seconds, bits per second), counters end in ``_total``, and one
metric per quantity: what each destination does is one series per
destination (label ``destination``), never a second metric for the sum
(Prometheus sums with ``sum()``). The names and what they mean are listed in
docs/design.md ("Metrics").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import structlog
from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from streamer.state import STATES

log = structlog.get_logger("streamer.status")

Snapshot = Callable[[], Mapping[str, Any]]
UP_HELP: Final = "1 when the streamer's status could be read"


def number(snapshot: Mapping[str, Any], key: str, scale: float = 1.0) -> float | None:
    """The field as a finite float times ``scale``, or None (missing, not a number, NaN)."""
    value = snapshot.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    result = float(value) * scale
    return result if math.isfinite(result) else None


# Per destination (label ``destination``): (name without _total, help, snapshot key, scale).
COUNTERS: Final = (
    ("streamer_frames_sent", "Video frames sent to the destination", "frames_sent", 1.0),
    (
        "streamer_reconnects",
        "Reconnections to the destination after a lost connection",
        "reconnects",
        1.0,
    ),
    (
        "streamer_discarded_offline_packets",
        "Packets captured while the destination had no session to send them to",
        "discarded_offline",
        1.0,
    ),
    (
        "streamer_keyframes_requested",
        "Keyframes the destination's send queue asked the encoder for",
        "keyframes_requested",
        1.0,
    ),
)
GAUGES: Final = (
    ("streamer_queue_seconds", "Media time waiting in the destination's queue", "queue_ms", 1e-3),
    (
        "streamer_sent_bits_per_second",
        "Bits per second sent to the destination over the last stats interval",
        "sent_kbps",
        1e3,
    ),
    (
        "streamer_target_bits_per_second",
        "Video bitrate the destination's link allows (the encoder takes the lowest)",
        "target_kbps",
        1e3,
    ),
)


def _state_samples(family: GaugeMetricFamily, labels: list[str], current: str) -> None:
    for state in [*STATES, *([current] if current and current not in STATES else [])]:
        family.add_metric([*labels, state], 1.0 if state == current else 0.0)


class SnapshotCollector(Collector):
    """Reads the snapshot at scrape time; registered in a private CollectorRegistry."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        try:
            snap = self._snapshot()
        except Exception as exc:
            log.warning("status snapshot failed", error=repr(exc))
            yield GaugeMetricFamily("streamer_up", UP_HELP, value=0)
            return
        yield GaugeMetricFamily("streamer_up", UP_HELP, value=1)
        states = GaugeMetricFamily(
            "streamer_state", "1 for the device's current state, 0 for the others", labels=["state"]
        )
        _state_samples(states, [], str(snap.get("state", "")))
        yield states
        info = GaugeMetricFamily(
            "streamer_info", "The encoder and resolution in use", labels=["encoder", "resolution"]
        )
        info.add_metric([str(snap.get("encoder") or ""), str(snap.get("resolution") or "")], 1.0)
        yield info
        device_gauges = (
            (
                "streamer_encoder_target_bits_per_second",
                "Video bitrate the encoder was last told to aim at",
                "target_kbps",
                1e3,
            ),
            ("streamer_uptime_seconds", "Seconds since the streamer started", "uptime_s", 1.0),
            ("streamer_filter_seconds", "Filter time per video frame", "filter_ms", 1e-3),
        )
        for name, text, key, scale in device_gauges:
            value = number(snap, key, scale)
            if value is not None:
                yield GaugeMetricFamily(name, text, value=value)
        raw = snap.get("destinations")
        if isinstance(raw, list | tuple):
            yield from destination_metrics([d for d in raw if isinstance(d, Mapping)])


def destination_metrics(destinations: list[Mapping[str, Any]]) -> Iterable[Metric]:
    """Each destination's state, counters and gauges, labelled with its name."""
    names = [str(d.get("name", "")) for d in destinations]
    states = GaugeMetricFamily(
        "streamer_destination_state",
        "1 for each destination's current state, 0 for the others",
        labels=["destination", "state"],
    )
    info = GaugeMetricFamily(
        "streamer_destination_info",
        "Each destination's server (the stream key shown as ***)",
        labels=["destination", "url"],
    )
    dropped = CounterMetricFamily(
        "streamer_dropped_packets",
        "Packets dropped from the destination's queue because its link could not carry them",
        labels=["destination", "kind"],
    )
    for name, d in zip(names, destinations, strict=True):
        _state_samples(states, [name], str(d.get("state", "")))
        info.add_metric([name, str(d.get("url") or "")], 1.0)
        for kind in ("video", "audio"):
            value = number(d, f"dropped_{kind}")
            if value is not None:
                dropped.add_metric([name, kind], value)
    yield states
    yield info
    if dropped.samples:
        yield dropped
    families: list[tuple[type[Any], tuple[tuple[str, str, str, float], ...]]] = [
        (CounterMetricFamily, COUNTERS),
        (GaugeMetricFamily, GAUGES),
    ]
    for family_type, specs in families:
        for metric, text, key, scale in specs:
            family = family_type(metric, text, labels=["destination"])
            for name, d in zip(names, destinations, strict=True):
                value = number(d, key, scale)
                if value is not None:
                    family.add_metric([name], value)
            if family.samples:
                yield family


def registry_for(snapshot: Snapshot) -> CollectorRegistry:
    """A private registry (never the global one) that reads ``snapshot`` at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return registry


def render_metrics(snapshot: Snapshot) -> bytes:
    """/metrics for this snapshot (the Prometheus text format)."""
    return generate_latest(registry_for(snapshot))
