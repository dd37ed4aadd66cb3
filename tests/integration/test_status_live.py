"""The status page while streaming: the live numbers, a Stop that stops, counters that last."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from streamer.localserver import LocalRtmpServer, free_port
from tests.conftest import LiveCli


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def status_when(
    base: str, condition: Callable[[dict[str, Any]], bool], timeout: float, what: str
) -> dict[str, Any]:
    """The first /status for which ``condition`` holds, polled as a page would."""
    end = time.monotonic() + timeout
    while True:
        snap: dict[str, Any] = json.loads(get(f"{base}/status"))
        if condition(snap):
            return snap
        if time.monotonic() > end:
            pytest.fail(f"no /status with {what} within {timeout} s; last: {snap}")
        time.sleep(0.2)


def counters(base: str) -> dict[str, float]:
    """The /metrics samples without a label but ``destination`` and ``kind`` (and the device's
    live state), by sample name and kind."""
    return {
        s.name + (f"{{{s.labels['kind']}}}" if "kind" in s.labels else ""): s.value
        for family in text_string_to_metric_families(get(f"{base}/metrics"))
        for s in family.samples
        if not set(s.labels) - {"destination", "kind"} or s.labels == {"state": "live"}
    }


def command(base: str, path: str, body: dict[str, Any] | None = None) -> None:
    """POST a command as the page does (``body`` as JSON); it must be carried out (204)."""
    headers = {"X-Requested-With": "streamer"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(f"{base}{path}", data=data, method="POST", headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 204


CLEAN = {"dropped": 0, "dropped_video": 0, "dropped_audio": 0}


@pytest.mark.slow
def test_status_and_metrics_follow_the_stream_and_stop_stops_it(
    rtmp_server: LocalRtmpServer,
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cli = LiveCli(
        "run",
        "--url",
        rtmp_server.url("statuskey"),
        "--size",
        "320x180",
        "--status-port",
        str(port),
    )
    try:
        cli.wait_for_state("preparing -> live", timeout=15)
        cli.wait_for_event("status page", timeout=10)  # the page says it is serving
        first = status_when(base, lambda s: s["frames_sent"] > 0, 10, "frames sent")
        # the rates come with the first stats line, 5 s after going live
        second = status_when(
            base,
            lambda s: s["fps"] > 0 and s["frames_sent"] > first["frames_sent"] + 100,
            15,
            "a stats interval's rates",
        )
        assert first["state"] == second["state"] == "live"
        assert second["resolution"] == "320x180" and second["encoder"] == "libx264"
        # a floor a stalled stream would miss: on a busy machine the camera skips frames
        assert second["sent_kbps"] > 0 and second["fps"] > 10
        assert second["url"].endswith("/live/***")
        # A clean link drops nothing; what was captured while connecting is counted apart.
        assert {k: second[k] for k in CLEAN} == CLEAN
        assert second["discarded_offline"] >= 0 and second["reconnects"] == 0
        stats = [e for e in cli.events if e.get("event") == "stats"]
        assert stats and all(e["dropped"] == 0 for e in stats), stats
        metrics = counters(base)
        assert metrics["streamer_frames_sent_total"] >= second["frames_sent"]
        assert metrics["streamer_dropped_packets_total{video}"] == 0
        assert metrics["streamer_dropped_packets_total{audio}"] == 0
        assert metrics["streamer_state"] == 1
        assert "statuskey" not in get(f"{base}/") + get(f"{base}/metrics")

        command(base, "/stop")
        cli.wait_for_state("live -> idle", timeout=10)
        stopped = json.loads(get(f"{base}/status"))
        assert stopped["state"] == "idle"
        # Stopping keeps the counters (Prometheus counters never go back) ...
        assert stopped["frames_sent"] >= second["frames_sent"]
        assert stopped["discarded_offline"] >= second["discarded_offline"]
        assert {k: stopped[k] for k in CLEAN} == CLEAN
        idle = counters(base)
        assert idle["streamer_frames_sent_total"] == stopped["frames_sent"]

        # ... and starting again goes on from them.
        seen = len(cli.events)
        command(base, "/start")
        cli.wait_for_state("preparing -> live", timeout=15, after=seen)
        again = status_when(
            base,
            lambda s: s["frames_sent"] > stopped["frames_sent"] + 60,
            15,
            "frames sent after the restart",
        )
        assert again["discarded_offline"] >= stopped["discarded_offline"]
        assert {k: again[k] for k in CLEAN} == CLEAN
        assert again["reconnects"] == 0, "a stop/start by a person is not a reconnect"
        restarted = counters(base)
        for name, value in idle.items():
            if name.endswith("_total"):
                assert restarted[name] >= value, name
        assert restarted["streamer_frames_sent_total"] > idle["streamer_frames_sent_total"]
        assert cli.stop(signal.SIGTERM) == 0
    finally:
        cli.stop(signal.SIGKILL)


def test_a_taken_status_port_does_not_stop_the_stream(rtmp_server: LocalRtmpServer) -> None:
    import socket

    port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        cli = LiveCli(
            "run", "--url", rtmp_server.url("busy"), "--size", "320x180", "--status-port", str(port)
        )
        try:
            cli.wait_for_state("preparing -> live", timeout=15)
            disabled = cli.wait_for_event("status page disabled", timeout=10)
            assert "already in use" in disabled["reason"]
            assert cli.transitions()[-1] == "preparing -> live"  # and the stream went on
            assert cli.stop(signal.SIGTERM) == 0
        finally:
            cli.stop(signal.SIGKILL)
