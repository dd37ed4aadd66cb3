"""Local recording: real encoded packets muxed into Matroska segments, read back with FFmpeg."""

from __future__ import annotations

import errno
import itertools
import os
import pickle
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import av
import av.logging
import numpy as np
import pytest
from structlog.testing import capture_logs

from streamer import record
from streamer.encode.aac import AacEncoder
from streamer.encode.h264 import H264Encoder
from streamer.exc import ConfigError
from streamer.hardware.sim import SimCamera
from streamer.media import AudioConfig, Kind, Packet, VideoConfig
from streamer.record import Recorder, is_segment_name
from tests.media_check import MediaReport, analyze_file

W, H, FPS, FRAME_MS = 320, 180, 30, 33
FRAMES = 364  # 0 .. 12.0 s; keyframes every 60 frames (1980 ms)
AUDIO_BLOCKS = 564  # 1024 samples at 48 kHz: 12.03 s
VIDEO_LATENCY_MS, AUDIO_LATENCY_MS = 40, 5  # when each track's packets reach submit
REPO = Path(__file__).resolve().parents[2]
# The longest a submit may take: it only appends under a lock, but on 2 busy cores a
# thread can wait a few GIL switches; a submit that waited for the disk would take seconds.
SUBMIT_BOUND = 0.2


@dataclass
class Media:
    video: VideoConfig
    audio: AudioConfig
    video_batches: list[list[Packet]]  # as each encode call returned them
    audio_batches: list[list[Packet]]

    def arrival(self, video_latency_ms: int, audio_latency_ms: int) -> list[list[Packet]]:
        """All batches in the order two capture threads would submit them, each some
        time after its capture."""
        timed = [(b[0].dts_ms + video_latency_ms, 0, b) for b in self.video_batches]
        timed += [(b[0].dts_ms + audio_latency_ms, 1, b) for b in self.audio_batches]
        timed.sort(key=lambda x: (x[0], x[1]))
        return [b for _, _, b in timed]

    @property
    def batches(self) -> list[list[Packet]]:
        return self.arrival(VIDEO_LATENCY_MS, AUDIO_LATENCY_MS)

    def packets(self, kind: Kind) -> list[Packet]:
        return [p for b in self.batches for p in b if p.kind is kind]

    def count(self) -> int:
        return sum(len(b) for b in self.batches)


def encode_video(
    first_frame: int, frames: int, width: int = W, height: int = H
) -> tuple[VideoConfig, list[list[Packet]]]:
    encoder = H264Encoder(width, height, FPS, 500)
    camera = SimCamera(width, height, FPS)
    out = []
    for n in range(first_frame, first_frame + frames):
        frame = av.VideoFrame.from_ndarray(camera.picture(n), format="yuv420p")
        out.append(encoder.encode(frame, n * FRAME_MS))
    out.append(encoder.encode(None))
    return encoder.config, [b for b in out if b]


def make_media() -> Media:
    video, video_batches = encode_video(0, FRAMES)
    encoder = AacEncoder()
    t = np.arange(1024 * AUDIO_BLOCKS) / 48000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    audio_batches = []
    for i in range(AUDIO_BLOCKS):
        block = np.repeat(tone[i * 1024 : (i + 1) * 1024, None], 2, axis=1)
        audio_batches.append(encoder.encode(block, round(i * 1024 / 48)))
    audio_batches.append(encoder.encode(None))
    return Media(video, encoder.config, video_batches, [b for b in audio_batches if b])


@pytest.fixture(scope="module")
def media() -> Media:
    return make_media()


