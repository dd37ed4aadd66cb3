"""Fake of picamera2/picamera2.py: the ``Picamera2`` class, paced by a thread.

Frames are the sim camera's pictures (frame counter in the corner) written
into stride-padded YUV420 buffers, ``buffer_count`` of them, stamped with
``SensorTimestamp`` from ``time.monotonic_ns()`` (CLOCK_MONOTONIC, as the
real sensor timestamps are).

The configuration's ``transform`` (a ``libcamera.Transform``, identity by
default) turns the pictures as the sensor's read-out would: ``hflip`` mirrors
them left-right, ``vflip`` upside down. As in libcamera
(``CameraSensor::computeTransform``), a transpose cannot be done and is
dropped, and a sensor that cannot flip (knob ``fake_can_flip``) keeps its
mounting orientation (the camera's ``Rotation``); ``camera_configuration()``
reports the transform applied, as picamera2 reads it back from libcamera.
"""

from __future__ import annotations

import errno
import threading
import time
from concurrent.futures import Future
from typing import Any, TypedDict

import libcamera
import numpy as np
import numpy.typing as npt

from streamer.hardware.sim import SimCamera

from .encoders.encoder import Encoder
from .outputs import Output
from .request import CompletedRequest


class GlobalCameraInfo(TypedDict):
    Model: str
    Location: int
    Rotation: int
    Id: str
    Num: int


# Knobs for tests.
fake_cameras: list[GlobalCameraInfo] = [
    {
        "Model": "imx708",
        "Location": 2,
        "Rotation": 180,
        "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a",
        "Num": 0,
    }
]
fake_stalled = False  # True: the sensor delivers nothing (loose cable)
fake_can_flip = True  # False: the sensor reads out one way only (transform requests ignored)

STRIDE_ALIGN = 64  # bytes per Y row rounded up to this, so buffers carry padding
_acquired: set[int] = set()
_acquired_lock = threading.Lock()


class Job(Future[Any]):
    def get_result(self, timeout: float | None = None) -> Any:
        return self.result(timeout=timeout)


