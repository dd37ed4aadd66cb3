"""The status page while streaming: the live numbers, and a Stop that stops."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from streamer.localserver import LocalRtmpServer, free_port
from tests.conftest import LiveCli


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


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
        time.sleep(1)
        first = json.loads(get(f"{base}/status"))
        time.sleep(6)
        second = json.loads(get(f"{base}/status"))
        assert first["state"] == second["state"] == "live"
        assert second["frames_sent"] > first["frames_sent"] + 100
        assert second["resolution"] == "320x180" and second["encoder"] == "libx264"
        assert second["sent_kbps"] > 0 and second["fps"] > 20
        assert second["url"].endswith("/live/***")
        metrics = {
            s.name: s.value
            for family in text_string_to_metric_families(get(f"{base}/metrics"))
            for s in family.samples
            if not s.labels or s.labels.get("state") == "live"
        }
        assert metrics["streamer_frames_sent_total"] >= second["frames_sent"]
        assert metrics["streamer_state"] == 1
        assert "statuskey" not in get(f"{base}/") + get(f"{base}/metrics")

        stop = urllib.request.Request(
            f"{base}/stop", method="POST", headers={"X-Requested-With": "streamer"}
        )
        with urllib.request.urlopen(stop, timeout=5) as response:
            assert response.status == 204
        cli.wait_for_state("live -> idle", timeout=10)
        assert json.loads(get(f"{base}/status"))["state"] == "idle"
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
            assert any(e.get("event") == "status page disabled" for e in cli.events)
            assert cli.stop(signal.SIGTERM) == 0
        finally:
            cli.stop(signal.SIGKILL)
