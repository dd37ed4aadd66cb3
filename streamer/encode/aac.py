"""AAC-LC through PyAV's native encoder.

Packets are stamped by sample count from the capture time of the first
period, so audio time advances exactly with the samples captured. When a
source moves its own timestamps (an ALSA device re-anchored to the
monotonic clock after handing out a backlog), the count follows it.
"""

from __future__ import annotations

from fractions import Fraction

import av
import av.codec.context
import numpy as np
import numpy.typing as npt

from streamer.exc import DeviceError
from streamer.media import AudioConfig, Kind, Packet

# A period stamped further than this from where the sample count puts it
# moves the count's anchor: the source knows when its sound was captured.
REANCHOR_MS = 2


class AacEncoder:
    """Encode interleaved S16 periods into raw AAC frames (1024 samples each)."""

    def __init__(self, sample_rate: int = 48000, channels: int = 2, bitrate_kbps: int = 128):
        self.sample_rate, self.channels = sample_rate, channels
        layout = "stereo" if channels == 2 else "mono"
        try:
            cc = av.CodecContext.create("aac", "w")
            cc.sample_rate = sample_rate
            cc.layout = layout
            cc.format = "fltp"
            cc.bit_rate = bitrate_kbps * 1000
            cc.time_base = Fraction(1, sample_rate)
            cc.flags |= av.codec.context.Flags.global_header
            cc.open()
        except Exception as exc:
            raise DeviceError(f"AAC encoder is not available: {exc}") from exc
        self._cc = cc
        self._layout = layout
        self._anchor_ms: float | None = None
        self._samples = 0
        self.config = AudioConfig(
            sample_rate=sample_rate,
            channels=channels,
            bitrate_kbps=bitrate_kbps,
            asc=bytes(cc.extradata or b""),
        )

    def encode(self, samples: npt.NDArray[np.int16] | None, capture_ms: int = 0) -> list[Packet]:
        """Encode one period of shape (frames, channels); ``None`` flushes."""
        frame = None
        if samples is not None:
            expected = None if self._anchor_ms is None else self._ms(self._samples)
            if expected is None or abs(capture_ms - expected) > REANCHOR_MS:
                self._anchor_ms = capture_ms - self._samples * 1000 / self.sample_rate
            # The encoder wants planar float: convert here in one numpy step
            # rather than through a resampler per frame.
            planar = np.ascontiguousarray(samples.T, dtype=np.float32) * (1 / 32768)
            frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout=self._layout)
            frame.sample_rate = self.sample_rate
            frame.pts = self._samples
            frame.time_base = Fraction(1, self.sample_rate)
            self._samples += samples.shape[0]
        packets = []
        for p in self._cc.encode(frame):
            ms = round(self._ms(p.pts or 0))
            packets.append(Packet(Kind.AUDIO, ms, ms, True, bytes(p)))
        return packets

    def _ms(self, samples: int) -> float:
        """Media time of the sample at ``samples`` on the count's timeline."""
        return (self._anchor_ms or 0.0) + samples * 1000 / self.sample_rate
