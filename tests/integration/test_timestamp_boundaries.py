"""Timestamps at their boundaries, through a real server to a viewer.

RTMP time is 32-bit milliseconds: above 2^24 ms (4.7 hours) every chunk
header carries an extended timestamp, and past 2^31 ms (24.8 days) readers
that take FLV time as signed break, so a session ends near there and the
next starts at 0 (``rtmp.session.SESSION_LIMIT_MS``). Each test starts a session's
clock a few seconds before a boundary instead of waiting days.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from streamer.device import Device
from streamer.localserver import LocalRtmpServer
from streamer.rtmp.session import SESSION_LIMIT_MS
from streamer.settings import Settings
from tests.media_check import CAPTURE_FLOOR, MediaReport, analyze_file, watch_live

SECONDS = 9  # the stream
WATCH = 4  # seconds of video the viewer watches
BEFORE_MS = 2000  # the first session's clock starts this far before the boundary


@pytest.mark.slow
@pytest.mark.parametrize("boundary", [2**24, 2**31, 2**32], ids=["2^24", "2^31", "2^32"])
def test_a_viewer_decodes_across_a_timestamp_boundary(
    rtmp_server: LocalRtmpServer, boundary: int
) -> None:
    """2^24: one session crosses it under the viewer's eyes. 2^31 and 2^32: the
    session ends at its first keyframe past SESSION_LIMIT_MS, short of them, and
    the next starts at 0; a player sees a stream end there, so this viewer joins
    the new session."""
    url = rtmp_server.url("edge")
    viewer = MediaReport()
    watching: list[threading.Thread] = []
    # Join once the session to watch is published (the server has begun its
    # recording): the first one, which crosses 2^24 two seconds in; or the
    # second, which starts at 0 after the first ended short of 2^31 / 2^32.
    sessions_before_join = 1 if boundary < SESSION_LIMIT_MS else 2

    def join() -> None:
        end = time.monotonic() + 15
        while len(rtmp_server.recordings()) < sessions_before_join and time.monotonic() < end:
            time.sleep(0.05)
        watching.append(watch_live(url, WATCH, viewer))

    joiner = threading.Thread(target=join, daemon=True)
    settings = Settings(urls=[url], width=320, height=180, duration=SECONDS)
    device = Device(settings, first_session_ms=boundary - BEFORE_MS)
    joiner.start()
    asyncio.run(device.run(asyncio.Event()))
    joiner.join()
    for thread in watching:
        thread.join(timeout=10)
    rtmp_server.stop()

    assert viewer.decode_errors == []
    # No stall: frames keep coming (a camera on a busy machine skips some; the rate it keeps
    # is a benchmark's business, so only a floor that a stalled stream would miss).
    gaps = [b - a for a, b in itertools.pairwise(viewer.arrivals)]
    assert max(gaps) < 1.0, f"the viewer stalled for {max(gaps):.1f} s"
    assert viewer.frames_decoded >= CAPTURE_FLOOR * WATCH * 30, viewer.frames_decoded

    paths = rtmp_server.recordings()
    # The session that runs across 2^24, or the one that starts anew at 0. (A first
    # session started by this test just below 2^32 has times past 2^31 that the
    # product never sends, which FFmpeg reads as negative: that is why they end.)
    report = analyze_file(paths[-1])
    assert report.decode_errors == []
    assert report.video_keyframes[0]
    assert all(b > a for a, b in itertools.pairwise(report.video_pts_ms))
    sessions = len(paths)
    print(
        f"start {boundary - BEFORE_MS} ms: {sessions} session(s), viewer got "
        f"{viewer.frames_decoded} frames, longest gap {max(gaps):.2f} s"
    )
    if boundary < SESSION_LIMIT_MS:
        assert sessions == 1  # one session straight across the boundary
    else:
        assert sessions == 2  # published anew from 0 before reaching it
        assert device.numbers()["reconnects"] == 0
