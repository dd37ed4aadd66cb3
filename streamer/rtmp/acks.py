"""The server's 32-bit Acknowledgements turned into a running 64-bit count of bytes received.

Servers do not agree on what the 32-bit sequence number counts, so each new
value is read as a forward step from the last one, never against bytes sent:

- a true 2^32 wrap is just a step: ``(v - last) mod 2^32``;
- nginx-rtmp and SRS restart their counter at 0xF0000000 (3.75 GiB), so the
  next value is small: a step larger than what can be on its way means a
  restart, and ``v`` counts from it. nginx also forgets what it received
  between its last ack and the restart (``restart_gap`` bounds that);
- mediamtx counts the 3073 handshake bytes too, so its acks can be a little
  ahead of what we sent: that means "everything received".

The count never goes past bytes sent: an estimate a little high (a restart
whose exact point is unknown) is pulled back by the next ack that proves it,
while one too low would shrink the in-flight window for the rest of the
session. Pure: ``sent`` is passed in.
"""

from __future__ import annotations

HANDSHAKE_BYTES = 1 + 2 * 1536  # C0 + C1 + C2: what mediamtx also counts
WRAP = 1 << 32


class AckCounter:
    def __init__(self, restart_gap: int = 0, slack: int = HANDSHAKE_BYTES) -> None:
        """``restart_gap``: bytes a server may receive unacknowledged before restarting
        its counter; ``slack``: how far an ack may run ahead of what we sent."""
        self.restart_gap = restart_gap
        self.slack = slack
        self.total: int | None = None  # bytes received by the server: never low, never > sent
        self.restarts = 0
        self._floor = 0  # never above what the server received: bounds a plausible step
        self._last = 0  # the last 32-bit value taken

    def update(self, value: int, sent: int) -> int | None:
        """Take the ack ``value``; return the new total, or None when it says nothing new."""
        value &= WRAP - 1
        total = self.total or 0
        step = (value - self._last) % WRAP
        if step == 0 and self.total is not None:
            return None  # a repeat
        most = max(0, sent - self._floor) + self.slack  # the most that can have arrived since
        if step <= most:
            new, self._floor = total + step, self._floor + step
        elif value <= most:
            # The counter restarted: ``value`` counts from there, and what came
            # between the last ack and the restart was received too.
            self.restarts += 1
            new, self._floor = total + self.restart_gap + value, self._floor + value
        else:
            return None  # behind us, or nonsense: neither a step nor a restart
        self._last = value
        new = min(new, sent)
        self._floor = min(self._floor, new)
        if self.total is not None and new <= self.total:
            return None
        self.total = new
        return new