class Picamera2:
    @staticmethod
    def global_camera_info() -> list[GlobalCameraInfo]:
        return [GlobalCameraInfo(**cam) for cam in fake_cameras]

    def __init__(
        self,
        camera_num: int = 0,
        verbose_console: int | None = None,
        tuning: Any = None,
        allocator: Any = None,
    ) -> None:
        self.is_open = False
        self.started = False
        # As in the real one: IndexError when there is no such camera.
        camera_num = self.global_camera_info()[camera_num]["Num"]
        self.camera_idx = camera_num
        with _acquired_lock:
            if camera_num in _acquired:
                busy = OSError(errno.EBUSY, "Device or resource busy")
                raise RuntimeError("Camera __init__ sequence did not complete.") from busy
            _acquired.add(camera_num)
        self.is_open = True
        self.lock = threading.RLock()
        self.camera_config: dict[str, Any] = {}
        self.stream_map: dict[str, Any] = {}
        self.encode_stream_name = "main"
        self.completed_requests: list[CompletedRequest] = []
        self._job_list: list[Job] = []
        self._encoders: set[Encoder] = set()
        self._max_queue_len = 1
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._free: list[npt.NDArray[np.uint8]] = []
        self._free_lock = threading.Lock()
        self.frames = 0
        self.frames_dropped = 0  # no free buffer: every request held by the application

    def create_video_configuration(
        self,
        main: dict[str, Any] | None = None,
        lores: dict[str, Any] | None = None,
        raw: dict[str, Any] | None = None,
        transform: libcamera.Transform = libcamera.Transform(),  # noqa: B008 (as the real one)
        colour_space: Any = None,
        buffer_count: int = 6,
        controls: dict[str, Any] | None = None,
        display: str | None = "main",
        encode: str | None = "main",
        queue: bool = True,
        sensor: dict[str, Any] | None = None,
        use_case: str = "video",
    ) -> dict[str, Any]:
        if not self.is_open:
            raise RuntimeError("Camera not opened")
        stream: dict[str, Any] = {
            "format": "XBGR8888",
            "size": (1280, 720),
            "preserve_ar": True,
        } | (main or {})
        w, h = stream["size"]
        stream["size"] = (w - w % 2, h - h % 2)  # align_stream(optimal=False)
        return {
            "use_case": use_case,
            "transform": transform,
            "buffer_count": buffer_count,
            "queue": queue,
            "main": stream,
            "lores": lores,
            "raw": raw,
            "controls": {"FrameDurationLimits": (33333, 33333)} | (controls or {}),
            "display": display,
            "encode": encode,
        }

    def configure(self, camera_config: dict[str, Any] | None = None) -> None:
        if camera_config is None:
            camera_config = self.create_video_configuration()
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        if "transform" not in camera_config:  # check_camera_config
            raise RuntimeError("'transform' key expected in camera configuration")
        if not isinstance(camera_config["transform"], libcamera.Transform):
            raise RuntimeError("Transform has incorrect type")
        main = dict(camera_config["main"])
        if main["format"] != "YUV420":
            raise RuntimeError(f"the fake supports YUV420 only, not {main['format']}")
        w, h = main["size"]
        main["stride"] = -(-w // STRIDE_ALIGN) * STRIDE_ALIGN
        main["framesize"] = main["stride"] * h * 3 // 2
        self.camera_config = dict(camera_config) | {
            "main": main,
            "transform": self._settled_transform(camera_config["transform"]),
        }
        self.stream_map = {"main": main}
        self.encode_stream_name = camera_config.get("encode") or "main"
        self._max_queue_len = 1 if camera_config.get("queue", True) else 0
        rng = np.random.default_rng(7)  # padding holds garbage, as real buffers may
        self._free = [
            rng.integers(0, 256, size=(main["framesize"],), dtype=np.uint8)
            for _ in range(camera_config.get("buffer_count", 6))
        ]

    def _settled_transform(self, asked: libcamera.Transform) -> libcamera.Transform:
        """What libcamera makes of the transform asked: flips, never a transpose."""
        if not fake_can_flip:  # the mounting orientation stays
            return libcamera.Transform(self.global_camera_info()[self.camera_idx]["Rotation"])
        return libcamera.Transform(hflip=asked.hflip, vflip=asked.vflip)

    def camera_configuration(self) -> dict[str, Any]:
        return self.camera_config

    def stream_configuration(self, name: str = "main") -> dict[str, Any]:
        return dict(self.camera_config[name])

    def start(
        self, config: dict[str, Any] | None = None, show_preview: bool | None = False
    ) -> None:
        if config is not None:
            self.configure(config)
        if not self.camera_config:
            raise RuntimeError("Camera has not been configured")
        if self.started:
            return
        controls = self.camera_config["controls"]
        if "FrameRate" in controls:
            period = 1.0 / float(controls["FrameRate"])
        else:
            period = controls["FrameDurationLimits"][0] / 1e6
        self._stop_event = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(period, self._stop_event), name="fake-camera", daemon=True
        )
        self.started = True
        self._thread.start()

    def stop(self) -> None:
        if not self.started:
            return
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join()
        self.started = False
        with self.lock:
            while self.completed_requests:
                self.completed_requests.pop(0).release()

    def close(self) -> None:
        if not self.is_open:
            return
        self.stop()
        with _acquired_lock:
            _acquired.discard(self.camera_idx)
        self.is_open = False
        self.camera_config = {}
        self.stream_map = {}

    def capture_request(
        self, wait: bool | float | None = None, signal_function: Any = None, flush: Any = None
    ) -> Any:
        """The next completed request; the caller must ``release()`` it."""
        job = Job()
        with self.lock:
            if self.completed_requests and not self._job_list:
                job.set_result(self.completed_requests.pop(0))
            else:
                self._job_list.append(job)
        if wait is None:
            wait = signal_function is None
        if wait is False:
            return job
        return job.get_result(timeout=None if wait is True else float(wait))

    def wait(self, job: Job, timeout: float | None = None) -> Any:
        return job.get_result(timeout=timeout)

    def cancel_all_and_flush(self) -> None:
        with self.lock:
            for job in self._job_list:
                job.cancel()
            self._job_list = []

    def start_encoder(
        self,
        encoder: Encoder | None = None,
        output: Output | None = None,
        pts: Any = None,
        quality: Any = None,
        name: str | None = None,
    ) -> None:
        if encoder is None:
            raise RuntimeError("No encoder specified")
        if output is not None:
            encoder.output = output
        streams = self.camera_configuration()
        if not streams:
            raise RuntimeError("Camera has not been configured")
        name = name or self.encode_stream_name
        if streams.get(name) is None:
            raise RuntimeError(f"Encode stream {name} was not defined")
        encoder.name = name
        encoder.width, encoder.height = streams[name]["size"]
        encoder.format = streams[name]["format"]
        encoder.stride = streams[name]["stride"]
        if encoder.framerate is None:
            encoder.framerate = 30.0
        encoder.start(quality=quality)
        with self.lock:
            self._encoders.add(encoder)

    def stop_encoder(self, encoders: Encoder | list[Encoder] | set[Encoder] | None = None) -> None:
        if encoders is None:
            chosen = list(self._encoders)
        elif isinstance(encoders, Encoder):
            chosen = [encoders]
        else:
            chosen = list(encoders)
        for encoder in chosen:
            encoder.stop()
        with self.lock:
            for encoder in chosen:
                self._encoders.discard(encoder)

    # The sensor and the event loop.

    def _recycle(self, buffer: npt.NDArray[np.uint8]) -> None:
        with self._free_lock:
            self._free.append(buffer)

    def _run(self, period: float, stop: threading.Event) -> None:
        main = self.camera_config["main"]
        (w, h), stride = main["size"], main["stride"]
        transform = self.camera_config["transform"]
        sim = SimCamera(w, h, 1.0 / period)
        n = 0
        deadline = time.monotonic()
        while not stop.wait(max(0.0, deadline - time.monotonic())):
            deadline = max(deadline + period, time.monotonic() - period)
            if fake_stalled:
                continue
            timestamp_ns = time.monotonic_ns()
            with self._free_lock:
                buffer = self._free.pop() if self._free else None
            n += 1
            if buffer is None:
                self.frames_dropped += 1
                continue
            _fill(buffer, _turned(sim.picture(n - 1), w, h, transform), w, h, stride)
            metadata = {
                "SensorTimestamp": timestamp_ns,
                "FrameDuration": round(period * 1e6),
                "ExposureTime": round(period * 1e6 / 2),
            }
            request = CompletedRequest(buffer, self.stream_map, metadata, self._recycle)
            self._process(request)

    def _process(self, request: CompletedRequest) -> None:
        with self.lock:
            self.frames += 1
            self.completed_requests.append(request)
            while self._job_list and self.completed_requests:
                job = self._job_list.pop(0)
                if not job.cancelled():
                    job.set_result(self.completed_requests.pop(0))
            for encoder in self._encoders:
                if encoder.name in self.stream_map:
                    encoder.encode(encoder.name, request)
            while len(self.completed_requests) > self._max_queue_len:
                self.completed_requests.pop(0).release()


