"""Reconnect backoff: the delay sequence, jitter bounds, budget and when it resets."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.net.backoff import Backoff


def exact(max_attempts: int | None = 10) -> Backoff:
    """Backoff without jitter, so delays are deterministic."""
    return Backoff(jitter=0.0, max_attempts=max_attempts, rng=random.Random(0))


def take(backoff: Backoff, n: int) -> list[float | None]:
    return [backoff.next_delay() for _ in range(n)]


def test_exact_sequence_without_jitter() -> None:
    b = exact(max_attempts=None)
    assert take(b, 9) == [1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert b.attempts == 9


def test_defaults_match_design() -> None:
    b = Backoff()
    assert (b.initial, b.factor, b.cap, b.jitter) == (1.0, 2.0, 30.0, 0.2)
    assert (b.reset_after, b.max_attempts, b.attempts) == (60.0, 10, 0)


def test_jitter_stays_within_twenty_percent_and_varies() -> None:
    b = Backoff(max_attempts=None, rng=random.Random(1234))
    seen: dict[int, list[float]] = {}
    for attempt in range(1000):
        delay = b.next_delay()
        assert delay is not None
        base = b.base_delay(attempt)
        assert base * 0.8 <= delay <= min(30.0, base * 1.2)
        seen.setdefault(min(attempt, 5), []).append(delay)
    at_cap = seen[5]
    assert len(set(at_cap)) > 100  # really random, not a constant
    assert min(at_cap) < 25 and max(at_cap) > 29.5  # spread over [24, 30]


def test_jitter_varies_the_first_delay_across_devices() -> None:
    rng = random.Random(7)
    firsts = [Backoff(rng=rng).next_delay() for _ in range(200)]
    assert all(d is not None and 0.8 <= d <= 1.2 for d in firsts)
    assert len(set(firsts)) > 1


def test_cap_is_a_hard_ceiling_even_with_jitter() -> None:
    b = Backoff(max_attempts=None, rng=random.Random(99))
    delays = take(b, 500)
    assert max(d for d in delays if d is not None) <= 30.0


def test_budget_spent_after_max_attempts() -> None:
    b = exact()
    delays = take(b, 10)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]
    assert b.next_delay() is None  # the 11th call
    assert b.next_delay() is None  # and it stays spent
    assert b.attempts == 10


def test_zero_attempts_gives_up_immediately() -> None:
    assert exact(max_attempts=0).next_delay() is None


def test_forever_mode_never_gives_up() -> None:
    b = Backoff(max_attempts=None, rng=random.Random(5))
    for _ in range(2000):  # past 2.0**1023, where the raw exponent would overflow
        delay = b.next_delay()
        assert delay is not None
        assert 0 < delay <= 30.0 * 1.0


def test_long_live_period_restarts_from_initial() -> None:
    b = exact()
    take(b, 6)  # 1, 2, 4, 8, 16, 30
    b.live_since(100.0)
    b.lost(160.0)  # exactly reset_after: counts as healthy
    assert b.attempts == 0
    assert b.next_delay() == 1


def test_short_live_period_continues_the_sequence() -> None:
    b = exact()
    take(b, 3)  # 1, 2, 4
    b.live_since(100.0)
    b.lost(110.0)  # live for 10 s only: a flapping link
    assert b.attempts == 3
    assert b.next_delay() == 8


def test_just_under_reset_after_does_not_reset() -> None:
    b = exact()
    take(b, 2)
    b.live_since(0.0)
    b.lost(59.999)
    assert b.next_delay() == 4


def test_flapping_link_exhausts_the_budget() -> None:
    b = exact()
    now = 0.0
    delays: list[float] = []
    while (delay := b.next_delay()) is not None:
        delays.append(delay)
        now += delay
        b.live_since(now)
        now += 10.0
        b.lost(now)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30]


def test_long_live_period_restores_the_full_budget() -> None:
    b = exact()
    take(b, 9)
    b.live_since(0.0)
    b.lost(600.0)
    assert take(b, 11) == [1, 2, 4, 8, 16, 30, 30, 30, 30, 30, None]


def test_loss_without_live_does_not_reset() -> None:
    b = exact()
    take(b, 3)
    b.lost(1000.0)
    assert b.attempts == 3


def test_live_mark_is_consumed_by_the_loss() -> None:
    b = exact()
    take(b, 3)
    b.live_since(0.0)
    b.lost(5.0)
    b.lost(500.0)  # a second loss without a new live period is not "live for 500 s"
    assert b.attempts == 3


def test_reset_forgets_everything() -> None:
    b = exact()
    take(b, 10)
    b.live_since(0.0)
    b.reset()
    assert b.attempts == 0
    b.lost(1000.0)
    assert b.next_delay() == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"factor": 0.5},
        {"cap": 0.5},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"reset_after": -1.0},
        {"max_attempts": -1},
    ],
)
def test_rejects_nonsense_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 60),
    jitter=st.floats(0.0, 0.9),
)
def test_every_delay_is_within_jitter_of_its_base_and_under_cap(
    seed: int, n: int, jitter: float
) -> None:
    b = Backoff(jitter=jitter, max_attempts=None, rng=random.Random(seed))
    for attempt in range(n):
        delay = b.next_delay()
        assert delay is not None
        base = b.base_delay(attempt)
        assert base * (1 - jitter) - 1e-9 <= delay <= min(b.cap, base * (1 + jitter) + 1e-9)
