"""The send queue never lets a viewer see a frame whose reference was dropped."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from streamer.media import Kind, Packet
from streamer.net.sendqueue import (
    DEFAULT_DROP_THRESHOLD_MS,
    MAX_FRAME_BYTES,
    QueueCounters,
    SendQueue,
)


def video(ms: int, key: bool, size: int = 1000) -> Packet:
    return Packet(Kind.VIDEO, ms, ms, key, bytes(size))


def audio(ms: int) -> Packet:
    return Packet(Kind.AUDIO, ms, ms, True, bytes(300))


def test_pops_in_timestamp_order_across_tracks() -> None:
    q = SendQueue()
    for packet in (video(0, True), video(33, False), video(66, False)):
        q.push(packet)
    for packet in (audio(10), audio(31), audio(52)):
        q.push(packet)
    order = []
    while (p := q.pop()) is not None:
        order.append((p.kind.value, p.dts_ms))
    assert order == [
        ("video", 0),
        ("audio", 10),
        ("audio", 31),
        ("video", 33),
        ("audio", 52),
        ("video", 66),
    ]


def test_over_the_hard_limit_video_is_cut_at_the_newest_keyframe() -> None:
    q = SendQueue(hard_limit_ms=1000)
    for n in range(45):  # 1.5 s at 30 fps, keyframe every 15 frames
        q.push(video(n * 33, key=n % 15 == 0))
    first = q.pop()
    assert first is not None and first.keyframe and first.dts_ms >= 1000 - 100
    assert q.depth_ms <= 1000
    assert q.counters.dropped(Kind.VIDEO) > 0


def test_without_a_keyframe_to_cut_at_it_drops_until_the_next_one() -> None:
    q = SendQueue(hard_limit_ms=500)
    q.push(video(0, True))
    for n in range(1, 30):
        q.push(video(n * 33, False))
    assert q.keyframe_wanted
    assert q.pop() is None or q.depth_ms <= 500
    q.push(video(1000, False))  # still no keyframe: dropped
    q.push(video(1033, True))
    q.push(video(1066, False))
    sent = []
    while (p := q.pop()) is not None:
        sent.append(p)
    assert [p.dts_ms for p in sent if p.kind is Kind.VIDEO][:1] == [1033]


def test_clear_drops_everything_and_counts_it() -> None:
    q = SendQueue()
    q.push(video(0, True))
    q.push(audio(0))
    q.clear("connection_lost")
    assert len(q) == 0 and q.pop() is None
    assert q.counters.removed_packets[("video", "connection_lost")] == 1
    assert q.counters.removed_packets[("audio", "connection_lost")] == 1
    assert q.counters.dropped_total == 2  # the link broke with them queued: a real loss


# One step: push a video frame, push an audio frame, or let the link send n packets.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("v"), st.integers(5, 60)),
        st.tuples(st.just("a"), st.integers(5, 30)),
        st.tuples(st.just("send"), st.integers(0, 5)),
    ),
    max_size=400,
)


@settings(max_examples=400, deadline=None)
@given(steps, st.integers(2, 90), st.integers(100, 1500), st.integers(200, 3000))
# Found by hypothesis: time passing during a keyframe wait must still cut the queue.
@example([("v", 5)] * 8 + [("v", 6), ("v", 60), ("v", 5), ("v", 35), ("v", 60)], 5, 100, 200)
def test_invariants_hold_for_any_arrivals_and_link(
    ops: list[tuple[str, int]], gop: int, threshold: int, hard: int
) -> None:
    q = SendQueue(drop_threshold_ms=threshold, hard_limit_ms=hard)
    hard_limit = q.hard_limit_ms
    assert hard_limit == max(threshold, hard)
    vt = at = 0
    vn = 0
    pushed_video: list[Packet] = []
    sent: list[Packet] = []
    for op, n in ops:
        if op == "v":
            vt += n
            frame = video(vt, key=vn % gop == 0)
            vn += 1
            pushed_video.append(frame)
            q.push(frame)
            assert q.depth_ms <= hard_limit
        elif op == "a":
            at += n
            q.push(audio(at))
            assert q.depth_ms <= hard_limit
        else:
            for _ in range(n):
                if (p := q.pop()) is not None:
                    sent.append(p)
    c = q.counters
    assert c.queued_packets == c.sent_packets + c.dropped_total + c.discarded_offline + len(q)
    assert c.discarded_offline == 0  # always connected here: every loss is the link's
    assert c.queued_bytes == c.sent_bytes + sum(c.removed_bytes.values()) + sum(
        len(p.data) for p in [*q._video, *q._audio]
    )
    # audio stays in order; every P-frame sent follows the frame it references
    sent_audio = [p.dts_ms for p in sent if p.kind is Kind.AUDIO]
    assert sent_audio == sorted(sent_audio)
    index = {id(p): i for i, p in enumerate(pushed_video)}
    sent_video = [index[id(p)] for p in sent if p.kind is Kind.VIDEO]
    assert sent_video == sorted(sent_video)
    sent_set = set(sent_video)
    for i in sent_video:
        if not pushed_video[i].keyframe:
            assert i - 1 in sent_set, f"P-frame {i} sent after its reference {i - 1} was dropped"


def test_over_the_threshold_the_oldest_gop_goes_when_a_later_keyframe_waits() -> None:
    q = SendQueue(drop_threshold_ms=500, hard_limit_ms=5000)
    for n in range(20):  # GOP of 10 frames, 100 ms apart: 0..1900 ms
        q.push(video(n * 100, key=n % 10 == 0))
    sent = [(p.dts_ms, p.keyframe) for p in iter(q.pop, None)]
    # the whole first GOP, keyframe too: what is sent resumes at the second keyframe, whose
    # own predicted frames were thinned too once they lagged
    assert sent[0] == (1000, True)
    assert all(dts >= 1000 for dts, _ in sent)
    assert q.counters.removed_packets[("video", "congestion")] >= 10
    assert q.counters.dropped(Kind.AUDIO) == 0


def test_a_dark_link_leaves_one_fresh_keyframe_not_a_stack_of_them() -> None:
    """Seconds with nothing sent (a link gone dark): what waits when it comes back is the
    newest GOP, and the encoder was not asked for a keyframe at every other frame."""
    q = SendQueue()  # the defaults: 700 ms, hard limit 2000 ms
    q.push(video(0, True))
    assert q.pop() is not None
    for n in range(1, 150):  # 5 s at 30 fps, a keyframe every 2 s (60 frames), none sent
        key = n % 60 == 0 or q.keyframe_wanted  # the encoder makes the keyframe asked for
        q.keyframe_wanted = False
        q.push(video(n * 33, key))
    waiting = list(iter(q.pop, None))
    keys = [p for p in waiting if p.keyframe]
    assert waiting[0].keyframe and len(keys) == 1, [(p.dts_ms, p.keyframe) for p in waiting]
    assert 149 * 33 - waiting[0].dts_ms <= DEFAULT_DROP_THRESHOLD_MS
    assert q.counters.keyframes_requested <= 5


def test_congestion_without_a_later_keyframe_asks_the_encoder_for_one() -> None:
    q = SendQueue(drop_threshold_ms=300, hard_limit_ms=5000)
    q.push(video(0, True))
    for n in range(1, 12):
        q.push(video(n * 40, False))
    assert q.keyframe_wanted and q.counters.keyframes_requested == 1
    first = q.pop()  # the link takes the keyframe
    assert first is not None and first.dts_ms == 0
    q.push(video(600, False))  # still waiting for a keyframe: dropped
    q.push(video(640, True))
    q.push(video(680, False))
    sent = [p.dts_ms for p in iter(q.pop, None)]
    assert sent == [640, 680]
    assert q.counters.removed_packets[("video", "awaiting_keyframe")] >= 1
    # the 11 thinned frames and the one the congestion made wait: drops, not discards
    assert q.counters.dropped(Kind.VIDEO) == 11 + 1
    assert q.counters.discarded_offline == 0


def test_audio_is_kept_through_video_congestion() -> None:
    q = SendQueue(drop_threshold_ms=300, hard_limit_ms=2000)
    for n in range(40):
        q.push(video(n * 33, key=n % 30 == 0))
        q.push(audio(n * 33))
    assert q.counters.dropped(Kind.VIDEO) > 0
    assert q.counters.dropped(Kind.AUDIO) == 0
    assert len([p for p in iter(q.pop, None) if p.kind is Kind.AUDIO]) == 40


# -- what the numbers say: drops (the link) apart from discards (no session) ----------


def online_session(q: SendQueue) -> None:
    """What the pipeline's hand-off does when a session starts."""
    q.restart("new_session")
    q.offline = False


