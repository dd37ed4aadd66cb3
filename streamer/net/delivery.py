"""Which video frames reached the server, so that a run never claims success it did not have.

Every video frame written to the publisher is remembered by where its last
byte lies in the connection's byte stream; once the server has acknowledged
that many bytes it has the frame. A frame written but never acknowledged
before its session ended did not arrive, nor did one the send queue dropped
because the link could not carry it. Frames captured with no session to send
them to (connecting, reconnecting) are not counted at all: that is offline
time, not a failing server.

A ``--duration`` run whose server took less than ``MIN_SHARE`` of the video
captured while live (a server that stopped reading, a link that stalled
short of the stall timeout) ends with an error instead of exit code 0.
Pure: byte totals are passed in.
"""

from __future__ import annotations

from collections import deque

MIN_SHARE = 0.5  # of the video frames captured while live


class Delivery:
    """Video frames written to the server, and which of them it acknowledged."""

    def __init__(self) -> None:
        self.delivered = 0  # frames the server acknowledged
        self.unacknowledged = 0  # frames written in sessions that ended before an ack for them
        self._pending: deque[int] = deque()  # byte offset of each written frame's end
        self._received = 0

    def written(self, end: int) -> None:
        """A frame was written; its last byte is at ``end`` of this session's byte count."""
        self._pending.append(end)

    def received(self, total: int) -> None:
        """The server has received ``total`` bytes of this session."""
        self._received = max(self._received, total)
        pending = self._pending
        while pending and pending[0] <= self._received:
            pending.popleft()
            self.delivered += 1

    def session_ended(self) -> None:
        """The connection is closed: what it never acknowledged did not arrive."""
        self.unacknowledged += len(self._pending)
        self._pending.clear()
        self._received = 0

    def captured_live(self, dropped: int) -> int:
        """Video frames captured while live: written, or ``dropped`` by the send queue."""
        return self.delivered + self.unacknowledged + len(self._pending) + dropped


def shortfall(delivered: int, captured_live: int, min_share: float = MIN_SHARE) -> str | None:
    """The error line for a run whose server took too little of its video, else None."""
    if captured_live <= 0 or delivered >= min_share * captured_live:
        return None
    percent = 100 * delivered / captured_live
    return (
        f"only {delivered} of {captured_live} video frames captured while live reached the "
        f"server ({percent:.0f} %); the server or the link stopped taking data"
    )
