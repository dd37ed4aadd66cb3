"""libx264 through PyAV: live bitrate changes from another thread, and forced keyframes."""

from __future__ import annotations

import random
import threading

import av
import numpy as np
import numpy.typing as npt
import pytest

from streamer.encode.h264 import H264Encoder
from streamer.hardware.sim import SimCamera

W, H, FPS = 640, 360, 30


@pytest.fixture(scope="module")
def pictures() -> list[npt.NDArray[np.uint8]]:
    """One second of the sim picture with light sensor-like noise.

    The clean sim picture needs only ~450 kbit/s at 640x360, so at 1500 kbit/s
    the encoder would not be rate-limited and a drop to 400 would barely show;
    with noise (values 0..7 added, as a real sensor gives) it fills 1500 kbit/s.
    """
    camera = SimCamera(W, H, FPS)
    rng = np.random.default_rng(1)
    out = []
    for n in range(FPS):
        noise = rng.integers(0, 8, size=(H * 3 // 2, W), dtype=np.int16)
        out.append(np.clip(camera.picture(n) + noise, 0, 255).astype(np.uint8))
    return out


class Run:
    """Feeds frames at media pace (pts), counting bytes per media second."""

    def __init__(self, enc: H264Encoder, pictures: list[npt.NDArray[np.uint8]]) -> None:
        self.enc, self.pictures = enc, pictures
        self.n = 0
        self.kbps: list[float] = []
        self._bytes = 0

    def frame(self) -> list[bool]:
        pic = self.pictures[self.n % len(self.pictures)]
        frame = av.VideoFrame.from_ndarray(pic, format="yuv420p")
        packets = self.enc.encode(frame, self.n * 1000 // FPS)
        self.n += 1
        self._bytes += sum(len(p.data) for p in packets)
        return [p.keyframe for p in packets]

    def seconds(self, secs: int) -> None:
        for _ in range(secs):
            self._bytes = 0
            for _ in range(FPS):
                self.frame()
            self.kbps.append(self._bytes * 8 / 1000)


def run_with_change(pictures: list[npt.NDArray[np.uint8]], new_kbps: int | None) -> Run:
    enc = H264Encoder(W, H, FPS, 1500)
    run = Run(enc, pictures)
    run.seconds(4)
    if new_kbps is not None:
        enc.set_bitrate(new_kbps)
        assert enc.current_bitrate_kbps == 1500  # pending until the encoding thread runs
    run.seconds(4)
    return run


def test_set_bitrate_lowers_the_output_within_two_seconds(
    pictures: list[npt.NDArray[np.uint8]],
) -> None:
    run = run_with_change(pictures, 400)
    first = sum(run.kbps[:4]) / 4
    last = sum(run.kbps[-2:]) / 2
    # Measured: first ~1550 kbit/s, then ~800 (the switch second), ~400, ~410, ~400.
    assert first > 1200, run.kbps  # rate-limited at 1500, or this test would prove nothing
    assert last < 0.5 * first, run.kbps
    assert last < 600, run.kbps
    assert run.enc.current_bitrate_kbps == 400
    assert run.enc.config.bitrate_kbps == 1500  # config keeps describing the open


def test_without_set_bitrate_the_rate_stays(pictures: list[npt.NDArray[np.uint8]]) -> None:
    """The control for the test above: the same run without the change keeps its rate."""
    run = run_with_change(pictures, None)
    first = sum(run.kbps[:4]) / 4
    last = sum(run.kbps[-2:]) / 2
    assert last > 0.8 * first, run.kbps


def test_set_bitrate_is_clamped_to_the_vbv_ceiling_and_validated(
    pictures: list[npt.NDArray[np.uint8]],
) -> None:
    enc = H264Encoder(W, H, FPS, 800)
    run = Run(enc, pictures)
    assert enc.max_bitrate_kbps == 800
    enc.set_bitrate(5000)
    run.frame()
    assert enc.current_bitrate_kbps == 800
    enc.set_bitrate(300)
    enc.set_bitrate(350)  # the last request before encode wins
    run.frame()
    assert enc.current_bitrate_kbps == 350
    with pytest.raises(ValueError):
        enc.set_bitrate(0)
    enc.set_bitrate(500)
    enc.encode(None)  # a flush applies a pending change too
    assert enc.current_bitrate_kbps == 500


def test_set_bitrate_from_another_thread_while_encoding(
    pictures: list[npt.NDArray[np.uint8]],
) -> None:
    enc = H264Encoder(W, H, FPS, 1500)
    run = Run(enc, pictures)
    stop = threading.Event()
    errors: list[BaseException] = []
    calls = 0

    def hammer() -> None:
        nonlocal calls
        rng = random.Random(2)
        try:
            while not stop.is_set():
                enc.set_bitrate(rng.randint(200, 2000))
                if calls % 50 == 0:
                    enc.request_keyframe()
                calls += 1
        except BaseException as exc:  # pragma: no cover - the failure we look for
            errors.append(exc)

    thread = threading.Thread(target=hammer, daemon=True)
    thread.start()
    try:
        for _ in range(60):
            assert len(run.frame()) == 1  # zerolatency: one packet per frame, never an error
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not errors
    assert calls > 60
    assert 200 <= enc.current_bitrate_kbps <= 1500
    enc.set_bitrate(700)
    run.frame()
    assert enc.current_bitrate_kbps == 700


def nal_types(avcc: bytes) -> list[int]:
    types, i = [], 0
    while i + 4 <= len(avcc):
        size = int.from_bytes(avcc[i : i + 4], "big")
        types.append(avcc[i + 4] & 0x1F)
        i += 4 + size
    return types


def test_request_keyframe_makes_the_next_packet_an_idr(
    pictures: list[npt.NDArray[np.uint8]],
) -> None:
    enc = H264Encoder(W, H, FPS, 1500)
    run = Run(enc, pictures)
    assert run.frame() == [True]  # the GOP's own first frame
    assert [run.frame() for _ in range(10)] == [[False]] * 10
    enc.request_keyframe()
    frame = av.VideoFrame.from_ndarray(pictures[0], format="yuv420p")
    packets = enc.encode(frame, 1000)
    assert len(packets) == 1 and packets[0].keyframe
    assert 5 in nal_types(packets[0].data)  # an IDR slice, not just an I slice
    assert not enc.keyframe_requested
    frame = av.VideoFrame.from_ndarray(pictures[1], format="yuv420p")
    assert [p.keyframe for p in enc.encode(frame, 1033)] == [False]


RTMP_MAX_MESSAGE = 1024 * 1024  # nginx-rtmp's default max_message: larger drops the publisher
FLV_VIDEO_HEADER = 5  # frame type/codec, AVC packet type, composition time


@pytest.mark.parametrize("kbps", [8000, 50000])
def test_the_biggest_1080p_keyframe_fits_one_rtmp_message(kbps: int) -> None:
    # Pure noise is the most detailed picture there is: its keyframe fills the VBV buffer.
    encoder = H264Encoder(1920, 1080, 30, kbps)
    rng = np.random.default_rng(3)
    sizes = []
    for n in range(6):
        picture = rng.integers(0, 256, (1080 * 3 // 2, 1920), dtype=np.uint8)
        if n % 3 == 0:
            encoder.request_keyframe()
        frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
        sizes += [(len(p.data), p.keyframe) for p in encoder.encode(frame, n * 33)]
    biggest = max(size for size, key in sizes if key)
    print(f"{kbps} kbit/s: biggest keyframe {biggest} bytes")
    assert biggest + FLV_VIDEO_HEADER < 0.8 * RTMP_MAX_MESSAGE
