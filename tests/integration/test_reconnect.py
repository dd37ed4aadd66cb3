"""A device that runs unattended: server restarts, dead links, refusals, silent servers."""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
import time
from datetime import datetime
from typing import Any

import pytest

from streamer.localserver import LocalRtmpServer, free_port
from tests.conftest import LiveCli, run_cli
from tests.media_check import analyze_file
from tests.netproxy import ThrottleProxy


def _assert_clean_recording(server: LocalRtmpServer) -> None:
    [recording] = server.recordings()
    report = analyze_file(recording)
    assert report.decode_errors == []
    assert report.video_keyframes[0], "a new session must start with a keyframe"
    assert report.video_pts_ms[0] <= 100, "timestamps restart from the new session's origin"
    assert len(report.video_pts_ms) >= 30
    assert report.width > 0 and report.sample_rate > 0, "sequence headers: both tracks decode"
    for track in (report.video_pts_ms, report.audio_pts_ms):
        assert all(b > a for a, b in itertools.pairwise(track))


RESTARTS = 10
MAX_DELAY = 2.0  # the backoff's cap for this test: each return is awaited at most this


@pytest.mark.slow
def test_ten_server_restarts_under_one_running_stream() -> None:
    port = free_port()
    servers = [LocalRtmpServer(port=port)]
    servers[0].start()
    cli = LiveCli(
        *("run", "--url", servers[0].url("cycle"), "--size", "320x180"),
        *("--reconnect-delay", "0.5", "--reconnect-max-delay", str(MAX_DELAY)),
        *("--max-reconnects", str(3 * RESTARTS)),
    )
    returns = []
    try:
        cli.wait_for_state("preparing -> live", timeout=15)
        for _ in range(RESTARTS):
            time.sleep(1.5)  # a second and a half of picture in each recording
            seen = len(cli.events)
            servers[-1].stop()  # the server goes away mid-stream
            cli.wait_for_state("live -> reconnecting", timeout=15, after=seen)
            time.sleep(1)
            servers.append(LocalRtmpServer(port=port))
            servers[-1].start()
            started = time.monotonic()
            cli.wait_for_state("reconnecting -> live", timeout=40, after=seen)
            returns.append(time.monotonic() - started)
        time.sleep(1.5)
        assert cli.proc.poll() is None, "the process must live through every outage"
        assert cli.stop() == 0, cli.output[-3000:]
        print(f"live again after the server came back (s): {[round(t, 1) for t in returns]}")
        assert max(returns) <= MAX_DELAY + 2, returns
        for server in servers[1:]:
            server.stop()
            _assert_clean_recording(server)
    finally:
        cli.stop(signal.SIGKILL)
        for server in servers:
            server.stop()
            server.remove()


OUTAGE = 20.0  # seconds the server stays down


@pytest.mark.slow
def test_live_again_within_5_s_of_the_server_after_an_outage_of_20_s() -> None:
    """The real process follows the schedule by outage age. Outages of any length up to
    a minute, and of hours, are proven on the policy itself (tests/unit/test_backoff.py),
    which this same schedule is."""
    port = free_port()
    servers = [LocalRtmpServer(port=port)]
    servers[0].start()
    cli = LiveCli(
        *("run", "--service", "--url", servers[0].url("outage")),
        *("--size", "320x180", "--status-port", "0"),
    )
    try:
        cli.wait_for_state("preparing -> live", timeout=15)
        seen = len(cli.events)
        servers[-1].stop()
        stopped = time.monotonic()
        cli.wait_for_state("live -> reconnecting", timeout=15, after=seen)
        time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))  # the outage itself
        servers.append(LocalRtmpServer(port=port))
        servers[-1].start()
        back = time.monotonic()
        live = cli.wait_for_state("reconnecting -> live", timeout=40, after=seen)
        resumed = live["_received"] - back
        print(f"live again {resumed:.1f} s after a {OUTAGE:g} s outage")
        assert resumed <= 5.0
        assert cli.stop(signal.SIGTERM) == 0, cli.output[-3000:]
    finally:
        cli.stop(signal.SIGKILL)
        for server in servers:
            server.stop()
            server.remove()


