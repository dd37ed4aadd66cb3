"""Secrets registered once never reach a rendered log line, from structlog or stdlib."""

from __future__ import annotations

import io
import logging

import structlog

from streamer import log as logsetup


def test_registered_secret_is_redacted_everywhere() -> None:
    out = io.StringIO()
    logsetup.configure("debug", "plain", stream=out)
    logsetup.add_secret("KEY123?token=T0K")
    structlog.get_logger("t").info("publishing", name="KEY123?token=T0K", note="x KEY123 y")
    logging.getLogger("some.library").warning("sent publish for KEY123")
    text = out.getvalue()
    assert "publishing" in text and "some.library" in text
    assert "KEY123" not in text and "T0K" not in text
    assert text.count("***") >= 3
    logsetup.configure("info", "json", stream=out)
    structlog.get_logger("t").info("again", k="KEY123")
    assert "KEY123" not in out.getvalue()


def test_a_short_key_inside_a_longer_word_is_left_alone() -> None:
    out = io.StringIO()
    logsetup.configure("info", "plain", stream=out)
    logsetup.add_secret("cam")
    structlog.get_logger("t").info("camera started", url="rtmp://h/live/cam", model="picamera2")
    text = out.getvalue()
    assert "picamera2" in text and "camera started" in text
    assert "rtmp://h/live/***" in text


def test_under_journald_every_line_is_json_with_event_level_and_state() -> None:
    import json

    out = io.StringIO()
    logsetup.configure("info", "auto", stream=out, env={"JOURNAL_STREAM": "8:12345"})
    logsetup.add_secret("J0urnalKey")
    logsetup.set_state_provider(lambda: "live")
    try:
        structlog.get_logger("t").info("published", url="rtmp://h/live/J0urnalKey")
        logging.getLogger("lib").warning("a library speaks")
    finally:
        logsetup.set_state_provider(None)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        record = json.loads(line)
        assert {"event", "level", "state"} <= record.keys() and record["state"] == "live"
    assert "J0urnalKey" not in out.getvalue()
