"""The clock and the text on the picture as a viewer sees them, read back frame by frame
from what nginx recorded: the clock ticks in step with the frames' timestamps, and a text
changed through the status page shows within a second."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import av
import numpy as np
import pytest

from streamer.encode.filters import parse_filter
from streamer.encode.text import TextOverlay
from streamer.localserver import LocalRtmpServer, free_port
from tests.conftest import LiveCli
from tests.integration.test_status_live import command, status_when
from tests.text_check import read

W, H, FPS = 320, 180, 30
CLOCK = "%Y-%m-%d %H:%M:%S"
CLOCK_SPEC = f"text={CLOCK}:top-left:size=16"
NAME_SPEC = "text=before:bottom-left:size=16"
CLEAR = 0.4  # a reading this far towards the closest candidate is not a guess
FRAME_MS = 1000 / FPS


@pytest.mark.slow
def test_the_clock_ticks_with_the_frames_and_new_text_shows_within_a_second(
    rtmp_server: LocalRtmpServer,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    began = time.time()
    cli = LiveCli(
        *("run", "--url", rtmp_server.url("clock"), "--camera", "sim"),
        *("--size", f"{W}x{H}", "--fps", str(FPS), "--duration", "8"),
        *("--filter", CLOCK_SPEC, "--filter", NAME_SPEC, "--status-port", str(port)),
    )
    try:
        cli.wait_for_state("preparing -> live", timeout=15)
        cli.wait_for_event("status page", timeout=10)
        status_when(base, lambda s: s["frames_sent"] > 2 * FPS, 10, "two seconds of frames")
        asked = time.time()
        command(base, "/text", {"text": "after", "index": 1})
        assert json.loads(urllib.request.urlopen(f"{base}/status", timeout=5).read())["texts"] == [
            CLOCK,
            "after",
        ]
        assert cli.proc.wait(timeout=30) == 0
    finally:
        cli.stop(signal.SIGKILL)
    ended = time.time()
    rtmp_server.stop()
    [recording] = rtmp_server.recordings()

    clock = TextOverlay(parse_filter(CLOCK_SPEC), W, H)  # type: ignore[arg-type]
    name = TextOverlay(parse_filter(NAME_SPEC), W, H)  # type: ignore[arg-type]
    seconds = range(int(began) - 2, int(ended) + 3)
    candidates = [time.strftime(CLOCK, time.localtime(s)) for s in seconds]
    clock_cache: dict[str, np.ndarray] = {}
    shown: list[tuple[float, int, str]] = []  # (pts ms, clock second, name)
    with av.open(str(recording)) as container:
        for frame in container.decode(video=0):
            assert frame.pts is not None and frame.time_base is not None
            luma = np.asarray(frame.to_ndarray(format="yuv420p"), np.uint8)[:H]
            tick = read(luma, clock, candidates, clock_cache)
            words = read(luma, name, ["before", "after"])
            assert tick.agreement > CLEAR and words.agreement > CLEAR, (tick, words)
            second = seconds[candidates.index(tick.text)]
            shown.append((float(frame.pts * frame.time_base) * 1000, second, words.text))
    assert len(shown) > 6 * FPS

    # The clock: never back, one second at a time, on the frames' own timeline. Every change
    # falls between the timestamps of its two frames, at one offset + whole seconds.
    changes = [k for k in range(1, len(shown)) if shown[k][1] != shown[k - 1][1]]
    assert len(changes) >= 6
    assert all(shown[k][1] == shown[k - 1][1] + 1 for k in changes)
    first = shown[changes[0]][1]
    latest_start = min(shown[k][0] - 1000 * (shown[k][1] - first) for k in changes)
    earliest_start = max(shown[k - 1][0] - 1000 * (shown[k][1] - first) for k in changes)
    assert earliest_start < latest_start, "a change off the frames' one-second grid"

    # The text: 'before' until one frame, 'after' from it on; that frame was captured
    # within a second of the request (its capture time read from its own clock).
    names = [n for _, _, n in shown]
    turn = names.index("after")
    assert names == ["before"] * turn + ["after"] * (len(names) - turn)
    pts, second, _ = shown[turn]
    began_at = [start + 1000 * (second - first) for start in (earliest_start, latest_start)]
    latest = second + (pts - began_at[0]) / 1000  # captured, at the latest
    earliest = second + (pts - began_at[1]) / 1000  # and at the earliest
    assert earliest > asked - FRAME_MS / 1000, "new text on a frame captured before asked"
    assert latest - asked < 1.0, latest - asked