def test_a_clean_session_drops_nothing() -> None:
    """Connecting costs packets by design; a link that carries everything drops none."""
    q = SendQueue()
    q.offline = True  # a new pipeline captures while it connects
    for n in range(10):
        q.push(video(n * 33, key=n == 0))
        q.push(audio(n * 21))
    online_session(q)
    assert q.keyframe_wanted
    for n in range(10, 13):  # predicted frames before the session's first keyframe
        q.push(video(n * 33, key=False))
    sent = 0
    for n in range(13, 100):  # the link keeps up: each frame is sent as it comes
        q.push(video(n * 33, key=n == 13 or n % 60 == 0))
        q.push(audio(n * 21))
        sent += len(list(iter(q.pop, None)))
    c = q.counters
    assert c.dropped_total == 0
    assert c.dropped(Kind.VIDEO) == c.dropped(Kind.AUDIO) == 0
    assert c.discarded_offline == 20 + 3
    assert c.removed_packets[("video", "session_start")] == 3
    assert sent == c.sent_packets == 2 * 87


def test_what_is_captured_during_an_outage_is_discarded_not_dropped() -> None:
    q = SendQueue()
    online_session(q)
    q.push(video(0, True))
    q.push(video(33, False))
    q.push(audio(10))
    q.offline = True  # the hand-off's go_offline: the backlog is lost with the link
    q.clear("connection_lost")
    for n in range(2, 30):  # reconnecting: capture goes on
        q.push(video(n * 33, key=n % 15 == 0))
    online_session(q)
    q.push(video(1000, False))
    q.push(video(1033, True))
    c = q.counters
    assert c.dropped_total == 3
    assert c.discarded_offline == 28 + 1
    assert [p.dts_ms for p in iter(q.pop, None)] == [1033]


