"""FLV tag bodies for H.264 and AAC, as RTMP audio/video messages carry them.

Sequence headers are built from encoder extradata (never by consuming
frames); libx264 emits Annex B, FLV wants AVCC with 4-byte NAL lengths.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from streamer.media import AudioConfig, VideoConfig

VIDEO_CODEC_AVC = 7
AUDIO_CODEC_AAC = 10
_KEYFRAME, _INTER = 1, 2
_AVC_SEQUENCE_HEADER, _AVC_NALU = 0, 1
_AAC_SEQUENCE_HEADER, _AAC_RAW = 0, 1
# SoundFormat 10 (AAC), rate index 3 (44 kHz: FLV requires it for AAC), 16 bit, stereo.
_AAC_TAG_BYTE = (AUDIO_CODEC_AAC << 4) | (3 << 2) | (1 << 1) | 1
_START_CODE = re.compile(b"\x00\x00\x01")
_EMULATION_PREVENTION = re.compile(b"\x00\x00\x03")
NAL_SPS, NAL_PPS = 7, 8
# Profiles whose SPS carries chroma_format_idc and bit depths (H.264 7.3.2.1.1).
_CHROMA_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
# Profiles whose configuration record ends with chroma format and bit depths:
# ISO 14496-15's list (144 is the withdrawn High 4:4:4) and 244, which FFmpeg and OBS add.
_RECORD_TRAILER_PROFILES = frozenset({100, 110, 122, 144, 244})


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex B byte stream (3- or 4-byte start codes)."""
    starts = [m.end() for m in _START_CODE.finditer(data)]
    if not starts:
        return [data] if data else []
    nals = []
    for i, begin in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        # A NAL never ends in a zero byte (its RBSP ends with a stop bit): trailing
        # zeros are a 4-byte start code's first byte or trailing_zero_8bits.
        nal = data[begin:end].rstrip(b"\x00")
        if nal:
            nals.append(nal)
    return nals


def annexb_to_avcc(data: bytes) -> bytes:
    """Replace start codes by 4-byte big-endian lengths; AVCC input passes through."""
    if not (data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")):
        return data
    return b"".join(struct.pack(">I", len(nal)) + nal for nal in split_annexb(data))


class _Bits:
    """Reads an RBSP bit by bit, with H.264's Exp-Golomb codes."""

    def __init__(self, data: bytes) -> None:
        self._value, self._left = int.from_bytes(data, "big"), len(data) * 8

    def read(self, n: int) -> int:
        if n > self._left:
            raise ValueError("H.264 SPS is truncated")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while not self.read(1):
            zeros += 1
            if zeros > 31:
                raise ValueError("H.264 SPS has an Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.read(zeros)


def sps_chroma(sps: bytes) -> tuple[int, int, int]:
    """chroma_format_idc, bit_depth_luma_minus8, bit_depth_chroma_minus8 of an SPS NAL unit."""
    bits = _Bits(_EMULATION_PREVENTION.sub(b"\x00\x00", sps[1:]))
    profile = bits.read(8)
    bits.read(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    if profile not in _CHROMA_PROFILES:
        return 1, 0, 0  # 4:2:0, 8 bit: what the SPS implies without saying
    chroma_format = bits.ue()
    if chroma_format == 3:
        bits.read(1)  # separate_colour_plane_flag
    luma_depth, chroma_depth = bits.ue(), bits.ue()
    if chroma_format > 3 or luma_depth > 6 or chroma_depth > 6:
        raise ValueError("H.264 SPS has an impossible chroma format or bit depth")
    return chroma_format, luma_depth, chroma_depth


def avc_decoder_config(extradata: bytes) -> bytes:
    """AVCDecoderConfigurationRecord (ISO 14496-15) from Annex B SPS/PPS extradata.

    Byte for byte what FFmpeg's ``ff_isom_write_avcc`` writes, the High-profile
    trailer (chroma format, bit depths, no SPS extensions) included.
    """
    if extradata[:1] == b"\x01":
        return extradata  # already a configuration record
    nals = split_annexb(extradata)
    sps = [n for n in nals if n[0] & 0x1F == NAL_SPS]
    pps = [n for n in nals if n[0] & 0x1F == NAL_PPS]
    if not sps or not pps or len(sps[0]) < 4:
        raise ValueError("H.264 extradata lacks an SPS or a PPS")
    record = bytearray([1, sps[0][1], sps[0][2], sps[0][3], 0xFF, 0xE0 | len(sps)])
    for nal in sps:
        record += struct.pack(">H", len(nal)) + nal
    record.append(len(pps))
    for nal in pps:
        record += struct.pack(">H", len(nal)) + nal
    if sps[0][1] in _RECORD_TRAILER_PROFILES:
        chroma_format, luma_depth, chroma_depth = sps_chroma(sps[0])
        record += bytes([0xFC | chroma_format, 0xF8 | luma_depth, 0xF8 | chroma_depth, 0])
    return bytes(record)


def avc_sequence_header(config: VideoConfig) -> bytes:
    return bytes([(_KEYFRAME << 4) | VIDEO_CODEC_AVC, _AVC_SEQUENCE_HEADER, 0, 0, 0]) + (
        config.avc_config
    )


def avc_frame(data: bytes, keyframe: bool, composition_ms: int = 0) -> bytes:
    frame_type = _KEYFRAME if keyframe else _INTER
    cts = struct.pack(">i", composition_ms)[1:]  # signed 24-bit
    return bytes([(frame_type << 4) | VIDEO_CODEC_AVC, _AVC_NALU]) + cts + data


def aac_sequence_header(config: AudioConfig) -> bytes:
    return bytes([_AAC_TAG_BYTE, _AAC_SEQUENCE_HEADER]) + config.asc


def aac_frame(data: bytes) -> bytes:
    return bytes([_AAC_TAG_BYTE, _AAC_RAW]) + data


def metadata(video: VideoConfig, audio: AudioConfig | None, encoder: str) -> dict[str, Any]:
    """The onMetaData object players and servers read before the first frame."""
    meta: dict[str, Any] = {
        "width": float(video.width),
        "height": float(video.height),
        "framerate": float(video.fps),
        "videodatarate": float(video.bitrate_kbps),
        "videocodecid": float(VIDEO_CODEC_AVC),
        "encoder": encoder,
    }
    if audio is not None:
        meta.update(
            audiodatarate=float(audio.bitrate_kbps),
            audiocodecid=float(AUDIO_CODEC_AAC),
            audiosamplerate=float(audio.sample_rate),
            audiosamplesize=16.0,
            stereo=audio.channels > 1,
        )
    return meta
