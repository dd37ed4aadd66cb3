"""Raspberry Pi cameras through picamera2 (libcamera).

Two sources:

* ``PicameraEncoded`` (an ``EncodedVideoSource``): the Pi's hardware H.264
  encoder (V4L2, /dev/video11, Pi 4 and earlier) encodes the camera's YUV420
  stream itself; our ``Output`` hands each frame to the sink from picamera2's
  encoder thread.
* ``PicameraRaw`` (a ``VideoSource``): raw YUV420 frames for our own encoder,
  when filters are on or on a Pi 5 (no hardware H.264).

picamera2 is imported lazily, inside the functions that need it, so this
module imports on any machine; without picamera2 those functions raise
``DeviceError`` saying how to install it.

What picamera2 (raspberrypi/picamera2 v0.3.36) does, as read in its source:

* ``Output.outputframe(frame, keyframe, timestamp, packet, audio)``
  (picamera2/outputs/output.py) is called from the V4L2 encoder's poll
  thread (``V4L2Encoder.thread_poll``, picamera2/encoders/v4l2_encoder.py)
  with the encoded buffer as ``bytes``. ``timestamp`` is µs *relative to the
  encoder's first frame*: ``Encoder._timestamp`` (encoders/encoder.py)
  returns ``SensorTimestamp/1000 - encoder.firsttimestamp``. So the capture
  instant is ``(encoder.firsttimestamp + timestamp) / 1e6`` seconds of the
  sensor clock, which is CLOCK_MONOTONIC (``time.monotonic``): picamera2
  itself compares ``SensorTimestamp`` with ``time.monotonic_ns()``
  (``Picamera2.capture_request(flush=True)``).
* The bitrate goes to the device as ``V4L2_CID_MPEG_VIDEO_BITRATE`` once, in
  ``V4L2Encoder._start``; ``encoder.bitrate`` is a plain attribute read then.
  picamera2 has no call to change it on a running encoder, but the open
  device is ``encoder.vd`` and the driver takes the control while streaming
  (MMAL_PARAMETER_VIDEO_BIT_RATE may change at any time), so ``set_bitrate``
  issues the same ``VIDIOC_S_CTRL`` picamera2 issues at start, and also sets
  ``encoder.bitrate`` so that a restarted encoder keeps it.
* ``H264Encoder.force_key_frame()`` (since picamera2 0.3.32) makes the
  camera thread set ``V4L2_CID_MPEG_VIDEO_FORCE_KEY_FRAME`` before the next
  frame; with ``repeat=True`` (``V4L2_CID_MPEG_VIDEO_REPEAT_SEQ_HEADER``)
  every keyframe carries SPS/PPS.
* Rotation: ``create_video_configuration(transform=libcamera.Transform(...))``
  (picamera2/picamera2.py; its examples/rotation.py turns by 180 with
  ``Transform(hflip=1, vflip=1)``). ``configure`` hands it to libcamera as the
  configuration's orientation (``utils.transform_to_orientation``) and reads
  back what libcamera settled on into ``camera_configuration()["transform"]``
  (``orientation_to_transform``): the sensor reads out flipped, so the
  picture arrives turned, for the hardware encoder too, at no CPU cost.
  libcamera cannot transpose (a quarter turn): it drops the transpose from
  the orientation, and a sensor without flips keeps its mounting
  orientation. So only 180 is asked of the camera, and what it settled on
  is checked.
* On a Pi 5 (``get_platform() != Platform.VC4``), ``picamera2.encoders.H264Encoder``
  is ``LibavH264Encoder``: libx264 inside picamera2, run in the camera
  thread, bitrate fixed at start. ``PicameraEncoded`` refuses it: on a Pi 5
  use ``PicameraRaw`` and our own libx264, whose bitrate can change live.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import structlog

from streamer.exc import ConfigError, DeviceError
from streamer.hardware.base import EncodedSink
from streamer.hardware.sim import plane_view

log = structlog.get_logger("streamer.hardware")

ENCODER_NAME = "picamera2 H264Encoder (V4L2)"
READ_TIMEOUT = 2.0  # seconds PicameraRaw.read waits for a frame before it gives up
CAMERA_ROTATIONS = (0, 180)  # what libcamera can turn (a flip each way); 90 and 270 transpose

INSTALL_HINT = (
    "on Raspberry Pi OS install it with `sudo apt install python3-picamera2` "
    "(the PyPI package alone lacks libcamera's Python bindings); a virtualenv sees it "
    "only if created with `python3 -m venv --system-site-packages`"
)
LIST_HINT = "`rpicam-hello --list-cameras` (`libcamera-hello --list-cameras` on older systems)"
DETECT_HINT = (
    f"check {LIST_HINT}, the ribbon cable (seated at both ends, contacts facing the right "
    "way), and `camera_auto_detect=1` in /boot/firmware/config.txt (or the dtoverlay for "
    "your sensor), then reboot"
)
BUSY_HINT = (
    "is another process holding the camera (another streamer, rpicam-vid/libcamera-vid, "
    "a Python session with Picamera2 open; `sudo fuser -v /dev/media* /dev/video*` shows "
    "who)? Is this user in the `video` group (`groups`; `sudo usermod -aG video $USER`, "
    "then log in again)?"
)


def _import_picamera2() -> Any:
    try:
        import picamera2
    except Exception as exc:  # ImportError, incl. "No module named 'libcamera'" inside it
        raise DeviceError(f"picamera2 is not importable ({exc}): {INSTALL_HINT}") from exc
    return picamera2


def _reason(exc: BaseException) -> str:
    """The error and its root cause (picamera2 wraps the real reason in RuntimeErrors)."""
    root = exc
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    text = str(exc) or type(exc).__name__
    if root is not exc and str(root):
        text += f" ({root})"
    return text


def _open_camera(pc2: Any, camera_num: int) -> Any:
    """``Picamera2(camera_num)``, or a DeviceError that says what to check."""
    try:
        cameras = pc2.Picamera2.global_camera_info()
    except Exception as exc:
        raise DeviceError(
            f"camera {camera_num}: libcamera could not list cameras ({_reason(exc)}); "
            f"check {LIST_HINT} and that this user is in the `video` group"
        ) from exc
    if not cameras:
        raise DeviceError(f"camera {camera_num}: no camera detected; {DETECT_HINT}")
    if not 0 <= camera_num < len(cameras):
        found = ", ".join(f"{i}: {cam.get('Model', '?')}" for i, cam in enumerate(cameras))
        raise DeviceError(f"camera {camera_num}: no such camera (detected {found}); {DETECT_HINT}")
    model = cameras[camera_num].get("Model", "?")
    try:
        return pc2.Picamera2(camera_num)
    except Exception as exc:
        raise DeviceError(
            f"camera {camera_num} ({model}) could not be opened: {_reason(exc)}; {BUSY_HINT}"
        ) from exc


def _check_rotate(rotate: int) -> int:
    if rotate not in CAMERA_ROTATIONS:
        raise ConfigError(
            f"a picamera2 camera turns its picture by 0 or 180 degrees, not {rotate!r}; "
            "90 and 270 are done by the filters (streamer.encode.filters)"
        )
    return rotate


def _transform(rotate: int) -> dict[str, Any]:
    """``create_video_configuration``'s ``transform=`` for ``rotate`` (none for 0)."""
    if rotate == 0:
        return {}
    try:
        from libcamera import Transform  # picamera2 needs libcamera, so it is there
    except ImportError as exc:
        raise DeviceError(f"libcamera is not importable ({exc}): {INSTALL_HINT}") from exc
    return {"transform": Transform(hflip=1, vflip=1)}  # 180 degrees, as examples/rotation.py


