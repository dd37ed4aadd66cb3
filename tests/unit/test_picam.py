"""picamera2 sources against the fake picamera2 (tests/fakes/picamera2): same API, real H.264."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import av
import av.logging
import numpy as np
import pytest

from streamer.exc import ConfigError, DeviceError
from streamer.hardware import picam
from streamer.hardware.sim import SimCamera, plane_view
from streamer.pipeline import Fanout, Pipeline
from streamer.settings import Settings
from tests.media_check import ffmpeg_log, read_counter

FAKES = Path(__file__).resolve().parents[1] / "fakes"
W, H, FPS = 328, 184, 30  # 328 is not a multiple of 64: the fake's buffers carry row padding


def _forget_picamera2() -> None:
    """Unimport the fakes (picamera2 and the libcamera it imports)."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("picamera2", "libcamera")]:
        del sys.modules[name]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The fake picamera2 as ``picamera2``, fresh (its knobs reset) for each test."""
    _forget_picamera2()
    monkeypatch.syspath_prepend(str(FAKES))
    import picamera2

    assert Path(picamera2.__file__ or "").is_relative_to(FAKES)
    try:
        yield picamera2
    finally:
        _forget_picamera2()


@dataclass
class Received:
    frames: list[tuple[bytes, bool, float, float]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def sink(self, data: bytes, keyframe: bool, captured: float) -> None:
        arrived = time.monotonic()
        with self.cond:
            self.frames.append((data, keyframe, captured, arrived))
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[tuple[bytes, bool, float, float]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.frames) >= n, timeout), len(self.frames)
            return list(self.frames)


def nal_types(data: bytes) -> list[int]:
    """NAL unit types of an Annex B access unit."""
    types, pos = [], 0
    while (pos := data.find(b"\x00\x00\x01", pos)) != -1:
        pos += 3
        if pos < len(data):
            types.append(data[pos] & 0x1F)
    return types


def test_encoded_delivers_decodable_h264_at_the_frame_rate(fake: ModuleType) -> None:
    got = Received()
    cam = picam.PicameraEncoded(W, H, FPS, 600)
    assert cam.encoder_name == "picamera2 H264Encoder (V4L2)"
    cam.start(got.sink)
    try:
        first = got.wait_for(1)[0]
        time.sleep(2.0 - (time.monotonic() - first[3]))
        frames = got.wait_for(1)
    finally:
        cam.stop()
    in_2s = [f for f in frames if f[3] - first[3] < 2.0]
    assert 2 * FPS - 4 <= len(in_2s) <= 2 * FPS + 1

    data, keyframe, _, _ = frames[0]
    assert keyframe
    types = nal_types(data)
    assert 7 in types and 8 in types and 5 in types
    assert types.index(7) < types.index(5) and types.index(8) < types.index(5)
    for data, keyframe, _, _ in frames:
        assert keyframe == (5 in nal_types(data))
        if keyframe:
            assert {7, 8} <= set(nal_types(data))  # SPS/PPS repeated in every keyframe
    keyframes = [i for i, f in enumerate(frames) if f[1]]
    assert keyframes == list(range(0, len(frames), cam.iperiod))

    captured = [f[2] for f in frames]
    steps = np.diff(captured)
    assert (steps > 0).all()
    assert abs(float(steps.mean()) - 1 / FPS) < 0.1 / FPS
    for _, _, cap, arrived in frames:  # the sensor clock is time.monotonic
        assert 0 <= arrived - cap < 0.25

    codec = av.CodecContext.create("h264", "r")
    decoded = []
    with ffmpeg_log() as logs:
        for data, *_ in frames:
            decoded += codec.decode(av.Packet(data))
        decoded += codec.decode(None)
    errors = [text for level, _, text in logs if level <= av.logging.ERROR]
    assert errors == []
    assert len(decoded) == len(frames)
    assert (decoded[0].width, decoded[0].height) == (W, H)
    counters = [
        read_counter(np.asarray(f.to_ndarray(format="yuv420p")[:H], np.uint8), H)
        for f in decoded[:10]
    ]
    numbers = [c for c in counters if c is not None]
    assert len(numbers) == len(counters) and numbers == sorted(numbers)


def test_outputframe_never_waits_for_a_full_queue(fake: ModuleType) -> None:
    """The 'network' never drains: the sink's bounded queue stays full, frames are dropped."""
    backlog: queue.Queue[bytes] = queue.Queue(maxsize=4)
    for _ in range(4):
        backlog.put(b"old")
    dropped = 0

    def sink(data: bytes, keyframe: bool, captured: float) -> None:
        nonlocal dropped
        try:
            backlog.put_nowait(data)
        except queue.Full:
            dropped += 1

    durations: list[float] = []
    done = threading.Event()
    cam = picam.PicameraEncoded(W, H, FPS, 600)
    cam.start(sink)
    try:
        output = cam._output
        original = output.outputframe

        def timed(*args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            original(*args, **kwargs)
            durations.append(time.perf_counter() - t0)
            if len(durations) >= 60:
                done.set()

        output.outputframe = timed  # the encoder thread looks it up on every frame
        assert done.wait(5.0)
    finally:
        cam.stop()
    assert backlog.full() and dropped >= 60
    assert max(durations[:60]) < 0.020, max(durations)


def test_a_failing_sink_does_not_stop_the_encoder(fake: ModuleType) -> None:
    got = Received()
    calls = 0

    def sink(data: bytes, keyframe: bool, captured: float) -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("bug in the sink")
        got.sink(data, keyframe, captured)

    cam = picam.PicameraEncoded(W, H, FPS, 600)
    cam.start(sink)
    try:
        got.wait_for(5)
        assert cam._output.sink_errors == 3
    finally:
        cam.stop()


def test_bitrate_and_keyframe_on_a_running_encoder(
    fake: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    ioctls: list[tuple[Any, int]] = []

    def fake_ioctl(vd: Any, bps: int) -> None:  # VIDIOC_S_CTRL on the fake device
        ioctls.append((vd, bps))
        vd.bitrate = bps

    monkeypatch.setattr(picam, "_v4l2_set_bitrate", fake_ioctl)
    got = Received()
    cam = picam.PicameraEncoded(W, H, FPS, 800)
    cam.set_bitrate(500)  # before start: recorded, used at start
    assert ioctls == []
    cam.start(got.sink)
    try:
        encoder = cam._encoder
        assert encoder.bitrate == 500_000 and encoder.iperiod == 2 * FPS and encoder.repeat
        cam.set_bitrate(300)
        assert ioctls == [(encoder.vd, 300_000)] and encoder.bitrate == 300_000

        got.wait_for(10)
        cam.request_keyframe()
        asked_at = len(got.wait_for(10))
        frames = got.wait_for(asked_at + 5)
        forced = [i for i, f in enumerate(frames) if f[1] and i > 0]
        assert forced and forced[0] <= asked_at + 4 < cam.iperiod
        assert {7, 8} <= set(nal_types(frames[forced[0]][0]))
    finally:
        cam.stop()
    cam.set_bitrate(200)  # stopped: recorded only
    assert len(ioctls) == 1 and cam.bitrate_kbps == 200


def test_encoded_refuses_a_pi_without_hardware_h264(fake: ModuleType) -> None:
    import picamera2.platform

    picamera2.platform._platform = picamera2.platform.Platform.PISP  # a Pi 5
    assert picam.hardware_h264_available() is False
    with pytest.raises(DeviceError, match="PicameraRaw"):
        picam.PicameraEncoded(W, H, FPS, 600).start(Received().sink)
    # and the camera was not left open
    raw = picam.PicameraRaw(W, H, FPS)
    raw.open()
    raw.close()


def test_raw_frames_are_exact_with_monotonic_capture_times(fake: ModuleType) -> None:
    cam = picam.PicameraRaw(W, H, FPS)
    cam.open()
    frames: list[tuple[av.VideoFrame, float, float]] = []
    try:
        for _ in range(20):  # more than buffer_count (6): requests are released
            frame, captured = cam.read()
            frames.append((frame, captured, time.monotonic()))
    finally:
        cam.close()
    for frame, captured, now in frames:
        assert (frame.width, frame.height, frame.format.name) == (W, H, "yuv420p")
        assert 0 <= now - captured < 0.25
    steps = np.diff([c for _, c, _ in frames])
    assert (steps > 0).all() and abs(float(np.median(steps)) - 1 / FPS) < 0.2 / FPS

    # The row padding is gone: the frame is one of the sim camera's pictures, exactly.
    sim = SimCamera(W, H, FPS)
    frame = frames[0][0]
    y, u, v = (plane_view(p) for p in frame.planes)
    got = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)])
    matches = [n for n in range(120) if np.array_equal(sim.picture(n).reshape(-1), got)]
    assert len(matches) == 1


