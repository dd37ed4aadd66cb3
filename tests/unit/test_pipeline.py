"""A device app's own camera and microphone: the pipeline encodes from them as from its own."""

from __future__ import annotations

import asyncio
import threading
import time
from fractions import Fraction
from typing import Any, cast

import av
import numpy as np
import numpy.typing as npt
import pytest

from streamer.encode import flv
from streamer.encode.camera import CameraEncoder
from streamer.exc import ConfigError
from streamer.hardware.base import AudioSource, EncodedSink, EncodedVideoSource, VideoSource
from streamer.media import Kind, Packet
from streamer.pipeline import Fanout, Pipeline
from streamer.settings import Settings

W, H, FPS = 64, 48, 10.0
FRAMES = 12
pytestmark = pytest.mark.timeout(30)


class GreyCamera:
    """Frame n is flat grey at luma 40 + 10 n, captured at ``start + n / fps``."""

    width, height, fps = W, H, FPS

    def __init__(self) -> None:
        self.start = 0.0  # the test sets it from the pipeline's clock
        self.opened = self.closed = 0
        self.n = 0

    def open(self) -> None:
        self.opened += 1

    def read(self) -> tuple[av.VideoFrame, float]:
        time.sleep(0.002)  # a real camera blocks until the next frame
        n = self.n
        self.n += 1
        picture = np.full((H * 3 // 2, W), 128, np.uint8)
        picture[:H] = 40 + 10 * min(n, FRAMES)
        frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
        return frame, self.start + n / FPS

    def close(self) -> None:
        self.closed += 1


class SilentMicrophone:
    """Mono 16 kHz silence, 1600 samples a read."""

    sample_rate, channels = 16000, 1

    def __init__(self) -> None:
        self.start = 0.0
        self.opened = self.closed = 0
        self.reads = 0

    def open(self) -> None:
        self.opened += 1

    def read(self) -> tuple[npt.NDArray[np.int16], float]:
        time.sleep(0.002)
        n = self.reads
        self.reads += 1
        return np.zeros((1600, 1), np.int16), self.start + n * 0.1

    def close(self) -> None:
        self.closed += 1


class EncodingCamera:
    """A camera that encodes itself: Annex B H.264 of grey frames, from its own thread."""

    width, height, fps = W, H, FPS
    encoder_name = "test camera encoder"

    def __init__(self) -> None:
        self.start_at = 0.0  # the test sets it from the pipeline's clock
        self.started = self.stopped = 0
        self.bitrates: list[int] = []
        self._thread: threading.Thread | None = None

    def start(self, sink: EncodedSink) -> None:
        self.started += 1
        self._thread = threading.Thread(target=self._encode, args=(sink,), daemon=True)
        self._thread.start()

    def _encode(self, sink: EncodedSink) -> None:
        codec = av.CodecContext.create("libx264", "w")
        assert isinstance(codec, av.VideoCodecContext)
        codec.width, codec.height, codec.pix_fmt = W, H, "yuv420p"
        codec.time_base = Fraction(1, int(FPS))
        codec.options = {"preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
        for n in range(FRAMES):
            picture = np.full((H * 3 // 2, W), 128, np.uint8)
            frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
            frame.pts = n
            for packet in codec.encode(frame):
                sink(bytes(packet), packet.is_keyframe, self.start_at + n / FPS)

    def set_bitrate(self, kbps: int) -> None:
        self.bitrates.append(kbps)

    def request_keyframe(self) -> None: ...

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.join(5)
        self.stopped += 1


def test_the_sources_follow_the_documented_protocols() -> None:
    camera: VideoSource = GreyCamera()  # mypy checks these against hardware/base.py
    microphone: AudioSource = SilentMicrophone()
    encoding: EncodedVideoSource = EncodingCamera()
    assert camera.fps == FPS and microphone.channels == 1 and encoding.fps == FPS


def run_pipeline(settings: Settings, enough: int) -> tuple[Pipeline, list[Packet]]:
    """Start capture, collect what the encoders make until ``enough`` video packets, stop."""
    packets: list[Packet] = []
    got_enough = threading.Event()

    def collect(batch: list[Packet]) -> None:
        packets.extend(batch)
        if sum(p.kind is Kind.VIDEO for p in packets) >= enough:
            got_enough.set()

    fanout = Fanout()
    fanout.tap = collect
    pipeline = Pipeline(settings, fanout)
    camera, microphone = settings.camera, settings.microphone
    assert isinstance(camera, GreyCamera) and isinstance(microphone, SilentMicrophone)
    camera.start = microphone.start = pipeline.clock.origin + 10.0  # 10 s into the stream
    pipeline.start()
    assert got_enough.wait(20), f"only {len(packets)} packets"
    asyncio.run(pipeline.stop())
    return pipeline, packets


def test_the_pipeline_encodes_from_an_apps_own_camera_and_microphone() -> None:
    camera, microphone = GreyCamera(), SilentMicrophone()
    settings = Settings(
        urls=["rtmp://h/live/k"],
        camera=camera,
        microphone=microphone,
        width=W,
        height=H,
        fps=FPS,
        encoder="libx264",
    )
    assert settings.camera is camera  # kept as is, not a name
    pipeline, packets = run_pipeline(settings, FRAMES + 3)
    assert (camera.opened, camera.closed) == (1, 1)
    assert (microphone.opened, microphone.closed) == (1, 1)

    video = [p for p in packets if p.kind is Kind.VIDEO]
    assert video[0].keyframe
    # Stamped with the source's capture instants: 10 s in, one frame every 100 ms.
    assert [p.pts_ms for p in video[:FRAMES]] == [10_000 + 100 * n for n in range(FRAMES)]

    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = pipeline.video.config.avc_config
    lumas = []
    for p in video[:FRAMES]:
        for frame in decoder.decode(av.Packet(p.data)):
            lumas.append(float(frame.to_ndarray()[:H].mean()))
    lumas += [float(f.to_ndarray()[:H].mean()) for f in decoder.decode(None)]
    assert len(lumas) == FRAMES
    assert lumas == pytest.approx([40 + 10 * n for n in range(FRAMES)], abs=3)

    audio = [p for p in packets if p.kind is Kind.AUDIO]
    assert pipeline.audio is not None
    assert (pipeline.audio.config.sample_rate, pipeline.audio.config.channels) == (16000, 1)
    assert audio and 9_900 <= audio[0].pts_ms <= 10_100  # the microphone's own instants


def test_a_stop_and_start_opens_the_same_objects_again() -> None:
    camera, microphone = GreyCamera(), SilentMicrophone()
    settings = Settings(
        urls=["rtmp://h/live/k"], camera=camera, microphone=microphone, width=W, height=H, fps=FPS
    )
    run_pipeline(settings, 2)
    run_pipeline(settings, 2)
    assert (camera.opened, camera.closed, microphone.opened, microphone.closed) == (2, 2, 2, 2)


def test_an_apps_camera_that_encodes_itself_takes_the_hardware_encoded_path() -> None:
    camera = EncodingCamera()
    settings = Settings(
        urls=["rtmp://h/live/k"], camera=camera, microphone="none", width=W, height=H, fps=FPS
    )
    assert settings.camera is camera
    packets: list[Packet] = []
    pipeline = Pipeline(settings, Fanout())
    assert pipeline.encoded is camera and pipeline.camera is None
    assert isinstance(pipeline.video, CameraEncoder)
    pipeline.fanout.tap = packets.extend
    camera.start_at = pipeline.clock.origin + 10.0
    pipeline.start()
    config = pipeline.video.wait_config(10)
    asyncio.run(pipeline.stop())
    assert (camera.started, camera.stopped) == (1, 1)
    assert config.avc_config and config.encoder_name == "test camera encoder"
    assert [p.kind for p in packets] == [Kind.VIDEO] * FRAMES
    assert packets[0].keyframe and packets[0].config == config
    assert [p.pts_ms for p in packets] == [10_000 + 100 * n for n in range(FRAMES)]
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = config.avc_config  # the packets are AVCC now, as RTMP carries them
    frames = [f for p in packets for f in decoder.decode(av.Packet(p.data))]
    assert len(frames + list(decoder.decode(None))) == FRAMES
    pipeline.video.set_bitrate(800)
    assert camera.bitrates == [800]


def test_filters_are_refused_with_a_camera_that_encodes_itself() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(urls=["rtmp://h/live/k"], camera=EncodingCamera(), filters=("hflip",))
    assert "filters need raw frames" in caught.value.message


def test_rotate_is_refused_with_a_camera_that_encodes_itself() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(urls=["rtmp://h/live/k"], camera=EncodingCamera(), rotate=180)
    assert "rotate needs raw frames" in caught.value.message


def test_rotate_0_and_no_filters_build_no_graph() -> None:
    settings = Settings(urls=["rtmp://h/live/k"], camera="sim", microphone="none", rotate=0)
    pipeline = Pipeline(settings, Fanout())
    assert pipeline.filters is None
    assert (pipeline.video.config.width, pipeline.video.config.height) == (1280, 720)


def test_a_quarter_turn_opens_the_encoder_at_the_turned_size() -> None:
    settings = Settings(
        urls=["rtmp://h/live/k"],
        camera="sim",
        microphone="none",
        width=320,
        height=180,
        rotate=270,
        encoder="libx264",
    )
    pipeline = Pipeline(settings, Fanout())
    assert pipeline.filters is not None and pipeline.filters.names == ["rotate=270"]
    assert (pipeline.video.config.width, pipeline.video.config.height) == (180, 320)
    meta = flv.metadata(pipeline.video.config, None, "streamer")
    assert (meta["width"], meta["height"]) == (180.0, 320.0)  # onMetaData says so


def test_an_object_that_is_not_a_source_is_refused_when_the_settings_are_made() -> None:
    class NoRead:
        def open(self) -> None: ...
        def close(self) -> None: ...

    with pytest.raises(TypeError) as caught:
        Settings(urls=["rtmp://h/live/k"], camera=NoRead())  # type: ignore[arg-type]
    assert str(caught.value) == (
        "camera must be one of sim, sim:sync, picamera2[:N], v4l2[:/dev/videoN], or an object "
        "with open(), read() and close() (VideoSource in streamer/hardware/base.py); "
        "a NoRead has no read()"
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("camera", "webcam", "camera 'webcam' is not one of: sim, sim:sync, picamera2[:N], "),
        ("microphone", "pulse", "microphone 'pulse' is not one of: sim, sim:sync, alsa[:DEVICE]"),
        ("encoder", "nvenc", "encoder 'nvenc' is not one of: auto, v4l2m2m, libx264"),
    ],
)
def test_names_are_checked_when_the_settings_are_made(field: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings(urls=["rtmp://h/live/k"], **{field: value})  # type: ignore[arg-type]
    assert caught.value.message.startswith(message)
    assert Settings(urls=["rtmp://h/live/k"], camera="SIM:sync").camera == "sim:sync"


class WakeCounter:
    """Stands in for the event loop: counts the wake-ups the outbox asks for."""

    def __init__(self) -> None:
        self.wakes = 0

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> None:
        self.wakes += 1
        callback(*args)


def test_audio_rides_with_the_next_video_frame_and_never_waits_long() -> None:
    from streamer.net.sendqueue import SendQueue
    from streamer.pipeline import AUDIO_WAKE_S, Outbox

    now = [0.0]
    loop = WakeCounter()
    outbox = Outbox(SendQueue(), cast(asyncio.AbstractEventLoop, loop), clock=lambda: now[0])

    def audio(ms: int) -> Packet:
        return Packet(Kind.AUDIO, ms, ms, True, b"a")

    def video(ms: int, key: bool = False) -> Packet:
        return Packet(Kind.VIDEO, ms, ms, key, b"v")

    def drain() -> list[int]:
        taken = []
        while (p := outbox.pop()) is not None:
            taken.append(p.pts_ms)
        return taken

    assert drain() == []  # the consumer waits
    outbox.push([video(0, key=True)])
    assert loop.wakes == 1 and drain() == [0]
    # Audio alone does not wake the consumer until AUDIO_WAKE_S has passed ...
    for ms in (5, 26, 47):
        now[0] = ms / 1000
        outbox.push([audio(ms)])
    assert loop.wakes == 1
    # ... the next video frame takes it along, in order.
    now[0] = 0.033
    outbox.push([video(33)])
    assert loop.wakes == 2 and drain() == [5, 26, 33, 47]
    # With no video at all, audio still leaves within AUDIO_WAKE_S.
    start = now[0]
    ms = 68
    while loop.wakes == 2:
        now[0] += 0.021
        outbox.push([audio(ms)])
        ms += 21
    first_left = start + 0.021
    assert now[0] - first_left <= AUDIO_WAKE_S + 0.021 + 1e-9  # one period late at most
    assert len(drain()) == round((now[0] - start) / 0.021)
