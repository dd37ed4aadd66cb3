"""The server's 32-bit acks become a 64-bit total however the server counts."""

from __future__ import annotations

import random

import pytest

from streamer.rtmp.acks import HANDSHAKE_BYTES, WRAP, AckCounter
from streamer.rtmp.client import ACK_WINDOW, RESTART_GAP

RESTART = 0xF0000000  # where nginx-rtmp and SRS restart their counter
GAP = RESTART_GAP  # one ack window + one nginx read, as the publisher uses


def test_plain_acks_are_the_total() -> None:
    acks = AckCounter()
    assert acks.total is None
    assert acks.update(8192, sent=20_000) == 8192
    assert acks.update(16384, sent=20_000) == 16384
    assert acks.total == 16384


def test_duplicates_and_old_or_nonsense_acks_change_nothing() -> None:
    acks = AckCounter(restart_gap=GAP)
    acks.update(1_000_000, sent=1_050_000)
    assert acks.update(1_000_000, sent=1_050_000) is None  # duplicate
    assert acks.update(900_000, sent=1_050_000) is None  # behind: out of order
    assert acks.update(0x80000000, sent=1_050_000) is None  # nonsense far ahead
    assert acks.total == 1_000_000
    assert acks.update(1_040_000, sent=1_050_000) == 1_040_000  # the next real one counts


def test_a_true_2_to_the_32_wrap_is_a_small_step() -> None:
    acks = AckCounter(restart_gap=GAP)
    acks.update(WRAP - 4096, sent=WRAP - 100)
    assert acks.update(4096, sent=WRAP + 10_000) == WRAP + 4096
    assert acks.update(20_000, sent=WRAP + 30_000) == WRAP + 20_000
    assert acks.restarts == 0


def test_nginx_restart_at_0xf0000000_keeps_counting_forward() -> None:
    """nginx: in_bytes >= 0xF0000000 → 0; what came since its last ack is not in the count."""
    acks = AckCounter(restart_gap=GAP)
    acks.update(RESTART - 5_000, sent=RESTART + 20_000)
    # it received 5_000 + 3_000 more, restarted, then 9_000 more
    total = acks.update(9_000, sent=RESTART + 20_000)
    truth = RESTART + 3_000 + 9_000
    assert acks.restarts == 1
    assert total is not None and truth <= total <= truth + GAP
    # the next acks are steps from there, not stuck behind the old value
    assert acks.update(17_000, sent=RESTART + 40_000) == total + 8_000


def test_srs_restart_counts_from_its_last_ack() -> None:
    """SRS: past 0xF0000000 the sequence number becomes the bytes since its last ack."""
    acks = AckCounter(restart_gap=GAP)
    acks.update(RESTART - 2_000, sent=RESTART + 30_000)
    total = acks.update(8_000, sent=RESTART + 30_000)
    truth = RESTART - 2_000 + 8_000
    assert total is not None and truth <= total <= truth + GAP


def test_a_high_guess_is_never_past_what_was_sent_and_exact_once_all_arrived() -> None:
    acks = AckCounter(restart_gap=GAP)
    acks.update(RESTART - 2_000, sent=RESTART)
    # SRS counted 100 since its restart (truth: RESTART - 1_900); we cannot know that
    assert acks.update(100, sent=RESTART + 500) == RESTART + 500
    # the server has everything we sent (truth RESTART + 50_000): exact again
    assert acks.update(52_000, sent=RESTART + 50_000) == RESTART + 50_000
    assert acks.update(60_000, sent=RESTART + 70_000) == RESTART + 58_000


class NginxCounter:
    """nginx-rtmp's in_bytes: reads of at most one chunk, an ack every window,
    reset to 0 once past 0xF0000000 (checked before the ack)."""

    def __init__(self, rng: random.Random, window: int = ACK_WINDOW, read: int = 4096 + 18) -> None:
        self.rng, self.window, self.read = rng, window, read
        self.received = 0  # what it really received
        self.in_bytes = self.last_ack = 0

    def receive(self, n: int) -> list[tuple[int, int]]:
        """Receive ``n`` bytes; the acks it sends: (value, bytes really received by then)."""
        acks = []
        while n:
            chunk = min(n, self.rng.randint(1, self.read))
            n -= chunk
            self.received += chunk
            self.in_bytes += chunk
            if self.in_bytes >= RESTART:
                self.in_bytes = self.last_ack = 0
            if self.in_bytes - self.last_ack >= self.window:
                self.last_ack = self.in_bytes
                acks.append((self.in_bytes, self.received))
        return acks


def test_a_month_of_nginx_restarts_never_leaves_the_count_low() -> None:
    """200 restarts (a month at 2.5 Mbit/s): never below what the acks prove, never past
    what was sent, and exact again whenever the server has caught up."""
    rng = random.Random(11)
    server = NginxCounter(rng)
    acks = AckCounter(restart_gap=GAP)
    exact = 0
    for _ in range(200):
        # hours of streaming in one step: exact, nothing lost ...
        skip = RESTART - 200_000 - server.in_bytes
        server.in_bytes += skip
        server.received += skip
        server.last_ack = server.in_bytes
        sent = server.received
        acks.update(server.in_bytes, sent=sent)
        assert acks.total == server.received
        # ... then across the restart in real reads and acks
        for _ in range(60):
            sent += rng.randint(0, 20_000)  # we send some ...
            backlog = sent - server.received  # ... the server takes all or part of it
            for value, received in server.receive(rng.choice([backlog, rng.randint(0, backlog)])):
                acks.update(value, sent=sent)
                assert acks.total is not None
                assert received <= acks.total <= sent
                exact += sent == received == acks.total
    assert acks.restarts == 200
    assert exact > 200


def test_mediamtx_counts_the_handshake_so_its_acks_can_be_ahead() -> None:
    acks = AckCounter()
    # it received everything we sent, plus the 3073 handshake bytes we do not count
    assert acks.update(10_000 + HANDSHAKE_BYTES, sent=10_000) == 10_000
    assert acks.update(20_000 + HANDSHAKE_BYTES, sent=25_000) == 20_000
    assert acks.update(40_000 + HANDSHAKE_BYTES, sent=40_000) == 40_000


@pytest.mark.parametrize("ahead", [HANDSHAKE_BYTES + 1, 100_000])
def test_an_ack_further_ahead_than_a_handshake_is_not_taken(ahead: int) -> None:
    acks = AckCounter()
    acks.update(5_000, sent=10_000)
    assert acks.update(10_000 + ahead, sent=10_000) is None
    assert acks.total == 5_000
