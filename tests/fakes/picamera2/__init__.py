"""A fake of picamera2's public API for tests on machines without a Raspberry Pi camera.

Put ``tests/fakes`` first on ``sys.path`` (tests only) and ``import picamera2``
gets this package. Names, signatures and module paths follow the real
picamera2 (raspberrypi/picamera2 v0.3.36): ``Picamera2`` in
``picamera2/picamera2.py``, ``CompletedRequest`` in ``picamera2/request.py``,
``Encoder``/``H264Encoder`` in ``picamera2/encoders/``, ``Output`` in
``picamera2/outputs/output.py``, ``Platform``/``get_platform`` in
``picamera2/platform.py``.

Behaviour kept from the real one: the camera delivers frames at the
configured ``FrameRate`` from its own thread, stamped with ``SensorTimestamp``
(ns, CLOCK_MONOTONIC); YUV420 buffers have a padded stride; a request not
released keeps its buffer, so a leak starves the camera; ``H264Encoder``
encodes in its own thread and calls ``output.outputframe(bytes, keyframe,
timestamp_us)`` with timestamps relative to the encoder's first frame
(``encoder.firsttimestamp``, µs); the camera is exclusive (a second
``Picamera2`` on the same camera fails as a busy camera does).

The configuration's ``transform`` (``libcamera.Transform``, from the fake
``tests/fakes/libcamera`` as picamera2 imports the real one) flips the
pictures the camera delivers, as the sensor's read-out does; a transpose is
dropped, as libcamera does.

Knobs for tests (module attributes of ``picamera2.picamera2``):
``fake_cameras`` (what ``global_camera_info()`` lists; ``[]`` = no camera),
``fake_stalled`` (the sensor stops delivering, as with a loose ribbon cable),
``fake_can_flip`` (False: a sensor without flips keeps its mounting
orientation whatever transform is asked);
and ``picamera2.platform._platform`` (``Platform.PISP`` = Pi 5, no V4L2 encoder).
"""

from .picamera2 import Picamera2
from .platform import Platform, get_platform
from .request import CompletedRequest

__all__ = ["CompletedRequest", "Picamera2", "Platform", "get_platform"]
