"""What flows between encoders and the network: encoded packets and codec setup."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    VIDEO = "video"
    AUDIO = "audio"


@dataclass(frozen=True, slots=True)
class Packet:
    """One encoded access unit.

    Times are milliseconds on the process media clock (see ``clock.py``);
    the publisher rebases them onto each session's origin. Video ``data`` is
    AVCC (length-prefixed NAL units); audio ``data`` is one raw AAC frame.
    A video keyframe carries ``config``, the decoder setup (SPS/PPS) it
    needs: when an encoder's parameter sets change, every destination and the
    recorder learn it in step with the frames (see "One frame's way" in
    docs/design.md).
    """

    kind: Kind
    pts_ms: int
    dts_ms: int
    keyframe: bool
    data: bytes
    config: VideoConfig | None = None


@dataclass(frozen=True, slots=True)
class VideoConfig:
    """What the FLV sequence header and onMetaData need to describe the video."""

    width: int
    height: int
    fps: float
    bitrate_kbps: int
    avc_config: bytes  # AVCDecoderConfigurationRecord
    encoder_name: str


@dataclass(frozen=True, slots=True)
class AudioConfig:
    sample_rate: int
    channels: int
    bitrate_kbps: int
    asc: bytes  # AAC AudioSpecificConfig
