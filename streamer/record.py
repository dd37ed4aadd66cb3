"""Local recording while live: the encoded packets, muxed (never re-encoded) into Matroska files.

Capture threads hand the same packets they send to the network to
``Recorder.submit``, which only appends to a bounded queue: a full queue
drops (and counts) instead of waiting, and a disk that fails stops the
recording, never the stream. One writer thread owns the files.

Segments: Matroska files named by the wall-clock time of their first frame
(``2026-11-27T10-00-00.mkv``, local time). A new segment starts at the first
video keyframe at least ``segment_seconds`` after the current one began, so
each starts with a keyframe; its timestamps are milliseconds from that
keyframe, so every file plays on its own from 0 with its true duration.
Packets are split at the keyframe's time, not at their arrival: audio
captured before it but handed over after it still goes to the previous
segment (kept open for it up to ``HOLD_MS``), audio running ahead of the
video waits (up to ``HOLD_MS``) until the video reaches it. The segments
therefore join end to end without a gap or an overlap, and concatenating
them (``ffmpeg -f concat``, ``mkvmerge`` append) gives the whole recording.

Surviving a kill or a power cut: FFmpeg's Matroska muxer writes the segment
with an unknown size and each cluster whole when it ends, so a file cut
anywhere plays up to where it was cut (seeking in it is slower: the index is
only written at a clean close). Clusters end every ``CLUSTER_MS`` and go
straight to the file, which is ``fdatasync``-ed every ``SYNC_SECONDS``: a
killed process or a power cut loses about the last second.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import io
import os
import re
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import structlog

from streamer.exc import ConfigError
from streamer.media import AudioConfig, Kind, Packet, VideoConfig

log = structlog.get_logger("streamer.record")

MS = Fraction(1, 1000)
CLUSTER_MS = 1000  # the muxer closes (writes out) a cluster at least this often
SYNC_SECONDS = 1.0  # fdatasync the segment being written this often
TICK_SECONDS = 0.25  # the writer wakes this often even without packets
HOLD_MS = 1000  # how far the audio and video threads may drift apart at a cut
SEGMENT_SUFFIX = ".mkv"
DIRECTORY_REMOVED = "recording directory removed"
_SEGMENT_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2})(?:-(\d+))?\.mkv$")
_MUXER_OPTIONS = {
    "cluster_time_limit": str(CLUSTER_MS),
    "flush_packets": "1",  # hand each finished cluster to the file at once (explicitly)
    # A track that stops (a dead microphone) must not hold the other one in
    # the muxer's interleaving queue for its default 10 s.
    "max_interleave_delta": "1000000",
}

_ERRNO_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "I/O error",
    errno.EROFS: "file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large",
}


def is_segment_name(name: str) -> bool:
    """Whether ``name`` is a file name the recorder gives its segments."""
    return _SEGMENT_NAME.match(name) is not None


def _age_key(name: str) -> tuple[str, int]:
    """Segment names in the order they were started (``T10-00-00-1`` after ``T10-00-00``)."""
    m = _SEGMENT_NAME.match(name)
    return (m.group(1), int(m.group(2) or 0)) if m else (name, 0)


class _SegmentFile:
    """What PyAV writes a segment through: unbuffered, every write whole, synced on demand."""

    def __init__(self, path: Path) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(path, flags, 0o644)
        self.path = path
        self._pos = 0
        self._dirty = False
        self._entry_synced = False  # the directory entry, for a power cut

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self._pos += n
        self._dirty = True
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._pos = os.lseek(self.fd, offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def sync(self) -> None:
        if self._dirty:
            self._dirty = False
            os.fdatasync(self.fd)
        if not self._entry_synced:
            self._entry_synced = True
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            except OSError as exc:
                if exc.errno != errno.EINVAL:  # a file system that cannot sync directories
                    raise
            finally:
                os.close(directory)

    def unlinked(self) -> bool:
        return os.fstat(self.fd).st_nlink == 0

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def _template_streams(audio: bool) -> tuple[Any, Any, Any]:
    """Unopened H.264 (and AAC) streams to copy from: ``add_stream_from_template``
    gives a stream whose codec context is marked initialized, so PyAV never
    opens an encoder for it (``add_stream`` would open libx264 at the header)."""
    scratch = av.open(io.BytesIO(), "w", format="matroska")
    video = scratch.add_stream("h264")
    sound = scratch.add_stream("aac") if audio else None
    return scratch, video, sound


class _SegmentError(Exception):
    """A segment's file or muxer failed: ``cause`` says why, ``path`` which file."""

    def __init__(self, path: Path, cause: Exception) -> None:
        super().__init__(f"{path}: {cause}")
        self.path, self.cause = path, cause


