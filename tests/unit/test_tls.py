"""rtmps://: the TLS context, and every way a TLS handshake can go, against in-process servers.

Certificates come from ``make_tls_files`` (the openssl command); the RTMP
side is the scripted server of test_client, wrapped in TLS by asyncio.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
from structlog.testing import capture_logs

from streamer.exc import ConnectFailed
from streamer.localserver import TlsFiles, make_tls_files
from streamer.rtmp import client
from streamer.rtmp import message as m
from streamer.rtmp.client import INSECURE_WARNING, RtmpPublisher, tls_context
from streamer.rtmp.url import parse_url
from tests.rtmpserver import ScriptedServer

KEY = "tls-room"
T = TypeVar("T")


@dataclass(frozen=True)
class Certs:
    trusted: TlsFiles  # CA-signed for localhost and 127.0.0.1
    self_signed: TlsFiles  # localhost, signed by itself
    other_name: TlsFiles  # CA-signed, for streamer.test only


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    # make_tls_files says plainly when the openssl command is missing.
    base = tmp_path_factory.mktemp("tls")
    return Certs(
        trusted=make_tls_files(base / "trusted"),
        self_signed=make_tls_files(base / "self", self_signed=True),
        other_name=make_tls_files(base / "other", ("streamer.test",)),
    )


@pytest.fixture(autouse=True)
def no_system_trust_override(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test says what the client trusts; nothing leaks in from the environment."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    yield


def trust(monkeypatch: pytest.MonkeyPatch, files: TlsFiles) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(files.ca))


def server_context(files: TlsFiles, sni: list[str | None] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    if sni is not None:

        def remember(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            sni.append(name)

        context.sni_callback = remember  # type: ignore[assignment]
    return context


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def publish_over_tls(
    files: TlsFiles,
    host: str = "localhost",
    *,
    insecure: bool = False,
    sni: list[str | None] | None = None,
    lowat: list[int] | None = None,
) -> ScriptedServer:
    """Publish one video message to a TLS-wrapped scripted server; what it saw.

    ``lowat`` receives the TCP socket's TCP_NOTSENT_LOWAT while connected.
    """
    server = ScriptedServer()
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=server_context(files, sni))
    port = srv.sockets[0].getsockname()[1]
    url = parse_url(f"rtmps://{host}:{port}/live/{KEY}")
    publisher = RtmpPublisher(url, timeout=3.0, insecure=insecure)
    try:
        async with srv:
            try:
                await publisher.connect()
                if lowat is not None and publisher._writer is not None:
                    sock = publisher._writer.get_extra_info("socket")
                    lowat.append(sock.getsockopt(socket.IPPROTO_TCP, client.TCP_NOTSENT_LOWAT))
                await publisher.send_video(0, b"\x17\x00\x00\x00\x00" + bytes(20_000))
            finally:
                await publisher.close()
            await asyncio.wait_for(server.done.wait(), 5)
    finally:
        srv.close()
    return server


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def connect_to_plain(handler: Handler, timeout: float) -> None:
    """rtmps:// to a server that speaks no TLS."""
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    publisher = RtmpPublisher(parse_url(f"rtmps://127.0.0.1:{port}/live/{KEY}"), timeout=timeout)
    try:
        async with srv:
            await publisher.connect()
    finally:
        await publisher.close()
        srv.close()


async def until_client_leaves(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()
    writer.close()


# -- the context ----------------------------------------------------------------------


def test_verification_is_on_by_default() -> None:
    with capture_logs() as logs:
        context = tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert logs == []


def test_insecure_turns_verification_off_and_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "_insecure_warned", False)
    with capture_logs() as logs:
        first, second = tls_context(insecure=True), tls_context(insecure=True)
    for context in (first, second):
        assert context.verify_mode == ssl.CERT_NONE
        assert not context.check_hostname
    assert [(e["log_level"], e["event"]) for e in logs] == [("warning", INSECURE_WARNING)]
    assert INSECURE_WARNING == "TLS certificate verification is OFF (--insecure)"


def test_ssl_cert_file_is_honoured(monkeypatch: pytest.MonkeyPatch, certs: Certs) -> None:
    trust(monkeypatch, certs.trusted)
    ca_certs = tls_context().get_ca_certs()
    assert "streamer test CA" in repr(ca_certs)


