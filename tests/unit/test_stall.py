"""Stall detector: no progress while data waits for `timeout` s means the link is dead."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.net.stall import StallDetector


def test_first_call_starts_the_timer() -> None:
    d = StallDetector(timeout=10.0)
    assert d.update(0, 500, now=100.0) is False
    assert d.stalled_for(100.0) == 0.0
    assert d.update(0, 500, now=105.0) is False
    assert d.stalled_for(107.0) == 7.0
    assert d.update(0, 500, now=110.0) is True


def test_exactly_at_timeout_is_stalled() -> None:
    d = StallDetector(timeout=10.0)
    d.update(1000, 10, now=0.0)
    assert d.update(1000, 10, now=9.999) is False
    assert d.update(1000, 10, now=10.0) is True
    assert d.update(1000, 10, now=25.0) is True  # stays stalled without progress


def test_progress_resets_the_timer() -> None:
    d = StallDetector(timeout=10.0)
    d.update(0, 100, now=0.0)
    assert d.update(0, 100, now=9.0) is False
    assert d.update(1, 100, now=9.5) is False  # one byte is progress
    assert d.stalled_for(9.5) == 0.0
    assert d.update(1, 100, now=19.0) is False
    assert d.update(1, 100, now=19.5) is True


def test_progress_recovers_a_stalled_link() -> None:
    d = StallDetector(timeout=10.0)
    d.update(0, 100, now=0.0)
    assert d.update(0, 100, now=12.0) is True
    assert d.update(50, 100, now=13.0) is False


def test_nothing_waiting_never_stalls() -> None:
    d = StallDetector(timeout=10.0)
    for second in range(0, 1000, 7):
        assert d.update(0, 0, now=float(second)) is False
        assert d.stalled_for(float(second)) == 0.0


def test_idle_gap_resets_the_timer() -> None:
    d = StallDetector(timeout=10.0)
    d.update(0, 100, now=0.0)
    d.update(0, 100, now=8.0)
    d.update(0, 0, now=9.0)  # the queue drained (e.g. dropped): idle, not stalled
    assert d.update(0, 100, now=10.0) is False  # new data: timer starts now
    assert d.update(0, 100, now=19.0) is False
    assert d.update(0, 100, now=20.0) is True


def test_slow_but_moving_link_never_stalls() -> None:
    d = StallDetector(timeout=10.0)
    for step in range(1, 2000):  # one more byte every 9.9 s, always backlogged
        assert d.update(step, 10_000_000, now=step * 9.9) is False


def test_stalled_for_is_zero_when_not_waiting() -> None:
    d = StallDetector()
    assert d.stalled_for(50.0) == 0.0  # before any sample
    d.update(0, 10, now=0.0)
    d.update(0, 0, now=5.0)
    assert d.stalled_for(30.0) == 0.0


def test_rejects_counter_going_backwards_and_bad_input() -> None:
    d = StallDetector()
    d.update(100, 0, now=0.0)
    with pytest.raises(ValueError, match="backwards"):
        d.update(99, 0, now=1.0)
    with pytest.raises(ValueError):
        d.update(100, -1, now=1.0)
    with pytest.raises(ValueError):
        StallDetector(timeout=0.0)


def model_stalled_for(samples: list[tuple[float, int, int]]) -> float:
    """Independent reading of the definition over the whole history, last sample last.

    Walk back from the last sample over the run where data was waiting at every
    sample and the counter did not move between them; the run's first sample
    is when the no-progress period started.
    """
    now, _, waiting = samples[-1]
    if waiting == 0:
        return 0.0
    start = len(samples) - 1
    while start > 0 and samples[start - 1][2] > 0 and samples[start - 1][1] == samples[start][1]:
        start -= 1
    return now - samples[start][0]


@given(
    timeout=st.sampled_from([1.0, 2.5, 10.0]),
    steps=st.lists(
        st.tuples(
            st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0]), st.floats(0.0, 6.0)),  # dt
            st.one_of(st.just(0), st.integers(0, 3)),  # bytes accepted since last sample
            st.one_of(st.just(0), st.integers(0, 3)),  # bytes waiting
        ),
        min_size=1,
        max_size=60,
    ),
)
def test_matches_the_definition(timeout: float, steps: list[tuple[float, int, int]]) -> None:
    d = StallDetector(timeout=timeout)
    now, total = 1000.0, 0
    history: list[tuple[float, int, int]] = []
    for dt, accepted, waiting in steps:
        now += dt
        total += accepted
        history.append((now, total, waiting))
        stalled = d.update(total, waiting, now)
        expected = model_stalled_for(history)
        assert d.stalled_for(now) == expected
        assert stalled == (waiting > 0 and expected >= timeout)
