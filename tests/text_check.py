"""Reading a text filter's words back from a picture, as a viewer would read them.

The text is found where the filter puts it (corner, margin, strip size) and
compared, as a mask of its bright pixels, with the masks of candidate texts
drawn by the same renderer: the closest one is what the picture says. The
white text sits on a dark box, so the mask survives an H.264 encode.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamer.encode.text import TextOverlay

WHITE = 235  # luma of white text


@dataclass
class Reading:
    text: str  # the candidate the picture agrees with most
    # On the pixels where the two closest candidates differ, how much more the picture
    # agrees with the closest (1: fully, 0: no better than with the other).
    agreement: float


def strip_of(luma: npt.NDArray[np.uint8], overlay: TextOverlay) -> npt.NDArray[np.uint8]:
    """The part of a picture's luma where ``overlay`` puts its strip."""
    h, w = luma.shape
    x = overlay.margin if overlay.corner.endswith("left") else w - overlay.width - overlay.margin
    y = overlay.margin if overlay.corner.startswith("top") else h - overlay.height - overlay.margin
    return luma[y : y + overlay.height, x : x + overlay.width]


def coverage_of(overlay: TextOverlay, text: str) -> npt.NDArray[np.float64]:
    """How much of each strip pixel the (white) text covers, 0 to 1; NaN outside its box."""
    rgba = overlay.draw(text).astype(np.float64)
    cover = rgba[..., 0] / 255.0
    cover[rgba[..., 3] == 0] = np.nan
    return cover


def read(
    luma: npt.NDArray[np.uint8],
    overlay: TextOverlay,
    candidates: Iterable[str],
    cache: dict[str, npt.NDArray[np.float64]] | None = None,
) -> Reading:
    """Which of ``candidates`` the picture shows in ``overlay``'s place (``cache``: drawings)."""
    cache = {} if cache is None else cache
    covers = []
    for text in candidates:
        if text not in cache:
            cache[text] = coverage_of(overlay, text)
        covers.append((text, cache[text]))
    inside = np.zeros(covers[0][1].shape, bool)
    for _, cover in covers:
        inside |= ~np.isnan(cover)
    strip = strip_of(luma, overlay).astype(np.float64)
    box = float(np.median(strip[inside]))  # most of the box is box, not text
    seen = np.clip((strip - box) / max(1.0, WHITE - box), 0.0, 1.0)
    errors = sorted(
        (float(np.nansum(((seen - np.nan_to_num(cover)) ** 2)[inside])), text, i)
        for i, (text, cover) in enumerate(covers)
    )
    (best, text, i), (second, _, j) = errors[0], errors[1]
    differ = np.count_nonzero(
        np.abs(np.nan_to_num(covers[i][1]) - np.nan_to_num(covers[j][1])) > 0.5
    )
    return Reading(text, (second - best) / max(1, int(differ)))
