"""Start/stop button and status LED on gpiozero's MockFactory (no real GPIO)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from gpiozero.mixins import HoldThread
from gpiozero.pins.mock import MockFactory

from streamer.controls import MISSING_GPIOZERO, require_gpiozero
from streamer.controls.button import HOLD_TIME, StartStopButton
from streamer.controls.led import PATTERNS, StatusLed
from streamer.exc import ConfigError, DeviceError

TOLERANCE = 0.05  # seconds, per measured on/off interval


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    pin_factory = MockFactory()
    yield pin_factory
    pin_factory.reset()


class Recorder:
    def __init__(self) -> None:
        self.toggles = 0
        self.resets = 0
        self.event = threading.Event()

    def toggle(self) -> None:
        self.toggles += 1
        self.event.set()

    def reset(self) -> None:
        self.resets += 1
        self.event.set()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_button(factory: MockFactory, rec: Recorder, **kwargs: Any) -> StartStopButton:
    return StartStopButton("GPIO17", rec.toggle, rec.reset, pin_factory=factory, **kwargs)


def intervals(states: list[Any]) -> list[tuple[bool, float]]:
    """(level, how long it lasted) for each completed level in a MockPin's ``states``.

    MockPin.states[i] = (seconds since the previous change, new level), so
    the duration of level ``states[i - 1].state`` is ``states[i].timestamp``.
    """
    return [(states[i - 1].state, states[i].timestamp) for i in range(1, len(states))]


def assert_cycles(measured: list[tuple[bool, float]], pattern: Any) -> None:
    """The measured intervals follow ``pattern`` from its first step, within TOLERANCE."""
    assert measured, "the pin never changed"
    for i, (level, seconds) in enumerate(measured):
        want_level, want_seconds = pattern[i % len(pattern)]
        assert level == want_level, (i, measured)
        assert abs(seconds - want_seconds) <= TOLERANCE, (i, seconds, want_seconds, measured)


def led_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("status-led")]


def wait_until(cond: Callable[[], bool], timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


# -- require_gpiozero ------------------------------------------------------------


def test_require_gpiozero_returns_module() -> None:
    assert require_gpiozero().__name__ == "gpiozero"


@pytest.mark.parametrize("make", ["button", "led", "helper"])
def test_missing_gpiozero_is_config_error(monkeypatch: pytest.MonkeyPatch, make: str) -> None:
    monkeypatch.setitem(sys.modules, "gpiozero", None)
    with pytest.raises(ConfigError) as info:
        if make == "button":
            StartStopButton("GPIO17", lambda: None, lambda: None)
        elif make == "led":
            StatusLed("GPIO27")
        else:
            require_gpiozero()
    assert info.value.message == MISSING_GPIOZERO
    assert "pip install 'streamer[gpio]'" in str(info.value)
    assert info.value.exit_code == 2


# -- button --------------------------------------------------------------------


def test_default_hold_time_is_three_seconds(factory: MockFactory, recorder: Recorder) -> None:
    assert HOLD_TIME == 3.0
    with make_button(factory, recorder) as button:
        assert button.hold_time == 3.0
        assert button.pin.bounce == pytest.approx(0.05)
        assert button._button.pull_up is True
        assert button._button.hold_repeat is False


def test_short_press_toggles_once(factory: MockFactory, recorder: Recorder) -> None:
    with make_button(factory, recorder) as button:
        button.pin.drive_low()
        assert recorder.toggles == 0  # nothing on press: a hold must not also toggle
        button.pin.drive_high()
        assert (recorder.toggles, recorder.resets) == (1, 0)


def test_each_short_press_toggles(factory: MockFactory, recorder: Recorder) -> None:
    with make_button(factory, recorder, hold_time=0.3) as button:
        for _ in range(3):
            button.pin.drive_low()
            time.sleep(0.01)
            button.pin.drive_high()
        time.sleep(0.4)  # longer than hold_time: no late hold fires
        assert (recorder.toggles, recorder.resets) == (3, 0)


def test_hold_resets_once_and_does_not_toggle(factory: MockFactory, recorder: Recorder) -> None:
    with make_button(factory, recorder, hold_time=0.3) as button:
        start = time.monotonic()
        button.pin.drive_low()
        assert recorder.event.wait(2.0)
        elapsed = time.monotonic() - start
        assert elapsed == pytest.approx(0.3, abs=0.15)
        time.sleep(0.5)  # keep holding past another hold_time: no repeat
        assert (recorder.toggles, recorder.resets) == (0, 1)
        button.pin.drive_high()
        assert (recorder.toggles, recorder.resets) == (0, 1)
        # the button still works normally afterwards
        button.pin.drive_low()
        button.pin.drive_high()
        assert (recorder.toggles, recorder.resets) == (1, 1)


def test_release_just_before_hold_time_toggles(factory: MockFactory, recorder: Recorder) -> None:
    with make_button(factory, recorder, hold_time=0.3) as button:
        button.pin.drive_low()
        time.sleep(0.2)
        button.pin.drive_high()
        time.sleep(0.3)
        assert (recorder.toggles, recorder.resets) == (1, 0)


def test_callback_exception_does_not_break_button(factory: MockFactory, recorder: Recorder) -> None:
    def boom() -> None:
        raise RuntimeError("boom")

    with StartStopButton("GPIO17", boom, recorder.reset, pin_factory=factory, hold_time=0.2) as b:
        b.pin.drive_low()
        b.pin.drive_high()  # the exception is logged, not raised into gpiozero
        b.pin.drive_low()
        assert recorder.event.wait(2.0)  # the hold thread still works
        b.pin.drive_high()
        assert recorder.resets == 1


@pytest.mark.parametrize("name", ["GPIO17", "17", "BOARD11", "BCM17"])
def test_pin_names_pass_through(factory: MockFactory, recorder: Recorder, name: str) -> None:
    with StartStopButton(name, recorder.toggle, recorder.reset, pin_factory=factory) as button:
        assert button.pin is factory.pin("GPIO17")


def test_invalid_pin_is_config_error(factory: MockFactory, recorder: Recorder) -> None:
    with pytest.raises(ConfigError, match="GPIO99"):
        StartStopButton("GPIO99", recorder.toggle, recorder.reset, pin_factory=factory)


def test_pin_in_use_is_device_error(factory: MockFactory, recorder: Recorder) -> None:
    with (
        StatusLed("GPIO17", pin_factory=factory),
        pytest.raises(DeviceError, match="GPIO17"),
    ):
        StartStopButton("GPIO17", recorder.toggle, recorder.reset, pin_factory=factory)


def test_button_close_stops_hold_thread(factory: MockFactory, recorder: Recorder) -> None:
    button = make_button(factory, recorder)
    hold_thread = button._button._hold_thread
    assert isinstance(hold_thread, HoldThread) and hold_thread.is_alive()
    button.close()
    button.close()  # idempotent
    assert not hold_thread.is_alive()
    assert not any(isinstance(t, HoldThread) and t.is_alive() for t in threading.enumerate())


# -- LED -----------------------------------------------------------------------


@pytest.fixture
def led(factory: MockFactory) -> Iterator[StatusLed]:
    status = StatusLed("GPIO27", pin_factory=factory)
    yield status
    status.close()


def test_led_starts_off(led: StatusLed) -> None:
    assert led.pin.state is False
    assert led.state is None


def test_live_is_solid_on(led: StatusLed) -> None:
    led.pin.clear_states()
    led.show("live")
    time.sleep(0.3)
    assert led.pin.state is True
    assert [s.state for s in led.pin.states] == [False, True]  # went high and stayed
    assert led_threads() == []


def test_idle_is_off(led: StatusLed) -> None:
    led.show("live")
    led.pin.clear_states()
    led.show("idle")
    time.sleep(0.3)
    assert led.pin.state is False
    assert [s.state for s in led.pin.states] == [True, False]
    assert led_threads() == []


def test_idle_first_leaves_led_off(led: StatusLed) -> None:
    led.pin.clear_states()
    led.show("idle")
    time.sleep(0.1)
    assert [s.state for s in led.pin.states] == [False]


def run_pattern(led: StatusLed, state: str, run_for: float) -> list[Any]:
    """Show ``state`` for ``run_for`` s; the pin's history up to then (all complete intervals)."""
    led.pin.clear_states()
    led.show(state)
    time.sleep(run_for)
    states = list(led.pin.states)  # snapshot while the pattern still runs
    led.show("idle")
    return states