def _turned(
    picture: npt.NDArray[np.uint8], w: int, h: int, transform: libcamera.Transform
) -> npt.NDArray[np.uint8]:
    """A packed yuv420p (h*3/2, w) picture flipped as ``transform`` says, plane by plane."""
    if not (transform.hflip or transform.vflip):
        return picture
    flat, quarter = picture.reshape(-1), w * h // 4
    planes = [flat[: w * h].reshape(h, w)]
    for i in (0, 1):
        start = w * h + i * quarter
        planes.append(flat[start : start + quarter].reshape(h // 2, w // 2))
    axes = tuple(axis for axis, on in ((1, transform.hflip), (0, transform.vflip)) if on)
    out = np.concatenate([np.flip(plane, axis=axes).reshape(-1) for plane in planes])
    return out.reshape(h * 3 // 2, w)


def _fill(
    buffer: npt.NDArray[np.uint8], picture: npt.NDArray[np.uint8], w: int, h: int, stride: int
) -> None:
    """Write a packed yuv420p (h*3/2, w) picture into a stride-padded YUV420 buffer."""
    src = picture.reshape(-1)
    ysize, csize, src_c = stride * h, (stride // 2) * (h // 2), (w // 2) * (h // 2)
    buffer[:ysize].reshape(h, stride)[:, :w] = src[: w * h].reshape(h, w)
    for i in range(2):
        dst = buffer[ysize + i * csize : ysize + (i + 1) * csize].reshape(h // 2, stride // 2)
        dst[:, : w // 2] = src[w * h + i * src_c : w * h + (i + 1) * src_c].reshape(h // 2, w // 2)
