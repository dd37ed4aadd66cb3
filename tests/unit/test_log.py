"""Secrets registered once never reach a rendered log line, from structlog or stdlib."""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from pathlib import Path

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
        record = json.loads(line[3:])  # after the <N> priority
        assert {"event", "level", "state"} <= record.keys() and record["state"] == "live"
    assert "J0urnalKey" not in out.getvalue()


def test_under_journald_each_line_starts_with_its_syslog_priority() -> None:
    out = io.StringIO()
    logsetup.configure("debug", "auto", stream=out, env={"JOURNAL_STREAM": "8:12345"})
    log, lib = structlog.get_logger("t"), logging.getLogger("lib")
    log.debug("d")
    log.info("i")
    lib.warning("w")
    log.error("e")
    lib.critical("c")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("Falling back from lgpio", UserWarning, stacklevel=1)
    logsetup.fatal("stream.key_file /k is empty", 2)
    lines = out.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>", "<4>", "<3>"]
    records = [json.loads(line[3:]) for line in lines]
    assert [r["level"] for r in records] == [
        *("debug", "info", "warning", "error", "critical", "warning", "error"),
    ]
    assert "Falling back from lgpio" in records[5]["event"]
    assert records[6]["event"] == "streamer: error: stream.key_file /k is empty"
    assert records[6]["exit_code"] == 2


def test_journal_stream_names_the_file_it_is(tmp_path: Path) -> None:
    """An inherited JOURNAL_STREAM over a pipe or a redirect is not the journal."""
    with open(tmp_path / "err", "w+") as stream:
        st = os.fstat(stream.fileno())
        elsewhere = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}
        logsetup.configure("info", "auto", stream=stream, env=elsewhere)
        structlog.get_logger("t").error("not the journal")
        logsetup.fatal("bad", 1)
        itself = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        logsetup.configure("info", "plain", stream=stream, env=itself)
        structlog.get_logger("t").error("plain, in the journal")
        logsetup.fatal("bad", 1)
        stream.seek(0)
        lines = stream.read().splitlines()
    assert not lines[0].startswith(("<", "{")) and "not the journal" in lines[0]
    assert lines[1] == "streamer: error: bad"
    assert lines[2].startswith("<3>") and "plain, in the journal" in lines[2]
    assert lines[3] == "<3>streamer: error: bad"


def test_a_device_going_into_error_is_an_error_in_the_journal() -> None:
    """journalctl -p err shows why the service is in error, not only why it exited."""
    from streamer.state import DeviceState

    out = io.StringIO()
    logsetup.configure("info", "auto", stream=out, env={"JOURNAL_STREAM": "8:12345"})
    state = DeviceState()
    state.fire("start", "service start")
    state.fire("connection_lost", "connection refused; retrying in 1.0 s")
    state.fire("fail", "camera 0: no camera detected")
    lines = [line for line in out.getvalue().splitlines() if '"event": "state"' in line]
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>"]
    assert "no camera detected" in lines[-1]