# -- handshakes -----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_publishes_over_tls_to_a_trusted_server(
    monkeypatch: pytest.MonkeyPatch, certs: Certs, host: str
) -> None:
    trust(monkeypatch, certs.trusted)
    sni: list[str | None] = []
    lowat: list[int] = []
    server = run(publish_over_tls(certs.trusted, host, sni=sni, lowat=lowat))
    assert sni == ([host] if host == "localhost" else [None])  # no SNI for an IP address
    assert lowat == [client.NOTSENT_LOWAT]  # under TLS too: the TCP socket below it
    assert [c[0] for c in server.commands][:5] == [
        "connect",
        "releaseStream",
        "FCPublish",
        "createStream",
        "publish",
    ]
    assert server.commands[0][2]["tcUrl"].startswith(f"rtmps://{host}:")
    video = next(x for x in server.received if x.type_id == m.VIDEO)
    assert len(video.payload) == 20_005


def test_a_self_signed_certificate_is_not_trusted(certs: Certs) -> None:
    with pytest.raises(ConnectFailed) as info:
        run(publish_over_tls(certs.self_signed))
    assert info.value.message == (
        "TLS certificate of localhost is not trusted: self-signed certificate; "
        "use a certificate from a public CA, or --insecure to skip the check"
    )


def test_an_unknown_ca_is_not_trusted(certs: Certs) -> None:
    with pytest.raises(ConnectFailed, match="not trusted: unable to get local issuer"):
        run(publish_over_tls(certs.trusted))


def test_insecure_publishes_to_a_self_signed_server(
    monkeypatch: pytest.MonkeyPatch, certs: Certs
) -> None:
    monkeypatch.setattr(client, "_insecure_warned", False)
    sni: list[str | None] = []
    with capture_logs() as logs:
        run(publish_over_tls(certs.self_signed, insecure=True, sni=sni))
    assert sni == ["localhost"]  # still sent: a shared edge may need it
    assert any(e["event"] == INSECURE_WARNING for e in logs)


@pytest.mark.parametrize(
    ("host", "says"),
    [("localhost", "Hostname mismatch"), ("127.0.0.1", "IP address mismatch")],
)
def test_a_certificate_for_another_name_says_so(
    monkeypatch: pytest.MonkeyPatch, certs: Certs, host: str, says: str
) -> None:
    trust(monkeypatch, certs.other_name)
    with pytest.raises(ConnectFailed) as info:
        run(publish_over_tls(certs.other_name, host))
    message = info.value.message
    assert message.startswith(f"TLS certificate of {host} does not match the host name")
    assert says in message and "--insecure" in message


def test_a_server_answering_without_tls_is_named() -> None:
    async def rtmp_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"\x03" + bytes(1536))  # what an rtmp:// server sends
        await until_client_leaves(reader, writer)

    with pytest.raises(ConnectFailed, match=r"127\.0\.0\.1:\d+ did not answer TLS .*rtmps://"):
        run(connect_to_plain(rtmp_answer, timeout=3))


def test_a_server_hanging_up_during_the_handshake_is_named() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    with pytest.raises(ConnectFailed, match="closed the connection during the TLS handshake"):
        run(connect_to_plain(hang_up, timeout=3))


def test_a_silent_server_is_bounded_by_the_connect_timeout() -> None:
    """nginx-rtmp waits silently for 1537 bytes: the TLS handshake counts against the timeout."""
    start = time.monotonic()
    with pytest.raises(ConnectFailed, match=r"did not answer TLS within 0\.5 s"):
        run(connect_to_plain(until_client_leaves, timeout=0.5))
    assert time.monotonic() - start < 2.0


def test_cancelling_during_the_handshake_closes_the_connection() -> None:
    async def go() -> None:
        gone = asyncio.Event()

        async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await until_client_leaves(reader, writer)
            gone.set()

        srv = await asyncio.start_server(watch, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        url = parse_url(f"rtmps://127.0.0.1:{port}/live/{KEY}")
        publisher = RtmpPublisher(url, timeout=10)
        async with srv:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(publisher.connect(), 0.3)
            await asyncio.wait_for(gone.wait(), 2)
        srv.close()

    run(go())


def test_plain_rtmp_urls_do_not_touch_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(insecure: bool = False) -> ssl.SSLContext:
        raise AssertionError("tls_context used for rtmp://")

    monkeypatch.setattr(client, "tls_context", boom)
    server = ScriptedServer()

    async def go() -> None:
        srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        url = parse_url(f"rtmp://127.0.0.1:{port}/live/{KEY}")
        publisher = RtmpPublisher(url, timeout=3, insecure=True)
        async with srv:
            try:
                await publisher.connect()
            finally:
                await publisher.close()
            await asyncio.wait_for(server.done.wait(), 5)
        srv.close()

    run(go())
    assert "publish" in [c[0] for c in server.commands]
