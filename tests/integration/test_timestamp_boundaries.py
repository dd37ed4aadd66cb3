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

import pytest

from streamer.device import Device
from streamer.localserver import LocalRtmpServer
from streamer.rtmp.session import SESSION_LIMIT_MS
from streamer.settings import Settings
from tests.media_check import MediaReport, analyze_file, watch_live

SECONDS = 7
BEFORE_MS = 3000  # the session's clock starts this far before the boundary


@pytest.mark.slow
@pytest.mark.parametrize("boundary", [2**24, 2**31, 2**32], ids=["2^24", "2^31", "2^32"])
def test_a_viewer_decodes_across_a_timestamp_boundary(
    rtmp_server: LocalRtmpServer, boundary: int
) -> None:
    url = rtmp_server.url("edge")
    viewer = MediaReport()
    watching = watch_live(url, SECONDS, viewer)
    settings = Settings(urls=[url], width=320, height=180, duration=SECONDS)
    device = Device(settings, first_session_ms=boundary - BEFORE_MS)
    asyncio.run(device.run(asyncio.Event()))
    watching.join(timeout=15)
    rtmp_server.stop()

    assert viewer.decode_errors == []
    assert viewer.frames_decoded >= 0.7 * (SECONDS - 2) * 30, viewer.frames_decoded
    gaps = [b - a for a, b in itertools.pairwise(viewer.arrivals)]
    assert max(gaps) < 1.0, f"the viewer stalled for {max(gaps):.1f} s"

    recordings = [analyze_file(path) for path in rtmp_server.recordings()]
    for report in recordings:
        assert report.decode_errors == []
        assert report.video_keyframes[0]
        assert all(b > a for a, b in itertools.pairwise(report.video_pts_ms))
    sessions = len(recordings)
    print(
        f"start {boundary - BEFORE_MS} ms: {sessions} session(s), viewer got "
        f"{viewer.frames_decoded} frames, longest gap {max(gaps):.2f} s"
    )
    if boundary < SESSION_LIMIT_MS:
        assert sessions == 1  # one session straight across the boundary
    else:
        assert sessions == 2  # published anew from 0 before reaching it
        assert device.numbers()["reconnects"] == 0
