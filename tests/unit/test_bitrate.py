"""Adaptive bitrate controller, driven by a fake clock and a simulated link."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.net.bitrate import BitrateController
from streamer.settings import Settings


class Link:
    """A producer at the controller's target (+ audio) into a queue drained at ``link_kbps``."""

    def __init__(self, ctl: BitrateController, link_kbps: float) -> None:
        self.ctl = ctl
        self.link_kbps = link_kbps
        self.now = 0.0
        self.queued_bits = 0.0
        self.sent_bytes = 0
        self.changes: list[tuple[float, int]] = []

    def queue_ms(self) -> int:
        produce_kbps = self.ctl.target_kbps + self.ctl.audio_kbps
        return round(self.queued_bits / produce_kbps)  # kbit / kbps = s; bits / kbps = ms

    def run(self, seconds: float, step: float = 0.25) -> None:
        for _ in range(round(seconds / step)):
            self.now += step
            self.queued_bits += (self.ctl.target_kbps + self.ctl.audio_kbps) * 1000 * step
            sent = min(self.queued_bits, self.link_kbps * 1000 * step)
            self.queued_bits -= sent
            self.sent_bytes += round(sent / 8)
            new = self.ctl.update(self.now, self.sent_bytes, self.queue_ms())
            if new is not None:
                self.changes.append((self.now, new))

    def start(self) -> None:
        assert self.ctl.update(self.now, self.sent_bytes, self.queue_ms()) is None


def test_growing_queue_lowers_to_90_percent_of_link_minus_audio_within_two_samples() -> None:
    ctl = BitrateController(2500, min_kbps=300, audio_kbps=128)
    link = Link(ctl, link_kbps=600)
    link.start()
    link.run(2.0)
    expected = 0.9 * 600 - 128  # 412
    assert link.changes, "no decrease within 2 samples"
    assert link.changes[0][0] <= 2.0
    assert abs(ctl.target_kbps - expected) <= 0.05 * expected
    assert ctl.measured_kbps is not None and abs(ctl.measured_kbps - 600) < 1
    # Longer: the target saws around the link (raises after calm, drops when it overshoots),
    # and is never below what a 600 kbps link minus audio justifies.
    link.run(60.0)
    assert min(t for _, t in link.changes) >= round(expected) - 1
    assert max(t for _, t in link.changes) <= 600


def test_never_below_min_even_on_a_tiny_link() -> None:
    ctl = BitrateController(2500, min_kbps=300, audio_kbps=128)
    link = Link(ctl, link_kbps=100)
    link.start()
    link.run(10.0)
    assert ctl.target_kbps == 300
    assert [t for _, t in link.changes] == [300]


def test_stall_measures_zero_and_goes_to_min() -> None:
    ctl = BitrateController(2000, min_kbps=250)
    assert ctl.update(0.0, 5000, 50) is None
    assert ctl.update(1.0, 5000, 400) == 250
    assert ctl.measured_kbps == 0