def test_raw_read_gives_up_when_the_sensor_stalls(
    fake: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    import picamera2.picamera2 as fake_module

    monkeypatch.setattr(picam, "READ_TIMEOUT", 0.3)
    cam = picam.PicameraRaw(W, H, FPS)
    cam.open()
    try:
        cam.read()
        fake_module.fake_stalled = True
        with pytest.raises(DeviceError, match=r"no frame for 0\.3 s"):
            cam.read()
        fake_module.fake_stalled = False
        for _ in range(10):  # the abandoned request was not leaked
            cam.read()
    finally:
        cam.close()


def test_no_camera(fake: ModuleType) -> None:
    import picamera2.picamera2 as fake_module

    fake_module.fake_cameras = []
    openers: list[Callable[[], object]] = [
        lambda: picam.PicameraRaw(W, H, FPS).open(),
        lambda: picam.PicameraEncoded(W, H, FPS, 600).start(Received().sink),
    ]
    for open_it in openers:
        with pytest.raises(DeviceError) as err:
            open_it()
        text = err.value.message
        assert "camera 0" in text and "no camera detected" in text
        assert "rpicam-hello --list-cameras" in text and "libcamera-hello --list-cameras" in text
        assert "ribbon cable" in text and "camera_auto_detect=1" in text
        assert "/boot/firmware/config.txt" in text


def test_no_such_camera_number(fake: ModuleType) -> None:
    with pytest.raises(DeviceError, match=r"camera 1: no such camera \(detected 0: imx708\)"):
        picam.PicameraRaw(W, H, FPS, camera_num=1).open()


def test_camera_busy(fake: ModuleType) -> None:
    first = picam.PicameraRaw(W, H, FPS)
    first.open()
    try:
        with pytest.raises(DeviceError) as err:
            picam.PicameraEncoded(W, H, FPS, 600).start(Received().sink)
        text = err.value.message
        assert "camera 0 (imx708) could not be opened" in text
        assert "Device or resource busy" in text
        assert "another process" in text and "`video` group" in text
    finally:
        first.close()


def test_picamera2_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _forget_picamera2()
    monkeypatch.setitem(sys.modules, "picamera2", None)
    openers: list[Callable[[], object]] = [
        lambda: picam.PicameraRaw(W, H, FPS).open(),
        lambda: picam.PicameraEncoded(W, H, FPS, 600).start(Received().sink),
        picam.hardware_h264_available,
    ]
    for open_it in openers:
        with pytest.raises(DeviceError) as err:
            open_it()
        assert "sudo apt install python3-picamera2" in err.value.message
        assert "--system-site-packages" in err.value.message


# --- rotate: 180 by the camera itself (libcamera transform), the rest by the filters ----


def planes_of(frame: av.VideoFrame) -> list[np.ndarray]:  # type: ignore[type-arg]
    return [np.array(plane_view(p)) for p in frame.planes]


def reference_planes(n: int) -> list[np.ndarray]:  # type: ignore[type-arg]
    flat = SimCamera(W, H, FPS).picture(n).reshape(-1)
    q = W * H // 4
    return [
        flat[: W * H].reshape(H, W),
        flat[W * H : W * H + q].reshape(H // 2, W // 2),
        flat[W * H + q :].reshape(H // 2, W // 2),
    ]


def test_raw_180_is_the_picture_turned_by_the_camera(fake: ModuleType) -> None:
    cam = picam.PicameraRaw(W, H, FPS, rotate=180)
    cam.open()
    try:
        frames = [cam.read()[0] for _ in range(3)]
    finally:
        cam.close()
    for frame in frames:
        assert (frame.width, frame.height) == (W, H)
        got = planes_of(frame)
        assert read_counter(got[0], H) is None  # upside down: not where it was
        n = read_counter(np.rot90(got[0], 2), H)
        assert n is not None
        for plane, ref in zip(got, reference_planes(n), strict=True):
            assert np.array_equal(plane, np.rot90(ref, 2))  # exactly the sim picture, turned


def test_encoded_180_sends_the_picture_turned(fake: ModuleType) -> None:
    got = Received()
    cam = picam.PicameraEncoded(W, H, FPS, 2000, rotate=180)
    cam.start(got.sink)
    try:
        frames = got.wait_for(8)
    finally:
        cam.stop()
    codec = av.CodecContext.create("h264", "r")
    decoded = [f for data, *_ in frames for f in codec.decode(av.Packet(data))]
    decoded += codec.decode(None)
    assert decoded and (decoded[0].width, decoded[0].height) == (W, H)
    counters = []
    for frame in decoded:
        y = planes_of(frame)[0]
        n = read_counter(np.rot90(y, 2), H)
        assert n is not None and read_counter(y, H) is None
        counters.append(n)
        ref = reference_planes(n)[0].astype(np.int16)
        turned = float(np.abs(y - np.rot90(ref, 2)).mean())
        unturned = float(np.abs(y - ref).mean())
        assert turned < 6 and turned < unturned / 4, (turned, unturned)
    assert counters == sorted(counters)


def test_a_sensor_that_cannot_flip_is_a_clear_error(fake: ModuleType) -> None:
    import picamera2.picamera2 as fake_module

    fake_module.fake_can_flip = False
    fake_module.fake_cameras = [dict(fake_module.fake_cameras[0], Rotation=0)]  # type: ignore[misc]
    with pytest.raises(DeviceError, match="cannot turn its picture by 180 degrees"):
        picam.PicameraRaw(W, H, FPS, rotate=180).open()
    cam = picam.PicameraRaw(W, H, FPS)  # and the camera was closed again
    cam.open()
    cam.close()


def test_the_camera_turns_by_180_only(fake: ModuleType) -> None:
    for degrees in (90, 270, 45):
        with pytest.raises(ConfigError, match="0 or 180"):
            picam.PicameraRaw(W, H, FPS, rotate=degrees)
        with pytest.raises(ConfigError, match="0 or 180"):
            picam.PicameraEncoded(W, H, FPS, 600, rotate=degrees)


def test_the_fake_takes_only_a_libcamera_transform_and_drops_a_transpose(
    fake: ModuleType,
) -> None:
    import libcamera

    picam2 = fake.Picamera2()
    try:
        config = picam2.create_video_configuration(main={"format": "YUV420"})
        assert config["transform"] == libcamera.Transform()  # identity, as the real default
        with pytest.raises(RuntimeError, match="Transform has incorrect type"):
            picam2.configure(config | {"transform": "hvflip"})
        picam2.configure(config | {"transform": libcamera.Transform(rotation=90)})
        settled = picam2.camera_configuration()["transform"]
        assert settled == libcamera.Transform(vflip=1)  # rot90 = vflip + transpose; no transpose
        assert str(libcamera.Transform(hflip=1, vflip=1)) == "<libcamera.Transform 'hvflip'>"
    finally:
        picam2.close()


def pi_pipeline(rotate: int, filters: tuple[str, ...] = (), platform: str = "VC4") -> Pipeline:
    import picamera2.platform

    picamera2.platform._platform = picamera2.platform.Platform[platform]
    settings = Settings(
        urls=["rtmp://h/live/k"],
        camera="picamera2",
        microphone="none",
        width=W,
        height=H,
        fps=FPS,
        rotate=rotate,
        filters=filters,
    )
    return Pipeline(settings, Fanout())


@pytest.mark.parametrize("platform", ["VC4", "PISP"])
def test_180_on_a_pi_camera_uses_no_filter_graph(fake: ModuleType, platform: str) -> None:
    pipeline = pi_pipeline(180, platform=platform)
    assert pipeline.filters is None
    source = pipeline.encoded if platform == "VC4" else pipeline.camera
    assert isinstance(source, picam.PicameraEncoded | picam.PicameraRaw)
    assert source.rotate == 180
    assert (pipeline.video.config.width, pipeline.video.config.height) == (W, H)


def test_180_with_filters_the_camera_turns_and_the_graph_filters(fake: ModuleType) -> None:
    pipeline = pi_pipeline(180, ("mirror",))
    assert isinstance(pipeline.camera, picam.PicameraRaw) and pipeline.camera.rotate == 180
    assert pipeline.filters is not None and pipeline.filters.names == ["mirror"]


@pytest.mark.parametrize("degrees", [90, 270])
def test_a_quarter_turn_on_a_pi_camera_takes_the_raw_path_and_the_graph(
    fake: ModuleType, degrees: int
) -> None:
    pipeline = pi_pipeline(degrees)
    assert pipeline.encoded is None  # not the hardware encoder: the graph needs raw frames
    assert isinstance(pipeline.camera, picam.PicameraRaw) and pipeline.camera.rotate == 0
    assert pipeline.filters is not None and pipeline.filters.names == [f"rotate={degrees}"]
    assert (pipeline.video.config.width, pipeline.video.config.height) == (H, W)
    assert pipeline.video.name == "libx264"