@pytest.fixture(autouse=True)
def ffmpeg_errors() -> Iterator[None]:
    """PyAV 18 passes FFmpeg's log on (and to av.logging.Capture) only when a level is set."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    yield
    av.logging.set_level(previous)


TRUNCATED = "matroska,webm: File ended prematurely"


def decode(path: Path, truncated: bool = False) -> MediaReport:
    """Decode a segment; ``truncated``: one cut short (killed, disk full) may end mid-cluster."""
    report = analyze_file(path)
    if truncated:
        report.decode_errors = [e for e in report.decode_errors if e.strip() != TRUNCATED]
    return report


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def submit_all(rec: Recorder, batches: list[list[Packet]]) -> float:
    """Submit every batch; returns the longest a single submit took (s)."""
    slowest = 0.0
    for batch in batches:
        t0 = time.perf_counter()
        rec.submit(batch)
        slowest = max(slowest, time.perf_counter() - t0)
    return slowest


def accounted(rec: Recorder) -> int:
    """Packets the recorder has dealt with: written, skipped, dropped, or held for the video."""
    return rec.packets_written + rec.packets_skipped + rec.packets_dropped + rec.audio_held


def caught_up(rec: Recorder) -> None:
    """Wait until the writer has dealt with everything submitted so far."""
    wait_for(lambda: rec.backlog == 0)


def record_all(
    directory: Path, media: Media, segment_seconds: float, keep_bytes: int | None = None
) -> Recorder:
    rec = Recorder(
        directory, media.video, media.audio, segment_seconds=segment_seconds, keep_bytes=keep_bytes
    )
    rec.start()
    submit_all(rec, media.batches)
    rec.stop()
    return rec


@pytest.mark.parametrize(
    ("video_latency", "audio_latency"), [(40, 5), (5, 300)], ids=["audio-ahead", "audio-late"]
)
def test_segments_start_with_keyframes_and_join_without_gaps(
    tmp_path: Path, media: Media, video_latency: int, audio_latency: int
) -> None:
    batches = media.arrival(video_latency, audio_latency)
    rec = Recorder(tmp_path, media.video, media.audio, segment_seconds=5)
    rec.start()
    submit_all(rec, batches)
    rec.stop()

    assert rec.failed is None
    assert len(rec.segments) == 3
    assert sorted(tmp_path.iterdir()) == rec.segments  # names sort in recording order
    assert all(is_segment_name(p.name) for p in rec.segments)
    starts = [datetime.strptime(p.stem, "%Y-%m-%dT%H-%M-%S") for p in rec.segments]
    # Named by the wall-clock time of their first frame: 5.94 s apart here (media time).
    assert [round((b - a).total_seconds()) for a, b in itertools.pairwise(starts)] in (
        [[6, 6], [5, 6], [6, 5], [5, 5]]
    )

    reports = [decode(p) for p in rec.segments]
    for report in reports:
        assert report.decode_errors == []
        assert report.video_keyframes[0]  # every segment starts with a keyframe, at 0
        assert report.video_pts_ms[0] == 0 and min(report.audio_pts_ms) >= 0
        assert (report.width, report.height) == (W, H)
    # Where each segment starts in the recording, from the frame counter in its first picture:
    # at the first keyframe >= 5 s into the previous one (keyframes every 1.98 s).
    offsets = [(r.counters[0] or 0) * FRAME_MS for r in reports]
    assert offsets == [0, 5940, 11880]
    ends = [*offsets[1:], 1 << 30]
    for report, offset, end in zip(reports, offsets, ends, strict=True):
        assert all(offset + ms < end for ms in report.audio_pts_ms)  # no overlap
    for path, offset, end in zip(rec.segments, offsets, offsets[1:], strict=False):
        with av.open(str(path)) as container:
            assert container.duration is not None
            assert abs(container.duration / 1000 - (end - offset)) <= 2 * FRAME_MS

    # Together the segments hold every packet from the first keyframe on, once, in order.
    video_in = media.packets(Kind.VIDEO)
    audio_in = [p for p in media.packets(Kind.AUDIO) if p.dts_ms >= 0]
    video_pts = [o + ms for r, o in zip(reports, offsets, strict=True) for ms in r.frame_pts_ms]
    assert video_pts == [p.pts_ms for p in video_in]
    assert [c for r in reports for c in r.counters] == list(range(FRAMES))
    assert sum(r.frames_decoded for r in reports) == len(video_in)
    audio_pts = [o + ms for r, o in zip(reports, offsets, strict=True) for ms in r.audio_pts_ms]
    assert audio_pts == [p.pts_ms for p in audio_in]
    assert max(np.diff(audio_pts)) <= 22  # no gap, within or between segments
    assert sum(r.audio_frames_decoded for r in reports) == len(audio_in)

    assert rec.packets_written == len(video_in) + len(audio_in)
    assert rec.packets_skipped == media.count() - rec.packets_written  # the priming frame
    assert rec.packets_dropped == 0


def test_keep_bytes_deletes_the_oldest_recordings(tmp_path: Path, media: Media) -> None:
    older = tmp_path / "2000-01-01T00-00-00.mkv"
    older.write_bytes(b"\0" * 1000)
    same_second = tmp_path / "2000-01-01T00-00-00-1.mkv"  # started later, in the same second
    same_second.write_bytes(b"\0" * 1000)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a recording")

    # ~470 kB per full segment: after the third starts, the two oldest must go.
    rec = record_all(tmp_path, media, segment_seconds=5, keep_bytes=700_000)
    assert rec.failed is None
    assert rec.deleted == [older, same_second, rec.segments[0]]
    remaining = sorted(p for p in tmp_path.iterdir() if is_segment_name(p.name))
    assert remaining == rec.segments[1:]
    assert sum(p.stat().st_size for p in remaining) <= 700_000
    assert notes.exists()

    # Smaller than any segment: only the newest (never the one being written) survives.
    small = tmp_path / "small"
    small.mkdir()
    rec = record_all(small, media, segment_seconds=5, keep_bytes=1)
    assert rec.deleted == rec.segments[:2]
    assert sorted(small.iterdir()) == rec.segments[2:]
    assert decode(rec.segments[2]).decode_errors == []


CHILD = """
import pickle, sys, time
from pathlib import Path
from streamer.record import Recorder