@pytest.mark.parametrize(
    ("state", "run_for", "min_intervals"),
    [
        # run_for falls mid-step, away from any edge
        ("preparing", 0.75, 6),  # 0.1 on / 0.1 off
        ("reconnecting", 2.5, 2),  # 1 on / 1 off
        ("error", 1.53, 4),  # 0.15 on, 0.15 off, 0.15 on, 1.0 off
    ],
)
def test_blink_patterns(led: StatusLed, state: str, run_for: float, min_intervals: int) -> None:
    states = run_pattern(led, state, run_for)
    assert states[1].state is True
    assert states[1].timestamp < TOLERANCE  # the pattern starts at once, with "on"
    measured = intervals(states)[1:]  # drop the initial off
    assert len(measured) >= min_intervals, measured
    assert_cycles(measured, PATTERNS[state])


def test_error_is_two_short_pulses_then_long_gap(led: StatusLed) -> None:
    states = run_pattern(led, "error", 1.53)  # one cycle is 1.45 s
    measured = intervals(states)[1:]
    assert [level for level, _ in measured] == [True, False, True, False], measured
    on_times = [s for level, s in measured if level]
    off_times = [s for level, s in measured if not level]
    assert all(abs(s - 0.15) <= TOLERANCE for s in on_times), measured
    assert abs(off_times[0] - 0.15) <= TOLERANCE, measured
    assert abs(off_times[1] - 1.0) <= TOLERANCE, measured
    assert states[-1].state is True  # and the next double blink has begun


