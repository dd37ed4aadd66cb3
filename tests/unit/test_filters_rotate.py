"""Rotation in the filter graph (``--rotate``), checked on the sim pattern's known layout.

Degrees are clockwise: the picture a viewer gets is numpy's ``rot90(k=-1)`` of
the camera's for 90, ``k=2`` for 180 and ``k=1`` for 270, plane by plane.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest
from structlog.testing import capture_logs

from streamer.encode.filters import (
    ROTATION_FILTERS,
    BeautySpec,
    FilterChain,
    MirrorSpec,
    WatermarkSpec,
    parse_filter,
)
from streamer.exc import ConfigError
from streamer.hardware.sim import SimCamera
from streamer.settings import ROTATIONS
from tests.media_check import read_counter
from tests.unit import test_filters
from tests.unit.test_filters import (
    LOGO_H,
    LOGO_W,
    FakeClock,
    red_and_hole,
    rgb,
    yuv_frame,
)

W, H, FPS = 320, 180, 30
N = 123  # the frame counter the test picture shows
TURNS = {90: -1, 180: 2, 270: 1}  # degrees clockwise -> numpy's rot90 k (counter-clockwise)

Planes = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]


def planes(packed: npt.NDArray[np.uint8], width: int, height: int) -> Planes:
    """Y, U, V of a packed yuv420p (h*3/2, w) array."""
    flat = packed.reshape(-1)
    q = width * height // 4
    y = flat[: width * height].reshape(height, width)
    u = flat[width * height : width * height + q].reshape(height // 2, width // 2)
    v = flat[width * height + q :].reshape(height // 2, width // 2)
    return y, u, v


def frame_planes(frame: av.VideoFrame) -> Planes:
    return planes(np.asarray(frame.to_ndarray(format="yuv420p")), frame.width, frame.height)


@pytest.fixture(scope="module")
def picture() -> npt.NDArray[np.uint8]:
    return SimCamera(W, H, FPS).picture(N)


# test_filters' logo: solid red with an off-centre transparent hole (it shows if turned).
logo = test_filters.logo


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_each_rotation_turns_the_picture_clockwise_exactly(
    picture: npt.NDArray[np.uint8], degrees: int
) -> None:
    chain = FilterChain([], W, H, FPS, rotate=degrees)
    out = chain.process(yuv_frame(picture))
    quarter = degrees in (90, 270)
    assert (out.width, out.height) == ((H, W) if quarter else (W, H))
    assert (chain.in_width, chain.in_height, chain.width, chain.height) == (
        W,
        H,
        out.width,
        out.height,
    )
    assert out.format.name == "yuv420p"
    for got, ref in zip(frame_planes(out), planes(picture, W, H), strict=True):
        assert np.array_equal(got, np.rot90(ref, k=TURNS[degrees]))  # pixels moved, not blended
    # What a viewer sees: the counter, top-left in the camera's picture, is where the turn
    # took it (top-right at 90, bottom-right at 180, bottom-left at 270) and reads back
    # only once turned back.
    y = frame_planes(out)[0]
    assert read_counter(y, out.height) is None
    assert read_counter(np.rot90(y, k=-TURNS[degrees]), H) == N
    box_h, box_w = 7 * max(2, H // 60), 25 * max(2, H // 60)  # the counter's dark box
    corner = {
        90: y[:box_w, -box_h:],
        180: y[-box_h:, -box_w:],
        270: y[-box_w:, :box_h],
    }[degrees]
    assert np.count_nonzero(corner == 16) > 0.5 * corner.size
    assert chain.names == [f"rotate={degrees}"]
    assert chain.cost_ms > 0  # the rotation counts in filter_ms


def test_rotation_keeps_timestamps_and_the_callers_frame(picture: npt.NDArray[np.uint8]) -> None:
    chain = FilterChain([], W, H, FPS, rotate=90)
    for n in range(3):
        frame = yuv_frame(picture)
        frame.pts = 9000 + 33 * n
        out = chain.process(frame)
        assert out.pts == 9000 + 33 * n and frame.pts == 9000 + 33 * n
        assert np.array_equal(frame.to_ndarray(), picture)


def test_a_frame_of_another_size_is_refused(picture: npt.NDArray[np.uint8]) -> None:
    chain = FilterChain([], W, H, FPS, rotate=90)
    turned = av.VideoFrame(H, W, "yuv420p")  # already the output's size: not the camera's
    with pytest.raises(ValueError, match=f"built for {W}x{H}"):
        chain.process(turned)


def test_other_pixel_formats_are_turned_too(picture: npt.NDArray[np.uint8]) -> None:
    out = FilterChain([], W, H, FPS, rotate=270).process(yuv_frame(picture).reformat(format="nv12"))
    assert out.format.name == "yuv420p"
    assert np.array_equal(frame_planes(out)[0], np.rot90(picture[:H], k=1))


def test_rotation_runs_first_whatever_else_is_asked(picture: npt.NDArray[np.uint8]) -> None:
    # mirror after the turn: the viewer's left-right of the turned picture is flipped
    chain = FilterChain([MirrorSpec()], W, H, FPS, rotate=90)
    assert chain.names == ["rotate=90", "mirror"]
    out = chain.process(yuv_frame(picture))
    expected = np.fliplr(np.rot90(picture[:H], k=-1))
    assert np.array_equal(frame_planes(out)[0], expected)


@pytest.mark.parametrize(("degrees", "corner"), [(90, "bottom-right"), (270, "top-left")])
def test_a_watermark_sits_upright_at_its_corner_of_the_turned_picture(
    logo: Path, picture: npt.NDArray[np.uint8], degrees: int, corner: str
) -> None:
    spec = parse_filter(f"watermark={logo}:{corner}:margin=8")
    chain = FilterChain([spec], W, H, FPS, rotate=degrees)
    assert chain.names == [f"rotate={degrees}", "watermark"]
    out = rgb(chain.process(yuv_frame(picture)))
    assert out.shape[:2] == (W, H)  # 320 rows, 180 columns
    oy = 8 if corner.startswith("top") else W - LOGO_H - 8
    ox = 8 if corner.endswith("left") else H - LOGO_W - 8
    region, solid = red_and_hole(out, oy, ox)  # the hole where the unturned logo has it
    assert np.abs(region[solid] - (255, 0, 0)).max() <= 12
    # around the logo the camera's picture is turned: rows above or below it match
    background = rgb(yuv_frame(picture))
    turned = np.rot90(background, k=TURNS[degrees])
    away = slice(oy + LOGO_H + 4, None) if corner.startswith("top") else slice(0, oy - 4)
    assert np.abs(out[away] - turned[away]).max() <= 1


def test_a_watermark_must_fit_the_turned_picture(logo: Path) -> None:
    mark = WatermarkSpec(logo, margin=8)  # 48 wide: fits 64 wide, not 40
    FilterChain([mark], 64, 120, FPS)
    with pytest.raises(ConfigError, match="does not fit a 40x64 picture"):
        FilterChain([mark], 64, 40, FPS, rotate=90)


def test_the_rotation_counts_in_the_cost_but_adapt_never_drops_it() -> None:
    clock = FakeClock(30.0)  # 90 % of the 33.3 ms budget: over adapt()'s 80 %
    chain = FilterChain([BeautySpec()], 160, 96, FPS, rotate=90, clock=clock)
    assert chain.names == ["rotate=90", "beauty"]
    frame = yuv_frame(SimCamera(160, 96, FPS).picture(1))
    with capture_logs() as logs:
        dropped = []
        for _ in range(5 * FPS):
            out = chain.process(frame)
            dropped.append(chain.adapt())
    assert [d for d in dropped if d] == ["beauty"]  # beauty once, the rotation never
    assert chain.names == ["rotate=90"]
    assert chain.cost_ms == pytest.approx(30.0)  # still over budget, still turning
    assert (out.width, out.height) == (96, 160)
    assert [e["filter"] for e in logs if e["log_level"] == "warning"] == ["beauty"]


def test_no_rotation_and_no_filters_is_no_graph(picture: npt.NDArray[np.uint8]) -> None:
    chain = FilterChain([], W, H, FPS, rotate=0)
    frame = yuv_frame(picture)
    assert chain.process(frame) is frame
    assert chain.names == [] and chain.cost_ms == 0.0


@pytest.mark.parametrize("degrees", [45, -90, 360, 1])
def test_a_bad_rotation_is_refused(degrees: int) -> None:
    with pytest.raises(ConfigError) as info:
        FilterChain([], W, H, FPS, rotate=degrees)
    assert info.value.exit_code == 2
    assert "0, 90, 180, 270" in info.value.message and str(degrees) in info.value.message


def test_the_graph_knows_every_rotation_the_settings_allow() -> None:
    assert tuple(ROTATION_FILTERS) == ROTATIONS
