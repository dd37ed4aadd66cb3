"""The device: one capture and encode, any number of destinations, under the state machine.

The capture side (``pipeline.py``) fills every destination's send queue from
its own threads; each ``Destination`` connects, publishes and reconnects on
its own. The device state is derived from theirs (see ``derived_state``), the
encoder's bitrate follows the slowest live one, and service mode never gives
up.

From Python::

    async with Device(Settings(urls=["rtmp://host/app/key"])) as device:
        device.subscribe(lambda old, new, reason: print(new, reason))
        ...  # device.snapshot(), device.stop(), device.start()

Every method is for the event loop the device runs on (listeners are called
there too); another thread hands its calls over with ``call_threadsafe``.
Several devices can run in one process: each one's log lines carry its own
state and hide its own stream keys (``log.device_context``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, TypeVar

import structlog

from streamer import log as logsetup
from streamer.destination import (
    Destination,
    DestinationNumbers,
    Media,
    PublisherFactory,
    rtmp_publisher,
)
from streamer.encode.camera import CameraEncoder
from streamer.encode.h264 import H264Encoder
from streamer.encode.select import ready_config
from streamer.exc import DeviceError, PublishRejected, StreamerError
from streamer.history import History
from streamer.media import AudioConfig, VideoConfig
from streamer.pipeline import Fanout, Pipeline
from streamer.preview import Preview
from streamer.settings import Settings
from streamer.state import ERROR, IDLE, LIVE, PREPARING, RECONNECTING, DeviceState, Listener

if TYPE_CHECKING:
    from streamer.encode.filters import FilterChain
    from streamer.record import Recorder

log = structlog.get_logger("streamer")

T = TypeVar("T")

STATS_INTERVAL = 5.0
TICK = 0.5  # seconds between looks at the pipeline, the bitrate and the clock
STOP_GRACE = 5.0  # seconds a destination may take to drain and unpublish before it is cut

# How the device state follows from its destinations' states (first match wins).
STATE_RULE = (
    "error when a destination is in error (refused, or waiting out its cooldown); "
    "reconnecting when one is reconnecting; live when all are live; preparing otherwise"
)

# The triggers that lead from one device state to another.
_PATHS: dict[tuple[str, str], tuple[str, ...]] = {
    (PREPARING, LIVE): ("published",),
    (PREPARING, RECONNECTING): ("connection_lost",),
    (LIVE, RECONNECTING): ("connection_lost",),
    (RECONNECTING, LIVE): ("published",),
    (PREPARING, ERROR): ("fail",),
    (LIVE, ERROR): ("fail",),
    (RECONNECTING, ERROR): ("fail",),
    (ERROR, PREPARING): ("retry",),
    (ERROR, LIVE): ("retry", "published"),
    (ERROR, RECONNECTING): ("retry", "connection_lost"),
}


class VideoEncoder(Protocol):
    """What the device uses of the video encoder (``H264Encoder``, ``CameraEncoder``)."""

    @property
    def name(self) -> str: ...
    @property
    def config(self) -> VideoConfig: ...
    def set_bitrate(self, kbps: int) -> None: ...
    def request_keyframe(self) -> None: ...


class AudioEncoder(Protocol):
    @property
    def config(self) -> AudioConfig: ...


class PipelineLike(Protocol):
    """What the device uses of the capture side (``pipeline.Pipeline``); tests pass fakes."""

    @property
    def video(self) -> VideoEncoder: ...
    @property
    def audio(self) -> AudioEncoder | None: ...
    @property
    def filters(self) -> FilterChain | None: ...
    @property
    def recorder(self) -> Recorder | None: ...
    @property
    def preview(self) -> Preview: ...
    def start(self) -> None: ...
    def check(self) -> None: ...
    async def stop(self) -> None: ...
    def start_recording(self, video: VideoConfig, s: Settings) -> None: ...


# A new pipeline for each start: what it encodes goes to the fanout.
PipelineFactory = Callable[[Settings, Fanout], PipelineLike]


def derived_state(states: list[str]) -> str:
    """The device state for its destinations' states (``STATE_RULE``)."""
    if ERROR in states:
        return ERROR
    if RECONNECTING in states:
        return RECONNECTING
    if states and all(s == LIVE for s in states):
        return LIVE
    return PREPARING


