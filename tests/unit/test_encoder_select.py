"""``--encoder auto|v4l2m2m|libx264``: fallback, clear errors, and the V4L2 encoder's own rules.

This machine has no V4L2 H.264 encoder (opening h264_v4l2m2m fails), as a
Pi 5 or a laptop. The V4L2 encoder's behaviour is tested against a fake
codec context that acts as FFmpeg's h264_v4l2m2m on a Pi 4 does for what
the encoder uses, backed by a real libx264 so the packets decode.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from structlog.testing import capture_logs

from streamer.encode import select
from streamer.encode.flv import NAL_PPS, NAL_SPS, split_annexb
from streamer.encode.h264 import H264Encoder
from streamer.encode.select import (
    V4L2H264Encoder,
    open_h264,
    ready_config,
    split_avcc,
    v4l2m2m_unavailable_reason,
)
from streamer.exc import ConfigError, DeviceError
from streamer.media import Packet

W, H, FPS = 320, 240, 10


class FakePacket:
    """What the encoder reads of an ``av.Packet``: pts, dts, is_keyframe, bytes()."""

    def __init__(self, data: bytes, pts: int | None, dts: int | None, keyframe: bool) -> None:
        self.data, self.pts, self.dts, self.is_keyframe = data, pts, dts, keyframe

    def __bytes__(self) -> bytes:
        return self.data


class FakeV4L2Context:
    """PyAV's h264_v4l2m2m codec context as it behaves with bcm2835-codec (Pi 4).

    - Settings count at ``open()`` only; ``bit_rate`` set later is ignored.
    - ``gop_size`` is ignored ("Failed to set gop size"): an IDR comes first
      and then only when a frame has ``pict_type`` I (FORCE_KEY_FRAME).
    - No extradata, even with ``global_header``; Annex B output; SPS/PPS only
      once, joined to the first keyframe (``joined``, the Pi since 2020) or
      in a buffer of their own before it (``separate``).
    - Only ``yuv420p`` on the raw side; a failing device fails ``open()``
      with ``av.error.ArgumentError`` (EINVAL), as FFmpeg does; ``refuse``
      fails it with ENOMEM (no memory left for the buffers, VIDIOC_REQBUFS).
    - ``delay``: buffers in flight in the device's queues, so a packet comes
      out ``delay`` frames after its frame went in; ``encode(None)`` drains
      them (V4L2_ENC_CMD_STOP), after which the context takes no more frames
      (EOF, as FFmpeg's encoders once drained).
    """

    def __init__(
        self,
        mode: str = "joined",
        fail_above: int | None = None,
        *,
        delay: int = 0,
        refuse: bool = False,
    ) -> None:
        self.mode, self.fail_above = mode, fail_above
        self.delay, self.refuse = delay, refuse
        self._in_flight: list[FakePacket] = []
        self.width = self.height = 0
        self.pix_fmt: str | None = None
        self.time_base: Fraction | None = None
        self.framerate: Fraction | None = None
        self.bit_rate = 0
        self.gop_size = 12
        self.max_b_frames = 0
        self.flags = 0
        self.options: dict[str, str] = {}
        self.extradata: bytes | None = None
        self.opened_bit_rate: int | None = None
        self.forced = 0
        self.broken = False  # the device failing mid-stream (EIO)
        self._inner: Any = None
        self._headers_out = False

    def open(self) -> None:
        if self.refuse:
            raise av.error.MemoryError(12, "Cannot allocate memory")
        if self.fail_above is not None and self.width > self.fail_above:
            raise av.error.ArgumentError(22, "Invalid argument")
        if self.pix_fmt != "yuv420p" or self.max_b_frames:
            raise av.error.ArgumentError(22, "Invalid argument")
        inner = av.CodecContext.create("libx264", "w")
        inner.width, inner.height = self.width, self.height
        inner.pix_fmt = "yuv420p"
        assert self.time_base is not None
        inner.time_base = self.time_base
        if self.framerate is not None:
            inner.framerate = self.framerate
        inner.bit_rate = self.bit_rate
        inner.max_b_frames = 0
        inner.options = {
            "preset": "ultrafast",
            "tune": "zerolatency",
            "forced-idr": "1",
            "x264-params": "keyint=100000:min-keyint=100000:scenecut=0",
        }
        inner.open()  # no global_header: SPS/PPS in band
        self._inner = inner
        self.opened_bit_rate = self.bit_rate

    def encode(self, frame: av.VideoFrame | None) -> list[FakePacket]:
        assert self._inner is not None, "encode before open"
        if self.broken:
            raise av.error.OSError(5, "Input/output error")
        if frame is not None and frame.pict_type == av.video.frame.PictureType.I:
            self.forced += 1
        out = []
        for p in self._inner.encode(frame):
            nals = split_annexb(bytes(p))
            params = [n for n in nals if n[0] & 0x1F in (NAL_SPS, NAL_PPS)]
            rest = [n for n in nals if n[0] & 0x1F not in (NAL_SPS, NAL_PPS)]
            if self._headers_out:
                params = []
            elif params:
                self._headers_out = True
            if params and self.mode == "separate":
                out.append(FakePacket(_annexb(params), p.pts, p.dts, False))
                params = []
            out.append(FakePacket(_annexb(params + rest), p.pts, p.dts, bool(p.is_keyframe)))
        self._in_flight += out
        if frame is None:  # drained
            out, self._in_flight = self._in_flight, []
            return out
        ready = max(0, len(self._in_flight) - self.delay)
        out, self._in_flight = self._in_flight[:ready], self._in_flight[ready:]
        return out


def _annexb(nals: list[bytes]) -> bytes:
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


class Factory:
    """Stands in for ``av.CodecContext.create``; keeps every context it made.

    ``refuse_from``: the contexts from that many made on fail to open (ENOMEM).
    """

    def __init__(
        self,
        mode: str = "joined",
        fail_above: int | None = None,
        *,
        delay: int = 0,
        refuse_from: int | None = None,
    ) -> None:
        self.mode, self.fail_above = mode, fail_above
        self.delay, self.refuse_from = delay, refuse_from
        self.made: list[FakeV4L2Context] = []

    def __call__(self, name: str, mode: str) -> FakeV4L2Context:
        assert (name, mode) == ("h264_v4l2m2m", "w")
        refuse = self.refuse_from is not None and len(self.made) >= self.refuse_from
        ctx = FakeV4L2Context(self.mode, self.fail_above, delay=self.delay, refuse=refuse)
        self.made.append(ctx)
        return ctx


@pytest.fixture
def no_hardware() -> str:
    reason = v4l2m2m_unavailable_reason()
    if reason is None:
        pytest.skip("this machine has a V4L2 H.264 encoder")
    return reason


@pytest.fixture(autouse=True)
def _fresh_probe_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(select, "_probe_cache", {})
    yield


def frames(n: int) -> Iterator[av.VideoFrame]:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, size=(H * 3 // 2, W), dtype=np.uint8)
    for i in range(n):
        yield av.VideoFrame.from_ndarray(np.roll(base, i * 4, axis=1), format="yuv420p")


def encode_all(enc: H264Encoder, n: int) -> list[Packet]:
    packets: list[Packet] = []
    for i, frame in enumerate(frames(n)):
        packets += enc.encode(frame, i * 1000 // FPS)
    return packets + enc.encode(None)


def decode(avc_config: bytes, packets: list[Packet]) -> int:
    dec = av.CodecContext.create("h264", "r")
    dec.extradata = avc_config
    count = 0
    for p in packets:
        count += len(dec.decode(av.Packet(p.data)))
    return count + len(dec.decode(None))


# --- this machine: no hardware encoder ------------------------------------------


def test_auto_falls_back_to_libx264_with_one_log_line(no_hardware: str) -> None:
    with capture_logs() as logs:
        enc = open_h264("auto", W, H, FPS, 800)
    assert type(enc) is H264Encoder and enc.name == "libx264"
    assert enc.config.encoder_name == "libx264" and enc.config.avc_config
    assert len(logs) == 1, logs
    assert logs[0]["log_level"] == "info"
    assert "using libx264" in logs[0]["event"]
    assert logs[0]["reason"] == no_hardware
    assert "/dev/video" in no_hardware or "permission" in no_hardware or "FFmpeg" in no_hardware


def test_explicit_v4l2m2m_is_a_clear_device_error(no_hardware: str) -> None:
    with pytest.raises(DeviceError) as info:
        open_h264("v4l2m2m", W, H, FPS, 800)
    message = info.value.message
    assert message == (
        f"the V4L2 hardware H.264 encoder is not available: {no_hardware}; use --encoder libx264"
    )
    assert "\n" not in message and "Traceback" not in message


def test_the_real_probe_runs_once_per_process(
    no_hardware: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = select._create

    def counting(name: str, mode: str) -> Any:
        calls.append(name)
        return real(name, mode)

    monkeypatch.setattr(select, "_create", counting)
    monkeypatch.setattr(select, "_probe_cache", {})  # the fixture probed already
    with capture_logs() as logs:
        for _ in range(3):
            assert open_h264("auto", W, H, FPS, 800).name == "libx264"
    assert calls == ["h264_v4l2m2m"]
    assert len(logs) == 3  # one line per fallback, each with the cached reason
    assert {e["reason"] for e in logs} == {no_hardware}


def test_libx264_is_libx264() -> None:
    with capture_logs() as logs:
        enc = open_h264("libx264", W, H, FPS, 800)
    assert type(enc) is H264Encoder and not logs


@pytest.mark.parametrize("choice", ["nvenc", "", "x264", "hardware"])
def test_unknown_choice_is_a_config_error_listing_the_choices(choice: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_h264(choice, W, H, FPS, 800)
    assert info.value.message == f"encoder {choice!r} is not one of: auto, v4l2m2m, libx264"
    assert info.value.exit_code == 2


def test_choice_is_case_and_space_tolerant() -> None:
    assert open_h264(" LIBX264 ", W, H, FPS, 800).name == "libx264"


# --- a probe that is given ----------------------------------------------------------


def test_probe_error_is_the_logged_reason() -> None:
    def probe() -> bool:
        raise DeviceError("no encoder here (test)")

    with capture_logs() as logs:
        enc = open_h264("auto", W, H, FPS, 800, probe=probe)
    assert enc.name == "libx264"
    assert [e["reason"] for e in logs] == ["no encoder here (test)"]


def test_probe_false_falls_back_with_a_reason() -> None:
    with capture_logs() as logs:
        enc = open_h264("auto", W, H, FPS, 800, probe=lambda: False)
    assert enc.name == "libx264"
    assert logs[0]["reason"] == "the probe found no usable V4L2 H.264 encoder"


def test_probe_true_with_a_working_device_chooses_v4l2m2m() -> None:
    factory = Factory()
    with capture_logs() as logs:
        enc = open_h264("auto", W, H, FPS, 800, probe=lambda: True, create=factory)
    assert isinstance(enc, V4L2H264Encoder) and enc.name == "h264_v4l2m2m"
    assert not logs
    assert len(factory.made) == 1


# --- a working V4L2 device (fake codec context) --------------------------------------


def test_auto_probes_tiny_then_opens_v4l2m2m_at_the_real_size() -> None:
    factory = Factory()
    with capture_logs() as logs:
        enc = open_h264("auto", 1280, 720, 30, 2500, create=factory)
    assert isinstance(enc, V4L2H264Encoder)
    assert not logs
    probe, real = factory.made
    assert (probe.width, probe.height) == (64, 64)
    assert (real.width, real.height) == (1280, 720)
    assert real.pix_fmt == "yuv420p" and real.max_b_frames == 0
    assert real.bit_rate == 2_500_000 and real.gop_size == 60
    assert real.time_base == Fraction(1, 1000) and real.framerate == 30
    assert real.flags & av.codec.context.Flags.global_header
    assert enc.config.encoder_name == "h264_v4l2m2m"


def test_auto_falls_back_when_only_the_real_size_fails() -> None:
    factory = Factory(fail_above=64)
    with capture_logs() as logs:
        enc = open_h264("auto", W, H, FPS, 800, create=factory)
    assert enc.name == "libx264"
    assert len(factory.made) == 2
    assert "Invalid argument" in logs[0]["reason"]
    assert "use --encoder" not in logs[0]["reason"]


def test_explicit_v4l2m2m_with_a_device_that_refuses() -> None:
    with pytest.raises(DeviceError) as info:
        open_h264("v4l2m2m", W, H, FPS, 800, create=Factory(fail_above=0))
    assert info.value.message.startswith("the V4L2 hardware H.264 encoder is not available: ")
    assert "FFmpeg: Invalid argument" in info.value.message
    assert info.value.message.endswith("; use --encoder libx264")


@pytest.mark.parametrize("mode", ["joined", "separate"])
def test_sps_pps_come_from_the_first_keyframe_and_the_stream_decodes(mode: str) -> None:
    factory = Factory(mode)
    enc = open_h264("v4l2m2m", W, H, FPS, 800, create=factory)
    assert isinstance(enc, V4L2H264Encoder)
    assert enc.config.avc_config == b"" and not enc.config_ready.is_set()
    with pytest.raises(DeviceError, match="no SPS/PPS within"):
        ready_config(enc, timeout=0.01)
    n = 45
    packets = encode_all(enc, n)
    assert enc.config_ready.is_set()
    config = ready_config(enc, timeout=0)
    assert config.avc_config[0] == 1 and config.encoder_name == "h264_v4l2m2m"
    assert len(packets) == n  # a header-only buffer is not a packet
    for p in packets:  # parameter sets live in the sequence header only
        assert all(nal[0] & 0x1F not in (NAL_SPS, NAL_PPS) for nal in split_avcc(p.data))
    assert packets[0].keyframe and packets[0].config == config  # its setup travels with it
    assert decode(config.avc_config, packets) == n


def test_keyframes_every_two_seconds_although_the_device_ignores_gop_size() -> None:
    factory = Factory()
    enc = open_h264("v4l2m2m", W, H, FPS, 800, create=factory)
    packets = encode_all(enc, 5 * FPS)
    keys = [i for i, p in enumerate(packets) if p.keyframe]
    assert keys == [0, 20, 40]
    assert factory.made[0].forced == 2  # the device's own first IDR, then two forced
    enc2 = V4L2H264Encoder(W, H, FPS, 800, create=Factory())
    first: list[bool] = []
    for i, frame in enumerate(frames(30)):
        if i == 7:
            enc2.request_keyframe()
        first += [p.keyframe for p in enc2.encode(frame, i * 100)]
    assert [i for i, k in enumerate(first) if k] == [0, 7, 27]  # the GOP restarts at 7


def decode_as_viewer(packets: list[Packet]) -> int:
    """Frames a player decodes: it starts at the first keyframe's config and
    starts over with a new decoder when a keyframe brings another one."""
    dec: Any = None
    avc_config = b""
    count = 0
    for p in packets:
        if p.keyframe and p.config is not None and p.config.avc_config != avc_config:
            if dec is not None:
                count += len(dec.decode(None))
            avc_config = p.config.avc_config
            dec = av.CodecContext.create("h264", "r")
            dec.extradata = avc_config
        assert dec is not None, "a packet before any keyframe with a config"
        count += len(dec.decode(av.Packet(p.data)))
    return count + (len(dec.decode(None)) if dec is not None else 0)


def run(
    enc: V4L2H264Encoder, n: int, at: dict[int, Any] | None = None
) -> tuple[list[Packet], list[int]]:
    """Encode ``n`` frames at FPS, calling ``at[i](enc)`` before frame i; the
    packets (flush included) and the bitrate in effect after each frame."""
    packets: list[Packet] = []
    rates = []
    for i, frame in enumerate(frames(n)):
        if at and i in at:
            at[i](enc)
        packets += enc.encode(frame, i * 1000 // FPS)
        rates.append(enc.current_bitrate_kbps)
    return packets + enc.encode(None), rates


def keyframes(packets: list[Packet]) -> list[int]:
    return [p.pts_ms for p in packets if p.keyframe]


def test_set_bitrate_reopens_the_encoder_at_the_next_keyframe() -> None:
    factory = Factory(delay=2)  # frames in flight in the device when it is reopened
    enc = V4L2H264Encoder(W, H, FPS, 2500, create=factory)
    with capture_logs() as logs:
        packets, rates = run(enc, 60, {25: lambda e: e.set_bitrate(1000)})
    # FFmpeg takes bit_rate at open only: a second context, opened at the new rate
    assert [c.opened_bit_rate for c in factory.made] == [2_500_000, 1_000_000]
    # at the keyframe that came anyway (GOP 2 s = 20 frames): no extra IDR
    assert keyframes(packets) == [0, 2000, 4000]
    assert rates[39] == 2500 and rates[40:] == [1000] * 20 and enc.reopens == 1
    # the old context was drained first: every frame once, in order, pts rising
    assert [p.pts_ms for p in packets] == [i * 100 for i in range(60)]
    switch = next(p for p in packets if p.pts_ms == 4000)
    assert switch.keyframe and switch.config is not None and switch.config.avc_config
    assert switch.config.avc_config[0] == 1  # an AVCDecoderConfigurationRecord
    assert decode_as_viewer(packets) == 60
    # the new context's output goes only to this stream: the old one's tail first
    assert factory.made[1].forced == 1  # the switch frame asked for as an IDR
    (line,) = [e for e in logs if e["event"] == "encoder reopened for a new bitrate"]
    assert line["log_level"] == "info" and (line["old_kbps"], line["kbps"]) == (2500, 1000)
    assert line["ms"] >= 0
    assert [e["event"] for e in logs] == [line["event"], "encoder changed its SPS/PPS"]


@pytest.mark.parametrize("mode", ["joined", "separate"])
def test_the_new_encoders_sps_pps_travel_with_its_first_keyframe(mode: str) -> None:
    factory = Factory(mode, delay=1)
    enc = V4L2H264Encoder(W, H, FPS, 2500, create=factory)
    packets, _ = run(enc, 45, {25: lambda e: e.set_bitrate(1000)})
    configs = [(p.pts_ms, p.config) for p in packets if p.keyframe]
    assert [pts for pts, _ in configs] == [0, 2000, 4000]
    (_, first), (_, second), (_, third) = configs
    assert first is not None and second is first and third is not None
    # x264 behind the fake writes a lower level_idc for the lower rate (a Pi may not):
    # the SPS/PPS the new encoder gave, in the record the switch keyframe carries
    assert third.avc_config != first.avc_config
    assert third.avc_config[3] == 20 and first.avc_config[3] == 30  # level 2.0, 3.0
    assert third is enc.config
    # parameter sets are only ever in the configs, never in the packets
    assert all(
        nal[0] & 0x1F not in (NAL_SPS, NAL_PPS) for p in packets for nal in split_avcc(p.data)
    )
    assert decode_as_viewer(packets) == 45


def test_small_and_frequent_changes_coalesce_and_the_latest_wins() -> None:
    factory = Factory()
    enc = V4L2H264Encoder(W, H, FPS, 2500, create=factory)
    steps = {
        5: lambda e: e.set_bitrate(2400),  # 4 %: not worth a reopen, dropped
        25: lambda e: e.set_bitrate(2000),  # three controller steps before a keyframe...
        30: lambda e: e.set_bitrate(1800),
        35: lambda e: e.set_bitrate(1500),  # ...one reopen, at the last
        45: lambda e: (e.set_bitrate(1200), e.request_keyframe()),  # keyframe 0.5 s after
        # the reopen: too soon, the wish waits for the next keyframe (2 s after 4.5 s)
        70: lambda e: e.set_bitrate(9999),  # above the opening rate: clamped to it
    }
    with capture_logs() as logs:
        packets, rates = run(enc, 100, steps)
    assert [c.opened_bit_rate for c in factory.made] == [2_500_000, 1_500_000, 1_200_000, 2_500_000]
    assert keyframes(packets) == [0, 2000, 4000, 4500, 6500, 8500]
    assert rates[:40] == [2500] * 40
    assert rates[40:65] == [1500] * 25 and rates[65:85] == [1200] * 20 and rates[85:] == [2500] * 15
    assert [p.pts_ms for p in packets] == [i * 100 for i in range(100)]
    assert decode_as_viewer(packets) == 100
    reopens = [e for e in logs if e["event"] == "encoder reopened for a new bitrate"]
    assert [(e["old_kbps"], e["kbps"]) for e in reopens] == [
        (2500, 1500),
        (1500, 1200),
        (1200, 2500),
    ]


def test_a_failing_reopen_keeps_streaming_at_the_old_rate_with_one_warning() -> None:
    factory = Factory(refuse_from=1)  # the device has no memory for a second context
    enc = V4L2H264Encoder(W, H, FPS, 2500, create=factory)
    steps = {
        25: lambda e: e.set_bitrate(1000),
        45: lambda e: e.set_bitrate(800),  # no more attempts for this encoder
        65: lambda e: e.set_bitrate(600),
    }
    with capture_logs() as logs:
        packets, rates = run(enc, 80, steps)
    assert len(factory.made) == 2 and factory.made[0].opened_bit_rate == 2_500_000
    assert rates == [2500] * 80 and enc.current_bitrate_kbps == 2500
    assert keyframes(packets) == [0, 2000, 4000, 6000]
    assert [p.pts_ms for p in packets] == [i * 100 for i in range(80)]
    assert decode_as_viewer(packets) == 80
    assert [e["log_level"] for e in logs] == ["warning"]
    assert "stays fixed" in logs[0]["event"]
    assert (logs[0]["kbps"], logs[0]["asked_kbps"]) == (2500, 1000)
    assert "Cannot allocate memory" in logs[0]["error"]


def test_set_bitrate_from_another_thread_while_encoding() -> None:
    factory = Factory()
    enc = V4L2H264Encoder(W, H, FPS, 2500, create=factory)
    stop = threading.Event()

    def controller() -> None:
        kbps = 2500
        while not stop.is_set():
            kbps = 300 + (kbps * 7 + 11) % 2200
            enc.set_bitrate(kbps)

    thread = threading.Thread(target=controller)
    thread.start()
    try:
        packets, _ = run(enc, 100)
    finally:
        stop.set()
        thread.join()
    assert len(factory.made) <= 1 + 100 // (2 * FPS)  # at most one reopen per GOP
    assert [p.pts_ms for p in packets] == [i * 100 for i in range(100)]
    assert decode_as_viewer(packets) == 100


def test_set_bitrate_is_validated_and_clamped() -> None:
    enc = V4L2H264Encoder(W, H, FPS, 800, create=Factory())
    with pytest.raises(ValueError):
        enc.set_bitrate(0)
    enc.set_bitrate(5000)
    assert enc._pending_kbps == 800 == enc.max_bitrate_kbps


def test_encode_failure_is_a_device_error() -> None:
    factory = Factory()
    enc = V4L2H264Encoder(W, H, FPS, 800, create=factory)
    factory.made[0].broken = True
    with pytest.raises(DeviceError, match=r"V4L2 hardware H\.264 encoder failed"):
        enc.encode(next(frames(1)), 0)


def test_ready_config_of_libx264_is_immediate() -> None:
    enc = open_h264("libx264", W, H, FPS, 800)
    assert ready_config(enc, timeout=0) is enc.config