def _configure(
    picam2: Any, camera_num: int, width: int, height: int, fps: float, rotate: int = 0
) -> tuple[int, int]:
    """Configure a YUV420 main stream at ``fps``, turned by ``rotate`` (0 or 180) by the
    camera itself; return the size the camera settled on."""
    extra = _transform(rotate)
    try:
        config = picam2.create_video_configuration(
            main={"size": (width, height), "format": "YUV420"},
            controls={"FrameRate": fps},
            **extra,
        )
        picam2.configure(config)
        settled = picam2.camera_configuration()
        w, h = settled["main"]["size"]
    except Exception as exc:
        raise DeviceError(
            f"camera {camera_num} cannot deliver {width}x{height} YUV420 at {fps:g} fps: "
            f"{_reason(exc)}"
        ) from exc
    if extra:
        got = settled.get("transform")
        if not (getattr(got, "hflip", False) and getattr(got, "vflip", False)):
            raise DeviceError(
                f"camera {camera_num} cannot turn its picture by 180 degrees (libcamera "
                f"settled on {got}: the sensor cannot flip); turn the camera module the "
                "other way up and set rotate to 0"
            )
    if (w, h) != (width, height):
        log.warning(
            "camera size adjusted", camera=camera_num, asked=f"{width}x{height}", got=f"{w}x{h}"
        )
    return int(w), int(h)


