"""Settings from Python: destinations named and checked when made, never at first connect."""

from __future__ import annotations

import pytest

from streamer.exc import ConfigError
from streamer.rtmp.url import parse_url
from streamer.settings import Settings, Target

KEY = "pyKey-5521"


def test_unnamed_destinations_are_named_by_host_and_named_ones_keep_their_name() -> None:
    s = Settings(
        urls=[
            f"rtmp://live.example.com/app/{KEY}",
            Target(parse_url("rtmp://other/app/k2"), "live.example.com"),
            parse_url("rtmp://live.example.com/app/k3"),
            "rtmp://live.example.com/app/k4",
        ]
    )
    assert [t.name for t in s.destinations] == [
        "live.example.com-2",  # the name a Target asked for is kept
        "live.example.com",
        "live.example.com-3",
        "live.example.com-4",
    ]
    assert s.url.key == KEY  # the first destination
    assert KEY not in repr(s.destinations)


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ([], "no stream URL: give at least one rtmp://host/app/key"),
        (
            [
                Target(parse_url("rtmp://a/app/k"), "main"),
                Target(parse_url("rtmp://b/app/k"), "main"),
            ],
            "two destinations are named 'main'; give each its own name",
        ),
        (
            [Target(parse_url("rtmp://a/app/k"), "my main")],
            'destination name \'my main\' must be 1 to 40 letters, digits, ".", "_" or "-", '
            "starting with a letter or digit",
        ),
        (
            [f"http://a/app/{KEY}"],
            "stream URL must start with rtmp:// or rtmps:// (got http://); "
            "expected rtmp://host[:port]/app/streamkey",
        ),
    ],
)
def test_bad_destinations_are_refused_when_the_settings_are_made(
    urls: list[str | Target], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(urls=urls)
    assert caught.value.message == message
    assert KEY not in caught.value.message
