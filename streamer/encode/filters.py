"""Video filters applied to camera frames before encoding: rotation, beauty, watermark,
mirror, text.

Every filter runs inside one FFmpeg filter graph (PyAV ``av.filter.Graph``):
no per-pixel Python. A chain is built once for a picture size and rate::

    buffer (yuv420p WxH, 1/fps) -> [rotation] -> [bilateral] -> [hflip] -> [overlay <- logo]
        -> [overlay <- text strip] -> format -> sink

and ``FilterChain.process`` pushes one frame and pulls one frame.

The filters, whatever order they were given in, always run in that order:
the rotation first, so every later filter sees the picture upright as it is
streamed; beauty on the camera picture only (never on the logo), then mirror,
then the watermarks, then the texts, so a logo or a text is never mirrored nor
smoothed, and it sits at its named corner of the streamed picture.

- rotation (``FilterChain(..., rotate=DEGREES)``, clockwise; ``--rotate``): 90
  is ``transpose=clock``, 270 ``transpose=cclock``, 180 ``vflip`` then
  ``hflip``. 90 and 270 swap width and height: the chain takes the camera's
  ``in_width x in_height`` and gives ``width x height``, the size the encoder
  is opened at. Exact (pixels are moved, never interpolated).

- ``beauty[=STRENGTH]`` (0..1, default 0.5): FFmpeg's ``bilateral`` on the luma
  plane, an edge-preserving blur (its recursive implementation costs the same
  whatever sigmaS is). sigmaS = 1 + 7*strength pixels, sigmaR = 0.02 +
  0.13*strength of the full range: at 0 it is nearly the identity, at 1 a
  sensor's noise and skin texture are smoothed while a step of 100+ levels
  keeps more than 95 % of its contrast. Chroma is left alone (smoothing it
  would cost 50 % more for little visible gain). Measured at 1280x720: about
  6 ms a frame on one core, a fifth of the 33 ms budget at 30 fps; a
  masked ``gblur`` would be cheaper but blurs edges the mask misses, and
  ``yaepblur`` costs 2.5x more.
- ``watermark=PNG[:CORNER][:margin=N][:opacity=X]``: the PNG is decoded once
  into an RGBA frame that feeds a second ``buffer`` source (pushed once, then
  closed: ``overlay`` repeats the last logo frame for every camera frame);
  ``colorchannelmixer=aa=X`` scales its alpha, ``overlay`` places it at the
  corner (default bottom-right, margin 16) and blends in yuv420.
- ``mirror``: ``hflip`` (a selfie view).
- ``text=TEXT[:CORNER][:size=N][:color=C][:box=1|0][:margin=N]``: one line,
  strftime %-fields filled from each frame's capture time; drawn by Pillow
  into a fixed-size strip when the text changes (``text.py``), pushed beside
  every frame into its own ``buffer`` source and blended by ``overlay``.
  ``set_text`` changes it from any thread, from the next frame on.

``adapt()`` watches the cost: when the average over the last ~2 s exceeds
80 % of the frame budget, the chain is rebuilt without its most expensive
filter (beauty first), one drop per call, logged once per drop. The rotation
counts in the cost but is never dropped: without it the picture would change
size mid-stream (90, 270) or turn upside down.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias, TypeVar

import av
import av.error
import av.filter
import av.filter.context
import av.video.frame
import structlog

from streamer.exc import ConfigError

if TYPE_CHECKING:
    from streamer.encode.text import TextOverlay

STRIP_FORMAT = "yuva420p"  # the text strips' format (streamer.encode.text draws them so)

log = structlog.get_logger("streamer.filters")
N = TypeVar("N", int, float)

Corner: TypeAlias = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
CORNERS: tuple[Corner, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_STRENGTH = 0.5
DEFAULT_MARGIN = 16
DEFAULT_OPACITY = 1.0
ADAPT_WINDOW_S = 2.0  # adapt() judges the average cost over this much video
ADAPT_FRACTION = 0.8  # of the frame budget (1000/fps ms)

MIN_TEXT_SIZE, MAX_TEXT_SIZE = 8, 200  # font size in pixels
MAX_TEXT_CHARS = 200
# Degrees clockwise -> the FFmpeg filters that turn the picture so, in graph order.
# For 180, vflip first: it only points at the rows backwards; hflip then writes them out.
ROTATION_FILTERS: dict[int, tuple[tuple[str, str | None], ...]] = {
    0: (),
    90: (("transpose", "dir=clock"),),
    180: (("vflip", None), ("hflip", None)),
    270: (("transpose", "dir=cclock"),),
}

ALLOWED = (
    "allowed filters: beauty[=STRENGTH] (0..1, default 0.5), "
    "watermark=FILE.png[:CORNER][:margin=PIXELS][:opacity=0..1] "
    "(default bottom-right), "
    "text=TEXT[:CORNER][:size=PIXELS][:color=NAME|#RRGGBB][:box=1|0][:margin=PIXELS] "
    "(strftime %-fields from the capture time, default bottom-left), mirror; "
    f"CORNER one of {'|'.join(CORNERS)}"
)


@dataclass(frozen=True)
class BeautySpec:
    """Edge-preserving skin smoothing; ``strength`` 0 (almost off) .. 1 (strong)."""

    strength: float = DEFAULT_STRENGTH
    name: Literal["beauty"] = "beauty"

    @property
    def sigmas(self) -> tuple[float, float]:
        """``bilateral``'s (sigmaS in pixels, sigmaR as a fraction of the range)."""
        return 1.0 + 7.0 * self.strength, 0.02 + 0.13 * self.strength


