"""Video filters (beauty, watermark, mirror) in one FFmpeg graph, checked on output pixels."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
from structlog.testing import capture_logs

from streamer.encode.filters import (
    BeautySpec,
    FilterChain,
    FilterSpec,
    MirrorSpec,
    WatermarkSpec,
    parse_filter,
)
from streamer.exc import ConfigError
from streamer.hardware.sim import SimCamera
from tests.media_check import read_counter

W, H, FPS = 320, 180, 30
LOGO_W, LOGO_H = 48, 32
HOLE = (slice(8, 20), slice(6, 22))  # rows, cols of the transparent hole: off-centre on purpose


def yuv_frame(picture: npt.NDArray[np.uint8]) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(picture, format="yuv420p")


def luma(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    planes = np.asarray(frame.to_ndarray(format="yuv420p"), dtype=np.uint8)
    return planes[: frame.height]


def rgb(frame: av.VideoFrame) -> npt.NDArray[np.int32]:
    return frame.to_ndarray(format="rgb24").astype(np.int32)


def run(specs: list[FilterSpec], picture: npt.NDArray[np.uint8]) -> av.VideoFrame:
    height, width = picture.shape[0] * 2 // 3, picture.shape[1]
    chain = FilterChain(specs, width, height, FPS)
    return chain.process(yuv_frame(picture))


def write_png(path: Path, rgba: npt.NDArray[np.uint8]) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png")
        stream.height, stream.width = rgba.shape[:2]
        stream.pix_fmt = "rgba"
        frame = av.VideoFrame.from_ndarray(rgba, format="rgba")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


@pytest.fixture
def logo(tmp_path: Path) -> Path:
    """A solid red RGBA square (alpha 255) with a transparent hole."""
    rgba = np.zeros((LOGO_H, LOGO_W, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    rgba[HOLE[0], HOLE[1], 3] = 0
    return write_png(tmp_path / "logo.png", rgba)


@pytest.fixture(scope="module")
def picture() -> npt.NDArray[np.uint8]:
    return SimCamera(W, H, FPS).picture(123)


# --- parsing ---------------------------------------------------------------------------


def test_parse_valid_specs(logo: Path) -> None:
    assert parse_filter("beauty") == BeautySpec(0.5)
    assert parse_filter(" beauty=0.6 ") == BeautySpec(0.6)
    assert parse_filter("beauty=0") == BeautySpec(0.0)
    assert parse_filter("mirror") == MirrorSpec()
    assert parse_filter(f"watermark={logo}:bottom-right") == WatermarkSpec(logo, "bottom-right")
    assert parse_filter(f"watermark={logo}") == WatermarkSpec(logo, "bottom-right", 16, 1.0)
    assert parse_filter(f"watermark={logo}:top-left:margin=8:opacity=0.8") == WatermarkSpec(
        logo, "top-left", 8, 0.8
    )
    assert parse_filter(f"watermark={logo}:opacity=0.5:corner=top-right") == WatermarkSpec(
        logo, "top-right", 16, 0.5
    )


def test_parse_watermark_file_name_with_colon(tmp_path: Path, logo: Path) -> None:
    odd = tmp_path / "a:b.png"
    odd.write_bytes(logo.read_bytes())
    assert parse_filter(f"watermark={odd}:top-right") == WatermarkSpec(odd, "top-right")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("blur", "unknown filter"),
        ("", "unknown filter"),
        ("beauty=1.5", "from 0 to 1"),
        ("beauty=-0.1", "from 0 to 1"),
        ("beauty=strong", "from 0 to 1"),
        ("beauty=nan", "from 0 to 1"),
        ("mirror=1", "no value"),
        ("watermark", "needs a PNG"),
        ("watermark=", "needs a PNG"),
        ("watermark={missing}:top-left", "does not exist"),
        ("watermark={text}", "not a PNG"),
        ("watermark={fake}", "not a readable PNG"),
        ("watermark={dir}", "directory"),
        ("watermark={logo}:middle", "unknown watermark option 'middle'"),
        ("watermark={logo}:corner=middle", "not one of"),
        ("watermark={logo}:margin=-1", "margin"),
        ("watermark={logo}:margin=x", "margin"),
        ("watermark={logo}:opacity=0", "opacity"),
        ("watermark={logo}:opacity=1.2", "opacity"),
        ("watermark={logo}:size=3", "unknown watermark option 'size'"),
        ("watermark={logo}:top-left:top-right", "corner given twice"),
    ],
)
def test_parse_errors_name_the_spec_and_what_is_allowed(
    tmp_path: Path, logo: Path, spec: str, expected: str
) -> None:
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    spec = spec.format(missing=tmp_path / "nope.png", text=text, fake=fake, dir=tmp_path, logo=logo)
    with pytest.raises(ConfigError) as info:
        parse_filter(spec)
    assert info.value.exit_code == 2
    assert expected in info.value.message
    assert repr(spec) in info.value.message or str(fake) in info.value.message
    if expected in ("unknown filter", "from 0 to 1", "no value", "needs a PNG"):
        assert "beauty" in info.value.message and "mirror" in info.value.message


def test_chain_rejects_a_logo_larger_than_the_picture(logo: Path) -> None:
    with pytest.raises(ConfigError, match="does not fit"):
        FilterChain([WatermarkSpec(logo, margin=8)], 48, 32, FPS)


def test_chain_rejects_duplicates() -> None:
    with pytest.raises(ConfigError, match="beauty"):
        FilterChain([BeautySpec(), BeautySpec(0.2)], W, H, FPS)


# --- the frame contract ----------------------------------------------------------------


def test_process_keeps_size_format_and_timestamps(
    logo: Path, picture: npt.NDArray[np.uint8]
) -> None:
    chain = FilterChain([BeautySpec(), MirrorSpec(), WatermarkSpec(logo)], W, H, FPS)
    for n in range(3):
        frame = yuv_frame(picture)
        frame.pts = 5000 + 7 * n
        out = chain.process(frame)
        assert (out.width, out.height, out.format.name) == (W, H, "yuv420p")
        assert out.pts == 5000 + 7 * n
        assert frame.pts == 5000 + 7 * n  # the caller's frame is as it was
    assert chain.cost_ms > 0


def test_the_callers_frame_is_not_drawn_on(logo: Path, picture: npt.NDArray[np.uint8]) -> None:
    # overlay blends in place: the graph must copy a frame the caller still holds
    frame = yuv_frame(picture)
    out = FilterChain([WatermarkSpec(logo)], W, H, FPS).process(frame)
    assert np.array_equal(frame.to_ndarray(), picture)
    assert not np.array_equal(out.to_ndarray(), picture)


def test_empty_chain_passes_frames_through(picture: npt.NDArray[np.uint8]) -> None:
    chain = FilterChain([], W, H, FPS)
    frame = yuv_frame(picture)
    assert chain.process(frame) is frame
    assert chain.names == [] and chain.adapt() is None


def test_other_pixel_formats_are_converted(picture: npt.NDArray[np.uint8]) -> None:
    frame = yuv_frame(picture).reformat(format="nv12")
    out = FilterChain([MirrorSpec()], W, H, FPS).process(frame)
    assert out.format.name == "yuv420p"
    assert np.array_equal(luma(out), np.fliplr(picture[:H]))


# --- mirror ----------------------------------------------------------------------------


def test_mirror_puts_the_counter_top_right_flipped(picture: npt.NDArray[np.uint8]) -> None:
    out = luma(run([MirrorSpec()], picture))
    expected = np.fliplr(picture[:H])
    assert np.abs(out.astype(np.int16) - expected).max() <= 1
    assert read_counter(out, H) is None  # no longer top-left
    assert read_counter(np.fliplr(out), H) == 123  # it is top-right, mirrored
    box = 7 * max(2, H // 60)
    assert out[:box, -box:].min() == 16  # the counter's dark box is top-right


# --- watermark -------------------------------------------------------------------------


def logo_box(corner: str, margin: int) -> tuple[int, int]:
    """Top-left (y, x) of the logo in the output."""
    y = margin if corner.startswith("top") else H - LOGO_H - margin
    x = margin if corner.endswith("left") else W - LOGO_W - margin
    return y, x


def red_and_hole(
    out: npt.NDArray[np.int32], y: int, x: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.bool_]]:
    """The logo's pixels of an rgb picture, and a mask of its solid part away from the
    hole's edges (chroma is subsampled 2x2, so edges blend over one pixel)."""
    solid = np.ones((LOGO_H, LOGO_W), bool)
    solid[HOLE[0].start - 2 : HOLE[0].stop + 2, HOLE[1].start - 2 : HOLE[1].stop + 2] = False
    solid[:2, :] = solid[-2:, :] = solid[:, :2] = solid[:, -2:] = False
    return out[y : y + LOGO_H, x : x + LOGO_W], solid