class DeviceNumbers(TypedDict):
    """The device as a whole: each destination's numbers summed (fps: the lowest,
    queue: the deepest) and the capture side's. Also the stats line."""

    sent_kbps: int
    fps: float
    queue_ms: int
    frames_sent: int
    dropped: int
    dropped_video: int
    dropped_audio: int
    discarded_offline: int
    keyframes_requested: int
    target_kbps: int  # what the encoder was last told
    reconnects: int
    encoder: str
    filters: str  # the filter chain in effect, comma-separated
    recording: str  # "off", "on" or "failed: <why>"
    filter_ms: float  # the filters' cost per frame


class Snapshot(DeviceNumbers):
    """``Device.snapshot()``: what /status shows, keys redacted everywhere."""

    state: str  # one of idle, preparing, live, reconnecting, error
    reason: str
    since: str  # ISO 8601, local time: when ``state`` began
    uptime_s: float
    resolution: str
    url: str  # the first destination's
    texts: list[str]  # what each text filter shows (templates, %-fields unfilled)
    destinations: list[DestinationNumbers]


class Device:
    """Runs the device: the state machine decides, this class carries it out.

    What the lifecycle drives is injected, for tests: ``pipeline_factory``
    (the capture side), ``publisher_factory`` (the network side), ``clock``
    (monotonic seconds, read by every policy that judges time: backoff,
    duration, rates) and ``tick`` (seconds between looks at the pipeline).
    Waits (backoff delays, cooldowns) are real sleeps of the configured
    seconds. ``first_session_ms`` starts the first session's clock near a
    boundary.

    Threads: ``start``, ``stop``, ``toggle``, ``reset``, ``subscribe``,
    ``snapshot`` and ``numbers`` read and change state that the event loop
    owns, without locks: call them on the device's loop. From another
    thread (a GUI, a web framework's worker) use
    ``device.call_threadsafe(device.stop, "gui")``, which runs the call on
    the loop and returns its result, or ``loop.call_soon_threadsafe(device.stop,
    "gui")`` when the result does not matter (what the GPIO button does).
    Listeners run on the loop: one that touches a GUI hands over itself.
    """

    def __init__(
        self,
        settings: Settings,
        state: DeviceState | None = None,
        *,
        pipeline_factory: PipelineFactory = Pipeline,
        publisher_factory: PublisherFactory = rtmp_publisher,
        clock: Callable[[], float] = time.monotonic,
        tick: float = TICK,
        first_session_ms: int = 0,
    ) -> None:
        self.s = settings
        self._clock = clock
        self._tick = tick
        self._pipeline_factory = pipeline_factory
        self.state = state or DeviceState(clock=clock)
        # What the lines this device's code logs carry: its state, its keys hidden.
        self._log = logsetup.DeviceLog(
            lambda: self.state.state, (t.url.key for t in settings.destinations)
        )
        self.destinations = [
            Destination(
                target,
                settings,
                publisher_factory=publisher_factory,
                clock=clock,
                first_session_ms=first_session_ms,
                on_change=self._destination_changed,
            )
            for target in settings.destinations
        ]
        self.pipeline: PipelineLike | None = None
        self._texts: dict[int, str] = {}  # text filters changed live: number -> text
        self.error: StreamerError | None = None
        self.started = clock()
        self.target_kbps = settings.video_bitrate_kbps  # what the encoder was last told
        self._tasks: dict[Destination, asyncio.Task[None]] = {}
        self._want_running = True
        self._deadline: float | None = None
        self._duration_reached = False
        self._wake = asyncio.Event()
        self._retry_at: float | None = None  # service mode, device in error: when to retry
        self._stats_at = 0.0
        self._shutdown: asyncio.Event | None = None
        self._runner: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None  # the one run runs on
        # The status page's charts and event list (wall-clock times: they are shown to people).
        self.history = History()
        self.state.subscribe(self._remember_transition)

    # -- what it is doing: stats line, /status, /metrics -----------------------

    def numbers(self) -> DeviceNumbers:
        """The device's numbers: each destination's, summed, and the capture side's."""
        pipeline = self.pipeline
        chain = pipeline.filters if pipeline else None
        each = [d.numbers() for d in self.destinations]
        return {
            "sent_kbps": sum(n["sent_kbps"] for n in each),
            "fps": min(n["fps"] for n in each),
            "queue_ms": max(n["queue_ms"] for n in each),
            "frames_sent": sum(n["frames_sent"] for n in each),
            "dropped": sum(n["dropped"] for n in each),
            "dropped_video": sum(n["dropped_video"] for n in each),
            "dropped_audio": sum(n["dropped_audio"] for n in each),
            "discarded_offline": sum(n["discarded_offline"] for n in each),
            "keyframes_requested": sum(n["keyframes_requested"] for n in each),
            "target_kbps": self.target_kbps,
            "reconnects": sum(n["reconnects"] for n in each),
            "encoder": pipeline.video.name if pipeline else "",
            "filters": ",".join(chain.names) if chain else "",
            "recording": _recording_status(pipeline),
            "filter_ms": round(chain.cost_ms, 2) if chain else 0.0,
        }

    def snapshot(self) -> Snapshot:
        """Everything /status shows (URLs and reasons with this device's keys redacted).

        A reason may hold a server's own words, which may repeat the key.
        """
        redact = self._log.redact
        destinations = [d.numbers() for d in self.destinations]
        for numbers in destinations:
            numbers["reason"] = redact(numbers["reason"])
        return {
            "state": self.state.state,
            "reason": redact(self.state.reason),
            "since": datetime.fromtimestamp(self.state.since_wall).astimezone().isoformat(),
            "uptime_s": round(self._clock() - self.started, 1),
            "resolution": "x".join(map(str, self.s.streamed_size)),  # what viewers get
            "url": self.s.url.redacted,
            **self.numbers(),
            "texts": self.texts(),
            "destinations": destinations,
        }

    def texts(self) -> list[str]:
        """What each text filter shows now (its template, %-fields unfilled)."""
        chain = self.pipeline.filters if self.pipeline is not None else None
        if chain is not None:
            return chain.texts
        if not self._texts and not any(f.lstrip().startswith("text") for f in self.s.filters):
            return []
        from streamer.encode.filters import TextSpec, parse_filter

        given = [
            spec.template for f in self.s.filters if isinstance(spec := parse_filter(f), TextSpec)
        ]
        return [self._texts.get(i, text) for i, text in enumerate(given)]

    def preview_jpeg(self) -> bytes | None:
        """The live picture as a JPEG (at most 640 px wide, at most one encode a second).

        None when idle (no capture) or before the first picture. It blocks for
        the encode, so the event loop asks ``await asyncio.to_thread(device.preview_jpeg)``.
        """
        pipeline = self.pipeline
        if pipeline is None:
            return None
        with self._logging():
            return pipeline.preview.jpeg(self._clock())

    def subscribe(self, listener: Listener) -> None:
        """``listener(old, new, reason)`` after every change of the device state."""
        self.state.subscribe(listener)

    def healthy(self) -> bool:
        """For the systemd watchdog: the loop runs (it asks) and no capture thread died."""
        try:
            if self.pipeline is not None:
                self.pipeline.check()
        except StreamerError:
            return False
        return True

    # -- commands (button, status page, Python): called on the event loop -------
    # Each logs (and fires transitions) as this device, whoever calls it.

    def toggle(self, by: str = "python") -> None:
        """Start when idle, stop otherwise (the button's short press)."""
        if self.state.state == IDLE:
            self.start(by)
        else:
            self.stop(by)

    def start(self, by: str = "python") -> None:
        """Stream: from idle; in error, try again now instead of after the cooldown."""
        with self._logging():
            self._want_running = True
            log.info("start requested", by=by)
            if self.state.state == ERROR:
                reason = f"start requested by {by}"
                self.error = None
                self._retry_at = None
                for d in self.destinations:
                    d.retry_now(reason)
                self.state.fire("retry", reason)
            self._wake.set()

    def stop(self, by: str = "python") -> None:
        """Stop streaming: unpublish (sending what is queued first), close the hardware."""
        with self._logging():
            self._want_running = False
            log.info("stop requested", by=by)
            self._wake.set()

    def set_text(self, text: str, index: int = 0, by: str = "python") -> None:
        """Show ``text`` in text filter number ``index`` (from 0, in the order configured),
        from the next frame on and after every restart; strftime %-fields allowed.
        ConfigError when there is no such filter or the text cannot be shown."""
        from streamer.encode.filters import check_text, check_text_index, text_filter_count

        with self._logging():
            check_text_index(index, text_filter_count(self.s.filters))
            check_text(text, f"new text {text[:40]!r}")
            self._texts[index] = text
            chain = self.pipeline.filters if self.pipeline is not None else None
            if chain is not None:
                chain.set_text(text, index)
            log.info("text changed", index=index, text=text, by=by)

    def reset(self, reason: str) -> None:
        """In error: forget it and stay idle (the button held 3 s)."""
        with self._logging():
            if self.state.state == ERROR:
                self._want_running = False
                self.state.fire("reset", reason)
                self._wake.set()

    def call_threadsafe(self, command: Callable[..., T], *args: Any, timeout: float = 10.0) -> T:
        """From another thread: run ``command(*args)`` on the device's loop; its result.

        ``device.call_threadsafe(device.stop, "gui")``,
        ``device.call_threadsafe(device.snapshot)``. Blocks until the loop ran
        it (at most ``timeout`` s: TimeoutError). RuntimeError when the
        device is not running, or when called on its own loop (call the
        method directly there).
        """
        loop = self._event_loop
        if loop is None or loop.is_closed():
            raise RuntimeError("the device is not running: nothing to hand the call to")
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:  # no loop runs in this thread: the usual case
            here = None
        if here is loop:  # waiting here for the loop to run it would never end
            raise RuntimeError("on the device's own event loop: call the method directly")

        async def call() -> T:
            return command(*args)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout)

    def _logging(self) -> contextlib.AbstractContextManager[None]:
        """Log lines carry this device's state and hide its keys."""
        return logsetup.device_context(self._log)

    # -- Python: async with Device(settings) as device --------------------------

    async def __aenter__(self) -> Device:
        self._shutdown = asyncio.Event()
        self._runner = asyncio.create_task(self.run(self._shutdown))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._shutdown is not None and self._runner is not None
        self._shutdown.set()
        await self._runner

    # -- the lifecycle ------------------------------------------------------------

    async def run(self, shutdown: asyncio.Event) -> None:
        """Drive the device until ``shutdown`` (or, in CLI mode, the end of the stream).

        Raises the StreamerError that ended a CLI run (its message without
        this device's keys); service mode never gives up on its own. Every
        task it starts logs as this device (``log.device_context``).
        """
        self._event_loop = asyncio.get_running_loop()
        with self._logging():
            try:
                await self._run(shutdown)
            except StreamerError as exc:
                _scrub(exc, self._log)
                raise

    async def _run(self, shutdown: asyncio.Event) -> None:
        watcher = asyncio.create_task(self._relay(shutdown))
        try:
            await self._loop(shutdown)
        finally:
            watcher.cancel()
            await self._teardown(graceful=True)
            if self.state.state != IDLE:
                self.state.fire("stop", "shutting down")
        if self._duration_reached:
            for d in self.destinations:
                d.judge_delivery()

    async def _relay(self, shutdown: asyncio.Event) -> None:
        await shutdown.wait()
        self._wake.set()

    async def _loop(self, shutdown: asyncio.Event) -> None:
        # Each turn looks at what is wanted after clearing the wake-up, so a
        # command that comes while it awaits (a teardown) ends the next wait.
        while not shutdown.is_set():
            self._wake.clear()
            state = self.state.state
            if not self._want_running:
                # Whatever the state (a reset leaves error for idle itself): close it all.
                await self._teardown(graceful=True)
                if self.state.state != IDLE:
                    self.state.fire("stop", "stop requested")
                await self._sleep(None)
            elif state == IDLE:
                self.error, self._retry_at = None, None
                self.state.fire("start", "service start" if self.s.service else "command line")
            elif self.error is not None:  # the device itself failed; the hardware is closed
                if not self.s.service:
                    raise self.error
                await self._cool_down()
            else:
                try:
                    if await self._supervise(shutdown):
                        return  # --duration reached
                except StreamerError as exc:
                    self.error = exc
                    await self._teardown(graceful=False)
                    if self.state.allowed("fail"):
                        self.state.fire("fail", exc.message)
                    else:  # already in error for a destination's sake
                        self.state.reason = exc.message
                    log.error("device failed", reason=exc.message)

    async def _cool_down(self) -> None:
        """Service mode, in error: wait ``error_cooldown``, then try again (``retry``)."""
        now = self._clock()
        if self._retry_at is None:
            self._retry_at = now + self.s.error_cooldown
            log.info("retrying after cooldown", seconds=self.s.error_cooldown)
        if now < self._retry_at:
            await self._sleep(self._retry_at - now)  # a command ends it early
            return
        self.error, self._retry_at = None, None
        self.state.fire("retry", f"{self.s.error_cooldown:g} s cooldown over")

    async def _sleep(self, seconds: float | None) -> None:
        """Wait for ``seconds`` (None: for ever) or until woken (a command, a destination)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _supervise(self, shutdown: asyncio.Event) -> bool:
        """Start capture and every destination; watch them. True when the duration is over."""
        loop = asyncio.get_running_loop()
        fanout = Fanout()
        pipeline = self._pipeline_factory(self.s, fanout)
        self.pipeline = pipeline
        if pipeline.filters is not None:  # texts changed live outlast a restart
            for index, text in self._texts.items():
                pipeline.filters.set_text(text, index)
        fanout.outboxes = tuple(d.attach(loop) for d in self.destinations)
        pipeline.start()
        # A hardware encoder only learns SPS/PPS with its first keyframe.
        video_config = await asyncio.to_thread(_ready_config, pipeline.video, 5.0)
        if self.s.record_dir and pipeline.recorder is None:
            pipeline.start_recording(video_config, self.s)
        audio = pipeline.audio
        media = Media(
            video_config, audio.config if audio else None, pipeline.video.request_keyframe
        )
        self._tasks = {d: asyncio.create_task(d.run(media)) for d in self.destinations}
        self._stats_at = self._clock()
        for d in self.destinations:
            d.begin_rates(self._stats_at)
        while not shutdown.is_set() and self._want_running:
            self._wake.clear()
            now = self._clock()
            if self._deadline is not None and now >= self._deadline:
                self._duration_reached = True
                return True
            pipeline.check()
            for task in self._tasks.values():
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            self._follow(derived_state([d.state for d in self.destinations]))
            self._adapt(pipeline, now)
            self._maybe_log_stats(now)
            tick = self._tick
            wait = tick if self._deadline is None else max(0.0, min(tick, self._deadline - now))
            await self._sleep(wait)
        return False

    def _destination_changed(self, destination: Destination) -> None:
        if destination.state == LIVE and self._deadline is None and self.s.duration:
            self._deadline = self._clock() + self.s.duration
        if self.s.destinations[1:]:
            self.history.event(
                time.time(),
                "destination",
                f"{destination.name} {destination.state}: {self._log.redact(destination.reason)}",
            )
            log.info(
                "destination",
                name=destination.name,
                state=destination.state,
                reason=destination.reason,
            )
        self._wake.set()

    def _remember_transition(self, old: str, new: str, reason: str) -> None:
        kind = {RECONNECTING: "reconnect", ERROR: "error"}.get(new, "state")
        text = f"{old} → {new}" + (f": {self._log.redact(reason)}" if reason else "")
        self.history.event(time.time(), kind, text)

    def _follow(self, target: str) -> None:
        """Fire the transitions that take the device state to ``target``, if any do."""
        current = self.state.state
        if len(self.destinations) == 1:
            reason = self.destinations[0].reason
        else:
            reason = ", ".join(f"{d.name} {d.state}" for d in self.destinations)
        if current == target:
            # Still reconnecting, for a new reason ("retrying in 8 s", a new error): say it,
            # so /status and systemd's STATUS= are not left with the first attempt's words.
            if target == RECONNECTING and reason != self.state.reason:
                self.state.fire("connection_lost", reason)
            return
        for trigger in _PATHS.get((current, target), ()):
            self.state.fire(trigger, reason)

    def _adapt(self, pipeline: PipelineLike, now: float) -> None:
        """The encoder's bitrate: what the slowest live destination's link can carry."""
        proposals = [(p, d) for d in self.destinations if (p := d.propose_bitrate(now)) is not None]
        if not proposals:
            return
        target, slowest = min(proposals, key=lambda pd: pd[0])
        if target == self.target_kbps:
            return
        self.target_kbps = target
        log.info(
            "bitrate",
            target_kbps=target,
            destination=slowest.name,
            measured_kbps=round(slowest.bitrate.measured_kbps or 0) if slowest.bitrate else 0,
            queue_ms=slowest.outbox.depth_ms if slowest.outbox else 0,
        )
        pipeline.video.set_bitrate(target)
        self.history.event(time.time(), "bitrate", f"{target} kbps (for {slowest.name})")

    def _maybe_log_stats(self, now: float) -> None:
        if now - self._stats_at < STATS_INTERVAL:
            return
        self._stats_at = now
        for d in self.destinations:
            d.sample_rates(now)
        device = self.numbers()
        self.history.sample(
            time.time(),
            sent_kbps=device["sent_kbps"],
            target_kbps=device["target_kbps"],
            queue_ms=device["queue_ms"],
            dropped=device["dropped"],
        )
        log.info("stats", **device, elapsed=f"{now - self.started:.0f}s")
        if self.s.destinations[1:]:
            for d in self.destinations:
                numbers = d.numbers()
                shown = {k: v for k, v in numbers.items() if k not in ("name", "url")}
                log.info("stats", destination=numbers["name"], **shown)

    async def _teardown(self, graceful: bool) -> None:
        """Stop capture (encoders flush into the queues), then every destination."""
        pipeline, self.pipeline = self.pipeline, None
        if pipeline is not None:
            await pipeline.stop()
        tasks, self._tasks = self._tasks, {}
        for d in tasks:
            d.stop(drain=graceful and d.state == LIVE)
        if tasks:
            _, pending = await asyncio.wait(tasks.values(), timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)


def _scrub(exc: StreamerError, device: logsetup.DeviceLog) -> None:
    """An error about to leave the device, without its keys (a server's words may hold one)."""
    exc.message = device.redact(exc.message)
    exc.args = (exc.message,)
    if isinstance(exc, PublishRejected):
        exc.description = device.redact(exc.description)


def _ready_config(video: VideoEncoder, timeout: float) -> VideoConfig:
    """The video setup with SPS/PPS (``ready_config`` waits for a hardware encoder's)."""
    if isinstance(video, H264Encoder | CameraEncoder):
        return ready_config(video, timeout)
    if not video.config.avc_config:
        raise DeviceError(f"H.264 encoder {video.name} gave no SPS/PPS at open")
    return video.config


def _recording_status(pipeline: PipelineLike | None) -> str:
    recorder = pipeline.recorder if pipeline else None
    if recorder is None:
        return "off"
    return f"failed: {recorder.failed}" if recorder.failed else "on"
