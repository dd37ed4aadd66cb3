"""A person with a push button and an LED, simulated by gpiozero's MockFactory."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from streamer.__main__ import stream
from streamer.device import Device as StreamerDevice
from streamer.localserver import LocalRtmpServer, free_port
from streamer.settings import Settings
from tests.conftest import LiveCli
from tests.media_check import CAPTURE_FLOOR, analyze_file

pytestmark = pytest.mark.slow  # each test here takes more than 5 s

BUTTON, LED = "GPIO17", "GPIO27"


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    previous = Device.pin_factory
    Device.pin_factory = factory = MockFactory()
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = previous


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def start_device(settings: Settings) -> tuple[StreamerDevice, asyncio.Event, asyncio.Task[None]]:
    """The device with button and LED, as `streamer run --button --led` runs it."""
    shutdown = asyncio.Event()
    streamer = StreamerDevice(settings)
    task = asyncio.create_task(stream(settings, BUTTON, LED, streamer=streamer, shutdown=shutdown))
    return streamer, shutdown, task


async def press(factory: MockFactory, seconds: float = 0.1) -> None:
    pin = factory.pin(17)
    pin.drive_low()
    await asyncio.sleep(seconds)
    pin.drive_high()


def test_short_presses_stop_and_start_the_stream(
    pins: MockFactory, rtmp_server: LocalRtmpServer
) -> None:
    settings = Settings(urls=[rtmp_server.url("gpio")], width=320, height=180)

    async def scenario() -> None:
        streamer, shutdown, task = start_device(settings)
        state = streamer.state
        led = pins.pin(27)
        await until(lambda: state.state == "live", 15, "live at start")
        await asyncio.sleep(2)
        assert led.state == 1
        await press(pins)
        await until(lambda: state.state == "idle", 10, "idle after a press")
        assert led.state == 0
        await asyncio.sleep(1)
        assert led.state == 0 and len(rtmp_server.recordings()) == 1
        await press(pins)
        await until(lambda: state.state == "live", 15, "live after a second press")
        await asyncio.sleep(3)
        assert led.state == 1
        shutdown.set()
        await asyncio.wait_for(task, 15)

    asyncio.run(scenario())
    rtmp_server.stop()
    first, second = (analyze_file(p) for p in rtmp_server.recordings())
    for report in (first, second):
        assert report.decode_errors == []
        assert report.video_keyframes[0]
    # a camera on a busy machine skips frames: a floor that a stalled capture would miss
    assert len(first.video_pts_ms) >= 2 * 30 * CAPTURE_FLOOR
    assert len(second.video_pts_ms) >= 3 * 30 * CAPTURE_FLOOR


def test_holding_the_button_clears_an_error(
    pins: MockFactory, rtmp_server: LocalRtmpServer
) -> None:
    settings = Settings(
        urls=[rtmp_server.url("gpio", app="locked")], width=320, height=180, service=True
    )

    async def scenario() -> None:
        streamer, shutdown, task = start_device(settings)
        state = streamer.state
        led = pins.pin(27)
        await until(lambda: state.state == "error", 15, "error from a refused publish")
        led.clear_states()
        await asyncio.sleep(2.5)
        changes = led.states
        on_times = [
            b.timestamp - a.timestamp
            for a, b in itertools.pairwise(changes)
            if a.state and not b.state
        ]
        assert len(on_times) >= 3, "error blinks"
        assert all(t < 0.3 for t in on_times), f"error is short double pulses: {on_times}"
        await press(pins, seconds=3.3)
        await until(lambda: state.state == "idle", 5, "idle after a 3 s hold")
        await asyncio.sleep(0.5)
        assert led.state == 0
        assert "reset" in state.reason or "held" in state.reason
        shutdown.set()
        await asyncio.wait_for(task, 15)

    asyncio.run(scenario())


def test_a_board_without_usable_gpio_streams_and_says_so_once(
    rtmp_server: LocalRtmpServer,
) -> None:
    """The shipped [controls] on a board with no pin factory: as the boot service runs it."""
    port = free_port()
    cli = LiveCli(
        *("run", "--service", "--url", rtmp_server.url("nogpio"), "--size", "320x180"),
        *("--button", BUTTON, "--led", LED, "--status-port", str(port)),
    )
    try:
        cli.wait_for_state("preparing -> live", timeout=15)
        errors = [e for e in cli.events if e["level"] == "error"]
        if not errors:
            pytest.skip("a GPIO pin factory loads on this machine (a Raspberry Pi?)")
        [error] = errors
        assert error["event"] == "LED GPIO27 and button GPIO17 unavailable: streaming without them"
        cli.wait_for_event("status page", timeout=10)  # the page says it is serving
        assert "no GPIO pin factory loads" in error["reason"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as reply:
            status = json.load(reply)
        assert status["state"] == "live"
        assert status["controls"].startswith("LED GPIO27 unavailable: no GPIO pin factory")
        assert cli.stop(signal.SIGTERM) == 0
        assert len(cli.lines) == len(cli.events), "every line is JSON, gpiozero's warnings too"
    finally:
        cli.stop(signal.SIGKILL)