@dataclass(frozen=True)
class WatermarkSpec:
    """A PNG (alpha respected) in a corner, ``margin`` pixels from both edges."""

    path: Path
    corner: Corner = "bottom-right"
    margin: int = DEFAULT_MARGIN
    opacity: float = DEFAULT_OPACITY
    name: Literal["watermark"] = "watermark"


@dataclass(frozen=True)
class MirrorSpec:
    """Flip left-right."""

    name: Literal["mirror"] = "mirror"


@dataclass(frozen=True)
class TextSpec:
    """One line of text at a corner; %-fields (strftime) come from each frame's capture time.

    ``size`` is the font size in pixels (None: a 24th of the picture height);
    ``box`` puts a dark translucent box behind it, for any scene.
    """

    template: str
    corner: Corner = "bottom-left"
    size: int | None = None
    color: tuple[int, int, int] = (255, 255, 255)
    box: bool = True
    margin: int = DEFAULT_MARGIN
    name: Literal["text"] = "text"


FilterSpec: TypeAlias = BeautySpec | WatermarkSpec | MirrorSpec | TextSpec


def parse_filter(spec: str) -> FilterSpec:
    """One filter from its command-line / config text; ConfigError names what is allowed."""
    text = spec.strip()
    name, sep, arg = text.partition("=")
    name = name.strip().lower()
    if name == "beauty":
        return _parse_beauty(spec, arg.strip() if sep else None)
    if name == "watermark":
        if not sep or not arg.strip():
            raise ConfigError(f"filter {spec!r}: watermark needs a PNG file; {ALLOWED}")
        return _parse_watermark(spec, arg.strip())
    if name == "text":
        if not sep or not arg.strip():
            raise ConfigError(f"filter {spec!r}: text needs something to show; {ALLOWED}")
        return _parse_text(spec, arg)
    if name == "mirror":
        if sep:
            raise ConfigError(f"filter {spec!r}: mirror takes no value; {ALLOWED}")
        return MirrorSpec()
    raise ConfigError(f"unknown filter {spec!r}; {ALLOWED}")


def _parse_beauty(spec: str, arg: str | None) -> BeautySpec:
    if arg is None:
        return BeautySpec()
    try:
        strength = float(arg)
    except ValueError:
        strength = math.nan
    if not 0.0 <= strength <= 1.0:  # also rejects nan
        raise ConfigError(
            f"filter {spec!r}: beauty strength must be a number from 0 to 1; {ALLOWED}"
        )
    return BeautySpec(strength)


def _options_from_right(
    spec: str, arg: str, what: str, keys: tuple[str, ...]
) -> tuple[str, dict[str, str]]:
    """``HEAD[:CORNER][:key=value]...`` → (HEAD, options); a bare corner is ``corner=``.

    Options are taken from the right, so HEAD (a file name, a text) may itself
    contain ':'. The first part from the right that is no option ends them.
    """
    parts = arg.split(":")
    options: dict[str, str] = {}
    while len(parts) > 1:
        key, eq, value = (t.strip() for t in parts[-1].partition("="))
        key = key.lower()
        if not eq and key in CORNERS:
            key, value = "corner", key
        elif not eq or key not in keys:
            if eq and key.isidentifier():
                raise ConfigError(f"filter {spec!r}: unknown {what} option {key!r}; {ALLOWED}")
            break  # the rest is the head
        if key in options:
            raise ConfigError(f"filter {spec!r}: {what} {key} given twice; {ALLOWED}")
        options[key] = value
        parts.pop()
    return ":".join(parts), options


