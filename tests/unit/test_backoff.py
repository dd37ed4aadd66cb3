"""Reconnect backoff over simulated time: quick back after short outages, sparse in long ones."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamer.net.backoff import Backoff

LOSS = 1000.0  # when the simulated outages begin (any monotonic instant)


def exact(max_attempts: int | None = 10, **kwargs: Any) -> Backoff:
    """Backoff without jitter, so delays are deterministic."""
    return Backoff(jitter=0.0, max_attempts=max_attempts, rng=random.Random(0), **kwargs)


def attempts_during(
    backoff: Backoff, seconds: float, attempt_takes: float = 0.0
) -> list[tuple[float, float]]:
    """(when, the delay before it) of each attempt in an outage that lasts `seconds`.

    The connection is lost at LOSS (times are relative to it); every attempt
    before the server's return fails after `attempt_takes`; the first one at
    or after the return succeeds.
    """
    backoff.lost(LOSS)
    now, attempts = LOSS, []
    while True:
        delay = backoff.next_delay(now)
        assert delay is not None
        now += delay
        attempts.append((now - LOSS, delay))
        if now - LOSS >= seconds:
            return attempts
        now += attempt_takes


def take(backoff: Backoff, n: int, now: float = LOSS) -> list[float | None]:
    """n delays decided at one instant (the outage's age does not move)."""
    return [backoff.next_delay(now) for _ in range(n)]


def test_defaults_match_design() -> None:
    b = Backoff()
    assert (b.initial, b.factor, b.cap, b.fast_cap, b.fast_for) == (1.0, 2.0, 30.0, 4.0, 90.0)
    assert (b.jitter, b.settle, b.reset_after, b.max_attempts) == (0.2, 10.0, 60.0, 10)


def test_delays_double_to_four_seconds_then_the_ceiling_grows_every_90_s() -> None:
    b = exact(max_attempts=None)
    assert take(b, 5) == [1, 2, 4, 4, 4]
    ages = (0, 89.9, 90, 179.9, 180, 270, 3600)
    assert [b.ceiling(t) for t in ages] == [4, 4, 8, 8, 16, 30, 30]


@given(
    seed=st.integers(0, 2**32 - 1),
    outage=st.floats(0.0, 60.0),
    attempt_takes=st.floats(0.0, 1.0),  # refused at once, or a slow network
)
def test_after_any_outage_up_to_a_minute_an_attempt_comes_within_5_s(
    seed: int, outage: float, attempt_takes: float
) -> None:
    backoff = Backoff(max_attempts=None, rng=random.Random(seed))
    attempts = attempts_during(backoff, outage, attempt_takes)
    assert attempts[-1][0] - outage <= 4.0 + attempt_takes + 1e-9, attempts


@pytest.mark.parametrize("seed", range(20))
def test_an_outage_of_hours_gets_sparse_attempts(seed: int) -> None:
    attempts = attempts_during(Backoff(max_attempts=None, rng=random.Random(seed)), 3 * 3600)
    assert max(d for t, d in attempts if t <= 90) <= 4.0
    later = [d for t, d in attempts if t > 5 * 60]
    assert min(later) >= 24.0 and max(later) <= 30.0  # 30 s - 20 %, never above
    assert len([t for t, _ in attempts if t <= 5 * 60]) <= 45
    assert len([t for t, _ in attempts if t > 2 * 3600]) <= 3600 / 24


def test_jitter_varies_delays_across_devices_within_twenty_percent() -> None:
    rng = random.Random(7)
    firsts = [Backoff(rng=rng).next_delay(LOSS) for _ in range(200)]
    assert all(d is not None and 0.8 <= d <= 1.2 for d in firsts)
    assert len(set(firsts)) > 100
    at_ceiling = take(Backoff(max_attempts=None, rng=rng), 200)[3:]
    assert all(d is not None and 3.2 <= d <= 4.0 for d in at_ceiling)
    assert min(d for d in at_ceiling if d) < 3.4 and max(d for d in at_ceiling if d) > 3.9


def test_operator_settings_keep_their_meaning() -> None:
    # --reconnect-delay: the first wait, even above the fast ceiling.
    assert take(exact(max_attempts=None, initial=10.0), 3) == [10, 10, 10]
    # --reconnect-max-delay: a hard ceiling, even in the first minute.
    b = exact(max_attempts=None, initial=0.5, cap=2.0)
    assert take(b, 4) == [0.5, 1, 2, 2]
    assert b.base_delay(50, down=7200) == 2
    # A longer --reconnect-max-delay is reached later in a long outage.
    assert exact(cap=120.0).ceiling(300) == 32 and exact(cap=120.0).ceiling(450) == 120


def test_budget_spent_after_max_attempts() -> None:
    b = exact()
    assert take(b, 10) == [1, 2, 4, 4, 4, 4, 4, 4, 4, 4]
    assert b.next_delay(LOSS) is None
    assert b.next_delay(LOSS + 1000) is None  # and it stays spent
    assert b.attempts == 10
    assert exact(max_attempts=0).next_delay(LOSS) is None


def test_forever_mode_never_gives_up() -> None:
    b = Backoff(max_attempts=None, rng=random.Random(5))
    for n in range(2000):  # past 2.0**1023, where the raw exponent would overflow
        delay = b.next_delay(LOSS + n * 30.0)
        assert delay is not None and 0 < delay <= 30.0


def test_a_session_that_settled_starts_a_new_outage_with_fast_attempts() -> None:
    b = exact(max_attempts=None)
    b.lost(0.0)
    assert take(b, 6, now=200.0)[-1] == 16  # 200 s into an outage
    b.live_since(201.0)
    b.lost(212.0)  # live for 11 s: that outage is over
    assert b.next_delay(212.0) == 4  # fast again; the count goes on (2**n, capped at 4)
    assert b.attempts == 7


def test_a_flapping_link_stays_in_one_outage_and_backs_off() -> None:
    b = exact(max_attempts=None)
    now, delays = 0.0, []
    b.lost(now)
    for _ in range(30):
        delay = b.next_delay(now)
        assert delay is not None
        delays.append(delay)
        now += delay
        b.live_since(now)
        now += 5.0  # live for 5 s only, then dropped again
        b.lost(now)
    assert delays[:3] == [1, 2, 4]
    assert delays[-1] == 30


def test_long_live_period_restores_the_full_budget() -> None:
    b = exact()
    take(b, 9)
    b.live_since(0.0)
    b.lost(59.999)
    assert b.attempts == 9  # just under reset_after
    b.live_since(100.0)
    b.lost(160.0)  # exactly reset_after: healthy
    assert take(b, 11, now=160.0) == [1, 2, 4, 4, 4, 4, 4, 4, 4, 4, None]


def test_loss_without_live_does_not_reset_and_the_mark_is_consumed() -> None:
    b = exact()
    take(b, 3)
    b.lost(LOSS + 1000.0)
    assert b.attempts == 3
    b.live_since(0.0)
    b.lost(5.0)
    b.lost(500.0)  # a second loss without a new live period is not "live for 500 s"
    assert b.attempts == 3


def test_reset_forgets_everything() -> None:
    b = exact()
    b.lost(0.0)
    take(b, 10, now=500.0)
    b.live_since(0.0)
    b.reset()
    assert b.attempts == 0
    assert b.next_delay(5000.0) == 1
    assert b.next_delay(5003.0) == 2  # a new outage, begun at 5000


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"factor": 0.5},
        {"cap": 0.5},
        {"fast_cap": 0.0},
        {"fast_for": 0.0},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"reset_after": -1.0},
        {"settle": 61.0},
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
    step=st.floats(0.0, 60.0),
)
def test_every_delay_is_within_jitter_of_its_base_and_under_the_ceiling(
    seed: int, n: int, jitter: float, step: float
) -> None:
    b = Backoff(jitter=jitter, max_attempts=None, rng=random.Random(seed))
    for attempt in range(n):
        now = LOSS + attempt * step
        delay = b.next_delay(now)
        assert delay is not None
        down = now - LOSS
        base = b.base_delay(attempt, down)
        assert base * (1 - jitter) - 1e-9 <= delay <= min(b.ceiling(down), base * (1 + jitter))
