"""A fake of libcamera's Python bindings: the part picamera2 and streamer use (``Transform``).

On a Raspberry Pi, ``libcamera`` is a compiled module (``_libcamera``, pybind11)
that picamera2 imports at its top. With ``tests/fakes`` first on ``sys.path``
``import libcamera`` gets this one, beside the fake picamera2.

``Transform`` follows libcamera's src/py/libcamera/py_transform.cpp and
include/libcamera/transform.h: a set of the bits HFlip (1), VFlip (2) and
Transpose (4); ``Transform(rotation=0, hflip=False, vflip=False,
transpose=False)``, where ``rotation`` (0, 90, 180 or 270, clockwise; anything
else raises ValueError, the binding's std::invalid_argument) is made of the
bits and each flag given toggles its bit; the ``hflip``, ``vflip`` and
``transpose`` properties read and set them; ``str()`` names it as
``transformToString`` does (``<libcamera.Transform 'hvflip'>``). Two transforms
with the same bits are equal (picamera2's ``utils.transform_to_orientation``
compares them).
"""

from __future__ import annotations

from typing import Any

HFLIP, VFLIP, TRANSPOSE = 1, 2, 4
# transformFromRotation: clockwise degrees -> bits (Rot90 = VFlip | Transpose, and so on).
_FROM_ROTATION = {0: 0, 90: VFLIP | TRANSPOSE, 180: HFLIP | VFLIP, 270: HFLIP | TRANSPOSE}
_NAMES = {
    0: "identity",
    HFLIP: "hflip",
    VFLIP: "vflip",
    HFLIP | VFLIP: "hvflip",
    TRANSPOSE: "transpose",
    HFLIP | TRANSPOSE: "rot270",
    VFLIP | TRANSPOSE: "rot90",
    HFLIP | VFLIP | TRANSPOSE: "rot180transpose",
}


class Transform:
    def __init__(
        self,
        rotation: Any = 0,
        hflip: bool = False,
        vflip: bool = False,
        transpose: bool = False,
    ) -> None:
        if isinstance(rotation, Transform):  # the binding's copy constructor
            self._bits: int = rotation._bits
            return
        if rotation not in _FROM_ROTATION:
            raise ValueError("Invalid rotation")
        bits = _FROM_ROTATION[rotation]
        if hflip:
            bits ^= HFLIP
        if vflip:
            bits ^= VFLIP
        if transpose:
            bits ^= TRANSPOSE
        self._bits = bits

    def _flag(self, bit: int) -> bool:
        return bool(self._bits & bit)

    def _set(self, bit: int, on: bool) -> None:
        self._bits = self._bits | bit if on else self._bits & ~bit

    @property
    def hflip(self) -> bool:
        return self._flag(HFLIP)

    @hflip.setter
    def hflip(self, on: bool) -> None:
        self._set(HFLIP, on)

    @property
    def vflip(self) -> bool:
        return self._flag(VFLIP)

    @vflip.setter
    def vflip(self, on: bool) -> None:
        self._set(VFLIP, on)

    @property
    def transpose(self) -> bool:
        return self._flag(TRANSPOSE)

    @transpose.setter
    def transpose(self, on: bool) -> None:
        self._set(TRANSPOSE, on)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transform) and other._bits == self._bits

    def __hash__(self) -> int:  # picamera2 keeps Transforms as dict keys
        return self._bits

    def __str__(self) -> str:
        return f"<libcamera.Transform '{_NAMES[self._bits]}'>"

    __repr__ = __str__


__all__ = ["Transform"]