video, audio, batches = pickle.loads(Path(sys.argv[1]).read_bytes())
rec = Recorder(Path(sys.argv[2]), video, audio, segment_seconds=60)
rec.start()
for batch in batches:
    rec.submit(batch)
while rec.backlog:
    time.sleep(0.01)
print("written", rec.segments[0], flush=True)
time.sleep(60)
"""


def read_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    """The child's first stdout line starting with ``prefix`` (its log lines go there too)."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        line = proc.stdout.readline() if ready else ""
        if line.startswith(prefix):
            return line
        if ready and not line:  # the child ended
            break
    proc.kill()
    raise AssertionError(f"no {prefix!r} line from the child: {proc.stderr.read()}")


def test_a_killed_recording_still_plays_up_to_its_last_flush(tmp_path: Path, media: Media) -> None:
    cut_ms = 5900  # 1.94 s after a keyframe: the muxer's clusters must not wait for the next
    batches = [b for b in media.batches if b[0].dts_ms < cut_ms]
    video_sent = sum(p.kind is Kind.VIDEO for b in batches for p in b)
    data = tmp_path / "packets.pickle"
    data.write_bytes(pickle.dumps((media.video, media.audio, batches)))
    out = tmp_path / "rec"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data), str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = read_line(proc, "written ", timeout=30)
        os.kill(proc.pid, signal.SIGKILL)  # no trailer, no index, no sizes
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    path = Path(line.split(maxsplit=1)[1].strip())

    report = decode(path, truncated=True)
    assert report.decode_errors == []
    assert report.video_keyframes[0]
    # Everything up to the last closed cluster: at most about a second lost.
    assert video_sent - 1000 // FRAME_MS - 3 <= report.frames_decoded <= video_sent
    assert report.frame_pts_ms == [n * FRAME_MS for n in range(report.frames_decoded)]
    assert report.counters == list(range(report.frames_decoded))
    assert report.audio_frames_decoded > 0


def test_a_missing_or_unwritable_directory_is_a_config_error(
    tmp_path: Path, media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match=re.escape(f"recording directory {missing} does not")):
        Recorder(missing, media.video, media.audio).start()
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        Recorder(a_file, media.video, media.audio).start()

    def refuse(*args: object, **kwargs: object) -> tuple[int, str]:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("streamer.record.tempfile.mkstemp", refuse)
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path} is not writable: Permission")):
        Recorder(tmp_path, media.video, media.audio).start()

    rec = Recorder(missing, media.video, media.audio)
    rec.submit(media.batches[0])  # not started: ignored
    rec.stop()
    assert rec.packets_written == rec.packets_dropped == 0