def _margin(spec: str, what: str, options: dict[str, str]) -> int:
    if "margin" not in options:
        return DEFAULT_MARGIN
    rule = "a whole number of pixels >= 0"
    margin = _as_number(spec, what, options["margin"], int, "margin", rule)
    if margin < 0:
        raise ConfigError(f"filter {spec!r}: {what} margin must be {rule}; {ALLOWED}")
    return margin


def _parse_watermark(spec: str, arg: str) -> WatermarkSpec:
    head, options = _options_from_right(spec, arg, "watermark", ("corner", "margin", "opacity"))
    corner = _as_corner(spec, "watermark", options.get("corner", "bottom-right").lower())
    opacity = DEFAULT_OPACITY
    if "opacity" in options:
        rule = "above 0 and at most 1"
        opacity = _as_number(spec, "watermark", options["opacity"], float, "opacity", rule)
        if not 0.0 < opacity <= 1.0:  # also rejects nan
            raise ConfigError(f"filter {spec!r}: watermark opacity must be {rule}; {ALLOWED}")
    path = Path(head.strip()).expanduser()
    parts = head.split(":")
    if not path.exists() and len(parts) > 1 and Path(":".join(parts[:-1]).strip()).exists():
        raise ConfigError(
            f"filter {spec!r}: unknown watermark option {parts[-1].strip()!r}; {ALLOWED}"
        )
    _check_png(spec, path)
    return WatermarkSpec(path, corner, _margin(spec, "watermark", options), opacity)


def _parse_text(spec: str, arg: str) -> TextSpec:
    keys = ("corner", "margin", "size", "color", "box")
    head, options = _options_from_right(spec, arg, "text", keys)
    corner = _as_corner(spec, "text", options.get("corner", "bottom-left").lower())
    size = None
    if "size" in options:
        size = _as_number(spec, "text", options["size"], int, "size", "a whole number of pixels")
        if not MIN_TEXT_SIZE <= size <= MAX_TEXT_SIZE:
            raise ConfigError(
                f"filter {spec!r}: text size must be {MIN_TEXT_SIZE} to {MAX_TEXT_SIZE} pixels"
            )
    color = parse_color(spec, options.get("color", "white"))
    box = options.get("box", "1").lower()
    if box not in ("0", "1", "on", "off", "yes", "no", "true", "false"):
        raise ConfigError(f"filter {spec!r}: text box must be 1 or 0, got {box!r}; {ALLOWED}")
    template = check_text(head, f"filter {spec!r}")
    margin = _margin(spec, "text", options)
    return TextSpec(template, corner, size, color, box in ("1", "on", "yes", "true"), margin)


def check_text_index(index: int, count: int) -> None:
    """ConfigError unless there is a text filter number ``index`` (from 0) of ``count``."""
    if not 0 <= index < count:
        have = f"{count} text filter" + ("" if count == 1 else "s")
        raise ConfigError(
            f"no text filter number {index} to change (this stream has {have}; "
            "add one with --filter text=... or [video] filters)"
        )


def text_filter_count(specs: Sequence[str]) -> int:
    """How many of these filter texts are text filters."""
    return sum(isinstance(parse_filter(spec), TextSpec) for spec in specs)


def check_text(text: str, context: str) -> str:
    """The text as given, if it is one line of printable characters strftime takes;
    ConfigError starting with ``context`` (what the text was for) otherwise."""
    if not text.strip():
        raise ConfigError(f"{context}: text needs something to show")
    if len(text) > MAX_TEXT_CHARS:
        raise ConfigError(f"{context}: text is over {MAX_TEXT_CHARS} characters")
    if not text.isprintable():
        raise ConfigError(f"{context}: text must be one line of printable characters")
    try:
        time.strftime(text, time.localtime(0))
    except ValueError as exc:
        raise ConfigError(f"{context}: text has a bad % field ({exc})") from None
    return text


COLORS = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "yellow": (255, 255, 0),
    "red": (255, 0, 0),
    "green": (0, 200, 0),
    "blue": (0, 0, 255),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "orange": (255, 165, 0),
    "grey": (128, 128, 128),
}


