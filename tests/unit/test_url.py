from __future__ import annotations

import pytest

from streamer.exc import ConfigError
from streamer.rtmp.url import parse_url


@pytest.mark.parametrize(
    ("text", "host", "port", "app", "key"),
    [
        ("rtmp://example.com/live/room", "example.com", 1935, "live", "room"),
        ("rtmp://example.com:1936/live/room", "example.com", 1936, "live", "room"),
        ("RTMP://Example.com/live/room", "example.com", 1935, "live", "room"),
        ("rtmp://h/app/inst/key", "h", 1935, "app/inst", "key"),
        ("rtmp://h/live/key?token=abc&x=1", "h", 1935, "live", "key?token=abc&x=1"),
        ("rtmps://h/live/key", "h", 443, "live", "key"),
        ("rtmp://[::1]:1935/live/key", "::1", 1935, "live", "key"),
        ("rtmp://h/live/a%20b", "h", 1935, "live", "a b"),
    ],
)
def test_parse(text: str, host: str, port: int, app: str, key: str) -> None:
    url = parse_url(text)
    assert (url.host, url.port, url.app, url.key) == (host, port, app, key)


def test_tc_url_and_redaction_hide_the_key() -> None:
    url = parse_url("rtmp://h:1940/app/inst/SECRETKEY?auth=XYZ")
    assert url.tc_url == "rtmp://h:1940/app/inst"
    assert url.redacted == "rtmp://h:1940/app/inst/***"
    for shown in (url.redacted, repr(url), str(url), f"{url}"):
        assert "SECRETKEY" not in shown and "XYZ" not in shown
    assert parse_url("rtmp://[::1]/live/k").tc_url == "rtmp://[::1]:1935/live"


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("http://h/live/SECRETKEY", "rtmp:// or rtmps://"),
        ("h/live/SECRETKEY", "no scheme"),
        ("rtmp://h/live", "stream key"),
        ("rtmp://h/SECRETKEY", "stream key"),
        ("rtmp:///live/SECRETKEY", "no host"),
        ("rtmp://h:notaport/live/SECRETKEY", "invalid stream URL"),
    ],
)
def test_unusable_urls_say_why_without_the_key(text: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_url(text)
    assert phrase in info.value.message
    assert "SECRETKEY" not in info.value.message
    assert info.value.exit_code == 2
