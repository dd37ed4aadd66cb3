"""The send queue: encoded packets waiting for the socket, measured in media time.

Pure policy (no I/O, no locks, no clock of its own). Capture threads push,
the publisher pops; whatever the link cannot carry is dropped here, never a
frame whose reference is gone: video is only ever cut up to a keyframe, and
after a cut every new non-keyframe is dropped until the next keyframe.
Every packet that leaves unsent is counted with its reason, so that a drop
(the link could not carry it) is never confused with a discard (there was
no session to send it to).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

from streamer.media import Kind, Packet

DEFAULT_DROP_THRESHOLD_MS = 700
DEFAULT_HARD_LIMIT_MS = 2000
# nginx-rtmp drops a publisher on any message over 1 MiB (its default
# max_message); a frame that big cannot be sent to it, so it is dropped here
# with what depends on it. libx264 never makes one (its VBV buffer is capped
# for that); another encoder at a high bitrate might.
MAX_FRAME_BYTES = (1 << 20) - 64

# Why a packet left the queue without being sent.
Reason = Literal[
    # The link could not carry it: drops a person watching the numbers should worry about.
    "congestion",  # the oldest GOP (or its predicted frames), above the drop threshold
    "hard_limit",  # everything before the newest keyframe (or audio), above the hard limit
    "awaiting_keyframe",  # predicted frames after such a cut, until the next keyframe
    "connection_lost",  # the backlog of a connection that broke
    "too_large",  # a frame over MAX_FRAME_BYTES, which servers refuse
    # No session to send it to: by design, not a loss on the link.
    "offline",  # captured while not connected (connecting, reconnecting)
    "new_session",  # a backlog flushed when a session starts
    "session_start",  # predicted frames before a session's first keyframe
]
DROP_REASONS: Final[frozenset[Reason]] = frozenset(
    {"congestion", "hard_limit", "awaiting_keyframe", "connection_lost", "too_large"}
)
OFFLINE_REASONS: Final[frozenset[Reason]] = frozenset(get_args(Reason)) - DROP_REASONS


@dataclass
class QueueCounters:
    """What went through a send queue, and what did not and why.

    Only ever grows. The Streamer hands one instance to every queue it makes,
    so the numbers last for the life of the process (Prometheus counters),
    not for one start.
    """

    queued_packets: int = 0
    queued_bytes: int = 0
    sent_packets: int = 0
    sent_bytes: int = 0
    removed_packets: Counter[tuple[str, Reason]] = field(default_factory=Counter)
    removed_bytes: Counter[tuple[str, Reason]] = field(default_factory=Counter)
    keyframes_requested: int = 0

    def _removed(self, reasons: frozenset[Reason], kind: Kind | None = None) -> int:
        # list() copies in one C call: a capture thread may add a key meanwhile.
        items = list(self.removed_packets.items())
        return sum(n for (k, r), n in items if r in reasons and kind in (None, k))

    @property
    def dropped_total(self) -> int:
        """Packets dropped because the link could not carry them."""
        return self._removed(DROP_REASONS)

    def dropped(self, kind: Kind) -> int:
        return self._removed(DROP_REASONS, kind)

    @property
    def discarded_offline(self) -> int:
        """Packets captured with no session to send them to (not a link problem)."""
        return self._removed(OFFLINE_REASONS)


class SendQueue:
    """Packets in arrival order per track; popped in timestamp order across tracks.

    Depth is how far the oldest waiting packet lags behind the newest one
    captured, in media time. Above ``drop_threshold_ms`` the oldest GOP is
    dropped, or only its predicted frames when no later keyframe waits; above
    ``hard_limit_ms`` all video before the newest keyframe goes. When no
    keyframe is left to resume at, new predicted frames are dropped until
    the next keyframe, which the encoder is asked for at once.
    """

    def __init__(
        self,
        drop_threshold_ms: int = DEFAULT_DROP_THRESHOLD_MS,
        hard_limit_ms: int = DEFAULT_HARD_LIMIT_MS,
        counters: QueueCounters | None = None,
    ) -> None:
        self.drop_threshold_ms = drop_threshold_ms
        self.hard_limit_ms = max(hard_limit_ms, drop_threshold_ms)
        self.counters = counters if counters is not None else QueueCounters()
        self._video: deque[Packet] = deque()
        self._audio: deque[Packet] = deque()
        self._newest = {Kind.VIDEO: 0, Kind.AUDIO: 0}
        # While set, predicted frames are dropped for this reason until a keyframe comes.
        self._awaiting_keyframe: Reason | None = None
        self.keyframe_wanted = False
        self.offline = False  # no connection: nothing is kept (it would be flushed anyway)

    def __len__(self) -> int:
        return len(self._video) + len(self._audio)

    def _lag(self, packets: deque[Packet], kind: Kind) -> int:
        return self._newest[kind] - packets[0].dts_ms if packets else 0

    @property
    def depth_ms(self) -> int:
        """Media time waiting: how far the oldest queued packet lags the newest captured."""
        return max(self._lag(self._video, Kind.VIDEO), self._lag(self._audio, Kind.AUDIO))

    def push(self, packet: Packet) -> None:
        self.counters.queued_packets += 1
        self.counters.queued_bytes += len(packet.data)
        if self.offline:
            self._drop(packet, "offline")
            return
        self._newest[packet.kind] = max(self._newest[packet.kind], packet.dts_ms)
        if packet.kind is Kind.AUDIO:
            # Audio is small and keeps the picture's meaning: only a link too
            # slow even for audio makes us drop it, oldest first.
            self._audio.append(packet)
            while self._lag(self._audio, Kind.AUDIO) > self.hard_limit_ms:
                self._drop(self._audio.popleft(), "hard_limit")
            return
        if len(packet.data) > MAX_FRAME_BYTES:
            self._drop(packet, "too_large")
            self._request_keyframe("awaiting_keyframe")
        elif self._awaiting_keyframe and not packet.keyframe:
            self._drop(packet, self._awaiting_keyframe)
        else:
            self._awaiting_keyframe = None
            self._video.append(packet)
        # Time moves on even for a dropped frame: what still waits may now lag too much.
        lag = self._lag(self._video, Kind.VIDEO)
        if lag > self.hard_limit_ms:
            self._cut_video()
        elif lag > self.drop_threshold_ms:
            self._thin_oldest_gop()

    def _thin_oldest_gop(self) -> None:
        """Drop the oldest GOP: all of it when a later keyframe waits to resume at, else its
        predicted frames (its keyframe stays, and the encoder is asked for a new one)."""
        video = self._video
        resume = next((i for i in range(1, len(video)) if video[i].keyframe), None)
        if resume is not None:
            for _ in range(resume):
                self._drop(video.popleft(), "congestion")
            return
        first = next((i for i, p in enumerate(video) if not p.keyframe), None)
        if first is None:
            return  # only keyframes wait: the hard limit deals with them
        packets = list(video)
        for packet in packets[first:]:
            self._drop(packet, "congestion")
        self._video = deque(packets[:first])
        self._request_keyframe("awaiting_keyframe")

    def _cut_video(self) -> None:
        """Drop queued video up to the newest keyframe; if even that lags too much, all of it."""
        newest_key = max(
            (i for i, p in enumerate(self._video) if p.keyframe and i > 0), default=None
        )
        for _ in range(newest_key or 0):
            self._drop(self._video.popleft(), "hard_limit")
        if self._lag(self._video, Kind.VIDEO) > self.hard_limit_ms:
            while self._video:
                self._drop(self._video.popleft(), "hard_limit")
            self._request_keyframe("awaiting_keyframe")

    def _drop(self, packet: Packet, reason: Reason) -> None:
        key = (packet.kind.value, reason)
        self.counters.removed_packets[key] += 1
        self.counters.removed_bytes[key] += len(packet.data)

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

    def clear(self, reason: Reason) -> None:
        """Drop everything (e.g. the backlog of a lost connection)."""
        while self._video:
            self._drop(self._video.popleft(), reason)
        while self._audio:
            self._drop(self._audio.popleft(), reason)

    def restart(self, reason: Reason) -> None:
        """A new session: drop the backlog and start video again at a fresh keyframe."""
        self.clear(reason)
        self._request_keyframe("session_start")

    def _request_keyframe(self, reason: Reason) -> None:
        self._awaiting_keyframe = reason
        self.keyframe_wanted = True
        self.counters.keyframes_requested += 1