def test_counters_shared_by_successive_queues_only_grow() -> None:
    """A stop/start makes a new queue; the Streamer's counters carry on."""
    counters = QueueCounters()
    totals = []
    for _ in range(3):
        q = SendQueue(drop_threshold_ms=300, hard_limit_ms=5000, counters=counters)
        q.offline = True
        q.push(audio(0))
        online_session(q)
        q.push(video(0, True))
        for n in range(1, 12):  # nothing is sent: congestion
            q.push(video(n * 40, False))
        assert q.counters is counters
        totals.append((counters.dropped_total, counters.discarded_offline, counters.queued_packets))
    assert totals == [(11, 1, 13), (22, 2, 26), (33, 3, 39)]


def test_a_frame_too_large_for_a_server_goes_with_its_gop_and_a_keyframe_is_asked() -> None:
    q = SendQueue()
    q.push(video(0, key=True))
    assert [p.dts_ms for p in iter(q.pop, None)] == [0]
    q.keyframe_wanted = False
    q.push(video(33, key=True, size=MAX_FRAME_BYTES + 1))  # nginx-rtmp would drop us
    q.push(video(67, key=False))  # refers to it: undecodable without it
    assert q.keyframe_wanted
    q.push(video(100, key=True))
    q.push(video(133, key=False))
    assert [p.dts_ms for p in iter(q.pop, None)] == [100, 133]
    assert q.counters.removed_packets[("video", "too_large")] == 1
    assert q.counters.dropped(Kind.VIDEO) == 2