class _Segment:
    """One Matroska file being written: its container, streams and file.

    ``origin`` is the media time (ms) of its first keyframe, its time 0;
    ``end`` the media time of the next segment's first keyframe, once known.
    """

    def __init__(
        self, path: Path, origin: int, video: VideoConfig, audio: AudioConfig | None, wall: float
    ) -> None:
        self.path, self.origin = path, origin
        self.end: int | None = None
        self.file = _SegmentFile(path)
        self._last_dts: dict[Kind, int] = {}
        try:
            self.container = av.open(
                self.file, "w", format="matroska", container_options=dict(_MUXER_OPTIONS)
            )
            stamp = dt.datetime.fromtimestamp(wall, dt.UTC)
            self.container.metadata["creation_time"] = stamp.isoformat(timespec="milliseconds")
            scratch, video_template, audio_template = _template_streams(audio is not None)
            try:
                v = self.container.add_stream_from_template(video_template)
                vc = v.codec_context
                vc.width, vc.height = video.width, video.height
                vc.pix_fmt = "yuv420p"
                # The nominal rate, as a hint (DefaultDuration); the timestamps are the truth.
                vc.framerate = Fraction(video.fps).limit_denominator(1001)
                vc.extradata = video.avc_config
                vc.time_base = MS
                v.time_base = MS
                self.streams: dict[Kind, Any] = {Kind.VIDEO: v}
                if audio is not None:
                    a = self.container.add_stream_from_template(audio_template)
                    ac = a.codec_context
                    ac.sample_rate = audio.sample_rate
                    ac.layout = "stereo" if audio.channels == 2 else "mono"
                    ac.extradata = audio.asc
                    ac.time_base = MS
                    a.time_base = MS
                    self.streams[Kind.AUDIO] = a
            finally:
                scratch.close()
        except BaseException:
            self.file.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise

    def write(self, packet: Packet) -> None:
        dts = packet.dts_ms - self.origin
        last = self._last_dts.get(packet.kind)
        if last is not None and dts <= last:
            dts = last + 1  # the muxer refuses a track whose time goes back
        self._last_dts[packet.kind] = dts
        out = av.Packet(packet.data)
        out.stream = self.streams[packet.kind]
        out.time_base = MS
        out.dts = dts
        out.pts = max(packet.pts_ms - self.origin, dts)
        out.is_keyframe = packet.keyframe
        try:
            self.container.mux_one(out)
        except Exception as exc:
            raise _SegmentError(self.path, exc) from exc

    def sync(self) -> None:
        try:
            self.file.sync()
        except OSError as exc:
            raise _SegmentError(self.path, exc) from exc

    def close(self) -> None:
        """Write the index and the sizes (the trailer), sync, close."""
        try:
            self.container.close()
            self.file.sync()
        except Exception as exc:
            raise _SegmentError(self.path, exc) from exc
        finally:
            self.file.close()

    def abort(self) -> None:
        """Close after a failure, as far as the disk lets us; never raises."""
        with contextlib.suppress(Exception):
            self.container.close()
        with contextlib.suppress(OSError):
            self.file.close()


@dataclass(frozen=True, slots=True)
class _NewVideoConfig:
    video: VideoConfig


