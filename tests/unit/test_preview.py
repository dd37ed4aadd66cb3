"""The status page's live picture: what a viewer of /snapshot.jpg sees, decoded."""

from __future__ import annotations

import asyncio
import threading
import time
from fractions import Fraction

import av
import numpy as np
import numpy.typing as npt
import pytest
from structlog.testing import capture_logs

from streamer.clock import MediaClock
from streamer.device import Device
from streamer.encode.camera import CameraEncoder
from streamer.encode.h264 import H264Encoder
from streamer.hardware.sim import SimCamera
from streamer.media import Kind, Packet, VideoConfig
from streamer.pipeline import Fanout, Pipeline
from streamer.preview import Preview, preview_size
from streamer.settings import Settings
from tests.lifecycle_fakes import FakeClock, FakeServer, Pipelines, publishers, quick, until
from tests.unit.test_camera_encoder import Camera

pytestmark = pytest.mark.timeout(30)

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)
RGB = tuple[int, int, int]


def halves(width: int, height: int, left: RGB = RED, right: RGB = BLUE) -> av.VideoFrame:
    """A yuv420p frame, its left half one colour and its right half another."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:, : width // 2] = left
    rgb[:, width // 2 :] = right
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def seen(jpeg: bytes | None) -> npt.NDArray[np.uint8]:
    """What a browser shows: the JPEG decoded to RGB (height, width, 3)."""
    assert jpeg is not None and jpeg[:2] == b"\xff\xd8", "not a JPEG"
    frames = av.CodecContext.create("mjpeg", "r").decode(av.Packet(jpeg))
    assert len(frames) == 1
    picture: npt.NDArray[np.uint8] = np.asarray(frames[0].to_ndarray(format="rgb24"), np.uint8)
    return picture


def colour_at(picture: npt.NDArray[np.uint8], x: slice, y: slice) -> RGB:
    r, g, b = (round(float(c)) for c in picture[y, x].reshape(-1, 3).mean(axis=0))
    return r, g, b


def assert_halves(picture: npt.NDArray[np.uint8], left: RGB = RED, right: RGB = BLUE) -> None:
    """Each half its colour (within JPEG's error), away from the edge between them."""
    h, w = picture.shape[:2]
    middle = slice(h // 8, h - h // 8)
    assert colour_at(picture, slice(w // 16, w // 2 - w // 16), middle) == pytest.approx(
        left, abs=12
    )
    assert colour_at(picture, slice(w // 2 + w // 16, w - w // 16), middle) == pytest.approx(
        right, abs=12
    )


def h264_packets(frame: av.VideoFrame, count: int = 3) -> list[Packet]:
    """What our own encoder makes of ``count`` copies of one picture (a keyframe first)."""
    encoder = H264Encoder(frame.width, frame.height, 30.0, 2000)
    packets: list[Packet] = []
    for n in range(count):
        packets += encoder.encode(frame, n * 33)
    return packets + encoder.encode(None)


# -- raw frames ---------------------------------------------------------------------


def test_a_720p_frame_becomes_a_640x360_jpeg_with_each_colour_in_its_place() -> None:
    preview = Preview()
    preview.offer_frame(halves(1280, 720))
    picture = seen(preview.jpeg(100.0))
    assert picture.shape == (360, 640, 3)
    assert_halves(picture)
    assert preview.encodes == 1


def test_a_frame_narrower_than_640_px_is_not_upscaled() -> None:
    preview = Preview()
    preview.offer_frame(halves(320, 240, GREEN, RED))
    picture = seen(preview.jpeg(100.0))
    assert picture.shape == (240, 320, 3)
    assert_halves(picture, GREEN, RED)


def test_video_black_and_white_stay_black_and_white_in_the_full_range_jpeg() -> None:
    """Video's levels 16..235 are stretched to JPEG's 0..255, else the picture looks washed out."""
    picture = np.full((720 * 3 // 2, 1280), 128, np.uint8)
    picture[:720, :640], picture[:720, 640:] = 16, 235
    preview = Preview()
    preview.offer_frame(av.VideoFrame.from_ndarray(picture, format="yuv420p"))
    assert_halves(seen(preview.jpeg(100.0)), (0, 0, 0), (255, 255, 255))


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1920, 1080), (640, 360)),
        ((1280, 720), (640, 360)),
        ((1280, 1024), (640, 512)),
        ((640, 480), (640, 480)),
        ((320, 180), (320, 180)),
        ((1000, 563), (640, 360)),  # 360.3: rounded, even
        ((333, 201), (332, 200)),  # odd sides: one pixel less, never more
    ],
)
def test_the_preview_size_keeps_the_aspect_with_even_sides(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert preview_size(*size) == expected


def test_nothing_captured_yet_gives_none_and_costs_nothing() -> None:
    preview = Preview()
    assert preview.jpeg(100.0) is None
    preview.offer_packets([Packet(Kind.AUDIO, 0, 0, True, b"aac")])
    preview.offer_packets([Packet(Kind.VIDEO, 0, 0, False, b"not a keyframe")])
    assert preview.jpeg(100.1) is None
    assert preview.encodes == 0 and preview.errors == 0
    preview.offer_frame(halves(64, 48))  # the first picture is made at once, no waiting
    assert preview.jpeg(100.2) is not None and preview.encodes == 1


def test_fifty_viewers_within_a_second_cost_one_encode_and_a_new_second_one_more() -> None:
    preview = Preview()
    preview.offer_frame(halves(1280, 720))
    first = preview.jpeg(100.0)
    later = halves(1280, 720, BLUE, RED)
    for i in range(50):
        preview.offer_frame(later)  # the camera goes on meanwhile
        assert preview.jpeg(100.0 + i * 0.019) is first
    assert preview.encodes == 1
    assert_halves(seen(first))

    second = preview.jpeg(101.0)
    assert preview.encodes == 2
    assert_halves(seen(second), BLUE, RED)  # the latest picture


def test_a_picture_that_has_not_changed_is_not_encoded_again() -> None:
    preview = Preview()
    preview.offer_frame(halves(1280, 720))
    first = preview.jpeg(100.0)
    assert preview.jpeg(101.5) is first and preview.jpeg(103.0) is first
    assert preview.encodes == 1


def test_viewers_asking_at_once_wait_for_one_encode_and_share_it() -> None:
    preview = Preview()
    preview.offer_frame(halves(1280, 720))
    start = threading.Barrier(8)
    results: list[bytes | None] = []

    def ask() -> None:
        start.wait()
        results.append(preview.jpeg(100.0))

    askers = [threading.Thread(target=ask) for _ in range(8)]
    for t in askers:
        t.start()
    for t in askers:
        t.join(10)
    assert len(results) == 8 and results[0] is not None
    assert all(r is results[0] for r in results)
    assert preview.encodes == 1


# -- keyframes (the camera's own encoder) ------------------------------------------------


def test_the_latest_keyframe_alone_gives_the_picture() -> None:
    preview = Preview()
    first = h264_packets(halves(1280, 720, GREEN, RED))
    latest = h264_packets(halves(1280, 720))
    preview.offer_packets(first)
    for packet in latest:  # one at a time, as the encoder hands them over
        preview.offer_packets([packet])
    assert sum(p.keyframe for p in first + latest) == 2
    picture = seen(preview.jpeg(100.0))
    assert picture.shape == (360, 640, 3)
    assert_halves(picture)  # the latest keyframe's picture, not the first one's


def test_the_hardware_encoders_keyframes_give_the_picture() -> None:
    """As on a Pi: Annex B from the camera's encoder through CameraEncoder to the preview."""
    preview = Preview()
    encoder = CameraEncoder(Camera(), MediaClock(0.0), preview.offer_packets, 800)
    cc = av.CodecContext.create("libx264", "w")
    cc.width, cc.height, cc.pix_fmt = 320, 180, "yuv420p"
    cc.time_base = Fraction(1, 30)
    cc.options = {"preset": "ultrafast", "tune": "zerolatency"}
    frame = halves(320, 180, RED, GREEN)
    for n in range(3):
        frame.pts = n
        for p in cc.encode(frame):
            encoder.on_frame(bytes(p), bool(p.is_keyframe), n / 30)
    assert encoder.config_ready.is_set()
    picture = seen(preview.jpeg(100.0))
    assert picture.shape == (180, 320, 3)
    assert_halves(picture, RED, GREEN)


def test_a_raw_frame_is_preferred_to_a_keyframe_unless_it_stopped_coming() -> None:
    now = [0.0]
    preview = Preview(clock=lambda: now[0])
    preview.offer_frame(halves(640, 360, RED, BLUE))
    preview.offer_packets(h264_packets(halves(640, 360, GREEN, RED)))  # the same moment
    assert_halves(seen(preview.jpeg(100.0)), RED, BLUE)

    now[0] = 2.0  # keyframes still come, raw frames stopped 2 s ago
    preview.offer_packets(h264_packets(halves(640, 360, GREEN, RED)))
    assert_halves(seen(preview.jpeg(101.0)), GREEN, RED)
    assert preview.encodes == 2


def test_a_keyframe_that_does_not_decode_gives_none_and_one_log_line() -> None:
    preview = Preview()
    good = h264_packets(halves(320, 180))[0]
    assert good.config is not None
    garbage = Packet(Kind.VIDEO, 0, 0, True, b"\x00\x00\x00\x05\x65garbage!", good.config)
    bad_setup = Packet(
        Kind.VIDEO, 33, 33, True, good.data, VideoConfig(320, 180, 30.0, 800, b"\x01xx", "hw")
    )
    with capture_logs() as logs:
        preview.offer_packets([garbage])
        assert preview.jpeg(100.0) is None
        assert preview.jpeg(101.0) is None  # the same keyframe is not tried again
        preview.offer_packets([bad_setup])
        assert preview.jpeg(102.0) is None
    assert preview.errors == 2 and preview.encodes == 0
    failures = [e for e in logs if e["event"] == "preview picture failed"]
    assert len(failures) == 1 and failures[0]["log_level"] == "warning"

    preview.offer_packets([good])  # a good keyframe later: the picture is back
    assert_halves(seen(preview.jpeg(103.0)))


# -- threads --------------------------------------------------------------------------


def test_a_camera_offering_while_viewers_ask_never_fails() -> None:
    preview = Preview()
    frames = [halves(640, 360), halves(640, 360, BLUE, RED), halves(1280, 720, GREEN, RED)]
    keyframes = h264_packets(halves(320, 180), 1)
    stop = threading.Event()
    errors: list[BaseException] = []
    offered = [0]

    def camera() -> None:
        try:
            while not stop.is_set():
                preview.offer_frame(frames[offered[0] % len(frames)])
                preview.offer_packets(keyframes)
                offered[0] += 1
        except BaseException as exc:
            errors.append(exc)

    asked: list[int] = []
    seconds = iter(range(10**6))  # every ask a second after the one before: each may encode

    def viewer() -> None:
        try:
            deadline, n = time.monotonic() + 0.5, 0
            while time.monotonic() < deadline:
                picture = seen(preview.jpeg(float(next(seconds))))
                assert picture.shape[1] == 640
                n += 1
            asked.append(n)
        except BaseException as exc:
            errors.append(exc)

    capture = threading.Thread(target=camera)
    viewers = [threading.Thread(target=viewer) for _ in range(3)]
    for t in [capture, *viewers]:
        t.start()
    for t in viewers:
        t.join(10)
    stop.set()
    capture.join(10)
    assert not errors
    assert len(asked) == 3 and sum(asked) > 3 and offered[0] > 3
    assert preview.errors == 0 and 0 < preview.encodes <= sum(asked)


# -- in the pipeline and the device ---------------------------------------------------


def test_the_pipeline_shows_the_sim_cameras_picture() -> None:
    width, height = 320, 180
    settings = Settings(
        urls=["rtmp://h/live/k"],
        camera="sim",
        microphone="none",
        width=width,
        height=height,
        fps=30.0,
        encoder="libx264",
    )
    pipeline = Pipeline(settings, Fanout())
    pipeline.start()
    try:
        deadline = time.monotonic() + 10
        jpeg = None
        while jpeg is None:
            assert time.monotonic() < deadline, "no preview within 10 s"
            jpeg = pipeline.preview.jpeg(time.monotonic())
            time.sleep(0.01)
        pipeline.check()
    finally:
        asyncio.run(pipeline.stop())
    picture = seen(jpeg).astype(np.int16)
    assert picture.shape == (height, width, 3)
    sim = SimCamera(width, height, 30.0).picture(0)
    expected = av.VideoFrame.from_ndarray(sim, format="yuv420p").to_ndarray(format="rgb24")
    # The bottom rows: the luma ramp over the colour bars, the same in every frame.
    bottom = slice(height - height // 5, height)
    difference = np.abs(picture[bottom] - expected[bottom].astype(np.int16)).mean()
    assert difference < 10, f"mean difference {difference:.1f} from the sim pattern"


def test_the_device_gives_a_picture_while_capturing_and_none_when_idle() -> None:
    async def scenario() -> None:
        s = quick()
        servers = {t.name.replace(".", "_"): FakeServer() for t in s.destinations}
        device = Device(
            s,
            pipeline_factory=Pipelines(),
            publisher_factory=publishers(**servers),
            clock=FakeClock(),
            tick=0.002,
        )
        assert await asyncio.to_thread(device.preview_jpeg) is None  # idle
        shutdown = asyncio.Event()
        task = asyncio.create_task(device.run(shutdown))
        try:
            await until(lambda: device.pipeline is not None, "capture")
            pipeline = device.pipeline
            assert pipeline is not None
            pipeline.preview.offer_frame(halves(1280, 720))
            picture = seen(await asyncio.to_thread(device.preview_jpeg))
            assert picture.shape == (360, 640, 3)
            assert_halves(picture)
        finally:
            shutdown.set()
            await asyncio.wait({task}, timeout=2)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert device.pipeline is None
        assert await asyncio.to_thread(device.preview_jpeg) is None

    asyncio.run(scenario())
