"""Reconnect backoff: how long to wait before the next attempt, and when to give up.

Pure policy (no I/O, no sleeping, no clock reads): the caller passes `now`
(monotonic seconds) and sleeps on the returned delay itself; randomness comes
from an injected `random.Random` so tests can seed it.

Semantics (docs/design.md "Reconnect, backoff, stalls"):

- Delays grow 1 s, 2 s, 4 s, ... (``initial * factor**attempts``) up to the
  longest delay *the outage's age allows*: `fast_cap` (4 s) while the outage
  is younger than `fast_for` (90 s: a minute, plus room for attempts that
  take a while to fail), so a server back within a minute gets a new attempt
  within 4 s; after that the ceiling doubles every `fast_for` seconds up to
  `cap` (8 s, 16 s, then 30 s from 4.5 minutes on), so a fleet does not
  hammer a server that is down for hours.
- An outage begins at the first failure after a session that stayed live
  for `settle` seconds (or at the first failure of all). Shorter sessions
  (a flapping link) do not end it, so the ceiling keeps growing and such a
  link backs off too.
- Each delay is jittered uniformly within ±`jitter` of its base so that many
  devices dropped by the same server outage do not reconnect in lockstep.
- The jittered value is then clamped to ``[0, ceiling]``: the ceiling is a
  hard limit, so at it delays fall in ``[ceiling * (1 - jitter), ceiling]``
  (3.2-4 s in the first 90 s, 24-30 s after 4.5 minutes).
- `attempts` counts attempts since the last reset. Only a connection that
  stayed live for at least `reset_after` seconds restores the full budget.
- `max_attempts` bounds `attempts`: `next_delay` returns None once another
  attempt would exceed it. None means retry forever (service mode).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Reconnect delays: 1 s, x2, at most 4 s for 90 s, then up to 30 s; ±20 % jitter."""

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 30.0  # the longest delay, for outages of minutes and more
    fast_cap: float = 4.0  # the longest delay while the outage is young
    fast_for: float = 90.0  # how long an outage is young; the ceiling doubles every period after
    jitter: float = 0.2
    settle: float = 10.0  # seconds live that end an outage: the next loss starts a new one
    reset_after: float = 60.0  # seconds continuously live that restore the full budget
    max_attempts: int | None = 10  # None = retry forever (service mode)
    rng: random.Random = field(default_factory=random.Random)
    _attempts: int = field(default=0, init=False, repr=False)
    _live_at: float | None = field(default=None, init=False, repr=False)
    _down_since: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.initial > 0:
            raise ValueError(f"initial must be > 0, got {self.initial}")
        if not self.factor >= 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if not self.cap >= self.initial:
            raise ValueError(f"cap must be >= initial, got {self.cap} < {self.initial}")
        if not self.fast_cap > 0:
            raise ValueError(f"fast_cap must be > 0, got {self.fast_cap}")
        if not self.fast_for > 0:
            raise ValueError(f"fast_for must be > 0, got {self.fast_for}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if not self.reset_after >= 0:
            raise ValueError(f"reset_after must be >= 0, got {self.reset_after}")
        if not 0 <= self.settle <= self.reset_after:
            raise ValueError(f"settle must be in [0, reset_after], got {self.settle}")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0 or None, got {self.max_attempts}")

    @property
    def attempts(self) -> int:
        """Attempts since the last reset; read-only so only the policy moves it."""
        return self._attempts

    def ceiling(self, down: float) -> float:
        """The longest delay after `down` seconds of outage.

        Never below `initial` (the operator's first wait) nor above `cap`.
        """
        low = min(max(self.fast_cap, self.initial), self.cap)
        periods = int(max(0.0, down) // self.fast_for)
        if periods >= 64:  # far past any cap; keeps 2**periods small
            return self.cap
        return min(self.cap, low * float(2**periods))

    def base_delay(self, attempt: int, down: float = 0.0) -> float:
        """Un-jittered delay before attempt number `attempt` (0-based), `down` s into the outage."""
        ceiling = self.ceiling(down)
        try:
            raw = self.initial * self.factor**attempt
        except OverflowError:  # forever mode runs past 2.0**1023; it is the ceiling anyway
            return ceiling
        return min(ceiling, raw)

    def next_delay(self, now: float) -> float | None:
        """Delay before the next attempt, decided at `now`; None when the budget is spent.

        Counts the attempt. Once None is returned it keeps being returned until
        `reset` (or a long-enough live period followed by `lost`).
        """
        if self.max_attempts is not None and self._attempts >= self.max_attempts:
            return None
        if self._down_since is None:
            self._down_since = now
        down = now - self._down_since
        base = self.base_delay(self._attempts, down)
        self._attempts += 1
        jittered = base * self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        return min(self.ceiling(down), max(0.0, jittered))

    def live_since(self, now: float) -> None:
        """The connection reached live at `now`; remembered to judge the next loss."""
        self._live_at = now

    def lost(self, now: float) -> None:
        """A live connection dropped at `now`.

        Live for `reset_after`: healthy again, the budget restarts from
        `initial`. Live for `settle`: the outage before it is over, a new one
        begins now (fast attempts again). Shorter: the outage and the
        sequence go on where they were, so a flapping link backs off.
        """
        live_for = None if self._live_at is None else now - self._live_at
        if live_for is not None and live_for >= self.reset_after:
            self._attempts = 0
        if self._down_since is None or (live_for is not None and live_for >= self.settle):
            self._down_since = now
        self._live_at = None

    def reset(self) -> None:
        """Forget all history (e.g. the user restarted the stream by hand)."""
        self._attempts = 0
        self._live_at = None
        self._down_since = None
