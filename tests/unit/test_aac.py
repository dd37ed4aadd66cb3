"""AAC packets carry the time of the sound in them, as decoded by a real AAC decoder."""

from __future__ import annotations

import itertools

import av
import numpy as np
import numpy.typing as npt

from streamer.encode.aac import AacEncoder
from streamer.media import Packet

RATE = 48000


def burst_at(index: int, length: int) -> npt.NDArray[np.int16]:
    """Silence with a loud 2 kHz burst starting at sample ``index``."""
    signal = np.zeros((length, 2), np.int16)
    signal[index : index + 480] = (30000 * np.where(np.arange(480) % 24 < 12, 1, -1))[:, None]
    return signal


def decoded_onset_ms(packets: list[Packet], asc: bytes) -> float:
    """When the burst starts, on the packets' own timeline, as a decoder plays it."""
    decoder = av.CodecContext.create("aac", "r")
    decoder.extradata = asc
    out = []
    for packet in packets:
        out += [f.to_ndarray()[0] for f in decoder.decode(av.Packet(packet.data))]
    samples = np.concatenate(out)
    return packets[0].pts_ms + 1000 * int(np.flatnonzero(np.abs(samples) > 0.6)[0]) / RATE


def encode(encoder: AacEncoder, signal: npt.NDArray[np.int16], stamps: list[float]) -> list[Packet]:
    packets = []
    for i, ms in enumerate(stamps):
        packets += encoder.encode(signal[i * 1024 : (i + 1) * 1024], round(ms))
    return packets + encoder.encode(None)


def test_a_sound_plays_at_its_capture_time_despite_the_encoder_priming() -> None:
    encoder = AacEncoder()
    signal = burst_at(4800, 48 * 1024)  # 100 ms after the first sample
    packets = encode(encoder, signal, [1000 + i * 1024 / 48 for i in range(48)])
    assert abs(decoded_onset_ms(packets, encoder.config.asc) - 1100) <= 1
    assert all(b.pts_ms > a.pts_ms for a, b in itertools.pairwise(packets))


def test_timestamps_follow_a_source_that_moves_its_own() -> None:
    # An ALSA device hands out a backlog first: its first stamp was 64 ms late,
    # and it re-anchors at the fourth period. Sound after that plays on time.
    encoder = AacEncoder()
    true_ms = [1000 + i * 1024 / 48 for i in range(48)]
    stamps = [ms + (64 if i < 3 else 0) for i, ms in enumerate(true_ms)]
    signal = burst_at(24000, 48 * 1024)  # 500 ms after the first sample
    packets = encode(encoder, signal, stamps)
    late = [p for p in packets if p.pts_ms > 1200]
    assert abs(decoded_onset_ms(late, encoder.config.asc) - 1500) <= 1


def test_rounding_jitter_in_the_stamps_does_not_move_the_audio() -> None:
    # capture times arrive rounded to whole milliseconds (clock.to_ms)
    encoder = AacEncoder()
    stamps = [1000 + i * 1024 / 48 + (0.45 if i % 2 else -0.45) for i in range(20)]
    packets = encode(encoder, np.zeros((20 * 1024, 2), np.int16), stamps)
    steps = {round(b.pts_ms - a.pts_ms) for a, b in itertools.pairwise(packets)}
    assert steps <= {21, 22}  # 1024 samples at 48 kHz, whole milliseconds