def test_a_full_disk_stops_recording_not_the_caller(
    tmp_path: Path, media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = record._SegmentFile.write

    def write(self: record._SegmentFile, data: bytes) -> int:
        if self.tell() + len(data) > 150_000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(record._SegmentFile, "write", write)
    rec = Recorder(tmp_path, media.video, media.audio, segment_seconds=5)
    rec.start()
    with capture_logs() as logs:
        half = len(media.batches) // 2
        slowest = submit_all(rec, media.batches[:half])
        wait_for(lambda: rec.failed is not None)
        written = rec.packets_written
        slowest = max(slowest, submit_all(rec, media.batches[half:]))
        t0 = time.monotonic()
        rec.stop()
        assert time.monotonic() - t0 < 1.0

    assert rec.failed == f"recording stopped: disk full ({rec.segments[0]})"
    assert [e for e in logs if e["log_level"] == "error"] == [
        {
            "event": "recording stopped",
            "reason": "disk full",
            "path": str(rec.segments[0]),
            "log_level": "error",
        }
    ]
    assert slowest < SUBMIT_BOUND
    assert not rec.recording
    assert rec.packets_written == written  # nothing more after the failure
    assert len(rec.segments) == 1
    # What reached the disk before it filled up still plays.
    report = decode(rec.segments[0], truncated=True)
    assert report.decode_errors == []
    assert report.frames_decoded > 30


def test_a_full_queue_drops_without_blocking_and_resumes_at_a_keyframe(
    tmp_path: Path, media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk_stuck, writer_stuck = threading.Event(), threading.Event()
    real_write = record._SegmentFile.write

    def write(self: record._SegmentFile, data: bytes) -> int:
        writer_stuck.set()
        disk_stuck.wait(10)  # a disk that hangs, then recovers
        return real_write(self, data)

    monkeypatch.setattr(record._SegmentFile, "write", write)
    rec = Recorder(tmp_path, media.video, media.audio, queue_packets=40)
    rec.start()
    # 0..3 s while the disk hangs: the first 40 packets fit (0..~0.5 s), the rest is dropped.
    stuck = [b for b in media.batches if b[0].dts_ms < 3000]
    later = media.batches[len(stuck) :]
    with capture_logs() as logs:
        # batch by batch until the writer hangs on the disk: from then on (however busy
        # the machine) the queue only fills
        slowest, sent = 0.0, 0
        while not writer_stuck.wait(0.05):
            slowest = max(slowest, submit_all(rec, stuck[sent : sent + 1]))
            sent += 1
        slowest = max(slowest, submit_all(rec, stuck[sent:]))
        assert rec.packets_dropped > 0
        disk_stuck.set()
        # From 3 s on, submitted no faster than the writer takes them: nothing else is
        # dropped but the video up to the next keyframe (3.96 s), undecodable without the
        # frames dropped before it.
        for i in range(0, len(later), 20):
            caught_up(rec)
            slowest = max(slowest, submit_all(rec, later[i : i + 20]))
        rec.stop()

    assert slowest < SUBMIT_BOUND
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "recording queue full, dropping packets"
    ]
    assert rec.failed is None
    assert accounted(rec) == media.count()
    report = decode(rec.segments[0])
    assert report.decode_errors == []
    pts = report.video_pts_ms
    gaps = [i for i in range(1, len(pts)) if pts[i] - pts[i - 1] > FRAME_MS]
    assert len(gaps) == 1
    assert 0 < pts[gaps[0] - 1] < 1000
    assert pts[gaps[0]] == 3960 and report.video_keyframes[gaps[0]]
    assert pts[-1] == (FRAMES - 1) * FRAME_MS
    assert report.counters == [ms // FRAME_MS for ms in report.frame_pts_ms]
    audio = report.audio_pts_ms
    assert [ms for ms in audio if 1000 < ms < 2900] == []  # dropped while the disk hung
    assert [ms for ms in audio if ms >= 3000] == [
        p.pts_ms for p in media.packets(Kind.AUDIO) if p.pts_ms >= 3000
    ]


def test_stop_waits_for_a_hung_disk_only_so_long(
    tmp_path: Path, media: Media, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk_back = threading.Event()
    real_write = record._SegmentFile.write

    def write(self: record._SegmentFile, data: bytes) -> int:
        disk_back.wait(10)
        return real_write(self, data)

    monkeypatch.setattr(record._SegmentFile, "write", write)
    rec = Recorder(tmp_path, media.video, media.audio)
    rec.start()
    submit_all(rec, media.batches[:100])
    with capture_logs() as logs:
        t0 = time.monotonic()
        rec.stop(timeout=0.3)
        assert time.monotonic() - t0 < 1.0
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "recording did not finish writing in time"
    ]
    rec.submit(media.batches[100])  # stopped: ignored
    disk_back.set()
    caught_up(rec)
    assert accounted(rec) == sum(map(len, media.batches[:100]))
    rec.stop()  # the writer still finished the segment once the disk came back
    assert decode(rec.segments[0]).decode_errors == []


def test_a_removed_directory_stops_recording(tmp_path: Path, media: Media) -> None:
    directory = tmp_path / "rec"
    directory.mkdir()
    rec = Recorder(directory, media.video, media.audio, segment_seconds=2)
    rec.start()
    first = [b for b in media.batches if b[0].dts_ms < 1500]
    submit_all(rec, first)
    caught_up(rec)
    shutil.rmtree(directory)
    slowest = submit_all(rec, media.batches[len(first) :])
    wait_for(lambda: rec.failed is not None)
    rec.stop()
    assert rec.failed == f"recording stopped: recording directory removed ({directory})"
    assert slowest < SUBMIT_BOUND


def test_new_sps_pps_start_a_new_segment(tmp_path: Path) -> None:
    first_config, first = encode_video(0, 60)
    _, second = encode_video(60, 60, 160, 90)  # an encoder reopened at 160x90
    rec = Recorder(tmp_path, first_config, None)
    rec.start()
    submit_all(rec, first + second)  # the keyframes carry their SPS/PPS
    rec.stop()

    assert rec.failed is None
    assert len(rec.segments) == 2
    a, b = (decode(p) for p in rec.segments)
    assert a.decode_errors == b.decode_errors == []
    assert (a.width, a.height, a.frames_decoded) == (W, H, 60)
    assert (b.width, b.height, b.frames_decoded) == (160, 90, 60)
    assert b.video_pts_ms[0] == 0 and b.counters[0] == 60
    assert b.audio_pts_ms == []
