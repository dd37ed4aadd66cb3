"""The send queue: encoded packets waiting for the socket, measured in media time.

Pure policy (no I/O, no locks, no clock of its own). Capture threads push,
the publisher pops; whatever the link cannot carry is dropped here, never a
frame whose reference is gone: video is only ever cut up to a keyframe, and
after a cut every new non-keyframe is dropped until the next keyframe.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

from streamer.media import Kind, Packet

DEFAULT_HARD_LIMIT_MS = 2000


@dataclass
class QueueCounters:
    queued_packets: int = 0
    queued_bytes: int = 0
    sent_packets: int = 0
    sent_bytes: int = 0
    dropped_packets: Counter[tuple[str, str]] = field(default_factory=Counter)
    dropped_bytes: Counter[tuple[str, str]] = field(default_factory=Counter)
    keyframes_requested: int = 0

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped_packets.values())

    def dropped(self, kind: Kind) -> int:
        return sum(n for (k, _), n in self.dropped_packets.items() if k == kind.value)


class SendQueue:
    """Packets in arrival order per track; popped in timestamp order across tracks."""

    def __init__(self, hard_limit_ms: int = DEFAULT_HARD_LIMIT_MS) -> None:
        self.hard_limit_ms = hard_limit_ms
        self.counters = QueueCounters()
        self._video: deque[Packet] = deque()
        self._audio: deque[Packet] = deque()
        self._awaiting_keyframe = False
        self.keyframe_wanted = False
        self.offline = False  # no connection: nothing is kept (it would be flushed anyway)

    def __len__(self) -> int:
        return len(self._video) + len(self._audio)

    @staticmethod
    def _span(packets: deque[Packet]) -> int:
        return packets[-1].dts_ms - packets[0].dts_ms if packets else 0

    @property
    def depth_ms(self) -> int:
        """Media time waiting: the larger of the video and audio spans."""
        return max(self._span(self._video), self._span(self._audio))

    def push(self, packet: Packet) -> None:
        self.counters.queued_packets += 1
        self.counters.queued_bytes += len(packet.data)
        if self.offline:
            self._drop(packet, "offline")
            return
        if packet.kind is Kind.AUDIO:
            self._audio.append(packet)
            while self._span(self._audio) > self.hard_limit_ms:
                self._drop(self._audio.popleft(), "hard_limit")
            return
        if self._awaiting_keyframe:
            if not packet.keyframe:
                self._drop(packet, "awaiting_keyframe")
                return
            self._awaiting_keyframe = False
        self._video.append(packet)
        if self._span(self._video) > self.hard_limit_ms:
            self._cut_video()

    def _cut_video(self) -> None:
        """Drop queued video up to the newest keyframe (or all of it, then wait for one)."""
        newest_key = max(
            (i for i, p in enumerate(self._video) if p.keyframe and i > 0), default=None
        )
        if newest_key is None:
            while self._video:
                self._drop(self._video.popleft(), "hard_limit")
            self._request_keyframe()
            return
        for _ in range(newest_key):
            self._drop(self._video.popleft(), "hard_limit")

    def _drop(self, packet: Packet, reason: str) -> None:
        key = (packet.kind.value, reason)
        self.counters.dropped_packets[key] += 1
        self.counters.dropped_bytes[key] += len(packet.data)

    def pop(self) -> Packet | None:
        """The oldest packet across both tracks, or None when empty."""
        if self._video and (not self._audio or self._video[0].dts_ms <= self._audio[0].dts_ms):
            packet = self._video.popleft()
        elif self._audio:
            packet = self._audio.popleft()
        else:
            return None
        self.counters.sent_packets += 1
        self.counters.sent_bytes += len(packet.data)
        return packet

    def clear(self, reason: str) -> None:
        """Drop everything (e.g. the backlog of a lost connection)."""
        while self._video:
            self._drop(self._video.popleft(), reason)
        while self._audio:
            self._drop(self._audio.popleft(), reason)

    def restart(self, reason: str) -> None:
        """A new session: drop the backlog and start video again at a fresh keyframe."""
        self.clear(reason)
        self._request_keyframe()

    def _request_keyframe(self) -> None:
        self._awaiting_keyframe = True
        self.keyframe_wanted = True
        self.counters.keyframes_requested += 1
