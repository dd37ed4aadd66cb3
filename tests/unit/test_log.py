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