class Recorder:
    """Record the live packets into Matroska segments in ``directory``.

    ``submit`` may be called from any thread and never blocks; everything
    else about the files happens on the writer thread started by ``start``.
    ``failed`` is set (one line, logged once) when a disk error stopped the
    recording. ``segments`` lists every segment this recorder started, in
    order, including any since removed for ``keep_bytes`` (those are also in
    ``deleted``). ``packets_skipped`` counts packets no segment can take
    (before the first keyframe, or audio later than ``HOLD_MS`` at a cut);
    ``packets_dropped`` the ones a full queue refused, plus the video after
    such a drop up to the next keyframe.
    """

    def __init__(
        self,
        directory: Path,
        video: VideoConfig,
        audio: AudioConfig | None,
        *,
        segment_seconds: float = 300.0,
        keep_bytes: int | None = None,
        queue_packets: int = 2000,
    ) -> None:
        if not video.avc_config:
            raise ValueError("recording needs the H.264 SPS/PPS (VideoConfig.avc_config)")
        if segment_seconds <= 0:
            raise ValueError(f"segment_seconds must be > 0, got {segment_seconds}")
        if queue_packets < 1:
            raise ValueError(f"queue_packets must be >= 1, got {queue_packets}")
        if keep_bytes is not None and keep_bytes < 0:
            raise ValueError(f"keep_bytes must be >= 0, got {keep_bytes}")
        self.directory = Path(directory)
        self.segment_ms = round(segment_seconds * 1000)
        self.keep_bytes = keep_bytes
        self.queue_packets = queue_packets
        self.failed: str | None = None
        self.segments: list[Path] = []
        self.deleted: list[Path] = []
        self.packets_written = 0
        self.packets_dropped = 0
        self.packets_skipped = 0
        # Shared with the capture threads, under _lock.
        self._lock = threading.Lock()
        self._queue: deque[Packet | _NewVideoConfig] = deque()
        self._accepting = False
        self._stopping = False
        self._await_keyframe = False  # video was dropped: refuse video until a keyframe
        self._drop_logged = False
        self._backlog = 0  # packets queued or being written
        self._wall_anchor: tuple[float, int] | None = None  # (time.time(), media ms)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        # The writer thread's own.
        self._video, self._audio = video, audio
        self._avc_config = video.avc_config  # the SPS/PPS of the packets submitted last
        self._segment: _Segment | None = None  # being written
        self._previous: _Segment | None = None  # cut, still open for late audio
        self._held: deque[Packet] = deque()  # audio ahead of the video
        self._video_dts: int | None = None  # the latest video packet's
        self._cut = False  # start a new segment at the next keyframe
        self._last_sync = 0.0

    # -- any thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Check the directory and start the writer thread.

        ConfigError names the directory when it is missing, not a directory
        or not writable: the caller decides whether to stream without it.
        """
        if self._thread is not None:
            raise RuntimeError("recorder already started")
        d = self.directory
        if not d.exists():
            raise ConfigError(f"recording directory {d} does not exist")
        if not d.is_dir():
            raise ConfigError(f"recording directory {d} is not a directory")
        try:
            fd, probe = tempfile.mkstemp(prefix=".streamer-probe-", dir=d)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(
                f"recording directory {d} is not writable: {exc.strerror or exc}"
            ) from exc
        try:
            scratch, _, _ = _template_streams(self._audio is not None)
            scratch.close()
        except Exception as exc:  # a PyAV build without H.264 or AAC
            raise ConfigError(f"recording is not available: {exc}") from exc
        with self._lock:
            self._accepting = True
        self._last_sync = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()
        log.info("recording", directory=str(d), segment_seconds=self.segment_ms / 1000)

    def submit(self, packets: list[Packet]) -> None:
        """Queue packets for the writer; never blocks, never raises for a disk problem."""
        if not self._accepting or not packets:
            return
        dropped = 0
        with self._lock:
            if not self._accepting:
                return
            if self._wall_anchor is None:
                self._wall_anchor = (time.time(), packets[0].dts_ms)
            room = self.queue_packets - len(self._queue)
            for p in packets:
                video = p.kind is Kind.VIDEO
                if room > 0 and not (video and self._await_keyframe and not p.keyframe):
                    if p.config is not None and p.config.avc_config != self._avc_config:
                        # New SPS/PPS: a new segment starts at this keyframe.
                        self._avc_config = p.config.avc_config
                        self._queue.append(_NewVideoConfig(p.config))
                    self._queue.append(p)
                    self._backlog += 1
                    room -= 1
                    if video:
                        self._await_keyframe = False
                else:
                    dropped += 1
                    if video:
                        self._await_keyframe = True
            first_drop = dropped > 0 and not self._drop_logged
            if dropped:
                self.packets_dropped += dropped
                self._drop_logged = True
        self._wake.set()
        if first_drop:
            log.warning(
                "recording queue full, dropping packets",
                queue_packets=self.queue_packets,
                directory=str(self.directory),
            )

    def stop(self, timeout: float = 5.0) -> None:
        """Write out the queue and close the segment, waiting at most ``timeout`` s."""
        with self._lock:
            self._accepting = False
            self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is None:
            return
        thread.join(timeout)
        if thread.is_alive():
            log.warning("recording did not finish writing in time", timeout=timeout)

    @property
    def recording(self) -> bool:
        """Started, and neither stopped nor failed."""
        return self._accepting

    @property
    def backlog(self) -> int:
        """Packets submitted that the writer has not written or skipped yet (nor holds)."""
        return self._backlog

    @property
    def audio_held(self) -> int:
        """Audio packets waiting for the video to reach their time (at most ``HOLD_MS``)."""
        return len(self._held)

    # -- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(TICK_SECONDS)
                self._wake.clear()
                with self._lock:
                    batch = list(self._queue)
                    self._queue.clear()
                    stopping = self._stopping
                for item in batch:
                    self._write(item)
                with self._lock:
                    self._backlog -= sum(isinstance(item, Packet) for item in batch)
                self._maintain()
                if stopping:
                    break
            self._finish()
        except _SegmentError as err:
            self._fail(err.cause, err.path)
        except Exception as exc:
            self._fail(exc, None)

    def _write(self, item: Packet | _NewVideoConfig) -> None:
        if isinstance(item, _NewVideoConfig):
            self._video = item.video
            self._cut = True
        elif item.kind is Kind.VIDEO:
            self._write_video(item)
            self._video_dts = item.dts_ms
            self._release_audio()
            previous = self._previous
            if previous and previous.end is not None and item.dts_ms >= previous.end + HOLD_MS:
                self._close_previous()  # the audio from before the cut is not coming
        elif self._audio is None:
            self.packets_skipped += 1
        else:
            self._held.append(item)
            self._release_audio()

    def _write_video(self, p: Packet) -> None:
        segment = self._segment
        if p.keyframe and (
            segment is None or self._cut or p.dts_ms - segment.origin >= self.segment_ms
        ):
            segment = self._new_segment(p.dts_ms)
        if segment is None:  # before the first keyframe
            self.packets_skipped += 1
            return
        segment.write(p)
        self.packets_written += 1

    def _release_audio(self, everything: bool = False) -> None:
        """Route the held audio the video has reached (or that waited ``HOLD_MS``)."""
        held, video = self._held, self._video_dts
        while held:
            first = held[0]
            ahead = video is None or first.dts_ms > video
            if ahead and not everything and held[-1].dts_ms - first.dts_ms < HOLD_MS:
                return
            held.popleft()
            self._write_audio(first)

    def _write_audio(self, p: Packet) -> None:
        previous = self._previous
        if previous is not None:
            if previous.end is not None and p.dts_ms < previous.end:
                previous.write(p)  # captured before the cut, handed over after it
                self.packets_written += 1
                return
            self._close_previous()  # the audio has passed the cut
        segment = self._segment
        if segment is None or p.dts_ms < segment.origin:
            self.packets_skipped += 1
            return
        segment.write(p)
        self.packets_written += 1

    def _new_segment(self, dts_ms: int) -> _Segment:
        if self._previous is not None:
            self._close_previous()
        old, self._segment = self._segment, None
        if old is not None:
            old.end = dts_ms
            self._previous = old
            if self._audio is None:
                self._close_previous()
        self._cut = False
        wall = self._wall_of(dts_ms)
        segment = self._open_segment(dts_ms, wall)
        self._segment = segment
        self.segments.append(segment.path)
        log.info("recording segment", path=str(segment.path))
        return segment

    def _close_previous(self) -> None:
        previous, self._previous = self._previous, None
        if previous is None:
            return
        try:
            previous.close()
        except _SegmentError:
            previous.abort()
            raise
        current = self._segment
        self._prune(keep=current.path if current is not None else previous.path)

    def _wall_of(self, dts_ms: int) -> float:
        anchor = self._wall_anchor
        if anchor is None:
            return time.time()
        return anchor[0] + (dts_ms - anchor[1]) / 1000

    def _open_segment(self, origin: int, wall: float) -> _Segment:
        stem = time.strftime("%Y-%m-%dT%H-%M-%S", time.localtime(wall))
        for n in range(1000):
            name = stem + (f"-{n}" if n else "") + SEGMENT_SUFFIX
            try:
                return _Segment(self.directory / name, origin, self._video, self._audio, wall)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free segment name", str(self.directory / stem))

    def _maintain(self) -> None:
        """Every tick: sync the files, and notice one (or the directory) removed under us."""
        now = time.monotonic()
        if now - self._last_sync < SYNC_SECONDS:
            return
        self._last_sync = now
        if self._previous is not None:
            self._previous.sync()
        segment = self._segment
        if segment is None:
            return
        segment.sync()
        if not segment.file.unlinked():
            return
        if not self.directory.is_dir():
            raise FileNotFoundError(errno.ENOENT, "directory removed", str(self.directory))
        log.warning("recording segment was removed; starting another", path=str(segment.path))
        self._segment = None
        segment.abort()
        self._cut = True

    def _finish(self) -> None:
        self._release_audio(everything=True)
        last = self._segment
        self._close_previous()
        self._segment = None
        if last is not None:
            try:
                last.close()
            except _SegmentError:
                last.abort()
                raise
            self._prune(keep=last.path)

    def _prune(self, keep: Path) -> None:
        """Delete the oldest recordings until they total at most ``keep_bytes``."""
        if self.keep_bytes is None:
            return
        try:
            entries = sorted(
                (
                    (e.name, e.stat().st_size)
                    for e in os.scandir(self.directory)
                    if is_segment_name(e.name) and e.is_file()
                ),
                key=lambda entry: _age_key(entry[0]),
            )
        except OSError as exc:
            log.warning("could not list recordings", error=str(exc))
            return
        total = sum(size for _, size in entries)
        for name, size in entries:
            if total <= self.keep_bytes:
                break
            path = self.directory / name
            if path == keep:
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not delete an old recording", path=str(path), error=str(exc))
                continue
            total -= size
            self.deleted.append(path)
            log.info("deleted old recording", path=str(path), keep_bytes=self.keep_bytes)

    def _fail(self, exc: BaseException, path: Path | None) -> None:
        reason = describe_error(exc, self.directory)
        where = self.directory if path is None or reason == DIRECTORY_REMOVED else path
        with self._lock:
            self._accepting = False
            self._queue.clear()
            self._backlog = 0
            first = self.failed is None
            if first:
                self.failed = f"recording stopped: {reason} ({where})"
        if first:
            log.error("recording stopped", reason=reason, path=str(where))
        self._held.clear()
        for segment in (self._previous, self._segment):
            if segment is not None:
                segment.abort()
        self._previous = self._segment = None


def describe_error(exc: BaseException, directory: Path) -> str:
    """A few words for what went wrong on the disk."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENOENT and not directory.is_dir():
            return DIRECTORY_REMOVED
        if exc.errno in _ERRNO_REASONS:
            return _ERRNO_REASONS[exc.errno]
        if exc.strerror:
            return str(exc.strerror)
    return f"{type(exc).__name__}: {exc}"
