"""Fake of picamera2/request.py: a completed request holding one camera buffer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt


class CompletedRequest:
    """One captured frame; reference counted, its buffer goes back to the camera at zero."""

    def __init__(
        self,
        buffer: npt.NDArray[np.uint8],
        config: dict[str, Any],
        metadata: dict[str, Any],
        recycle: Callable[[npt.NDArray[np.uint8]], None],
    ) -> None:
        self.ref_count = 1
        self.lock = threading.Lock()
        self.config = config
        self._buffer = buffer
        self._metadata = metadata
        self._recycle = recycle

    def acquire(self) -> None:
        with self.lock:
            if self.ref_count == 0:
                raise RuntimeError("CompletedRequest: acquiring lock with ref_count 0")
            self.ref_count += 1

    def release(self) -> None:
        with self.lock:
            self.ref_count -= 1
            if self.ref_count < 0:
                raise RuntimeError("CompletedRequest: lock now has negative ref_count")
            if self.ref_count == 0:
                self._recycle(self._buffer)

    def get_metadata(self) -> dict[str, Any]:
        return dict(self._metadata)

    def make_buffer(self, name: str) -> npt.NDArray[np.uint8]:
        self._check(name)
        return np.array(self._buffer, dtype=np.uint8)

    def make_array(self, name: str) -> npt.NDArray[np.uint8]:
        """A copy of the stream's buffer; YUV420 comes as (h*3/2, stride), padding included."""
        stream = self._check(name)
        w, h = stream["size"]
        stride = stream["stride"]
        if stream["format"] != "YUV420":
            raise RuntimeError(f"the fake supports YUV420 only, not {stream['format']}")
        assert w <= stride
        return np.copy(self._buffer.reshape(h * 3 // 2, stride))

    def _check(self, name: str) -> dict[str, Any]:
        if self.ref_count <= 0:
            raise RuntimeError("CompletedRequest used after release")
        stream = self.config.get(name)
        if stream is None:
            raise RuntimeError(f"Stream {name!r} is not defined")
        return dict(stream)
