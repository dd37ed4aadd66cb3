"""How much may be on its way to the server: a window sized from the server's own acks.

Kernel and network buffers can swallow seconds of video where no drop policy
sees it (loopback alone buffers megabytes). We ask the server to acknowledge
every few kilobytes and keep unacknowledged bytes under what the link carries
in ``max(0.3 s, 2 × RTT)``, so the backlog stays in our send queue, where it
is measured in media time and dropped with care. Pure: ``now`` is passed in.
"""

from __future__ import annotations

from collections import deque

MIN_WINDOW = 32 * 1024
TIME_BUDGET = 0.3  # seconds of link rate allowed in flight, at least
RATE_SPAN = 1.0  # seconds over which the acked rate is measured
RTT_SPAN = 10.0  # seconds over which the smallest RTT is kept


class InFlightWindow:
    def __init__(self, min_window: int = MIN_WINDOW) -> None:
        self.min_window = min_window
        self._sent: deque[tuple[int, float]] = deque()  # (bytes sent so far, when)
        self._acks: deque[tuple[float, int]] = deque()  # (when, bytes acked so far)
        # (when, rtt), rtts rising from the front: the front is the smallest of the last
        # RTT_SPAN seconds (a sliding-window minimum, O(1) per ack and per read; ``room`` is
        # asked before every packet).
        self._rtts: deque[tuple[float, float]] = deque()
        self.acked: int | None = None

    def sent(self, total: int, now: float) -> None:
        """``total`` bytes have been handed to the socket by ``now``."""
        if not self._sent or self._sent[-1][0] < total:
            self._sent.append((total, now))

    def ack(self, total: int, now: float) -> None:
        """The server has received ``total`` bytes."""
        if self.acked is not None and total <= self.acked:
            return
        self.acked = total
        sent_at = None
        while self._sent and self._sent[0][0] <= total:
            sent_at = self._sent.popleft()[1]
        if sent_at is not None:
            rtt = now - sent_at
            while self._rtts and self._rtts[-1][1] >= rtt:
                self._rtts.pop()  # older and no smaller: never the minimum again
            self._rtts.append((now, rtt))
        while self._rtts and now - self._rtts[0][0] > RTT_SPAN:
            self._rtts.popleft()
        self._acks.append((now, total))
        while len(self._acks) > 2 and now - self._acks[1][0] >= RATE_SPAN:
            self._acks.popleft()

    @property
    def rtt(self) -> float | None:
        return self._rtts[0][1] if self._rtts else None

    @property
    def rate(self) -> float | None:
        """Bytes per second the server has been acknowledging lately."""
        if len(self._acks) < 2:
            return None
        (t0, a0), (t1, a1) = self._acks[0], self._acks[-1]
        return (a1 - a0) / (t1 - t0) if t1 > t0 else None

    def limit(self) -> int:
        rate, rtt = self.rate, self.rtt
        if rate is None:
            return self.min_window
        budget = max(TIME_BUDGET, 2 * (rtt or 0.0))
        return max(self.min_window, int(rate * budget))

    def room(self, sent_total: int) -> bool:
        """May more be sent? Always yes until the server has shown that it acks."""
        return self.acked is None or sent_total - self.acked < self.limit()
