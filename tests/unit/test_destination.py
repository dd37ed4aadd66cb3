"""One destination's lifecycle against a scripted server: retry, refusal, cooldown, backoff, stop.

Waits are real sleeps of the configured (tiny) seconds; where the policy
judges time (a session live for 60 s) a fake clock is advanced instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from streamer.destination import Destination, Media
from streamer.exc import ConnectFailed, ConnectionLost, PublishRejected
from streamer.pipeline import Fanout
from streamer.settings import Settings
from streamer.state import ERROR, IDLE, LIVE, PREPARING, RECONNECTING
from tests.lifecycle_fakes import (
    DEFAULT_URL,
    FakeClock,
    FakePipeline,
    FakeServer,
    Plan,
    publishers,
    quick,
    until,
)

URL = DEFAULT_URL
REFUSED = ConnectFailed("could not connect to a.test:1935: connection refused")
UNAUTHORIZED = PublishRejected("NetStream.Publish.Unauthorized", "wrong stream key")
BAD_NAME = PublishRejected("NetStream.Publish.BadName", "already publishing")


@dataclass
class Run:
    destination: Destination
    server: FakeServer
    pipeline: FakePipeline
    clock: FakeClock
    task: asyncio.Task[None]
    states: list[tuple[str, str]] = field(default_factory=list)

    @property
    def visited(self) -> list[str]:
        """The states in order, repeats (a new reason) folded."""
        out: list[str] = []
        for state, _ in self.states:
            if not out or out[-1] != state:
                out.append(state)
        return out

    async def outcome(self, timeout: float = 2.0) -> BaseException | None:
        """How ``run`` ended: None, or what it raised."""
        async with asyncio.timeout(timeout):
            await asyncio.wait({self.task})
        return self.task.exception()

    async def stop(self, drain: bool = False) -> None:
        await self.pipeline.stop()
        self.destination.stop(drain=drain)
        assert await self.outcome() is None


@asynccontextmanager
async def streaming(
    s: Settings, *plans: Plan, clock: FakeClock | None = None
) -> AsyncIterator[Run]:
    """A destination sending what a fake capture side makes to a server playing ``plans``."""
    server, clock = FakeServer(*plans), clock or FakeClock()
    states: list[tuple[str, str]] = []
    d = Destination(
        s.destinations[0],
        s,
        publisher_factory=publishers(a_test=server),
        clock=clock,
        on_change=lambda d: states.append((d.state, d.reason)),
    )
    fanout = Fanout()
    fanout.outboxes = (d.attach(asyncio.get_running_loop()),)
    pipeline = FakePipeline(s, fanout, interval=0.002, log_as=None)
    pipeline.start()
    media = Media(pipeline.video.config, None, pipeline.video.request_keyframe)
    task = asyncio.create_task(d.run(media))
    run = Run(d, server, pipeline, clock, task, states)
    try:
        yield run
    finally:
        d.stop()
        await pipeline.stop()
        await asyncio.wait({task}, timeout=2)  # a test that failed must not hang
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def scenario(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def run() -> None:
        asyncio.run(test())

    run.__name__ = test.__name__
    return run


# -- CLI mode -------------------------------------------------------------------


@scenario
async def test_cli_a_first_connection_that_fails_is_reported_at_once() -> None:
    async with streaming(quick(), Plan(fail=REFUSED)) as run:
        error = await run.outcome()
    assert error is REFUSED
    assert len(run.server.attempts) == 1
    assert run.visited == [PREPARING, IDLE]


@scenario
async def test_cli_a_refused_publish_ends_the_run_with_the_servers_words() -> None:
    async with streaming(quick(), Plan(fail=UNAUTHORIZED)) as run:
        error = await run.outcome()
    assert isinstance(error, PublishRejected)
    assert "NetStream.Publish.Unauthorized" in error.message
    assert "wrong stream key" in error.message
    assert len(run.server.attempts) == 1


async def live_again(run: Run, publishes: int) -> None:
    """The server has seen ``publishes`` publishes and the destination is live on the last
    (the server sees a publish before the destination has opened its session)."""
    await until(
        lambda: len(run.server.publishes) == publishes and run.destination.state == LIVE,
        f"live on publish {publishes}",
    )


@scenario
async def test_cli_reconnects_after_being_live_and_starts_a_new_session() -> None:
    async with streaming(quick(), Plan(lose_after=5), Plan(fail=REFUSED), Plan()) as run:
        await live_again(run, 2)
        await until(lambda: len(run.server.publishes[1].frames) >= 3, "frames after it")
        assert run.visited == [PREPARING, LIVE, RECONNECTING, LIVE]
        reasons = [reason for state, reason in run.states if state == RECONNECTING]
        assert reasons[0].startswith("server closed the connection; retrying in")
        assert reasons[1].startswith("could not connect to a.test:1935")
        assert run.destination.reconnects == 1
        second = run.server.publishes[1]
        assert second.metadata is not None and second.headers
        ts, key, _ = second.frames[0]
        assert (ts, key) == (0, True)  # a new session starts at a keyframe, at time 0
        await run.stop()


@scenario
async def test_cli_gives_up_after_max_reconnects() -> None:
    s = quick(max_reconnects=3)
    async with streaming(s, Plan(lose_after=3), *[Plan(fail=REFUSED)] * 5) as run:
        error = await run.outcome()
    assert isinstance(error, ConnectionLost)
    assert error.message.startswith("gave up after 3 reconnect attempts: could not connect")
    assert len(run.server.attempts) == 1 + 3


@pytest.mark.parametrize(("live_for", "again"), [(59.0, False), (61.0, True)])
def test_the_reconnect_budget_is_restored_only_after_60_s_live(
    live_for: float, again: bool
) -> None:
    """Two attempts allowed: one failed, one that led to a second session, then it drops."""

    async def test() -> None:
        clock = FakeClock()
        live = Plan(lose_after=3, before_loss=lambda: clock.advance(live_for))
        plans = [Plan(lose_after=3), Plan(fail=REFUSED), live]
        async with streaming(quick(max_reconnects=2), *plans, clock=clock) as run:
            if again:
                await live_again(run, 3)
                assert run.destination.backoff.attempts == 1
                await run.stop()
            else:
                error = await run.outcome()
                assert isinstance(error, ConnectionLost)
                assert error.message.startswith("gave up after 2 reconnect attempts")
                assert len(run.server.publishes) == 2

    asyncio.run(test())


@scenario
async def test_bad_name_after_being_live_is_our_own_ghost_and_retried() -> None:
    async with streaming(quick(), Plan(lose_after=3), Plan(fail=BAD_NAME), Plan()) as run:
        await live_again(run, 2)
        assert run.visited == [PREPARING, LIVE, RECONNECTING, LIVE]
        assert any("BadName" in reason for state, reason in run.states if state == RECONNECTING)
        await run.stop()


@scenario
async def test_bad_name_before_being_live_is_a_refusal() -> None:
    async with streaming(quick(), Plan(fail=BAD_NAME)) as run:
        error = await run.outcome()
    assert error is BAD_NAME


# -- service mode ---------------------------------------------------------------


@scenario
async def test_service_a_refusal_is_an_error_then_a_cooldown_then_another_try() -> None:
    async with streaming(quick(service=True), Plan(fail=UNAUTHORIZED), Plan()) as run:
        await until(lambda: run.destination.state == LIVE, "live after the cooldown")
        assert run.visited == [PREPARING, ERROR, PREPARING, LIVE]
        error_reason = next(reason for state, reason in run.states if state == ERROR)
        assert "NetStream.Publish.Unauthorized" in error_reason
        assert "wrong stream key" in error_reason
        assert ("preparing", "0.03 s cooldown over") in run.states
        first, second = run.server.attempts
        assert second - first >= 0.03
        await run.stop()


@scenario
async def test_service_retries_a_first_connection_that_fails() -> None:
    async with streaming(quick(service=True), Plan(fail=REFUSED), Plan(fail=REFUSED)) as run:
        await until(lambda: run.destination.state == LIVE, "live")
        assert run.visited == [PREPARING, RECONNECTING, LIVE]
        assert run.destination.reconnects == 1
        await run.stop()


@scenario
async def test_service_never_gives_up() -> None:
    s = quick(service=True, max_reconnects=2)
    async with streaming(s, Plan(lose_after=3), *[Plan(fail=REFUSED)] * 6) as run:
        await live_again(run, 2)  # after 6 failed attempts
        assert len(run.server.attempts) == 8
        await run.stop()


@scenario
async def test_stop_ends_the_cooldown_at_once() -> None:
    async with streaming(quick(service=True, error_cooldown=30), Plan(fail=UNAUTHORIZED)) as run:
        await until(lambda: run.destination.state == ERROR, "error")
        run.destination.stop()
        assert await run.outcome(timeout=0.5) is None
        assert run.destination.state == IDLE


@scenario
async def test_retry_now_ends_the_cooldown_and_connects() -> None:
    async with streaming(quick(service=True, error_cooldown=30), Plan(fail=UNAUTHORIZED)) as run:
        await until(lambda: run.destination.state == ERROR, "error")
        run.destination.retry_now("start requested by test")
        assert run.destination.state == PREPARING  # at once: the device must not see error
        await until(lambda: run.destination.state == LIVE, "live", timeout=0.5)
        assert (PREPARING, "start requested by test") in run.states
        await run.stop()


# -- stop -----------------------------------------------------------------------


@scenario
async def test_stop_with_drain_sends_what_the_encoders_flushed_then_unpublishes() -> None:
    async with streaming(quick()) as run:
        await until(lambda: len(run.server.frames) >= 5, "frames")
        await run.stop(drain=True)
        publish = run.server.publishes[-1]
        assert publish.frames[-1][2] == b"flush"
        assert publish.unpublished
        assert run.visited[-1] == IDLE


@scenario
async def test_stop_without_drain_unpublishes_at_once() -> None:
    async with streaming(quick()) as run:
        await until(lambda: len(run.server.frames) >= 5, "frames")
        await run.stop(drain=False)
        publish = run.server.publishes[-1]
        assert b"flush" not in [data for _, _, data in publish.frames]
        assert publish.unpublished


@scenario
async def test_a_stop_that_comes_before_the_task_ran_is_kept() -> None:
    """The device stops every destination it started, even one whose task never ran yet."""
    async with streaming(quick()) as run:
        run.destination.stop()
        assert await run.outcome(timeout=0.5) is None
        assert run.server.attempts == []


@scenario
async def test_stop_ends_a_connection_attempt_at_once() -> None:
    """A server that takes its time (up to connect_timeout) does not hold up a stop."""
    async with streaming(quick(), Plan(hold=asyncio.Event())) as run:
        await until(lambda: len(run.server.attempts) == 1, "connecting")
        run.destination.stop()
        assert await run.outcome(timeout=0.5) is None
        assert run.server.publishes == []
        assert run.visited == [PREPARING, IDLE]