def parse_color(spec: str, text: str) -> tuple[int, int, int]:
    """A colour by name or as #RRGGBB."""
    name = text.strip().lower()
    if name in COLORS:
        return COLORS[name]
    if len(name) == 7 and name.startswith("#"):
        try:
            value = int(name[1:], 16)
        except ValueError:
            pass
        else:
            return (value >> 16, (value >> 8) & 0xFF, value & 0xFF)
    raise ConfigError(
        f"filter {spec!r}: colour {text!r} is not #RRGGBB nor one of {', '.join(COLORS)}"
    )


def _as_corner(spec: str, what: str, text: str) -> Corner:
    for corner in CORNERS:
        if corner == text:
            return corner
    raise ConfigError(f"filter {spec!r}: {what} corner {text!r} is not one of {CORNERS}")


def _as_number(
    spec: str, what: str, text: str, kind: Callable[[str], N], option: str, rule: str
) -> N:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(
            f"filter {spec!r}: {what} {option} must be {rule}, got {text!r}; {ALLOWED}"
        ) from None


def _check_png(spec: str, path: Path) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(len(PNG_MAGIC))
    except FileNotFoundError:
        raise ConfigError(
            f"filter {spec!r}: watermark file {str(path)!r} does not exist; {ALLOWED}"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"filter {spec!r}: watermark {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(
            f"filter {spec!r}: cannot read watermark {path}: {exc.strerror}"
        ) from None
    if head != PNG_MAGIC:
        raise ConfigError(
            f"filter {spec!r}: watermark {path} is not a PNG file (a PNG with alpha is needed)"
        )
    load_logo(path)  # a PNG that does not decode is a config error too, found now


def load_logo(path: Path) -> av.VideoFrame:
    """The first picture of a PNG as an RGBA frame (ConfigError if it does not decode)."""
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            rgba: av.VideoFrame = frame.reformat(format="rgba")
    except (av.error.FFmpegError, StopIteration, ValueError) as exc:
        raise ConfigError(f"watermark {path} is not a readable PNG: {exc}") from None
    return rgba


@dataclass
class _Stage:
    spec: FilterSpec
    logo: av.VideoFrame | None = None
    text: TextOverlay | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def rank(self, width: int, height: int) -> tuple[int, float]:
        """Drop order for adapt(): beauty first, then by estimated cost per frame."""
        if isinstance(self.spec, BeautySpec):
            return (1, float(width * height))
        if self.logo is not None:  # overlay blends the logo's pixels
            return (0, 2.0 * self.logo.width * self.logo.height)
        if self.text is not None:  # and the text's strip, converted every frame
            return (0, 3.0 * self.text.width * self.text.height)
        return (0, 0.1 * width * height)  # hflip: a plain copy, ~0.07 ms at 720p


