"""The device's state machine, declared as data and driven by the transitions library.

One table says what may happen; everything else (the lifecycle in app.py,
the LED, the logs, /status and sd_notify) reads the current state, its
reason and since when from here (docs/design.md "States and transitions").
Triggers are queued: a callback that fires another trigger never re-enters
a transition half way through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Final

import structlog
from transitions import Machine, MachineError

log = structlog.get_logger("streamer.state")

IDLE: Final = "idle"
PREPARING: Final = "preparing"
LIVE: Final = "live"
RECONNECTING: Final = "reconnecting"
ERROR: Final = "error"
STATES: Final = [IDLE, PREPARING, LIVE, RECONNECTING, ERROR]

ACTIVE: Final = [PREPARING, LIVE, RECONNECTING]

TRANSITIONS: Final[list[dict[str, Any]]] = [
    # Someone asked to stream (boot, button, CLI): open hardware, connect, publish.
    {"trigger": "start", "source": IDLE, "dest": PREPARING},
    # The server accepted the stream.
    {"trigger": "published", "source": [PREPARING, RECONNECTING], "dest": LIVE},
    # A network failure: keep hardware running, retry after a backoff delay.
    {"trigger": "connection_lost", "source": [PREPARING, LIVE, RECONNECTING], "dest": RECONNECTING},
    # Not retryable now (config, rejected publish, hardware) or the retry budget is spent.
    {"trigger": "fail", "source": [PREPARING, LIVE, RECONNECTING], "dest": ERROR},
    # A person stopped it (button, signal): unpublish, close hardware.
    {"trigger": "stop", "source": [*ACTIVE, ERROR], "dest": IDLE},
    # Button held 3 s: forget the error.
    {"trigger": "reset", "source": ERROR, "dest": IDLE},
    # Service mode: try again after the cooldown.
    {"trigger": "retry", "source": ERROR, "dest": PREPARING},
]

Listener = Callable[[str, str, str], None]


class DeviceState:
    """The current state with its reason and since-when; listeners hear every change."""

    state: str  # set by the Machine

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.reason = "not started"
        self.since = clock()
        self.since_wall = time.time()
        self._listeners: list[Listener] = []
        self.machine = Machine(
            model=self,
            states=STATES,
            transitions=TRANSITIONS,
            initial=IDLE,
            auto_transitions=False,
            queued=True,
            send_event=True,
            before_state_change="_remember",
            after_state_change="_changed",
        )

    def subscribe(self, listener: Listener) -> None:
        """``listener(old, new, reason)`` after every transition (self-transitions too)."""
        self._listeners.append(listener)

    def fire(self, trigger: str, reason: str) -> bool:
        """Try a transition; a transition the table does not allow is refused and logged."""
        try:
            return bool(self.trigger(trigger, reason=reason))  # type: ignore[attr-defined]
        except MachineError:
            log.warning("transition refused", trigger=trigger, state=self.state, reason=reason)
            return False

    def allowed(self, trigger: str) -> bool:
        return trigger in self.machine.get_triggers(self.state)

    def seconds_in_state(self) -> float:
        return self._clock() - self.since

    def _remember(self, event: Any) -> None:
        self._old = event.transition.source

    def _changed(self, event: Any) -> None:
        self.reason = str(event.kwargs.get("reason", ""))
        self.since = self._clock()
        self.since_wall = time.time()
        old, new = self._old, self.state
        # At the level of what it means, so `journalctl -p err` shows why the device is in error.
        level = {ERROR: logging.ERROR, RECONNECTING: logging.WARNING}.get(new, logging.INFO)
        log.log(level, "state", transition=f"{old} -> {new}", reason=self.reason)
        for listener in self._listeners:
            try:
                listener(old, new, self.reason)
            except Exception as exc:  # a broken listener must not stop the device
                log.error("state listener failed", listener=repr(listener), error=str(exc))


def mermaid_diagram() -> str:
    """The machine above as a mermaid state diagram (for README and `streamer state-diagram`)."""
    from transitions.extensions import GraphMachine

    class _Model:
        pass

    model = _Model()
    GraphMachine(
        model=model,
        states=STATES,
        transitions=TRANSITIONS,
        initial=IDLE,
        auto_transitions=False,
        graph_engine="mermaid",
    )
    source: str = model.get_graph().draw(None)  # type: ignore[attr-defined]
    # Keep the diagram itself: no front matter (not valid YAML as emitted) and
    # no styling of "the current state", which a static diagram does not have.
    body = source[source.index("stateDiagram-v2") :]
    lines = [
        line
        for line in body.splitlines()
        if not line.strip().startswith(("classDef ", "Class ")) and line.strip()
    ]
    return "\n".join(lines) + "\n"
