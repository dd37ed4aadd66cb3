"""Counting the video frames a server acknowledged, and the rule that ends a run with it."""

from __future__ import annotations

from streamer.net.delivery import MIN_SHARE, Delivery, shortfall


def test_a_frame_is_delivered_once_the_server_acknowledged_its_last_byte() -> None:
    delivery = Delivery()
    for end in (1000, 2000, 3000):
        delivery.written(end)
    delivery.received(1999)
    assert delivery.delivered == 1
    delivery.received(1500)  # an older total says nothing new
    assert delivery.delivered == 1
    delivery.received(3000)
    assert delivery.delivered == 3
    assert delivery.captured_live(dropped=0) == 3


def test_what_a_session_never_acknowledged_did_not_arrive() -> None:
    delivery = Delivery()
    for end in (1000, 2000, 3000):
        delivery.written(end)
    delivery.received(1000)
    delivery.session_ended()
    assert (delivery.delivered, delivery.unacknowledged) == (1, 2)
    # the next session counts its bytes from 0 again
    delivery.written(500)
    delivery.received(500)
    assert delivery.delivered == 2
    assert delivery.captured_live(dropped=7) == 2 + 2 + 7


def test_frames_still_in_flight_count_as_captured_but_not_delivered() -> None:
    delivery = Delivery()
    delivery.written(100)
    delivery.written(200)
    assert delivery.captured_live(dropped=0) == 2
    assert delivery.delivered == 0


def test_the_rule_fails_a_run_below_half_and_says_how_many_frames_arrived() -> None:
    assert MIN_SHARE == 0.5
    line = shortfall(34, 240)
    assert line is not None
    assert line.startswith("only 34 of 240 video frames captured while live reached the server")
    assert "(14 %)" in line and "\n" not in line
    assert shortfall(120, 240) is None  # half is enough
    assert shortfall(216, 243) is None  # a run squeezed to 40 % of its bitrate
    assert shortfall(0, 0) is None  # never live: other errors say why
