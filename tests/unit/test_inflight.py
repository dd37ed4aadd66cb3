"""The in-flight window keeps the backlog out of hidden buffers, sized from the server's acks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.rtmp.inflight import MIN_WINDOW, RTT_SPAN, TIME_BUDGET, InFlightWindow


def feed_link(window: InFlightWindow, rate: float, rtt: float, seconds: float) -> None:
    """A link taking ``rate`` bytes/s whose acks come back ``rtt`` s after sending."""
    t, sent = 0.0, 0
    while t < seconds:
        sent += int(rate * 0.05)
        window.sent(sent, t)
        if t >= rtt:
            window.ack(int(rate * (t - rtt)), t)
        t += 0.05


def test_everything_may_go_until_the_server_has_acked() -> None:
    window = InFlightWindow()
    assert window.room(10**9)
    window.ack(1000, 0.0)
    assert window.room(1000 + MIN_WINDOW - 1)
    assert not window.room(1000 + MIN_WINDOW)


def test_a_slow_link_gets_a_window_of_a_fraction_of_a_second() -> None:
    window = InFlightWindow()
    feed_link(window, rate=75_000, rtt=0.02, seconds=5)  # 600 kbit/s
    assert window.rate is not None and abs(window.rate - 75_000) < 5_000
    assert window.rtt is not None and window.rtt <= 0.02 + 2 * 0.05  # the feed ticks at 50 ms
    assert window.limit() == max(MIN_WINDOW, int(window.rate * TIME_BUDGET))
    # what the window allows in flight drains in well under a second
    assert window.limit() / 75_000 < 0.5


def test_a_long_round_trip_widens_the_window_so_throughput_is_not_capped() -> None:
    window = InFlightWindow()
    feed_link(window, rate=300_000, rtt=0.4, seconds=5)
    assert window.rtt is not None and 0.35 <= window.rtt <= 0.45
    assert window.limit() >= int(300_000 * 2 * 0.35)


def test_old_or_repeated_acks_change_nothing() -> None:
    window = InFlightWindow()
    window.sent(50_000, 0.0)
    window.ack(40_000, 0.1)
    window.ack(30_000, 0.2)
    assert window.acked == 40_000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 3.0), st.floats(0.001, 2.0)), min_size=1, max_size=60))
def test_rtt_is_the_smallest_of_the_last_ten_seconds(steps: list[tuple[float, float]]) -> None:
    """The sliding minimum equals the plain minimum over the samples kept (RTT_SPAN)."""
    window = InFlightWindow()
    now, acked_at, total = 0.0, 0.0, 0
    samples: list[tuple[float, float]] = []
    for gap, rtt in steps:
        now += gap
        total += 1000
        window.sent(total, now)
        acked_at = max(acked_at, now + rtt)  # acks arrive in order
        window.ack(total, acked_at)
        samples.append((acked_at, acked_at - now))
        kept = [r for t, r in samples if acked_at - t <= RTT_SPAN]
        assert window.rtt == min(kept)