def _close_quietly(picam2: Any, encoder: Any = None) -> None:
    if encoder is not None:
        try:
            if encoder.running:
                picam2.stop_encoder(encoder)
        except Exception as exc:
            log.warning("stopping the camera's encoder failed", error=_reason(exc))
    try:
        picam2.close()  # stops the camera first
    except Exception as exc:
        log.warning("closing the camera failed", error=_reason(exc))


def _v4l2_set_bitrate(vd: Any, bps: int) -> None:
    """Set V4L2_CID_MPEG_VIDEO_BITRATE on the encoder's open device, as picamera2 does at start."""
    import fcntl

    import videodev2  # type: ignore[import-not-found]  # a picamera2 dependency

    ctrl = videodev2.v4l2_control()
    ctrl.id = videodev2.V4L2_CID_MPEG_VIDEO_BITRATE
    ctrl.value = bps
    fcntl.ioctl(vd, videodev2.VIDIOC_S_CTRL, ctrl)


_output_class: type[Any] | None = None


def _sink_output(sink: EncodedSink, encoder: Any) -> Any:
    """Our ``picamera2.outputs.Output``: every encoded frame straight to ``sink``.

    ``outputframe`` runs in picamera2's encoder thread. It does the least it
    can: map the timestamp to monotonic seconds and call the sink (a queue
    push that never blocks). No lock, no I/O, no logging per frame; an
    exception from the sink is counted (and logged once) instead of killing
    picamera2's thread, which would stall the camera.
    """
    global _output_class
    from picamera2.outputs import Output

    if _output_class is None or not issubclass(_output_class, Output):

        class SinkOutput(Output):  # type: ignore[misc]
            def __init__(self, sink: EncodedSink, encoder: Any) -> None:
                super().__init__()
                self.sink = sink
                self.encoder = encoder
                self.active = True  # False once we stop: late frames are dropped
                self.frames = 0
                self.sink_errors = 0

            def outputframe(
                self,
                frame: Any,
                keyframe: bool = True,
                timestamp: int | None = None,
                packet: Any = None,
                audio: bool = False,
            ) -> None:
                if audio or frame is None or not self.active:
                    return
                first = self.encoder.firsttimestamp  # µs of the sensor's first frame
                if timestamp is None or first is None:
                    captured = time.monotonic()
                else:
                    captured = (first + timestamp) / 1e6
                data = frame if isinstance(frame, bytes) else bytes(frame)
                self.frames += 1
                try:
                    self.sink(data, bool(keyframe), captured)
                except Exception as exc:
                    self.sink_errors += 1
                    if self.sink_errors == 1:
                        log.error("encoded-frame sink failed", error=repr(exc))

        _output_class = SinkOutput
    return _output_class(sink, encoder)


def hardware_h264_available() -> bool:
    """Whether picamera2 drives a hardware H.264 encoder here (VC4: Pi 4 and earlier).

    False on a Pi 5; raises DeviceError when picamera2 is missing.
    """
    _import_picamera2()
    from picamera2.platform import Platform, get_platform

    return bool(get_platform() == Platform.VC4)