def lowered(max_kbps: int = 1000, measured_kbps: int = 600) -> BitrateController:
    """A controller lowered once to 0.9 * measured (no audio), at t = 1."""
    ctl = BitrateController(max_kbps, min_kbps=100)
    ctl.update(0.0, 0, 0)
    assert ctl.update(1.0, measured_kbps * 1000 // 8, 300) == round(0.9 * measured_kbps)
    return ctl


def test_calm_queue_raises_ten_percent_every_calm_period_capped_at_max() -> None:
    ctl = lowered(max_kbps=700)
    assert ctl.target_kbps == 540
    total = 75_000
    results: dict[float, int | None] = {}
    t = 1.0
    while t < 14.0:
        t += 0.5
        total += 60_000  # whatever: the queue is what decides a raise
        results[t] = ctl.update(t, total, 0)
    # Calm seen first at 1.5: raise at 5.5 (540 -> 594), 9.5 (-> 653), 13.5 (capped at 700).
    assert {k: v for k, v in results.items() if v is not None} == {5.5: 594, 9.5: 653, 13.5: 700}
    assert ctl.target_kbps == 700


def test_calm_run_is_broken_by_one_busy_update() -> None:
    ctl = lowered()
    assert ctl.update(1.5, 75_000, 0) is None  # calm run starts
    assert (
        ctl.update(4.0, 75_000, 150) is None
    )  # broken (a sample closed too: queue fell, 150 < 300)
    assert ctl.update(5.5, 75_000, 0) is None  # 4 s after 1.5, but the run restarted
    assert ctl.update(9.0, 75_000, 0) is None
    assert ctl.update(9.5, 75_000, 0) == 594


def test_large_but_steady_queue_does_not_keep_lowering_below_the_measured_link() -> None:
    ctl = BitrateController(2500, min_kbps=300, audio_kbps=100)
    link_bytes_per_s = 600 * 1000 // 8
    ctl.update(0.0, 0, 0)
    first = ctl.update(1.0, link_bytes_per_s, 500)
    assert first == round(0.9 * 600 - 100)  # 440
    for second in range(2, 30):  # the queue stays at 500 ms (above 2x calm, not shrinking)
        assert ctl.update(float(second), second * link_bytes_per_s, 500) is None
    assert ctl.target_kbps == 440


def test_small_decrease_is_ignored_and_decrease_never_raises() -> None:
    ctl = BitrateController(1000, min_kbps=100)
    ctl.update(0.0, 0, 0)
    # 0.9 * 1080 = 972: under 5 % below 1000 -> no change.
    assert ctl.update(1.0, 1080 * 125, 200) is None
    assert ctl.target_kbps == 1000
    assert ctl.update(2.0, 1080 * 125 + 600 * 125, 300) == 540
    # A growing queue while the link measured more than the target does not raise it.
    assert ctl.update(3.0, 1080 * 125 + 600 * 125 + 2000 * 125, 400) is None
    assert ctl.target_kbps == 540


def test_queue_above_calm_but_shrinking_does_not_lower() -> None:
    ctl = BitrateController(2000)
    ctl.update(0.0, 0, 900)
    assert ctl.update(1.0, 50_000, 800) is None
    assert ctl.update(2.0, 100_000, 150) is None
    assert ctl.update(3.0, 150_000, 180) == round(0.9 * 400)  # grew 150 -> 180: 400 kbps measured


def test_no_change_returns_none() -> None:
    ctl = BitrateController(1500)
    total = 0
    for i in range(100):  # 25 s at max with a calm queue: nothing to do
        total += 20_000
        assert ctl.update(i * 0.25, total, 40) is None
    assert ctl.target_kbps == 1500
    assert ctl.measured_kbps == pytest.approx(640)


def test_first_update_only_starts_the_window_and_samples_wait_for_the_period() -> None:
    ctl = BitrateController(2000, min_kbps=50)
    assert ctl.update(10.0, 1_000_000, 5000) is None  # huge queue but no sample yet
    assert ctl.measured_kbps is None
    assert ctl.update(10.5, 1_010_000, 6000) is None  # half a sample: no decision
    assert ctl.measured_kbps is None
    assert ctl.update(11.25, 1_030_000, 7000) == round(0.9 * 30_000 * 8 / 1000 / 1.25)
    assert ctl.measured_kbps == pytest.approx(192)


def test_reset_forgets_samples_and_calm_timer_but_keeps_target() -> None:
    ctl = lowered()
    ctl.update(1.5, 75_000, 0)
    ctl.update(5.0, 75_000, 0)  # calm for 3.5 s
    ctl.reset(5.2)
    assert ctl.measured_kbps is None
    assert ctl.target_kbps == 540
    # New connection, byte counter restarts at 0; the first update only starts things.
    assert ctl.update(5.5, 0, 0) is None
    assert ctl.update(9.0, 10_000, 0) is None  # old calm run would have raised at 5.5
    assert ctl.update(9.5, 12_000, 0) == 594


def test_counter_or_clock_going_backwards_starts_over() -> None:
    ctl = BitrateController(2000, min_kbps=50)
    ctl.update(0.0, 1_000_000, 0)
    assert ctl.update(1.0, 10, 900) is None  # counter went backwards: new window, no decision
    assert ctl.measured_kbps is None
    assert ctl.update(0.5, 20, 1000) is None  # clock went backwards: new window again
    assert ctl.update(1.5, 12_520, 1100) == round(0.9 * 100)  # 12_500 B in 1 s = 100 kbps


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_kbps": 100, "min_kbps": 200},
        {"max_kbps": 100, "min_kbps": 0},
        {"max_kbps": 100, "min_kbps": 50, "sample_period": 0},
        {"max_kbps": 100, "min_kbps": 50, "decrease_factor": 1.5},
        {"max_kbps": 100, "min_kbps": 50, "increase_factor": 0.9},
        {"max_kbps": 100, "min_kbps": 50, "audio_kbps": -1},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BitrateController(**kwargs)  # type: ignore[arg-type]


steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=5.0, allow_nan=False),  # dt
        st.integers(min_value=-5000, max_value=2_000_000),  # bytes delta (negative: counter reset)
        st.integers(min_value=0, max_value=10_000),  # queue_ms
        st.booleans(),  # reset before this step
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(
    steps=steps,
    min_kbps=st.integers(min_value=1, max_value=3000),
    span=st.integers(min_value=0, max_value=5000),
    audio_kbps=st.integers(min_value=0, max_value=512),
)
def test_target_always_within_min_and_max(
    steps: list[tuple[float, int, int, bool]], min_kbps: int, span: int, audio_kbps: int
) -> None:
    max_kbps = min_kbps + span
    ctl = BitrateController(max_kbps, min_kbps=min_kbps, audio_kbps=audio_kbps)
    now, total = 0.0, 0
    for dt, delta, queue_ms, reset in steps:
        now += dt
        total = max(0, total + delta)
        if reset:
            ctl.reset(now)
        before = ctl.target_kbps
        new = ctl.update(now, total, queue_ms)
        assert min_kbps <= ctl.target_kbps <= max_kbps
        if new is None:
            assert ctl.target_kbps == before
        else:
            assert new == ctl.target_kbps != before