def test_switching_state_stops_previous_pattern(led: StatusLed) -> None:
    led.show("preparing")
    time.sleep(0.25)
    assert len(led_threads()) == 1
    led.show("reconnecting")
    assert [t.name for t in led_threads()] == ["status-led-reconnecting"]
    led.pin.clear_states()
    led.show("live")
    assert led_threads() == []
    time.sleep(0.4)  # a leftover fast blink would have toggled the pin by now
    assert led.pin.state is True
    assert len(led.pin.states) <= 2  # at most the switch to on, nothing after


def test_blink_to_idle_ends_off(led: StatusLed) -> None:
    led.show("preparing")
    time.sleep(0.15)
    led.show("idle")
    assert led_threads() == []
    led.pin.clear_states()
    time.sleep(0.3)
    assert led.pin.state is False
    assert len(led.pin.states) == 1  # no change after switching to idle


def test_same_state_again_does_not_restart(led: StatusLed) -> None:
    led.show("reconnecting")
    led.pin.clear_states()
    led.show("reconnecting")
    time.sleep(0.2)
    assert len(led.pin.states) == 1  # still in the first 1 s "on": no off/on glitch
    assert led.pin.state is True


def test_unknown_state_is_value_error(led: StatusLed) -> None:
    led.show("live")
    with pytest.raises(ValueError, match="bogus"):
        led.show("bogus")
    assert led.state == "live"
    assert led.pin.state is True


@pytest.mark.parametrize("state", list(PATTERNS))
def test_close_leaves_pin_low_and_no_thread(factory: MockFactory, state: str) -> None:
    led = StatusLed("GPIO27", pin_factory=factory)
    pin = led.pin
    led.show(state)
    time.sleep(0.05)
    led.close()
    led.close()  # idempotent
    assert pin.state is False
    assert led_threads() == []
    assert led._led.closed
    pin.clear_states()
    led.show("live")  # ignored after close
    time.sleep(0.1)
    assert pin.state is False
    assert len(pin.states) == 1


def test_close_mid_blink_is_prompt(factory: MockFactory) -> None:
    led = StatusLed("GPIO27", pin_factory=factory)
    led.show("reconnecting")  # sleeping in a 1 s step
    time.sleep(0.1)
    start = time.monotonic()
    led.close()
    assert time.monotonic() - start < 0.1
    assert wait_until(lambda: not led_threads(), 0.1)
    assert led.pin is None or led.pin.state is False