class PicameraEncoded:
    """A Pi camera whose frames the Pi's hardware H.264 encoder compresses (EncodedVideoSource).

    Keyframes every ``2 * fps`` frames, SPS/PPS repeated in each. ``start``,
    ``stop``, ``set_bitrate`` and ``request_keyframe`` may be called from any
    thread; the sink is called from picamera2's encoder thread.
    """

    encoder_name = ENCODER_NAME

    def __init__(
        self,
        width: int,
        height: int,
        fps: float,
        bitrate_kbps: int,
        camera_num: int = 0,
        *,
        rotate: int = 0,
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.bitrate_kbps = bitrate_kbps
        self.camera_num = camera_num
        self.rotate = _check_rotate(rotate)  # 180: the sensor reads out flipped
        self._lock = threading.Lock()  # start/stop/set_bitrate; never taken per frame
        self._picam2: Any = None
        self._encoder: Any = None
        self._output: Any = None

    @property
    def iperiod(self) -> int:
        return max(1, round(2 * self.fps))

    def start(self, sink: EncodedSink) -> None:
        with self._lock:
            if self._picam2 is not None:
                raise RuntimeError("camera already started")
            pc2 = _import_picamera2()
            try:
                from picamera2.encoders import H264Encoder
                from picamera2.platform import Platform, get_platform
            except ImportError as exc:
                raise DeviceError(
                    f"picamera2's encoders are not importable ({exc}): {INSTALL_HINT}"
                ) from exc
            if get_platform() != Platform.VC4:
                raise DeviceError(
                    "this Raspberry Pi has no hardware H.264 encoder (Pi 5): capture raw "
                    "frames (PicameraRaw) and encode them with libx264"
                )
            picam2 = _open_camera(pc2, self.camera_num)
            encoder = None
            try:
                self.width, self.height = _configure(
                    picam2, self.camera_num, self.width, self.height, self.fps, self.rotate
                )
                encoder = H264Encoder(
                    bitrate=self.bitrate_kbps * 1000,
                    repeat=True,
                    iperiod=self.iperiod,
                    framerate=self.fps,
                )
                output = _sink_output(sink, encoder)
                picam2.start_encoder(encoder, output)
                picam2.start()
            except DeviceError:
                _close_quietly(picam2, encoder)
                raise
            except Exception as exc:
                _close_quietly(picam2, encoder)
                raise DeviceError(
                    f"camera {self.camera_num}: H.264 capture could not start: {_reason(exc)}"
                ) from exc
            self._picam2, self._encoder, self._output = picam2, encoder, output
        log.info(
            "camera started",
            camera=self.camera_num,
            size=f"{self.width}x{self.height}",
            fps=self.fps,
            bitrate_kbps=self.bitrate_kbps,
            encoder=self.encoder_name,
            rotate=self.rotate,
        )

    def set_bitrate(self, kbps: int) -> None:
        """Change the target bitrate now (V4L2 control on the running encoder).

        Before ``start`` it is only recorded and used at the next start; if
        the device refuses the control, it is recorded in ``encoder.bitrate``
        and applies when the encoder next starts.
        """
        with self._lock:
            self.bitrate_kbps = kbps
            encoder = self._encoder
            if encoder is None:
                return
            bps = kbps * 1000
            encoder.bitrate = bps  # what a restart of this encoder would use
            vd = getattr(encoder, "vd", None)
            if vd is None or vd.closed:
                return
            try:
                _v4l2_set_bitrate(vd, bps)
            except (OSError, ValueError) as exc:
                log.warning(
                    "encoder refused a bitrate change; applies at the next start",
                    kbps=kbps,
                    error=str(exc),
                )

    def request_keyframe(self) -> None:
        """Make the next frame a keyframe (IDR with SPS/PPS).

        A no-op before ``start`` (the first frame is a keyframe anyway) and on
        picamera2 older than 0.3.32, which has no ``force_key_frame``: there
        the next keyframe comes within ``iperiod`` frames (2 s).
        """
        encoder = self._encoder
        force = getattr(encoder, "force_key_frame", None)
        if callable(force):
            force()

    def stop(self) -> None:
        with self._lock:
            picam2, encoder, output = self._picam2, self._encoder, self._output
            self._picam2 = self._encoder = self._output = None
        if picam2 is None:
            return
        output.active = False
        try:
            picam2.stop()  # the camera first, so the encoder gets no more frames
        except Exception as exc:
            log.warning("stopping the camera failed", error=_reason(exc))
        _close_quietly(picam2, encoder)
        if output.sink_errors:
            log.error("encoded-frame sink failed", times=output.sink_errors)
        log.info("camera stopped", camera=self.camera_num, frames=output.frames)


class PicameraRaw:
    """A Pi camera delivering raw yuv420p frames (VideoSource), for our own encoder.

    ``rotate=180``: the camera turns the picture itself (libcamera transform).
    """

    def __init__(
        self, width: int, height: int, fps: float, camera_num: int = 0, *, rotate: int = 0
    ) -> None:
        self.width, self.height, self.fps = width, height, fps
        self.camera_num = camera_num
        self.rotate = _check_rotate(rotate)
        self._picam2: Any = None

    def open(self) -> None:
        if self._picam2 is not None:
            return
        pc2 = _import_picamera2()
        picam2 = _open_camera(pc2, self.camera_num)
        try:
            self.width, self.height = _configure(
                picam2, self.camera_num, self.width, self.height, self.fps, self.rotate
            )
            picam2.start()
        except DeviceError:
            _close_quietly(picam2)
            raise
        except Exception as exc:
            _close_quietly(picam2)
            raise DeviceError(
                f"camera {self.camera_num}: capture could not start: {_reason(exc)}"
            ) from exc
        self._picam2 = picam2
        log.info(
            "camera started",
            camera=self.camera_num,
            size=f"{self.width}x{self.height}",
            fps=self.fps,
            encoder="raw",
            rotate=self.rotate,
        )

    def read(self) -> tuple[av.VideoFrame, float]:
        """The next frame and its capture instant (sensor timestamp, monotonic seconds)."""
        picam2 = self._picam2
        if picam2 is None:
            raise DeviceError(f"camera {self.camera_num} is not open")
        try:
            request = picam2.capture_request(wait=READ_TIMEOUT)
        except TimeoutError as exc:
            picam2.cancel_all_and_flush()  # else the abandoned job would keep a buffer
            raise DeviceError(
                f"camera {self.camera_num} delivered no frame for {READ_TIMEOUT:g} s: check "
                "the ribbon cable and `dmesg` for camera errors"
            ) from exc
        try:
            array = request.make_array("main")
            sensor_ns = request.get_metadata()["SensorTimestamp"]
        finally:
            request.release()
        return yuv420_frame(array, self.width, self.height), sensor_ns / 1e9

    def close(self) -> None:
        picam2, self._picam2 = self._picam2, None
        if picam2 is not None:
            _close_quietly(picam2)


def yuv420_frame(array: npt.NDArray[np.uint8], width: int, height: int) -> av.VideoFrame:
    """picamera2's YUV420 array, (h*3/2, stride) with row padding, as a yuv420p frame.

    The buffer is the Y plane (``h`` rows of ``stride`` bytes) then U and V
    (``h/2`` rows of ``stride/2`` bytes each); bytes past the width are padding.
    """
    w, h = width, height
    stride = array.shape[1]
    if array.shape[0] != h * 3 // 2 or stride < w:
        raise DeviceError(f"camera frame is {array.shape}, expected ({h * 3 // 2}, >={w})")
    flat = array.reshape(-1)
    ysize, csize = stride * h, (stride // 2) * (h // 2)
    frame = av.VideoFrame(w, h, "yuv420p")
    plane_view(frame.planes[0])[:] = flat[:ysize].reshape(h, stride)[:, :w]
    for i in (1, 2):
        start = ysize + (i - 1) * csize
        chroma = flat[start : start + csize].reshape(h // 2, stride // 2)
        plane_view(frame.planes[i])[:] = chroma[:, : w // 2]
    return frame
