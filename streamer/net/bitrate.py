"""Adaptive video bitrate: follow what the link actually takes.

Pure policy (no I/O, no clock of its own): the caller feeds the running
total of bytes the socket accepted and the send queue's depth in media
milliseconds, with ``now`` in seconds from any monotonic clock.
"""

from __future__ import annotations

# The floor a device streams with unless told otherwise: low enough that a collapsing
# cellular link (270 kbit/s) still carries the picture and 128 kbit/s of audio live
# (docs/design.md, "Cellular links").
DEFAULT_MIN_KBPS = 100
MIN_CHANGE = 0.05  # a decrease smaller than this fraction of the target is not worth a reconfig
# A raise adds at least this much: 10 % of a floor of 100 kbit/s would take a minute and a
# half of calm periods back to 1000 (a session that started in a dip has nothing to recover
# to); above 500 kbit/s the 10 % step is the larger.
MIN_RAISE_KBPS = 50


class BitrateController:
    """Lower the video target when the send queue grows, raise it when the queue stays calm.

    Samples: every ``sample_period`` seconds (at the first ``update`` at or after
    the period has elapsed) a sample closes, and ``measured_kbps`` becomes the
    bytes accepted during it, divided by its actual duration. The next sample
    starts at that same update (not at ``start + sample_period``: the byte count
    at that instant is unknown), so irregular feeding only stretches samples.

    Decrease (decided only when a sample closes): the queue *grows* when it is
    above ``calm_queue_ms`` and either higher than at the previous sample's close,
    or above ``2 * calm_queue_ms`` and not lower than then. The new target is
    ``clamp(decrease_factor * measured_kbps - audio_kbps, min_kbps, max_kbps)``,
    applied only if it is lower than the current target by at least 5 % of it. So
    a queue that stays large while the target already fits the measured link does
    not ratchet the target down sample after sample: each decision is relative to
    what the link took, never to the previous target. A complete stall (nothing
    accepted while the queue grows) measures 0 and sends the target to
    ``min_kbps``.

    Increase (checked at every update): once the queue has been seen at or below
    ``calm_queue_ms`` on every update for ``calm_period`` seconds, counted from the
    first calm update, the target rises (capped at ``max_kbps``) and the calm timer
    restarts, so it rises at most once per ``calm_period``; the timer restarts too
    when the target is already at ``max_kbps``. A single update above
    ``calm_queue_ms`` breaks the run. The step is ``increase_factor`` (rounded), and at
    least ``MIN_RAISE_KBPS`` unless ``increase_factor`` is 1, except after a dip: then it
    rises at once to ``recover_to_kbps`` (if that is more), the last target the
    link carried with the queue calm for a whole ``calm_period`` before the dip.
    Decreases less than ``2 * calm_period`` apart, with no raise between them,
    are one dip. So a cellular link that dips to nothing for a second is back at
    its rate one calm period after its backlog drained, instead of thirty steps
    of 10 % later; a link that came back slower makes that step fail once, and
    the failure is a new dip whose goal is the step before it.

    Edge cases:

    * The first update (after construction or ``reset``) only starts the window
      and records the queue depth to compare the first sample with.
    * ``now`` going backwards, or ``bytes_accepted_total`` going backwards (a
      per-connection counter that restarted without ``reset``), discards the
      open sample and the calm timer and starts over from that update; no
      decision is taken on it.
    * A sample of zero duration cannot close (``sample_period`` must be > 0).
    * ``measured_kbps`` counts every byte the socket took (audio, FLV and RTMP
      overhead included); that is why ``audio_kbps`` is subtracted to get the
      video target.
    """

    def __init__(
        self,
        max_kbps: int,
        min_kbps: int = DEFAULT_MIN_KBPS,
        audio_kbps: int = 0,
        *,
        sample_period: float = 1.0,
        decrease_factor: float = 0.9,
        increase_factor: float = 1.10,
        calm_period: float = 4.0,
        calm_queue_ms: int = 100,
    ) -> None:
        if not 0 < min_kbps <= max_kbps:
            raise ValueError(f"need 0 < min_kbps <= max_kbps, got {min_kbps} and {max_kbps}")
        if audio_kbps < 0:
            raise ValueError(f"audio_kbps must be >= 0, got {audio_kbps}")
        if sample_period <= 0 or calm_period <= 0:
            raise ValueError("sample_period and calm_period must be > 0")
        if not 0 < decrease_factor <= 1:
            raise ValueError(f"decrease_factor must be in (0, 1], got {decrease_factor}")
        if increase_factor < 1:
            raise ValueError(f"increase_factor must be >= 1, got {increase_factor}")
        if calm_queue_ms < 0:
            raise ValueError(f"calm_queue_ms must be >= 0, got {calm_queue_ms}")
        self.max_kbps = max_kbps
        self.min_kbps = min_kbps
        self.audio_kbps = audio_kbps
        self.sample_period = sample_period
        self.decrease_factor = decrease_factor
        self.increase_factor = increase_factor
        self.calm_period = calm_period
        self.calm_queue_ms = calm_queue_ms
        self.target_kbps: int = max_kbps
        self.measured_kbps: float | None = None
        self._window_start: float | None = None
        self._window_bytes = 0
        self._prev_queue_ms = 0
        self._calm_since: float | None = None
        self._last_now: float | None = None
        self.recover_to_kbps = 0  # the rate to recover to after the last dip (0: none)
        self._last_decrease: float | None = None
        self._carried_kbps = 0  # the target when the queue last stayed calm a calm_period

    def reset(self, now: float) -> None:
        """A new connection: forget the samples, the measurement and the calm timer.

        The target is kept, and so is what to recover to after a dip (a reconnect
        is often a dip's end). ``now`` only anchors the clock-going-backwards
        check; the next ``update`` starts the first window.
        """
        self._window_start = None
        self._calm_since = None
        self.measured_kbps = None
        self._last_now = now

    def update(self, now: float, bytes_accepted_total: int, queue_ms: int) -> int | None:
        """Feed the link's state; returns the new video target when it changed, else None."""
        if self._last_now is not None and now < self._last_now:
            self._window_start = None
            self._calm_since = None
            self._last_decrease = None
        self._last_now = now

        if self._window_start is None or bytes_accepted_total < self._window_bytes:
            self._start_window(now, bytes_accepted_total, queue_ms)
            self._calm_since = None
            return self._track_calm(now, queue_ms)

        if now - self._window_start >= self.sample_period:
            duration = now - self._window_start
            accepted = bytes_accepted_total - self._window_bytes
            self.measured_kbps = accepted * 8 / 1000 / duration
            grows = queue_ms > self.calm_queue_ms and (
                queue_ms > self._prev_queue_ms
                or (queue_ms > 2 * self.calm_queue_ms and queue_ms >= self._prev_queue_ms)
            )
            self._start_window(now, bytes_accepted_total, queue_ms)
            if grows:
                self._calm_since = None  # the queue is above calm_queue_ms anyway
                return self._decrease(self.measured_kbps, now)
        return self._track_calm(now, queue_ms)

    def _start_window(self, now: float, total: int, queue_ms: int) -> None:
        self._window_start = now
        self._window_bytes = total
        self._prev_queue_ms = queue_ms

    def _decrease(self, measured_kbps: float, now: float) -> int | None:
        wanted = round(self.decrease_factor * measured_kbps - self.audio_kbps)
        wanted = min(self.max_kbps, max(self.min_kbps, wanted))
        if self.target_kbps - wanted < MIN_CHANGE * self.target_kbps:
            return None  # not lower, or not lower by enough to matter
        if self._last_decrease is None or now - self._last_decrease > 2 * self.calm_period:
            # A new dip: recover to the last rate the link carried calmly. Decreases in
            # quick succession are one dip, sinking from that same rate.
            self.recover_to_kbps = self._carried_kbps
        self._last_decrease = now
        self.target_kbps = wanted
        return wanted

    def _track_calm(self, now: float, queue_ms: int) -> int | None:
        if queue_ms > self.calm_queue_ms:
            self._calm_since = None
            return None
        if self._calm_since is None:
            self._calm_since = now
            return None
        if now - self._calm_since < self.calm_period:
            return None
        self._calm_since = now
        self._carried_kbps = self.target_kbps
        self._last_decrease = None  # a raise ends the dip: a failed one starts a new one
        raised = round(self.target_kbps * self.increase_factor)
        if self.increase_factor > 1:
            raised = max(raised, self.target_kbps + MIN_RAISE_KBPS)
        if self.target_kbps < self.recover_to_kbps:
            raised = max(raised, self.recover_to_kbps)
        raised = min(self.max_kbps, raised)
        if raised <= self.target_kbps:
            return None
        self.target_kbps = raised
        return raised
