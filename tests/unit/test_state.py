"""The transition table: every allowed and every refused transition."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from streamer.state import (
    ERROR,
    IDLE,
    LIVE,
    PREPARING,
    RECONNECTING,
    STATES,
    DeviceState,
    mermaid_diagram,
)

ALLOWED = {
    (IDLE, "start"): PREPARING,
    (PREPARING, "published"): LIVE,
    (RECONNECTING, "published"): LIVE,
    (PREPARING, "connection_lost"): RECONNECTING,
    (LIVE, "connection_lost"): RECONNECTING,
    (RECONNECTING, "connection_lost"): RECONNECTING,
    (PREPARING, "fail"): ERROR,
    (LIVE, "fail"): ERROR,
    (RECONNECTING, "fail"): ERROR,
    (PREPARING, "stop"): IDLE,
    (LIVE, "stop"): IDLE,
    (RECONNECTING, "stop"): IDLE,
    (ERROR, "stop"): IDLE,
    (ERROR, "reset"): IDLE,
    (ERROR, "retry"): PREPARING,
}
TRIGGERS = sorted({trigger for _, trigger in ALLOWED})


def machine_in(state: str, clock: list[float]) -> DeviceState:
    s = DeviceState(clock=lambda: clock[0])
    s.machine.set_state(state)
    return s


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(STATES, TRIGGERS)))
def test_every_transition(state: str, trigger: str) -> None:
    clock = [100.0]
    s = machine_in(state, clock)
    heard: list[tuple[str, str, str]] = []
    s.subscribe(lambda old, new, reason: heard.append((old, new, reason)))
    clock[0] = 107.5
    ok = s.fire(trigger, "because")
    expected = ALLOWED.get((state, trigger))
    if expected is None:
        assert not ok and s.state == state and heard == []
        assert not s.allowed(trigger)
    else:
        assert ok and s.state == expected
        assert heard == [(state, expected, "because")]
        assert (s.reason, s.since, s.seconds_in_state()) == ("because", 107.5, 0.0)


def test_triggers_fired_from_a_listener_are_queued_not_reentrant() -> None:
    s = DeviceState()
    order: list[str] = []

    def listener(old: str, new: str, reason: str) -> None:
        order.append(f"enter {new}")
        if new == PREPARING:
            s.fire("published", "from listener")
            order.append("listener done")

    s.subscribe(listener)
    s.fire("start", "test")
    assert order == ["enter preparing", "listener done", "enter live"]
    assert s.state == LIVE and s.reason == "from listener"


def test_a_failing_listener_does_not_stop_the_machine() -> None:
    s = DeviceState()

    def broken(old: str, new: str, reason: str) -> None:
        raise ZeroDivisionError

    s.subscribe(broken)
    assert s.fire("start", "x") and s.state == PREPARING


def test_mermaid_diagram_has_every_transition() -> None:
    text = mermaid_diagram()
    assert "stateDiagram-v2" in text and "[*] --> idle" in text
    for (source, trigger), dest in ALLOWED.items():
        assert any(
            line.strip().startswith(f"{source} --> {dest}:") and trigger in line
            for line in text.splitlines()
        ), (source, trigger, dest)


def test_readme_embeds_the_current_diagram() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert mermaid_diagram().strip() in readme, "run `streamer state-diagram` into README.md"
