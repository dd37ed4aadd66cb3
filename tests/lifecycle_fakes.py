"""Fakes for the lifecycle's unit tests: a clock, scripted publishers and a capture side.

``FakeServer`` plays one script of connection attempts for one destination
(``Plan``: connect fails, the publish is refused, the connection is lost
after so many frames) and records every publish it took (``Publish``).
``FakePipeline`` pushes a video packet into the fanout every few
milliseconds from a task, the way the capture threads do, and flushes one
last packet when stopped, the way the encoders do.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from streamer.exc import ConnectionLost, StreamerError
from streamer.media import Kind, Packet, VideoConfig
from streamer.pipeline import Fanout
from streamer.preview import Preview
from streamer.settings import Settings, Target

log = structlog.get_logger("tests.fake")

AVC_CONFIG = b"\x01\x64\x00\x1f\xff\xe1\x00\x04gQ\x00\x1f\x01\x00\x02h\xee"
FRAME_MS = 33


class FakeClock:
    """Monotonic seconds that pass like real ones, plus whatever ``advance`` adds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Plan:
    """What one connection attempt does."""

    fail: StreamerError | None = None  # raised by connect: ConnectFailed, PublishRejected
    hold: asyncio.Event | None = None  # connect waits for it (then fails or succeeds)
    lose_after: int | None = None  # video frames taken, then the connection is lost
    before_loss: Callable[[], None] | None = None  # runs just before the loss (advance a clock)
    acks: bool = True  # the server acknowledges what it receives


@dataclass
class Publish:
    """One publish as the server saw it."""

    at: float  # time.monotonic() of the connect
    metadata: dict[str, Any] | None = None
    headers: list[tuple[Kind, int]] = field(default_factory=list)  # sequence headers, time
    frames: list[tuple[int, bool, bytes]] = field(default_factory=list)  # video: ts, key, data
    abandoned: bool = False  # given up on (no unpublish)
    closed: bool = False

    @property
    def unpublished(self) -> bool:
        return self.closed and not self.abandoned


class FakeServer:
    """One destination's server: plays ``plans`` in order (then ``Plan()``), records what came."""

    def __init__(self, *plans: Plan) -> None:
        self.plans = deque(plans)
        self.attempts: list[float] = []  # time.monotonic() of each connect
        self.publishes: list[Publish] = []
        self.current: FakePublisher | None = None  # the publisher connected last

    def drop(self) -> None:
        """Lose the current connection: its next flush raises ConnectionLost."""
        assert self.current is not None
        self.current.lost = True

    def next_plan(self) -> Plan:
        return self.plans.popleft() if self.plans else Plan()

    @property
    def frames(self) -> list[tuple[int, bool, bytes]]:
        return [frame for p in self.publishes for frame in p.frames]


class FakePublisher:
    """A ``Publisher`` whose far end is a ``FakeServer``.

    It logs the full URL, key included, when it connects, as a careless
    library would: redaction has to catch it.
    """

    def __init__(self, server: FakeServer, target: Target) -> None:
        self.server = server
        self.target = target
        self.bytes_sent = 0
        self.plan = Plan()
        self.publish: Publish | None = None
        self.lost = False

    async def connect(self) -> None:
        url = self.target.url
        log.info("fake connect", url=f"rtmp://{url.host}/{url.app}/{url.key}")
        self.server.attempts.append(time.monotonic())
        plan = self.server.next_plan()
        if plan.hold is not None:
            await plan.hold.wait()
        await asyncio.sleep(0)
        if plan.fail is not None:
            raise plan.fail
        self.plan = plan
        self.publish = Publish(at=time.monotonic())
        self.server.publishes.append(self.publish)
        self.server.current = self

    def _session(self) -> Publish:
        assert self.publish is not None, "not connected"
        return self.publish

    async def send_metadata(self, metadata: dict[str, Any]) -> None:
        self._session().metadata = metadata
        self.bytes_sent += 100

    async def send_video(self, timestamp_ms: int, body: bytes) -> None:
        self._session().headers.append((Kind.VIDEO, timestamp_ms))
        self.bytes_sent += len(body)

    async def send_audio(self, timestamp_ms: int, body: bytes) -> None:
        self._session().headers.append((Kind.AUDIO, timestamp_ms))
        self.bytes_sent += len(body)

    def write_video(self, timestamp_ms: int, body: bytes) -> None:
        session = self._session()
        session.frames.append((timestamp_ms, body[0] >> 4 == 1, body[5:]))
        self.bytes_sent += len(body)
        lose_after = self.plan.lose_after
        if lose_after is not None and len(session.frames) >= lose_after:
            self.lost = True

    def write_audio(self, timestamp_ms: int, body: bytes) -> None:
        self.bytes_sent += len(body)

    def has_room(self) -> bool:
        return True

    async def wait_for_room(self, timeout: float) -> None:
        await asyncio.sleep(0)

    async def flush(self) -> None:
        await asyncio.sleep(0)
        if self.lost:
            if self.plan.before_loss is not None:
                self.plan.before_loss()
            raise ConnectionLost("server closed the connection")

    def abandon(self) -> None:
        if self.publish is not None:
            self.publish.abandoned = True

    async def close(self) -> None:
        if self.publish is not None:
            self.publish.closed = True

    @property
    def server_acked(self) -> int | None:
        return self.bytes_sent if self.plan.acks else 0

    @property
    def bytes_delivered(self) -> int:
        return self.bytes_sent if self.plan.acks else 0

    @property
    def write_buffer_size(self) -> int:
        return 0