def test_after_a_dip_it_recovers_to_the_rate_the_link_carried_in_a_few_steps() -> None:
    """A cellular link carries 2000 kbps, goes dark for 2 s, and carries 2000 kbps again."""
    ctl = BitrateController(2500, min_kbps=300, audio_kbps=128)
    link = Link(ctl, link_kbps=2000)
    link.start()
    link.run(20.0)  # settles under the link, and holds a rate calmly
    held = ctl.target_kbps
    assert 1000 <= held <= 2000 - 128
    link.link_kbps = 0
    link.run(2.0)
    assert ctl.target_kbps == 300  # the dip: down to the floor at once
    link.link_kbps = 2000
    dip_over = link.now
    link.run(14.0)
    back = [(t, kbps) for t, kbps in link.changes if t > dip_over and kbps >= 0.85 * held]
    # One calm period (4 s) after the dark's backlog drains; 10 % steps would need 40 s.
    assert back and back[0][0] - dip_over <= 8.0, link.changes
    assert back[0][1] <= held, "the recovery goes back to a rate the link carried, no higher"


def test_a_recovery_that_fails_aims_lower_next_time() -> None:
    """The link came back at half its rate: recovering to the old rate fails once, and the
    next dip's goal is the last step that held, not the old rate again."""
    ctl = BitrateController(2500, min_kbps=300, audio_kbps=128)
    link = Link(ctl, link_kbps=2000)
    link.start()
    link.run(20.0)
    link.link_kbps = 0
    link.run(2.0)
    link.link_kbps = 900
    link.run(60.0)
    late = [kbps for t, kbps in link.changes if t > link.now - 30]
    assert late and max(late) <= 900  # no more overshoots to the old rate


@pytest.mark.parametrize(("dark_s", "after_kbps"), [(2.0, 1500), (0.25, 1100)])
def test_a_link_back_slower_is_not_overshot_again_and_again(dark_s: float, after_kbps: int) -> None:
    """Recovery steps that fail soon after the dip (a raise needs 4 s of calm, its overshoot
    shows a second later) end the dip: the next goal is the last step that held."""
    ctl = BitrateController(2500, min_kbps=300, audio_kbps=128)
    link = Link(ctl, link_kbps=2000)
    link.start()
    link.run(20.0)
    link.link_kbps = 0
    link.run(dark_s)
    link.link_kbps = after_kbps
    link.run(90.0)
    late = [kbps for t, kbps in link.changes if t > link.now - 40]
    assert late and max(late) <= after_kbps, link.changes[-12:]


def test_the_default_floor_fits_a_collapsed_cellular_link_with_its_audio() -> None:
    """A cellular link that carries 270 kbit/s for a while (ATT's trace at 982-1012 s):
    with the default floor and 128 kbit/s of audio the stream fits, and the queue (so
    the viewer's delay) drains instead of standing at the drop threshold. A 300 kbit/s
    floor left 428 kbit/s to carry and frames over a second late."""
    defaults = Settings(urls=("rtmp://127.0.0.1/live/key",))
    ctl = BitrateController(
        1000, min_kbps=defaults.min_video_bitrate_kbps, audio_kbps=defaults.audio_bitrate_kbps
    )
    link = Link(ctl, link_kbps=270)
    link.start()
    link.run(30)
    assert ctl.target_kbps + ctl.audio_kbps < 270
    link.run(10)
    assert link.queue_ms() < 100


def test_from_a_low_floor_each_raise_adds_at_least_50_kbps() -> None:
    """A session that started in a dip sits at the floor with nothing to recover to: raises
    of 10 % would take twelve calm periods (48 s) from 100 to 300 kbit/s; four here."""
    ctl = BitrateController(1000, min_kbps=100, audio_kbps=128)
    link = Link(ctl, link_kbps=0)
    link.start()
    link.run(3.0)
    assert ctl.target_kbps == 100  # the dip at the start: down to the floor
    link.link_kbps = 1100
    back = link.now
    link.run(30.0)
    reached = [t for t, kbps in link.changes if kbps >= 300]
    assert reached and reached[0] - back <= 4 * 4.0 + 4.0, link.changes
    rises = [b - a for (_, a), (_, b) in itertools.pairwise(link.changes) if b > a]
    assert rises and min(rises) >= 50, link.changes