def hole_inner(region: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    return region[HOLE[0].start + 2 : HOLE[0].stop - 2, HOLE[1].start + 2 : HOLE[1].stop - 2]


@pytest.mark.parametrize("corner", ["bottom-right", "top-left", "top-right", "bottom-left"])
def test_watermark_opaque_is_red_with_the_background_in_its_hole(
    logo: Path, picture: npt.NDArray[np.uint8], corner: str
) -> None:
    spec = parse_filter(f"watermark={logo}:{corner}:margin=8:opacity=1.0")
    out = rgb(run([spec], picture))
    background = rgb(yuv_frame(picture))
    y, x = logo_box(corner, 8)
    region, solid = red_and_hole(out, y, x)
    assert np.abs(region[solid] - (255, 0, 0)).max() <= 12
    back = background[y : y + LOGO_H, x : x + LOGO_W]
    assert np.abs(hole_inner(region) - hole_inner(back)).max() <= 6
    # outside the logo (one pixel of chroma blending aside) nothing changed
    untouched = np.ones((H, W), bool)
    untouched[y - 2 : y + LOGO_H + 2, x - 2 : x + LOGO_W + 2] = False
    assert np.abs(out[untouched] - background[untouched]).max() <= 1


def test_watermark_half_opacity_blends_halfway(logo: Path, picture: npt.NDArray[np.uint8]) -> None:
    spec = parse_filter(f"watermark={logo}:bottom-right:margin=8:opacity=0.5")
    out = rgb(run([spec], picture))
    background = rgb(yuv_frame(picture))
    y, x = logo_box("bottom-right", 8)
    region, solid = red_and_hole(out, y, x)
    back = background[y : y + LOGO_H, x : x + LOGO_W]
    assert np.abs(hole_inner(region) - hole_inner(back)).max() <= 6
    # Where the background's colour is not clipped in RGB, halfway in RGB ...
    halfway = (back + np.array([255, 0, 0])) / 2
    inside = solid & np.all((back > 8) & (back < 247), axis=2)
    assert inside.sum() > 100
    assert np.abs(region[inside] - halfway[inside]).max() <= 10
    # ... and everywhere halfway in YUV, which is where overlay blends (the sim's
    # colour bars are partly outside RGB's gamut: there RGB clips the background).
    red = av.VideoFrame.from_ndarray(
        np.full((H, W, 3), (255, 0, 0), np.uint8), format="rgb24"
    ).reformat(format="yuv420p")
    red_yuv = red.to_ndarray().astype(np.float32)
    blend = picture.astype(np.float32)
    blend[y : y + LOGO_H, x : x + LOGO_W] += red_yuv[y : y + LOGO_H, x : x + LOGO_W]
    blend[y : y + LOGO_H, x : x + LOGO_W] /= 2
    for plane in (slice(H, H + H // 4), slice(H + H // 4, None)):  # U, V rows
        rows = blend[plane].reshape(H // 2, W // 2)
        ref = red_yuv[plane].reshape(H // 2, W // 2)
        cy, cx = slice(y // 2, (y + LOGO_H) // 2), slice(x // 2, (x + LOGO_W) // 2)
        rows[cy, cx] = (rows[cy, cx] + ref[cy, cx]) / 2
    expected = rgb(yuv_frame(np.round(blend).astype(np.uint8)))
    expected_region = expected[y : y + LOGO_H, x : x + LOGO_W]
    assert np.abs(region[solid] - expected_region[solid]).max() <= 10


def test_watermark_survives_an_encode_round_trip(
    logo: Path, picture: npt.NDArray[np.uint8]
) -> None:
    spec = parse_filter(f"watermark={logo}:bottom-right:margin=8")
    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = W, H, "yuv420p"
    codec.options = {"crf": "10", "preset": "ultrafast"}
    out = run([spec], picture)
    out.pts = 0
    packets = [*codec.encode(out), *codec.encode(None)]
    decoder = av.CodecContext.create("h264", "r")
    frames = [f for p in packets for f in decoder.decode(p)] + list(decoder.decode(None))
    decoded = rgb(frames[0])
    region, solid = red_and_hole(decoded, *logo_box("bottom-right", 8))
    assert np.abs(region[solid] - (255, 0, 0)).mean() <= 8


def test_the_logo_is_never_mirrored(logo: Path, picture: npt.NDArray[np.uint8]) -> None:
    # given in any order, mirror runs first: the logo stays top-left, hole unflipped
    specs = [parse_filter(f"watermark={logo}:top-left:margin=8"), MirrorSpec()]
    chain = FilterChain(specs, W, H, FPS)
    assert chain.names == ["mirror", "watermark"]
    out = rgb(chain.process(yuv_frame(picture)))
    region, solid = red_and_hole(out, 8, 8)
    assert np.abs(region[solid] - (255, 0, 0)).max() <= 12


# --- beauty ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy() -> npt.NDArray[np.uint8]:
    """The sim picture with strong noise in its lower half and a 60 -> 200 step drawn there."""
    picture = SimCamera(W, H, FPS).picture(123).copy()
    y = picture[:H].astype(np.float32)
    rng = np.random.default_rng(0)
    y[H // 2 :, W // 2 :] = np.where(np.arange(W // 2) < W // 4, 60, 200)
    y[H // 2 :] += rng.normal(0, 12, (H - H // 2, W))
    picture[:H] = np.clip(y, 0, 255).astype(np.uint8)
    return picture


def high_freq(y: npt.NDArray[np.uint8]) -> float:
    """Mean |Laplacian| of the noisy lower-left quarter."""
    f = y[H // 2 + 4 : H - 4, 4 : W // 2 - 4].astype(np.float32)
    lap = 4 * f[1:-1, 1:-1] - f[:-2, 1:-1] - f[2:, 1:-1] - f[1:-1, :-2] - f[1:-1, 2:]
    return float(np.abs(lap).mean())


def step_contrast(y: npt.NDArray[np.uint8]) -> float:
    edge = W // 2 + W // 4
    rows = y[H // 2 + 4 : H - 4].astype(np.float32)
    return float(rows[:, edge + 1 : edge + 3].mean() - rows[:, edge - 3 : edge - 1].mean())


def digit_edges(
    y: npt.NDArray[np.uint8], where: npt.NDArray[np.bool_] | None = None
) -> tuple[float, npt.NDArray[np.bool_]]:
    """Mean |horizontal step| at the counter digits' vertical edges."""
    box = y[: 7 * max(2, H // 60), :].astype(np.float32)
    steps = np.abs(np.diff(box, axis=1))
    if where is None:
        where = steps > 150
    return float(steps[where].mean()), where


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_beauty_smooths_noise_and_keeps_edges(
    noisy: npt.NDArray[np.uint8], strength: float
) -> None:
    before = noisy[:H]
    after = luma(run([BeautySpec(strength)], noisy))
    assert high_freq(after) < 0.5 * high_freq(before)
    assert step_contrast(after) >= 0.7 * step_contrast(before)
    contrast, where = digit_edges(before)
    assert digit_edges(after, where)[0] >= 0.7 * contrast
    # chroma is left alone
    assert np.array_equal(run([BeautySpec(strength)], noisy).to_ndarray()[H:], noisy[H:])


def test_beauty_strength_orders_the_smoothing(noisy: npt.NDArray[np.uint8]) -> None:
    energy = [high_freq(luma(run([BeautySpec(s)], noisy))) for s in (0.0, 0.5, 1.0)]
    assert energy[0] > 0.9 * high_freq(noisy[:H])  # 0 is nearly off
    assert energy[0] > energy[1] > energy[2]


# --- adapt -----------------------------------------------------------------------------


class FakeClock:
    """Every reading is ``cost_ms`` later than the last: a process() call costs that much."""

    def __init__(self, cost_ms: float) -> None:
        self.cost_ms = cost_ms
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.cost_ms / 1000.0
        return self.now


def feed(chain: FilterChain, frames: int) -> list[str | None]:
    picture = SimCamera(chain.width, chain.height, FPS).picture(1)
    dropped = []
    for _ in range(frames):
        chain.process(yuv_frame(picture))
        dropped.append(chain.adapt())
    return dropped


def test_adapt_drops_beauty_first_then_the_next_most_expensive(logo: Path) -> None:
    clock = FakeClock(30.0)  # 90 % of the 33.3 ms budget at 30 fps
    specs: list[FilterSpec] = [MirrorSpec(), WatermarkSpec(logo, margin=4), BeautySpec()]
    chain = FilterChain(specs, 160, 96, FPS, clock=clock)
    assert chain.names == ["beauty", "mirror", "watermark"]
    with capture_logs() as logs:
        assert feed(chain, 2 * FPS - 1) == [None] * (2 * FPS - 1)  # ~2 s before judging
        assert chain.cost_ms == pytest.approx(30.0)
        assert feed(chain, 1) == ["beauty"]
        assert chain.cost_ms == 0.0  # a new window starts after a drop
        assert chain.names == ["mirror", "watermark"]
        assert chain.adapt() is None
        second = feed(chain, 2 * FPS)
    assert [d for d in second if d] == ["watermark"]  # a 48x32 overlay costs more than hflip
    assert chain.names == ["mirror"]
    drops = [e for e in logs if e["log_level"] == "warning"]
    assert [e["filter"] for e in drops] == ["beauty", "watermark"]  # once per drop


def test_adapt_keeps_a_chain_within_budget(logo: Path) -> None:
    chain = FilterChain([BeautySpec(), MirrorSpec()], 160, 96, FPS, clock=FakeClock(20.0))
    assert [d for d in feed(chain, 3 * FPS) if d] == []
    assert chain.names == ["beauty", "mirror"]


def test_adapt_with_real_timing_and_a_tiny_budget() -> None:
    # at 100000 fps the budget is 0.01 ms: the real graph cannot keep up
    chain = FilterChain([BeautySpec(), MirrorSpec()], 160, 96, 100_000.0, window_s=1e-4)
    with capture_logs() as logs:
        dropped = [d for d in feed(chain, 10) if d]
    assert dropped == ["beauty"]
    assert chain.names == ["mirror"]
    assert [e["filter"] for e in logs if e["log_level"] == "warning"] == ["beauty"]
