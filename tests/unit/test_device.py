"""The device's lifecycle with a fake capture side and scripted servers, in milliseconds.

What is checked is what a user sees: the device state's transitions and
reasons, what each server received, what the encoder was told, what
``run`` raised.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog

from streamer.device import STATS_INTERVAL, Device, derived_state
from streamer.encode.filters import FilterChain, parse_filter
from streamer.exc import ConfigError, ConnectFailed, DeliveryFailed, DeviceError, PublishRejected
from streamer.net.bitrate import BitrateController
from streamer.pipeline import Fanout
from streamer.settings import Settings
from streamer.state import ERROR, IDLE, LIVE, PREPARING, RECONNECTING, STATES
from tests.lifecycle_fakes import (
    FakeClock,
    FakePipeline,
    FakeServer,
    Pipelines,
    Plan,
    publishers,
    quick,
    until,
)

A, B = "rtmp://a.test/live/KeyA1", "rtmp://b.test/live/KeyB2"
# Made anew for each use: a raised exception keeps its traceback, and with it the device.


def refused() -> ConnectFailed:
    return ConnectFailed("could not connect to a.test:1935: connection refused")


def unauthorized() -> PublishRejected:
    return PublishRejected("NetStream.Publish.Unauthorized", "wrong stream key")


def camera_gone() -> DeviceError:
    return DeviceError("video capture failed: camera unplugged")


TICK = 0.002


@dataclass
class Run:
    device: Device
    pipelines: Pipelines
    servers: dict[str, FakeServer]
    task: asyncio.Task[None]
    shutdown: asyncio.Event
    heard: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def transitions(self) -> list[str]:
        return [f"{old}->{new}" for old, new, _ in self.heard]

    def reasons(self, new: str) -> list[str]:
        return [reason for _, to, reason in self.heard if to == new]

    async def outcome(self, timeout: float = 2.0) -> BaseException | None:
        """How ``run`` ended: None, or what it raised."""
        async with asyncio.timeout(timeout):
            await asyncio.wait({self.task})
        return self.task.exception()

    async def until_state(self, state: str, timeout: float = 2.0) -> None:
        await until(lambda: self.device.state.state == state, state, timeout)


@asynccontextmanager
async def running(
    s: Settings,
    clock: FakeClock | None = None,
    pipelines: Pipelines | None = None,
    **servers: FakeServer,
) -> AsyncIterator[Run]:
    """A device with fake capture and one scripted server per destination (by host)."""
    for target in s.destinations:
        servers.setdefault(target.name.replace(".", "_"), FakeServer())
    pipelines = pipelines or Pipelines()
    device = Device(
        s,
        pipeline_factory=pipelines,
        publisher_factory=publishers(**servers),
        clock=clock or FakeClock(),
        tick=TICK,
    )
    heard: list[tuple[str, str, str]] = []
    device.subscribe(lambda old, new, reason: heard.append((old, new, reason)))
    shutdown = asyncio.Event()
    task = asyncio.create_task(device.run(shutdown))
    run = Run(device, pipelines, servers, task, shutdown, heard)
    try:
        yield run
    finally:
        shutdown.set()
        await asyncio.wait({task}, timeout=2)  # a test that failed must not hang
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def scenario(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def run() -> None:
        asyncio.run(test())

    run.__name__ = test.__name__
    return run


# -- the device state from its destinations' --------------------------------------

# Rows: the first destination's state; columns: the second's (STATES order:
# idle, preparing, live, reconnecting, error).
DERIVED = {
    IDLE: [PREPARING, PREPARING, PREPARING, RECONNECTING, ERROR],
    PREPARING: [PREPARING, PREPARING, PREPARING, RECONNECTING, ERROR],
    LIVE: [PREPARING, PREPARING, LIVE, RECONNECTING, ERROR],
    RECONNECTING: [RECONNECTING, RECONNECTING, RECONNECTING, RECONNECTING, ERROR],
    ERROR: [ERROR, ERROR, ERROR, ERROR, ERROR],
}


@pytest.mark.parametrize(("first", "second"), list(itertools.product(STATES, STATES)))
def test_the_device_state_for_two_destinations(first: str, second: str) -> None:
    assert derived_state([first, second]) == DERIVED[first][STATES.index(second)]


@pytest.mark.parametrize("one", STATES)
def test_one_destination_gives_its_state_except_idle(one: str) -> None:
    assert derived_state([one]) == (PREPARING if one == IDLE else one)


# Where the state machine has no transition the device stays where it is: a
# destination only leaves live or reconnecting for preparing through idle
# (its task ended), and then the device fails or stops on the same turn.
NO_PATH = {(LIVE, PREPARING), (RECONNECTING, PREPARING)}


@pytest.mark.parametrize("current", [PREPARING, LIVE, RECONNECTING, ERROR])
def test_the_device_state_follows_its_destinations_through_allowed_transitions(
    current: str,
) -> None:
    device = Device(quick(A, B), pipeline_factory=Pipelines(), publisher_factory=publishers())
    heard: list[str] = []
    device.subscribe(lambda old, new, _: heard.append(f"{old}->{new}"))
    for first, second in itertools.product(STATES, STATES):
        device.state.machine.set_state(current)
        device.destinations[0].state, device.destinations[1].state = first, second
        target = derived_state([first, second])
        heard.clear()
        before = device.state.reason
        device._follow(target)
        reason = f"a.test {first}, b.test {second}"
        if current == target == RECONNECTING and reason != before:
            # still reconnecting, for a new reason: said, so /status and STATUS= follow
            assert heard == ["reconnecting->reconnecting"] and device.state.reason == reason
            continue
        if current == target or (current, target) in NO_PATH:
            assert (device.state.state, heard) == (current, [])
            continue
        assert device.state.state == target
        assert heard[0].startswith(f"{current}->") and heard[-1].endswith(f"->{target}")
        assert device.state.reason == f"a.test {first}, b.test {second}"


@scenario
async def test_one_destination_drops_and_comes_back_live_reconnecting_live() -> None:
    back = asyncio.Event()
    b = FakeServer(Plan(), Plan(fail=refused()), Plan(hold=back))
    async with running(quick(A, B), b_test=b) as run:
        await run.until_state(LIVE)
        b.drop()
        await until(lambda: len(b.attempts) == 3, "b's second reconnect attempt")
        assert run.device.state.state == RECONNECTING
        back.set()
        await run.until_state(LIVE)
        assert run.transitions == [
            "idle->preparing",
            "preparing->live",
            "live->reconnecting",
            "reconnecting->live",
        ]
        assert run.reasons(RECONNECTING) == ["a.test live, b.test reconnecting"]
        assert run.reasons(LIVE)[-1] == "a.test live, b.test live"
        assert len(run.servers["a_test"].attempts) == 1  # a never noticed
    assert run.transitions[-1] == "live->idle"


@scenario
async def test_service_one_destination_refused_is_a_device_error_until_it_is_back() -> None:
    asked = asyncio.Event()
    b = FakeServer(Plan(hold=asked, fail=unauthorized()))
    async with running(quick(A, B, service=True), b_test=b) as run:
        await until(lambda: run.device.destinations[0].state == LIVE, "a live")
        asked.set()
        await run.until_state(ERROR)
        assert run.reasons(ERROR) == ["a.test live, b.test error"]
        await until(lambda: len(b.publishes) == 1, "b published after the cooldown")
        await run.until_state(LIVE)
        assert run.transitions == [
            "idle->preparing",
            "preparing->error",
            "error->preparing",
            "preparing->live",
        ]
        assert len(run.pipelines.made) == 1  # the capture side stayed up
        assert len(run.servers["a_test"].attempts) == 1


# -- CLI mode -------------------------------------------------------------------


@scenario
async def test_cli_a_first_connection_that_fails_ends_the_run_with_its_reason() -> None:
    async with running(quick(), a_test=FakeServer(Plan(fail=refused()))) as run:
        error = await run.outcome()
    assert isinstance(error, ConnectFailed) and str(error) == refused().message
    assert run.transitions == ["idle->preparing", "preparing->error", "error->idle"]
    assert run.reasons(ERROR) == [refused().message]
    assert run.pipelines.made[0].stopped


@scenario
async def test_cli_a_refused_publish_ends_the_run_with_the_servers_words() -> None:
    async with running(quick(), a_test=FakeServer(Plan(fail=unauthorized()))) as run:
        error = await run.outcome()
    assert isinstance(error, PublishRejected) and error.code == "NetStream.Publish.Unauthorized"
    assert "wrong stream key" in run.reasons(ERROR)[0]


@scenario
async def test_cli_gives_up_after_max_reconnects() -> None:
    a = FakeServer(Plan(lose_after=3), *[Plan(fail=refused())] * 3)
    async with running(quick(max_reconnects=2), a_test=a) as run:
        error = await run.outcome()
    assert error is not None and str(error).startswith("gave up after 2 reconnect attempts")
    changes = [t for t in run.transitions if t != "reconnecting->reconnecting"]
    assert changes == [
        "idle->preparing",
        "preparing->live",
        "live->reconnecting",
        "reconnecting->error",
        "error->idle",
    ]
    # each refused attempt is said while reconnecting, not only the first loss
    reasons = run.reasons(RECONNECTING)
    assert reasons[0].startswith("server closed the connection; retrying in")
    assert any(r.startswith("could not connect to a.test:1935") for r in reasons[1:]), reasons


# -- the capture side fails -------------------------------------------------------


@scenario
async def test_cli_a_hardware_failure_ends_the_run() -> None:
    async with running(quick()) as run:
        await run.until_state(LIVE)
        run.pipelines.made[0].fail = camera_gone()
        error = await run.outcome()
    assert isinstance(error, DeviceError) and str(error) == camera_gone().message
    assert run.transitions[-2:] == ["live->error", "error->idle"]
    assert run.reasons(ERROR) == [camera_gone().message]


@scenario
async def test_service_a_hardware_failure_is_an_error_then_a_new_pipeline_after_the_cooldown() -> (
    None
):
    clock = FakeClock()
    async with running(quick(service=True, error_cooldown=0.05), clock) as run:
        await run.until_state(LIVE)
        first = run.pipelines.made[0]
        first.fail = camera_gone()
        await run.until_state(ERROR)
        failed_at = clock()
        assert first.stopped  # hardware closed while in error
        assert run.servers["a_test"].publishes[0].closed
        await run.until_state(LIVE)
        assert clock() - failed_at >= 0.05
        assert len(run.pipelines.made) == 2 and run.pipelines.made[1].started
        assert run.transitions == [
            "idle->preparing",
            "preparing->live",
            "live->error",
            "error->preparing",
            "preparing->live",
        ]
        assert run.reasons(PREPARING)[-1] == "0.05 s cooldown over"


# -- duration, bitrate, stop ------------------------------------------------------


@scenario
async def test_a_timed_run_ends_after_its_duration_and_succeeds_when_the_server_had_it() -> None:
    clock = FakeClock()
    async with running(quick(duration=60), clock) as run:
        await run.until_state(LIVE)
        a = run.servers["a_test"]
        await until(lambda: len(a.frames) >= 10, "ten frames")  # many ticks
        assert not run.task.done()
        clock.advance(60)
        assert await run.outcome() is None
    assert a.frames[-1][2] == b"flush"
    assert a.publishes[-1].unpublished
    assert run.transitions == ["idle->preparing", "preparing->live", "live->idle"]


@scenario
async def test_a_timed_run_whose_server_acknowledged_nothing_fails() -> None:
    clock = FakeClock()
    async with running(quick(duration=60), clock, a_test=FakeServer(Plan(acks=False))) as run:
        await until(lambda: len(run.servers["a_test"].frames) >= 10, "ten frames")
        clock.advance(60)
        error = await run.outcome()
    assert isinstance(error, DeliveryFailed)
    assert error.message.startswith("only 0 of ")


@scenario
async def test_the_first_stats_interval_counts_the_frames_of_that_interval() -> None:
    clock = FakeClock()
    clock.advance(1e6)  # a machine up for 11 days: the clock is far from zero
    async with running(quick(), clock) as run:
        await run.until_state(LIVE)
        d = run.device.destinations[0]
        await until(lambda: d.frames_sent >= 10, "ten frames")
        clock.advance(STATS_INTERVAL)
        await until(lambda: run.device.numbers()["fps"] > 0, "the first stats line")
        fps, frames = run.device.numbers()["fps"], d.frames_sent
    # All frames so far were sent within the interval (5 s of fake time plus the real
    # fraction of a second this took); counted from the clock's zero, fps read 0.0.
    assert 0.5 * frames / STATS_INTERVAL <= fps <= frames / STATS_INTERVAL


class FixedBitrate(BitrateController):
    """A controller that proposes what the test says."""

    def update(self, now: float, bytes_accepted_total: int, queue_ms: int) -> int | None:
        return None


@scenario
async def test_the_encoder_follows_the_slowest_live_destination() -> None:
    b = FakeServer(Plan(), Plan(hold=asyncio.Event()))  # b's reconnect waits for ever
    async with running(quick(A, B), b_test=b) as run:
        a_rate, b_rate = FixedBitrate(max_kbps=2500), FixedBitrate(max_kbps=2500)
        run.device.destinations[0].bitrate = a_rate
        run.device.destinations[1].bitrate = b_rate
        a_rate.target_kbps, b_rate.target_kbps = 1800, 900
        await run.until_state(LIVE)
        video = run.pipelines.made[0].video
        await until(lambda: video.bitrates[-1:] == [900], "b's 900 kbit/s")
        b.drop()
        await run.until_state(RECONNECTING)
        b_rate.target_kbps, a_rate.target_kbps = 300, 1700  # b is not live: not heard
        await until(lambda: video.bitrates[-1:] == [1700], "a's 1700 kbit/s")
        assert 300 not in video.bitrates
        assert run.device.numbers()["target_kbps"] == 1700


@scenario
async def test_stopping_drains_what_the_encoders_flushed_and_unpublishes() -> None:
    async with running(quick(A, B)) as run:
        await run.until_state(LIVE)
        await until(lambda: len(run.servers["b_test"].frames) >= 3, "frames")
    for server in run.servers.values():
        assert server.frames[-1][2] == b"flush"
        assert server.publishes[-1].unpublished
    assert run.pipelines.made[0].stopped
    assert run.transitions[-1] == "live->idle"


# -- commands ---------------------------------------------------------------------


@scenario
async def test_a_start_while_a_stop_tears_down_is_not_lost() -> None:
    async with running(quick(), pipelines=Pipelines(stop_delay=0.02)) as run:
        await run.until_state(LIVE)
        run.device.stop("test")
        await until(lambda: run.pipelines.made[0].stopping, "the capture side stopping")
        run.device.start("test")
        await until(lambda: len(run.pipelines.made) == 2, "a second pipeline")
        await run.until_state(LIVE)
        assert run.transitions[-2:] == ["idle->preparing", "preparing->live"]


class TextPipelines(Pipelines):
    """Fake capture with the real filter chain the settings ask for."""

    def __call__(self, s: Settings, fanout: Fanout) -> FakePipeline:
        pipeline = super().__call__(s, fanout)
        specs = [parse_filter(spec) for spec in s.filters]
        pipeline.filters = FilterChain(specs, s.width, s.height, s.fps)  # type: ignore[assignment]
        return pipeline


@scenario
async def test_text_changed_live_shows_at_once_and_outlasts_a_restart() -> None:
    settings = quick(filters=["text=%H:%M:%S:top-left", "text=Nest 1"], width=320, height=180)
    async with running(settings, pipelines=TextPipelines()) as run:
        with pytest.raises(ConfigError, match="no text filter number 2"):
            run.device.set_text("x", 2)
        run.device.set_text("Nest 2", 1)  # before the first start: kept for it
        await run.until_state(LIVE)
        first = run.pipelines.made[0].filters
        assert first is not None and first.texts == ["%H:%M:%S", "Nest 2"]
        run.device.set_text("Nest 3 %H:%M", 1)
        assert first.texts == ["%H:%M:%S", "Nest 3 %H:%M"]
        assert run.device.snapshot()["texts"] == ["%H:%M:%S", "Nest 3 %H:%M"]
        run.device.stop("test")
        await run.until_state(IDLE)
        assert run.device.texts() == ["%H:%M:%S", "Nest 3 %H:%M"]
        run.device.start("test")
        await until(lambda: len(run.pipelines.made) == 2, "a second pipeline")
        again = run.pipelines.made[1].filters
        assert again is not None and again.texts == ["%H:%M:%S", "Nest 3 %H:%M"]


@scenario
async def test_reset_from_a_destinations_error_closes_everything() -> None:
    a = FakeServer(Plan(fail=unauthorized()))
    async with running(quick(service=True, error_cooldown=30), a_test=a) as run:
        await run.until_state(ERROR)
        run.device.reset("button held")
        await run.until_state(IDLE)
        pipeline = run.pipelines.made[0]
        await until(lambda: pipeline.stopped, "the capture side closed")
        await until(lambda: run.device.destinations[0].state == IDLE, "the destination stopped")
        assert len(a.attempts) == 1


@scenario
async def test_start_in_error_tries_again_now() -> None:
    a = FakeServer(Plan(fail=unauthorized()))
    async with running(quick(service=True, error_cooldown=30), a_test=a) as run:
        await run.until_state(ERROR)
        run.device.start("status page")
        await run.until_state(LIVE, timeout=0.5)
        assert "start requested by status page" in run.reasons(PREPARING)


# -- two devices in one process -------------------------------------------------


def test_two_devices_log_their_own_state_and_never_a_key(log_lines: io.StringIO) -> None:
    """One live, one in error for a server that repeats its key in its refusal."""
    refusal = PublishRejected("NetStream.Publish.Unauthorized", "stream KeyB2 is not allowed")

    async def test() -> None:
        async with (
            running(quick(A), pipelines=Pipelines(log_as="a")) as a,
            running(
                quick(B, service=True, error_cooldown=30),
                pipelines=Pipelines(log_as="b"),
                b_test=FakeServer(Plan(fail=refusal)),
            ) as b,
        ):
            await a.until_state(LIVE)
            await b.until_state(ERROR)
            seen = len(log_lines.getvalue())
            await until(lambda: log_lines.getvalue().count('"device": "b"', seen) >= 5, "b")
            await until(lambda: log_lines.getvalue().count('"device": "a"', seen) >= 5, "a")
            # Outside any device: a thread that did not copy a device's context.
            outsider = threading.Thread(
                target=lambda: structlog.get_logger("t").warning("outsider", a=A, b=B)
            )
            outsider.start()
            outsider.join()
            assert "KeyB2" not in str(b.device.snapshot())
            b.device.stop("test")
            await b.until_state(IDLE)

    asyncio.run(test())
    text = log_lines.getvalue()
    assert "KeyA1" not in text and "KeyB2" not in text
    records = [json.loads(line) for line in text.splitlines()]
    states = {name: [r["state"] for r in records if r.get("device") == name] for name in ("a", "b")}
    assert set(states["a"]) <= {PREPARING, LIVE} and states["a"][-5:] == [LIVE] * 5
    assert set(states["b"]) <= {PREPARING, ERROR} and states["b"][-5:] == [ERROR] * 5
    connects = [r for r in records if r["event"] == "fake connect"]
    assert sorted(r["url"] for r in connects) == [
        "rtmp://a.test/live/***",
        "rtmp://b.test/live/***",
    ]
    assert {r["state"] for r in connects} == {PREPARING}
    refused = next(r for r in records if r["event"] == "destination failed")
    assert refused["reason"].endswith("(stream *** is not allowed)")
    stopped = next(r for r in records if r["event"] == "stop requested")
    assert stopped["state"] == ERROR  # b's, though the test's own code asked
    outsider = next(r for r in records if r["event"] == "outsider")
    assert "state" not in outsider
    assert (outsider["a"], outsider["b"]) == ("rtmp://a.test/live/***", "rtmp://b.test/live/***")


def test_a_thread_of_the_only_device_alive_logs_as_that_device(log_lines: io.StringIO) -> None:
    """A capture thread does not inherit the device's context; alone, the device is known."""

    async def test() -> None:
        async with running(quick()) as run:
            await run.until_state(LIVE)
            thread = threading.Thread(
                target=lambda: structlog.get_logger("t").warning("capture thread", url=A)
            )
            thread.start()
            await asyncio.to_thread(thread.join)

    asyncio.run(test())
    line = next(json.loads(x) for x in log_lines.getvalue().splitlines() if "capture thread" in x)
    assert (line["state"], line["url"]) == (LIVE, "rtmp://a.test/live/***")