@pytest.mark.slow
def test_black_hole_is_detected_and_the_stream_comes_back(rtmp_server: LocalRtmpServer) -> None:
    proxy = ThrottleProxy(rtmp_server.port)
    proxy.start()
    url = f"rtmp://127.0.0.1:{proxy.port}/live/hole"
    cli = LiveCli("run", "--url", url, "--size", "320x180")
    try:
        cli.wait_for_state("preparing -> live", timeout=15)
        time.sleep(3)
        seen = len(cli.events)
        proxy.blackhole(True)
        started = time.monotonic()
        lost = cli.wait_for_state("live -> reconnecting", timeout=20, after=seen)
        detected_after = lost["_received"] - started
        assert detected_after <= 12.0, detected_after
        time.sleep(max(0.0, 15 - (time.monotonic() - started)))
        proxy.blackhole(False)
        resumed = time.monotonic()
        back = cli.wait_for_state("reconnecting -> live", timeout=40, after=seen)
        print(
            f"black hole detected after {detected_after:.1f} s, "
            f"live again {back['_received'] - resumed:.1f} s after the link came back"
        )
        time.sleep(2)
        assert cli.stop() == 0
    finally:
        cli.stop(signal.SIGKILL)
        proxy.stop()


def test_refused_publish_ends_a_cli_run_with_the_reason(rtmp_server: LocalRtmpServer) -> None:
    started = time.monotonic()
    result = run_cli("run", "--url", rtmp_server.url("nope", app="locked"), timeout=30)
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert "streamer: error: server rejected the stream" in result.stderr


def test_refused_publish_in_service_mode_is_retried_after_the_cooldown(
    rtmp_server: LocalRtmpServer,
) -> None:
    cooldown = 1.5
    cli = LiveCli(
        "run",
        "--url",
        rtmp_server.url("nope", app="locked"),
        "--service",
        "--size",
        "320x180",
        "--error-cooldown",
        str(cooldown),
        "--status-port",
        "0",
    )
    try:
        failed = cli.wait_for_state("preparing -> error", timeout=15)
        retry = cli.wait_for_state("error -> preparing", timeout=cooldown + 10)
        again = cli.wait_for_state(
            "preparing -> error", timeout=15, after=cli.events.index(retry) + 1
        )
        waited = _logged_at(retry) - _logged_at(failed)
        assert cooldown <= waited <= cooldown + 3, waited
        assert _logged_at(again) > _logged_at(retry)
        assert cli.proc.poll() is None, "service mode must not exit on a refusal"
        assert cli.stop(signal.SIGTERM) == 0
        # one publish per attempt: never a retry loop between cooldowns
        refusals = cli.transitions().count("preparing -> error")
        assert rtmp_server.error_log().count("publish: name='nope'") == refusals
    finally:
        cli.stop(signal.SIGKILL)


def test_service_mode_cooldown_is_a_minute_by_default(rtmp_server: LocalRtmpServer) -> None:
    cli = LiveCli(
        *("run", "--url", rtmp_server.url("nope", app="locked"), "--service"),
        *("--size", "320x180", "--status-port", "0"),
    )
    try:
        cli.wait_for_state("preparing -> error", timeout=15)
        planned = cli.wait_for_event("retrying after cooldown", timeout=10)
        assert planned["seconds"] == 60.0
        assert "error -> preparing" not in cli.transitions()
        assert cli.stop(signal.SIGTERM) == 0
    finally:
        cli.stop(signal.SIGKILL)


def _logged_at(event: dict[str, Any]) -> float:
    """When the streamer wrote the line (its own clock), in seconds."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


@pytest.mark.slow
def test_server_that_says_nothing_times_out() -> None:
    port = free_port()
    ready = threading.Event()

    async def silent() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(60)

        server = await asyncio.start_server(handle, "127.0.0.1", port)
        ready.set()
        async with server:
            await asyncio.sleep(40)

    threading.Thread(target=asyncio.run, args=(silent(),), daemon=True).start()
    assert ready.wait(5)
    started = time.monotonic()
    result = run_cli(
        "run", "--url", f"rtmp://127.0.0.1:{port}/live/x", "--size", "320x180", timeout=30
    )
    assert result.returncode == 1
    assert "handshake" in result.stderr
    assert 9 <= time.monotonic() - started <= 20