def publishers(**servers: FakeServer) -> Callable[[Target, Settings], FakePublisher]:
    """A ``publisher_factory``: each destination's publishers talk to the server of its name.

    Destinations are named by host; ``a_test`` stands for the host ``a.test``.
    """
    by_host = {name.replace("_", "."): server for name, server in servers.items()}

    def factory(target: Target, _s: Settings) -> FakePublisher:
        return FakePublisher(by_host[target.name], target)

    return factory


class FakeVideo:
    name = "fake264"

    def __init__(self, kbps: int) -> None:
        self.config = VideoConfig(320, 180, 30.0, kbps, AVC_CONFIG, self.name)
        self.bitrates: list[int] = []  # every set_bitrate, in order
        self.keyframe_wanted = True

    def set_bitrate(self, kbps: int) -> None:
        self.bitrates.append(kbps)

    def request_keyframe(self) -> None:
        self.keyframe_wanted = True


class FakePipeline:
    """The capture side: a video packet every ``interval`` s into the fanout, from a task.

    A keyframe every 30 frames or when asked for; ``stop`` takes
    ``stop_delay`` s and pushes one last frame (``b"flush"``), as encoders
    flush. ``fail`` makes ``check`` raise (a capture thread died); ``log_as``
    logs a line per packet.
    """

    def __init__(
        self,
        s: Settings,
        fanout: Fanout,
        interval: float = 0.002,
        log_as: str | None = None,
        stop_delay: float = 0.0,
    ) -> None:
        self.fanout = fanout
        self.interval = interval
        self.log_as = log_as
        self.stop_delay = stop_delay
        self.video = FakeVideo(s.video_bitrate_kbps)
        self.audio = None
        self.filters = None
        self.recorder = None
        self.preview = Preview()
        self.fail: StreamerError | None = None
        self.started = self.stopping = self.stopped = False
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.started = True
        self._task = asyncio.get_running_loop().create_task(self._produce())

    async def _produce(self) -> None:
        while True:
            self._push(b"frame %d" % self.count)
            if self.log_as is not None:
                log.info("fake capture", device=self.log_as)
            await asyncio.sleep(self.interval)

    def _push(self, data: bytes) -> None:
        key = self.video.keyframe_wanted or self.count % 30 == 0
        self.video.keyframe_wanted = False
        ms = self.count * FRAME_MS
        self.count += 1
        self.fanout.push([Packet(Kind.VIDEO, ms, ms, key, data)])

    def check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def stop(self) -> None:
        self.stopping = True
        await asyncio.sleep(self.stop_delay)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._push(b"flush")
        self.stopped = True

    def start_recording(self, video: VideoConfig, s: Settings) -> None:
        raise AssertionError("no recording in these tests")


class Pipelines:
    """A ``pipeline_factory`` that keeps the pipelines it made (one per start)."""

    def __init__(self, **options: Any) -> None:
        self.options = options  # for each FakePipeline
        self.made: list[FakePipeline] = []

    def __call__(self, s: Settings, fanout: Fanout) -> FakePipeline:
        pipeline = FakePipeline(s, fanout, **self.options)
        self.made.append(pipeline)
        return pipeline


async def until(condition: Callable[[], bool], what: str, timeout: float = 2.0) -> None:
    """Wait (polling each millisecond) for ``condition``; fail the test after ``timeout``."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.001)


DEFAULT_URL = "rtmp://a.test/live/KeyA1"


def quick(*urls: str, **overrides: Any) -> Settings:
    """Settings whose waits take milliseconds (one destination at DEFAULT_URL unless given)."""
    values: dict[str, Any] = {
        "urls": list(urls) or [DEFAULT_URL],
        "microphone": "none",
        "reconnect_delay": 0.001,
        "reconnect_max_delay": 0.002,
        "error_cooldown": 0.03,
        **overrides,
    }
    return Settings(**values)