@scenario
async def test_an_error_that_leaves_the_device_does_not_carry_its_key() -> None:
    refusal = PublishRejected("NetStream.Publish.Unauthorized", "stream KeyA1 is not allowed")
    async with running(quick(), a_test=FakeServer(Plan(fail=refusal))) as run:
        error = await run.outcome()
    assert isinstance(error, PublishRejected)
    assert "KeyA1" not in str(error) and "KeyA1" not in error.description
    assert str(error) == error.message
    assert error.message.endswith("(stream *** is not allowed)")


# -- threads --------------------------------------------------------------------


@scenario
async def test_a_thread_calls_the_device_through_call_threadsafe() -> None:
    async with running(quick()) as run:
        await run.until_state(LIVE)
        device = run.device
        with pytest.raises(RuntimeError, match="call the method directly"):
            device.call_threadsafe(device.snapshot)
        results: list[Any] = []

        def app_thread() -> None:
            results.append(device.call_threadsafe(device.snapshot)["state"])
            results.append(device.call_threadsafe(device.stop, "gui"))

        thread = threading.Thread(target=app_thread)
        thread.start()
        await run.until_state(IDLE)
        await asyncio.to_thread(thread.join)
        assert results == [LIVE, None]
        assert "stop requested" in run.reasons(IDLE)


def test_call_threadsafe_needs_a_running_device() -> None:
    device = Device(quick(), pipeline_factory=Pipelines(), publisher_factory=publishers())
    with pytest.raises(RuntimeError, match="not running"):
        device.call_threadsafe(device.snapshot)
