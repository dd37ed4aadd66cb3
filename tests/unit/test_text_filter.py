"""The text filter: a clock from each frame's capture time and text that changes live,
read back from the filtered pictures."""

from __future__ import annotations

import math
import time

import av
import numpy as np
import numpy.typing as npt
import pytest

from streamer.encode.filters import FilterChain, TextSpec, parse_filter
from streamer.encode.text import TextOverlay
from streamer.exc import ConfigError
from streamer.hardware.sim import SimCamera
from tests.text_check import coverage_of, read, strip_of

W, H, FPS = 640, 360, 30
CLOCK = "%H:%M:%S"


def luma(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    return np.asarray(frame.to_ndarray(format="yuv420p"), dtype=np.uint8)[: frame.height]


def sim_frame(n: int = 7) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(SimCamera(W, H, FPS).picture(n), format="yuv420p")


def clock_at(wall: float) -> str:
    return time.strftime(CLOCK, time.localtime(wall))


def monotonic_for(wall: float) -> float:
    """The monotonic instant at which the wall clock reads ``wall``."""
    return time.monotonic() + (wall - time.time())


def overlay_of(chain: FilterChain, index: int = 0) -> TextOverlay:
    return chain._texts[index]


# --- parsing ---------------------------------------------------------------------------


def test_parse_text_with_colons_and_options() -> None:
    spec = parse_filter("text=%Y-%m-%d %H:%M:%S:bottom-left")
    assert spec == TextSpec("%Y-%m-%d %H:%M:%S", "bottom-left")
    assert parse_filter("text=Bird box 3") == TextSpec("Bird box 3")
    assert parse_filter("text=Cam: gate:top-right:size=40:color=#FFC000:box=0:margin=4") == (
        TextSpec("Cam: gate", "top-right", 40, (255, 192, 0), False, 4)
    )
    assert parse_filter("text=%H:%M:color=yellow").color == (255, 255, 0)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("text", "needs something to show"),
        ("text=", "needs something to show"),
        ("text= :top-left", "needs something to show"),
        ("text=hi:size=3", "size must be 8 to 200"),
        ("text=hi:size=big", "size must be a whole number"),
        ("text=hi:color=mauve", "not #RRGGBB nor one of"),
        ("text=hi:box=maybe", "box must be 1 or 0"),
        ("text=hi:font=x.ttf", "unknown text option 'font'"),
        ("text=hi:top-left:bottom-left", "corner given twice"),
        ("text=hi:corner=middle", "not one of"),
        ("text=a\tb", "one line of printable characters"),
        ("text=" + "x" * 201, "over 200 characters"),
    ],
)
def test_bad_text_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_filter(spec)


def test_a_text_too_big_for_the_picture_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="does not fit a 160x90 picture"):
        FilterChain([parse_filter("text=hi:size=80")], 160, 90, FPS)


# --- what the picture shows ------------------------------------------------------------


def test_the_clock_shows_the_capture_time_not_the_time_it_is_drawn() -> None:
    chain = FilterChain([parse_filter(f"text={CLOCK}:top-left")], W, H, FPS)
    captured_wall = math.floor(time.time()) - 5 + 0.5  # a frame that waited 5 s in a queue
    out = chain.process(sim_frame(), monotonic_for(captured_wall))
    candidates = [clock_at(captured_wall + s) for s in range(-2, 8)]
    reading = read(luma(out), overlay_of(chain), candidates)
    assert reading.text == clock_at(captured_wall)
    assert reading.agreement > 0.4


def test_the_clock_ticks_once_a_second_on_the_frames_timestamps_and_is_drawn_once_per_tick() -> (
    None
):
    chain = FilterChain([parse_filter(f"text=%Y-%m-%d {CLOCK}:bottom-right")], W, H, FPS)
    overlay = overlay_of(chain)
    start = math.floor(time.time()) + 0.013  # 3 s of frames from just after a second began
    walls = [start + k / FPS for k in range(3 * FPS)]
    expected = [time.strftime(f"%Y-%m-%d {CLOCK}", time.localtime(w)) for w in walls]
    frame = sim_frame()
    seen = [
        read(luma(chain.process(frame, monotonic_for(w))), overlay, sorted(set(expected))).text
        for w in walls
    ]
    assert seen == expected
    changes = [k for k in range(1, len(seen)) if seen[k] != seen[k - 1]]
    assert changes == [FPS, 2 * FPS]  # on the frames whose capture time crossed a second
    assert overlay.draws == 3


def test_text_changed_between_frames_shows_on_the_next_frame() -> None:
    chain = FilterChain(
        [parse_filter(f"text={CLOCK}:top-left"), parse_filter("text=before:bottom-left")],
        W,
        H,
        FPS,
    )
    name = overlay_of(chain, 1)
    frame = sim_frame()
    assert read(luma(chain.process(frame)), name, ["before", "after"]).text == "before"
    chain.set_text("after", 1)
    assert chain.texts == [CLOCK, "after"]
    assert read(luma(chain.process(frame)), name, ["before", "after"]).text == "after"
    with pytest.raises(ConfigError, match="no text filter number 2"):
        chain.set_text("x", 2)
    with pytest.raises(ConfigError, match="one line"):
        chain.set_text("two\nlines", 1)
    assert chain.texts == [CLOCK, "after"]  # a refused text changes nothing


def test_the_box_keeps_white_text_legible_on_a_white_scene() -> None:
    white = np.full((H * 3 // 2, W), 128, np.uint8)
    white[:H] = 235
    frame = av.VideoFrame.from_ndarray(white, format="yuv420p")
    for box in (True, False):
        chain = FilterChain([parse_filter(f"text=Gate 2:top-left:box={int(box)}")], W, H, FPS)
        overlay = overlay_of(chain)
        strip = strip_of(luma(chain.process(frame)), overlay)
        cover = np.nan_to_num(coverage_of(overlay, "Gate 2"))
        columns = np.flatnonzero(cover.any(axis=0))
        words = slice(columns[0], columns[-1] + 1)  # the columns the words span
        around = strip[:, words][cover[:, words] == 0]  # the scene between the letters
        if box:
            assert around.mean() < 120  # the box darkens the scene behind the words
            assert read(luma(chain.process(frame)), overlay, ["Gate 2", "Gate 3"]).text == "Gate 2"
        else:
            assert around.mean() > 230  # without it, white on white: nothing but the scene


def test_a_right_corner_aligns_the_text_to_the_right_edge() -> None:
    chain = FilterChain([parse_filter("text=abc:top-right:margin=10")], W, H, FPS)
    overlay = overlay_of(chain)
    columns = np.flatnonzero(np.nan_to_num(coverage_of(overlay, "abc")).any(axis=0))
    assert overlay.width - columns[-1] < overlay.pad + overlay.size // 2
    assert columns[0] > overlay.width // 2
    reading = read(luma(chain.process(sim_frame())), overlay, ["abc", "xyz"])
    assert reading.text == "abc" and reading.agreement > 0.4  # the words are where drawn


@pytest.mark.parametrize("rotate", [90, 270])
def test_text_sits_upright_at_its_corner_of_a_turned_picture(rotate: int) -> None:
    chain = FilterChain([parse_filter("text=Gate 2:bottom-right")], W, H, FPS, rotate=rotate)
    out = chain.process(sim_frame())
    assert (out.width, out.height) == (H, W)
    reading = read(luma(out), overlay_of(chain), ["Gate 2", "Gate 3"])
    assert reading.text == "Gate 2" and reading.agreement > 0.4
