"""Lip sync through a real server: flashes in the picture against clicks in the sound.

Two streams run at once into one nginx-rtmp (the sim microphone at 30 and 25
fps), then real libasound reading a FIFO through its `file` plugin, fed in real
time by the test (on a quiet machine: `make test` runs it by itself, as a
late feed is the test's delay, not the program's). See ``tests/sync_check.py`` for how a
flash is placed to the millisecond. A second whose frames the camera skipped whole (a busy
machine: the sim's frame counter goes on across the hole) has no flash to pair; it is left
out and counted, and 16 of the 18 seconds must still pair.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from streamer.localserver import LocalRtmpServer
from tests.alsa_fixture import ToneFifo, tone, write_asoundrc
from tests.conftest import finish_cli, start_cli
from tests.media_check import analyze_file
from tests.sync_check import measure_sync

SECONDS = 20  # flashes paired: the 16 or more whole seconds away from both ends
MEDIAN_MS = 10  # the offset a viewer lives with
WORST_MS = 25  # and the worst single flash


Runs = dict[str, tuple[int, str]]  # stream name: (fps, microphone)


def run_and_measure(server: LocalRtmpServer, tmp_path: Path, runs: Runs) -> list[str]:
    """Stream ``runs`` at once into ``server``; the sync failures found in the recordings."""
    home = tmp_path / "home"
    home.mkdir()
    fifo = ToneFifo(tmp_path / "mic.raw", tone(SECONDS + 30), sync=True)
    write_asoundrc(home, {"syncmic": fifo.path})
    alsa_env = {**os.environ, "HOME": str(home)}
    alsa_env.pop("XDG_CONFIG_HOME", None)
    if any(mic.startswith("alsa") for _, mic in runs.values()):
        fifo.start()
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, (fps, mic) in runs.items():
            procs[name] = start_cli(
                *("run", "--url", server.url(name), "--camera", "sim:sync"),
                *("--microphone", mic, "--fps", str(fps), "--size", "320x180"),
                *("--duration", str(SECONDS)),
                env=alsa_env if mic.startswith("alsa") else None,
            )
        results = {name: finish_cli(proc, SECONDS + 40) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
        fifo.close()
    for name, result in results.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
    server.stop()

    failures = []
    for name, (fps, _) in runs.items():
        [recording] = server.record_dir.glob(f"{name}-*.flv")
        report = analyze_file(recording)
        assert report.decode_errors == [], name
        sync = measure_sync(report)
        print(f"{name}: {sync.summary()}")
        frame_ms = 1000 / fps
        if (
            len(sync.offsets_ms) < SECONDS - 4
            or sync.unpaired_flashes_ms
            or sync.unpaired_clicks_ms
            or abs(sync.median_ms) > MEDIAN_MS
            or sync.worst_ms > WORST_MS
            # the frame that shows most of a flash is within half a frame of its click
            # (give or take the offset allowed above)
            or max(abs(o) for o in sync.nearest_frame_ms) > frame_ms / 2 + MEDIAN_MS
        ):
            failures.append(f"{name} at {fps} fps: {sync.summary()}")
    return failures


@pytest.mark.slow
@pytest.mark.heavy
def test_flashes_and_clicks_stay_in_sync_at_30_and_25_fps(
    rtmp_server: LocalRtmpServer, tmp_path: Path
) -> None:
    failures = run_and_measure(
        rtmp_server, tmp_path, {"sim30": (30, "sim:sync"), "sim25": (25, "sim:sync")}
    )
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.alone  # the test feeds ALSA's FIFO in real time: a busy machine delays the feed
def test_flashes_and_clicks_stay_in_sync_through_alsa(
    rtmp_server: LocalRtmpServer, tmp_path: Path
) -> None:
    failures = run_and_measure(rtmp_server, tmp_path, {"alsa30": (30, "alsa:syncmic")})
    assert not failures, "\n".join(failures)