class FilterChain:
    """One FFmpeg filter graph for a list of filters; one frame in, one frame out.

    ``names`` lists the filters running now (in graph order, the rotation as
    ``rotate=DEGREES``); ``cost_ms`` is the average wall time of ``process``
    over the last ~2 s of frames, the rotation's included.

    ``width`` and ``height`` are given as the camera's size; with ``rotate``
    90 or 270 they are swapped after the chain: ``in_width x in_height`` is
    what ``process`` takes, ``width x height`` what it gives (and what every
    filter after the rotation sees).
    """

    def __init__(
        self,
        specs: Sequence[FilterSpec],
        width: int,
        height: int,
        fps: float,
        *,
        rotate: int = 0,
        threads: int = 1,
        window_s: float = ADAPT_WINDOW_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ConfigError(f"filters need an even picture size, got {width}x{height}")
        if not fps > 0:
            raise ConfigError(f"filters need a frame rate above 0, got {fps}")
        if rotate not in ROTATION_FILTERS:
            raise ConfigError(
                f"rotate must be one of {', '.join(map(str, ROTATION_FILTERS))} "
                f"(degrees clockwise), got {rotate!r}"
            )
        self.rotate = rotate
        self.in_width, self.in_height = width, height
        if rotate in (90, 270):
            width, height = height, width
        self.width, self.height, self.fps = width, height, fps
        self.threads = threads  # FFmpeg slice threads; 1 costs the least CPU in total
        self._clock = clock
        self.budget_ms = 1000.0 / fps
        self._window: deque[float] = deque(maxlen=max(10, round(window_s * fps)))
        self._sum = 0.0
        self._time_base = Fraction(1, max(1, round(fps)))
        self._texts: list[TextOverlay] = []  # every text filter, in the order given
        self._stages = self._order(specs)
        self._build()

    def _order(self, specs: Sequence[FilterSpec]) -> list[_Stage]:
        beauty = [s for s in specs if isinstance(s, BeautySpec)]
        mirror = [s for s in specs if isinstance(s, MirrorSpec)]
        marks = [s for s in specs if isinstance(s, WatermarkSpec)]
        texts = [s for s in specs if isinstance(s, TextSpec)]
        if len(beauty) > 1:
            raise ConfigError("the beauty filter is given more than once")
        if len(mirror) > 1:
            raise ConfigError("the mirror filter is given more than once")
        stages = [_Stage(s) for s in beauty] + [_Stage(s) for s in mirror]
        for mark in marks:
            logo = load_logo(mark.path)
            room_w, room_h = self.width - 2 * mark.margin, self.height - 2 * mark.margin
            if logo.width > room_w or logo.height > room_h:
                raise ConfigError(
                    f"watermark {mark.path} is {logo.width}x{logo.height}: it does not fit "
                    f"a {self.width}x{self.height} picture with a {mark.margin} px margin"
                )
            stages.append(_Stage(mark, logo))
        if texts:
            from streamer.encode.text import TextOverlay  # Pillow: only when asked

            self._texts = [TextOverlay(t, self.width, self.height) for t in texts]
            stages += [_Stage(overlay.spec, text=overlay) for overlay in self._texts]
        return stages

    @property
    def names(self) -> list[str]:
        turn = [f"rotate={self.rotate}"] if self.rotate else []
        return turn + [stage.name for stage in self._stages]

    @property
    def specs(self) -> list[FilterSpec]:
        return [stage.spec for stage in self._stages]

    @property
    def cost_ms(self) -> float:
        return self._sum / len(self._window) if self._window else 0.0

    def _build(self) -> None:
        """(Re)build the graph for the current stages; costs a few ms, no logo decoding."""
        self._window.clear()
        self._sum = 0.0
        self._pts = 0
        if not self._stages and not self.rotate:
            self._graph: av.filter.Graph | None = None
            return
        graph = av.filter.Graph()
        graph.threads = self.threads
        tb = self._time_base
        self._source = graph.add_buffer(
            width=self.in_width,
            height=self.in_height,
            format=av.VideoFormat("yuv420p"),
            time_base=tb,
            name="in",
        )
        last = _add_rotation(graph, self._source, self.rotate)
        logos: list[tuple[av.filter.context.FilterContext, av.VideoFrame]] = []
        self._text_sources: list[tuple[av.filter.context.FilterContext, TextOverlay]] = []
        for stage in self._stages:
            spec = stage.spec
            if isinstance(spec, BeautySpec):
                sigma_s, sigma_r = spec.sigmas
                node = graph.add("bilateral", f"sigmaS={sigma_s:.3f}:sigmaR={sigma_r:.4f}:planes=1")
                last.link_to(node)
            elif isinstance(spec, MirrorSpec):
                node = graph.add("hflip")
                last.link_to(node)
            elif stage.text is not None:
                text = stage.text
                text_src = graph.add_buffer(
                    width=text.width,
                    height=text.height,
                    format=av.VideoFormat(STRIP_FORMAT),
                    time_base=tb,
                )
                node = graph.add("overlay", _overlay_at(text.corner, text.margin, eof="pass"))
                last.link_to(node, 0, 0)
                text_src.link_to(node, 0, 1)
                self._text_sources.append((text_src, text))
            else:
                assert isinstance(spec, WatermarkSpec) and stage.logo is not None
                logo_src = graph.add_buffer(
                    width=stage.logo.width,
                    height=stage.logo.height,
                    format=av.VideoFormat("rgba"),
                    time_base=tb,
                )
                logo_out = logo_src
                if spec.opacity < 1.0:
                    logo_out = graph.add("colorchannelmixer", f"aa={spec.opacity:.4f}")
                    logo_src.link_to(logo_out)
                node = graph.add("overlay", _overlay_at(spec.corner, spec.margin, eof="repeat"))
                last.link_to(node, 0, 0)
                logo_out.link_to(node, 0, 1)
                logos.append((logo_src, stage.logo))
            last = node
        fmt = graph.add("format", "pix_fmts=yuv420p")
        last.link_to(fmt)
        self._sink = graph.add("buffersink")
        fmt.link_to(self._sink)
        graph.configure()
        for src, logo in logos:
            # One logo frame, then end of stream: overlay repeats it for every frame.
            logo.pts = 0
            logo.time_base = tb
            src.push(logo)
            src.push(None)
        self._graph = graph

    def set_text(self, text: str, index: int = 0) -> None:
        """Show ``text`` (strftime %-fields allowed) in the ``index``-th text filter from the
        next frame on. Safe from any thread: the frame being filtered keeps the old one."""
        check_text_index(index, len(self._texts))
        self._texts[index].template = check_text(text, f"new text {text[:40]!r}")

    @property
    def texts(self) -> list[str]:
        """What each text filter shows (its template), in the order given."""
        return [overlay.template for overlay in self._texts]

    def process(self, frame: av.VideoFrame, captured: float | None = None) -> av.VideoFrame:
        """The filtered picture: ``width x height`` (turned by ``rotate``), yuv420p, the
        input's pts and time_base.

        ``captured`` (monotonic seconds, default now) is the instant a clock in
        a text filter shows, as the wall clock had it then.
        """
        if self._graph is None:
            return frame
        if frame.width != self.in_width or frame.height != self.in_height:
            raise ValueError(
                f"filter chain built for {self.in_width}x{self.in_height}, "
                f"got a {frame.width}x{frame.height} frame"
            )
        src = frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p")
        pts, time_base = frame.pts, frame.time_base
        start = self._clock()
        src.pts = self._pts  # the graph's own timeline: overlay syncs on it
        src.time_base = self._time_base
        if self._text_sources:
            now = time.monotonic()
            wall = time.time() - now + (now if captured is None else captured)
            for text_src, overlay in self._text_sources:
                # A strip for every frame: overlay would otherwise wait for the next one.
                strip = overlay.strip_at(wall)
                strip.pts = self._pts
                strip.time_base = self._time_base
                text_src.push(strip)
        self._source.push(src)
        out = self._sink.pull()
        assert isinstance(out, av.VideoFrame)
        cost = (self._clock() - start) * 1000.0
        self._pts += 1
        out.pts = pts
        if time_base is not None:
            out.time_base = time_base
        if src is frame:  # the caller's frame comes back as it was
            frame.pts = pts
            if time_base is not None:
                frame.time_base = time_base
        if len(self._window) == self._window.maxlen:
            self._sum -= self._window[0]
        self._window.append(cost)
        self._sum += cost
        return out

    def adapt(self) -> str | None:
        """Drop the most expensive filter if the last ~2 s averaged > 80 % of the frame budget.

        Beauty goes first, then the costliest remaining filter; after a drop
        the window starts over, so the next drop needs another ~2 s over
        budget. Returns the dropped filter's name, or None. The rotation is
        never dropped (it is no stage): the picture would change size
        mid-stream or turn upside down; its cost still counts in the average.
        """
        if not self._stages or len(self._window) < (self._window.maxlen or 0):
            return None
        average = self.cost_ms
        if average <= ADAPT_FRACTION * self.budget_ms:
            return None
        victim = max(self._stages, key=lambda s: s.rank(self.width, self.height))
        self._stages.remove(victim)
        log.warning(
            "filter dropped: too slow for the frame rate",
            filter=victim.name,
            cost_ms=round(average, 2),
            budget_ms=round(self.budget_ms, 2),
            remaining=self.names,
        )
        self._build()
        return victim.name


def _overlay_at(corner: Corner, margin: int, eof: Literal["repeat", "pass"]) -> str:
    """``overlay``'s arguments for a picture at ``corner``, ``margin`` pixels in."""
    x = f"{margin}" if corner.endswith("left") else f"W-w-{margin}"
    y = f"{margin}" if corner.startswith("top") else f"H-h-{margin}"
    return f"x={x}:y={y}:format=yuv420:eval=init:eof_action={eof}:repeatlast=1"


def _add_rotation(
    graph: av.filter.Graph, last: av.filter.context.FilterContext, degrees: int
) -> av.filter.context.FilterContext:
    """The rotation's filters linked after ``last`` (the source: rotation runs first)."""
    for name, args in ROTATION_FILTERS[degrees]:
        node = graph.add(name, args) if args else graph.add(name)
        last.link_to(node)
        last = node
    return last
