"""FLV packaging is right when a real decoder, given only our sequence header, decodes it."""

from __future__ import annotations

import io
import struct

import av
import numpy as np
import pytest

from streamer.encode import flv
from streamer.encode.aac import AacEncoder
from streamer.encode.h264 import H264Encoder
from streamer.hardware.sim import SimCamera


def test_annexb_to_avcc_handles_3_and_4_byte_start_codes() -> None:
    annexb = b"\x00\x00\x00\x01\x67\xaa\xbb\x00\x00\x01\x68\xcc\x00\x00\x00\x01\x65\x01\x02\x00"
    avcc = flv.annexb_to_avcc(annexb)
    assert avcc == (
        struct.pack(">I", 3)
        + b"\x67\xaa\xbb"
        + struct.pack(">I", 2)
        + b"\x68\xcc"
        + struct.pack(">I", 3)
        + b"\x65\x01\x02"
    )
    assert flv.annexb_to_avcc(avcc) == avcc  # already AVCC: unchanged


def test_decoder_config_record_fields() -> None:
    sps, pps = b"\x67\x64\x00\x1f\xac\xd9", b"\x68\xeb\xe3\xcb"
    record = flv.avc_decoder_config(b"\x00\x00\x00\x01" + sps + b"\x00\x00\x00\x01" + pps)
    assert record[:6] == bytes([1, 0x64, 0x00, 0x1F, 0xFF, 0xE1])
    assert record[6:8] == struct.pack(">H", len(sps)) and record[8 : 8 + len(sps)] == sps
    rest = record[8 + len(sps) :]
    # High profile (0x64): 4:2:0, 8 bit, no SPS extensions after the PPS
    assert rest == bytes([1]) + struct.pack(">H", len(pps)) + pps + b"\xfd\xf8\xf8\x00"
    with pytest.raises(ValueError):
        flv.avc_decoder_config(b"\x00\x00\x00\x01" + sps)


