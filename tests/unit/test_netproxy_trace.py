"""The trace replayer carries what the measured link carried, when it carried it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.netproxy import ThrottleProxy, Trace


class Sink:
    """A TCP server on loopback that records (arrival time, bytes) of what it reads."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[tuple[float, int]] = []
        self.echo = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while data := conn.recv(65536):
                self.arrivals.append((time.monotonic(), len(data)))
                if self.echo:
                    conn.sendall(data)

    def bytes_between(self, start: float, end: float) -> int:
        return sum(n for t, n in self.arrivals if start <= t < end)


@contextmanager
def linked(
    trace: Trace, start_s: float, delay_s: float = 0.0
) -> Iterator[tuple[Sink, socket.socket]]:
    sink = Sink()
    proxy = ThrottleProxy(sink.port, trace=trace, start_s=start_s, delay_s=delay_s)
    proxy.start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            yield sink, client
    finally:
        proxy.stop()
        sink.sock.close()


def send_for(client: socket.socket, seconds: float, piece: int, pause: float = 0.0) -> float:
    """Write ``piece``-byte messages for ``seconds``; returns when it began."""
    began = time.monotonic()
    client.settimeout(0.05)  # blocking sends (the proxy's thread needs the GIL), bounded
    payload = b"x" * piece
    while time.monotonic() - began < seconds:
        with contextlib.suppress(TimeoutError):
            client.sendall(payload)
        if pause:
            time.sleep(pause)
    return began


@pytest.mark.parametrize(
    ("name", "start_s"), [("ATT-LTE-driving", 240.0), ("Verizon-LTE-short", 2.0)]
)
def test_a_backlogged_sender_gets_what_the_trace_carries(name: str, start_s: float) -> None:
    trace = Trace.load(name)
    with linked(trace, start_s) as (sink, client):
        began = send_for(client, 3.0, 16384)
    # the trace's clock starts at the connection, a moment before ``began``
    got_kbps = sink.bytes_between(began + 0.5, began + 3.0) * 8 / 2.5 / 1000
    want_kbps = trace.kbps(start_s + 0.5, 2.5)
    assert got_kbps == pytest.approx(want_kbps, rel=0.06)


def test_small_messages_cross_without_a_backlog() -> None:
    """400-byte messages (audio frames) at 600 kbit/s cross a 1 Mbit/s stretch as they come:
    a message does not cost a whole opportunity's 1500 bytes."""
    trace = Trace.load("ATT-LTE-driving")
    with linked(trace, 240.0) as (sink, client):
        began = send_for(client, 2.0, 400, pause=0.005)
        sent_until = time.monotonic()
        time.sleep(0.3)
    sent = sum(n for t, n in sink.arrivals)
    assert sink.bytes_between(began, sent_until + 0.3) == sent
    assert sink.arrivals[-1][0] - sent_until < 0.15  # no queue built up


def test_a_dark_link_carries_nothing_until_it_comes_back() -> None:
    trace = Trace.load("ATT-LTE-driving")
    assert trace.longest_dark(274.0, 5.0) > 3.0  # 274.52 to 277.96 s carries nothing
    with linked(trace, 274.0) as (sink, client):
        began = send_for(client, 4.5, 16384)
    assert sink.bytes_between(began + 0.65, began + 3.85) == 0
    assert sink.bytes_between(began + 3.95, began + 4.5) > 0


def test_the_one_way_delay_is_added_each_way() -> None:
    trace = Trace.load("TMobile-LTE-short")  # fast: the link itself adds little
    with linked(trace, 100.0, delay_s=0.05) as (sink, client):
        sink.echo = True
        rtts = []
        for _ in range(5):
            began = time.monotonic()
            client.sendall(b"ping")
            assert client.recv(16) == b"ping"
            rtts.append(time.monotonic() - began)
    assert 0.1 <= min(rtts) < 0.2
