"""Reconnect backoff: how long to wait before the next attempt, and when to give up.

Pure policy (no I/O, no sleeping, no clock reads): the caller passes `now`
(monotonic seconds) and sleeps on the returned delay itself; randomness comes
from an injected `random.Random` so tests can seed it.

Semantics (docs/design.md "Reconnect, backoff, stalls"):

- Delays grow 1 s, 2 s, 4 s, ... (``initial * factor**attempts``) up to `cap`.
- Each delay is jittered uniformly within ±`jitter` of its base so that many
  devices dropped by the same server outage do not reconnect in lockstep.
- The jittered value is then clamped to ``[0, cap]``: `cap` is a hard ceiling
  the operator can rely on, so at the cap delays fall in
  ``[cap * (1 - jitter), cap]`` (24-30 s with the defaults).
- `attempts` counts attempts since the last reset, whether they failed to
  connect or connected and then dropped before `reset_after`. Only a
  connection that stayed live for at least `reset_after` seconds restores the
  full budget; a link that flaps (live for 10 s, drop, live for 10 s, ...)
  keeps climbing the sequence and, in CLI mode, eventually gives up instead of
  hammering the server every second.
- `max_attempts` bounds `attempts`: `next_delay` returns None once another
  attempt would exceed it. None means retry forever (service mode).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Reconnect delays: 1 s, x2, ±20 % jitter, capped at 30 s; budget resets after 60 s live."""

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2
    reset_after: float = 60.0  # seconds continuously live that restore the full budget
    max_attempts: int | None = 10  # None = retry forever (service mode)
    rng: random.Random = field(default_factory=random.Random)
    _attempts: int = field(default=0, init=False, repr=False)
    _live_at: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ValueError(f"initial must be > 0, got {self.initial}")
        if not self.factor >= 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if not self.cap >= self.initial:
            raise ValueError(f"cap must be >= initial, got {self.cap} < {self.initial}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if not self.reset_after >= 0:
            raise ValueError(f"reset_after must be >= 0, got {self.reset_after}")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0 or None, got {self.max_attempts}")

    @property
    def attempts(self) -> int:
        """Attempts since the last reset; read-only so only the policy moves it."""
        return self._attempts

    def base_delay(self, attempt: int) -> float:
        """Un-jittered delay before attempt number `attempt` (0-based), capped."""
        try:
            raw = self.initial * self.factor**attempt
        except OverflowError:  # forever mode runs past 2.0**1023; it is the cap anyway
            return self.cap
        return min(self.cap, raw)

    def next_delay(self) -> float | None:
        """Delay before the next attempt, or None when the budget is spent.

        Counts the attempt. Once None is returned it keeps being returned until
        `reset` (or a long-enough live period followed by `lost`).
        """
        if self.max_attempts is not None and self._attempts >= self.max_attempts:
            return None
        base = self.base_delay(self._attempts)
        self._attempts += 1
        jittered = base * self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        return min(self.cap, max(0.0, jittered))

    def live_since(self, now: float) -> None:
        """The connection reached live at `now`; remembered to judge the next loss."""
        self._live_at = now

    def lost(self, now: float) -> None:
        """A live connection dropped at `now`.

        If it had been live for at least `reset_after` the link is considered
        healthy again and the budget restarts from `initial`; otherwise the
        sequence continues where it was so a flapping link backs off.
        """
        if self._live_at is not None and now - self._live_at >= self.reset_after:
            self._attempts = 0
        self._live_at = None

    def reset(self) -> None:
        """Forget all history (e.g. the user restarted the stream by hand)."""
        self._attempts = 0
        self._live_at = None