def ffmpeg_record(pix_fmt: str, preset: str) -> tuple[bytes, bytes]:
    """libx264's Annex B extradata, and the record FFmpeg's FLV muxer makes of it."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="flv") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 64, pix_fmt
        stream.codec_context.options = {"preset": preset}
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        frame = frame.reformat(format=pix_fmt)
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
        extradata = bytes(stream.codec_context.extradata or b"")
    data, pos = buf.getvalue(), 13  # after the FLV header and PreviousTagSize0
    while pos < len(data):
        size = int.from_bytes(data[pos + 1 : pos + 4], "big")
        body = data[pos + 11 : pos + 11 + size]
        if data[pos] == 9 and body[1] == 0:  # video, AVC sequence header
            return extradata, body[5:]
        pos += 11 + size + 4
    raise AssertionError("FFmpeg wrote no AVC sequence header")


@pytest.mark.parametrize(
    ("pix_fmt", "preset", "profile", "trailer"),
    [
        ("yuv420p", "veryfast", 100, b"\xfd\xf8\xf8\x00"),  # High: what we stream
        ("gray", "veryfast", 100, b"\xfc\xf8\xf8\x00"),  # High, monochrome
        ("yuv420p10le", "veryfast", 110, b"\xfd\xfa\xfa\x00"),  # High 10
        ("yuv422p", "veryfast", 122, b"\xfe\xf8\xf8\x00"),  # High 4:2:2
        ("yuv444p", "veryfast", 244, b"\xff\xf8\xf8\x00"),  # High 4:4:4 Predictive
        ("yuv420p", "ultrafast", 66, b""),  # Baseline: no trailer
    ],
)
def test_decoder_config_record_is_what_ffmpeg_writes(
    pix_fmt: str, preset: str, profile: int, trailer: bytes
) -> None:
    extradata, theirs = ffmpeg_record(pix_fmt, preset)
    ours = flv.avc_decoder_config(extradata)
    assert ours[1] == profile
    assert ours == theirs
    assert ours.endswith(pps_of(extradata) + trailer)


def pps_of(extradata: bytes) -> bytes:
    return next(n for n in flv.split_annexb(extradata) if n[0] & 0x1F == flv.NAL_PPS)


def test_an_sps_with_emulation_prevention_bytes_is_read_as_its_rbsp() -> None:
    # level 0 puts 00 00 before the Exp-Golomb codes: the encoder inserts 03 there
    codes = "1" + "011" + "011" + "011"  # sps_id 0, chroma 2 (4:2:2), luma +2, chroma +2
    rbsp = int(codes.ljust(16, "0"), 2).to_bytes(2, "big")
    sps = b"\x67\x64\x00\x00\x03" + rbsp
    assert flv.sps_chroma(sps) == (2, 2, 2)


def test_an_impossible_sps_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        flv.sps_chroma(b"\x67\x64\x00\x1f")  # ends before sps_id
    with pytest.raises(ValueError):
        flv.sps_chroma(b"\x67\x64\x00\x1f\x97")  # chroma_format_idc 4


def test_real_decoder_decodes_our_packets_from_our_sequence_header() -> None:
    encoder = H264Encoder(320, 180, 30, 500)
    camera = SimCamera(320, 180, 30)
    packets = []
    for n in range(45):
        frame = av.VideoFrame.from_ndarray(camera.picture(n), format="yuv420p")
        packets += encoder.encode(frame, n * 33)
    packets += encoder.encode(None)
    header = flv.avc_sequence_header(encoder.config)
    assert header[:2] == b"\x17\x00"
    decoder = av.CodecContext.create("h264", "r")
    decoder.extradata = header[5:]
    decoded = []
    for p in packets:
        body = flv.avc_frame(p.data, p.keyframe)
        assert body[0] == (0x17 if p.keyframe else 0x27) and body[1] == 1
        decoded += decoder.decode(av.Packet(body[5:]))
    decoded += decoder.decode(None)
    assert len(decoded) == 45
    assert packets[0].keyframe
    luma = decoded[10].to_ndarray(format="yuv420p")[:180]
    reference = camera.picture(10)[:180]
    assert float(np.mean(np.abs(luma.astype(int) - reference.astype(int)))) < 6


def test_aac_sequence_header_and_frames_decode_to_the_tone() -> None:
    encoder = AacEncoder()
    header = flv.aac_sequence_header(encoder.config)
    assert header[0] == 0xAF and header[1] == 0
    # AudioSpecificConfig: AAC-LC (2), 48 kHz (index 3), 2 channels
    asc = int.from_bytes(header[2:4], "big")
    assert (asc >> 11, (asc >> 7) & 0xF, (asc >> 3) & 0xF) == (2, 3, 2)
    t = np.arange(48000) / 48000
    tone = (8000 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    stereo = np.stack([tone, tone], axis=1)
    packets = []
    for i in range(0, 48000, 1024):
        chunk = stereo[i : i + 1024]
        if len(chunk) == 1024:
            packets += encoder.encode(chunk, i * 1000 // 48000)
    packets += encoder.encode(None)
    decoder = av.CodecContext.create("aac", "r")
    decoder.extradata = header[2:]
    samples = []
    for p in packets:
        body = flv.aac_frame(p.data)
        assert body[:2] == b"\xaf\x01"
        samples += [f.to_ndarray()[0] for f in decoder.decode(av.Packet(body[2:]))]
    pcm = np.concatenate(samples)[4096:36864]
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(np.argmax(spectrum) * 48000 / len(pcm) - 1000) < 5


def test_metadata_describes_the_stream() -> None:
    video = H264Encoder(320, 180, 25, 800).config
    audio = AacEncoder(bitrate_kbps=96).config
    meta = flv.metadata(video, audio, "streamer")
    assert meta["width"] == 320 and meta["height"] == 180 and meta["framerate"] == 25
    assert meta["videocodecid"] == 7 and meta["audiocodecid"] == 10
    assert meta["videodatarate"] == 800 and meta["audiodatarate"] == 96
    assert meta["audiosamplerate"] == 48000 and meta["stereo"] is True
    assert "audiocodecid" not in flv.metadata(video, None, "streamer")
