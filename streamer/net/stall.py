"""Stall detection for the socket writer.

A TCP connection can stay "up" while carrying nothing: the peer stops reading,
the kernel send buffer fills and every write would block. Without a deadline
the publisher would sit there forever, so a link that accepts no bytes for
`timeout` seconds while we have data waiting counts as lost (docs/design.md
"Reconnect, backoff, stalls": nothing accepted for 10 s).

Pure policy (no I/O, no clock reads): the writer samples its counters and
passes `now` (monotonic seconds). Only progress matters, not throughput: a
slow link that keeps accepting a few bytes is never stalled here (the send
queue deals with slowness by dropping media). Having nothing to send is idle,
not stalled.
"""

from __future__ import annotations


class StallDetector:
    """No bytes accepted by the socket for `timeout` s while data is waiting -> stalled."""

    def __init__(self, timeout: float = 10.0) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.timeout = timeout
        self._last_total: int | None = None
        # Time of the first sample of the current run of "waiting, no progress";
        # None while nothing is waiting.
        self._since: float | None = None

    def update(self, accepted_total: int, waiting: int, now: float) -> bool:
        """Record a sample; True when the link is stalled.

        `accepted_total` is the monotonic count of bytes the kernel has taken
        on this connection; `waiting` is bytes still buffered in user space.
        Progress (the count increased) or nothing waiting restarts the timer;
        the first call starts it. Use a new detector per connection.
        """
        if waiting < 0:
            raise ValueError(f"waiting must be >= 0, got {waiting}")
        last = self._last_total
        if last is not None and accepted_total < last:
            raise ValueError(
                f"accepted_total went backwards ({last} -> {accepted_total}); "
                "use a new StallDetector per connection"
            )
        progressed = last is None or accepted_total > last
        self._last_total = accepted_total
        if waiting == 0:
            self._since = None
        elif progressed or self._since is None:
            self._since = now
        return self._since is not None and now - self._since >= self.timeout

    def stalled_for(self, now: float) -> float:
        """Seconds without progress while waiting (0 when not waiting); for logs and metrics."""
        if self._since is None:
            return 0.0
        return max(0.0, now - self._since)
