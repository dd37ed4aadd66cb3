"""Text on the picture (``--filter text=...``): rendered by Pillow, blended by FFmpeg.

The FFmpeg inside PyAV has no ``drawtext``, so the text is drawn here into an
RGBA strip and the filter graph's ``overlay`` blends it (see ``filters.py``).
The strip has a fixed size (the picture's width less the margins, one line
high), so a text that changes never changes the graph; it is drawn again
only when the text changes: once a second for a clock, never for a name.

%-fields (strftime) are filled from the frame's own capture time, as the
wall clock had it, in the device's time zone: the clock on a frame that
waited in a queue shows when it was captured, not when it was drawn.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
import structlog

from streamer.encode.filters import STRIP_FORMAT, TextSpec
from streamer.exc import ConfigError

if TYPE_CHECKING:
    from PIL.ImageFont import FreeTypeFont

log = structlog.get_logger("streamer.filters")

# Monospaced, so a clock's digits do not make the text jitter; Debian's fonts-dejavu-core.
FONT_PATHS = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSansMono-Bold.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSansMono-Bold.ttf"),
)
BOX_ALPHA = 150  # the box behind the text: black at 60 %
HEIGHT_SHARE = 24  # default font size: a 24th of the picture height (30 px at 720p)


def load_font(size: int) -> FreeTypeFont:
    """DejaVu Sans Mono Bold at ``size`` px, or Pillow's own font where it is missing."""
    try:
        from PIL import ImageFont
    except ImportError:
        raise ConfigError(
            "the text filter needs Pillow: pip install pillow (it comes with streamer)"
        ) from None
    for path in FONT_PATHS:
        if path.exists():
            return ImageFont.truetype(str(path), size)
    font = ImageFont.load_default(size)
    assert isinstance(font, ImageFont.FreeTypeFont)  # sized: Pillow built with FreeType
    return font


def default_size(picture_height: int) -> int:
    return max(8, round(picture_height / HEIGHT_SHARE))


class TextOverlay:
    """One text filter: its strip for a frame, drawn again only when the text changes.

    ``template`` may be replaced from any thread (assignment is atomic); the
    next frame shows the new text.
    """

    def __init__(self, spec: TextSpec, picture_width: int, picture_height: int) -> None:
        self.spec = spec
        self.template = spec.template
        self.corner, self.margin = spec.corner, spec.margin
        self.size = spec.size or default_size(picture_height)
        self.font = load_font(self.size)
        ascent, descent = self.font.getmetrics()
        self.pad = max(2, self.size // 6)
        self.width = (picture_width - 2 * spec.margin) & ~1
        self.height = (ascent + descent + 2 * self.pad + 1) & ~1
        if self.width < 2 * self.size or self.height > picture_height - 2 * spec.margin:
            raise ConfigError(
                f"text of size {self.size} px with a {spec.margin} px margin does not fit a "
                f"{picture_width}x{picture_height} picture; use a smaller size=... or margin=..."
            )
        self.draws = 0  # how often the strip was drawn (once per change)
        self._shown: str | None = None
        self._strip: av.VideoFrame | None = None
        self._cut_logged = False

    def text_at(self, wall: float) -> str:
        """What the template says at ``wall`` (seconds since the epoch, local time)."""
        template = self.template
        return time.strftime(template, time.localtime(wall)) if "%" in template else template

    def strip_at(self, wall: float) -> av.VideoFrame:
        """The RGBA strip showing the text at ``wall``: the last one if the text is the same."""
        text = self.text_at(wall)
        if text != self._shown or self._strip is None:
            rgba = av.VideoFrame.from_ndarray(self.draw(text), format="rgba")
            # Converted once per change, not by the graph on every frame.
            self._strip = rgba.reformat(format=STRIP_FORMAT)
            self._shown = text
            self.draws += 1
        return self._strip

    def draw(self, text: str) -> np.ndarray:
        """``text`` on a transparent strip (h, w, 4), aligned to the corner's side, on its box."""
        from PIL import Image, ImageDraw

        image = Image.new("RGBA", (self.width, self.height), (0, 0, 0, 0))
        pen = ImageDraw.Draw(image)
        room = self.width - 2 * self.pad
        length = round(pen.textlength(text, font=self.font))
        if length > room and not self._cut_logged:
            self._cut_logged = True
            log.warning("text is wider than the picture: cut at the edge", text=text[:40])
        x = (
            self.pad
            if self.corner.endswith("left") or length > room
            else self.width - self.pad - length
        )
        if self.spec.box:
            right = min(self.width, x + length + self.pad)
            pen.rectangle((x - self.pad, 0, right - 1, self.height - 1), fill=(0, 0, 0, BOX_ALPHA))
        pen.text((x, self.pad), text, font=self.font, fill=(*self.spec.color, 255))
        return np.asarray(image)
