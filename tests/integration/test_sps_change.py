"""An encoder that changes its SPS/PPS mid-stream (a hardware encoder restarted with other
settings): nginx-rtmp's live viewers and its recording decode both setups."""

from __future__ import annotations

import asyncio
import threading

import av

from streamer.localserver import LocalRtmpServer
from streamer.rtmp.client import RtmpPublisher
from streamer.rtmp.session import Session
from streamer.rtmp.url import parse_url
from tests.unit.test_session import encoded

FRAMES = 60  # 2 s at 30 fps of the second setup
FIRST = 90  # 3 s of the first: keyframes at 0 and 2 s (a viewer starts at a keyframe)


def test_a_viewer_and_the_recording_follow_a_new_sps_pps(rtmp_server: LocalRtmpServer) -> None:
    first_config, first = encoded(320, 180, 0, FIRST)
    _, second = encoded(160, 96, FIRST, FRAMES)
    url = rtmp_server.url("sps")
    live_sizes: list[tuple[int, int]] = []
    errors: list[str] = []

    def view() -> None:
        try:
            with av.open(
                # a short probe: frames come out as they arrive, not after 5 s of probing
                url,
                options={"rtmp_live": "live", "analyzeduration": "200000"},
                timeout=20,
            ) as container:
                container.streams.video[0].thread_count = 1  # each frame out as it comes in
                for frame in container.decode(video=0):
                    live_sizes.append((frame.width, frame.height))
                    if live_sizes.count((160, 96)) == FRAMES:
                        return  # all of it (nginx keeps a viewer waiting for the next publish)
        except av.error.FFmpegError as exc:  # the end of the stream is an EOF, not this
            errors.append(str(exc))

    # nginx-rtmp lets a viewer wait for a stream not yet published; it joins
    # at the first keyframe after its connect (here at 0 or 2 s).
    viewer = threading.Thread(target=view, daemon=True)
    viewer.start()

    async def publish() -> None:
        publisher = RtmpPublisher(parse_url(url), timeout=5)
        await publisher.connect()
        session = Session(publisher)
        await session.open(first_config, None)
        for packet in first + second:  # paced, as a camera would be
            session.write(packet)
            await publisher.flush()
            await asyncio.sleep(1 / 30)
        await publisher.close()

    asyncio.run(asyncio.wait_for(publish(), 60))
    viewer.join(10)
    rtmp_server.stop()  # ends a viewer still waiting for frames
    viewer.join(10)
    [recording] = rtmp_server.recordings()
    with av.open(str(recording)) as container:
        recorded = [(f.width, f.height) for f in container.decode(video=0)]

    assert errors == []
    assert recorded == [(320, 180)] * FIRST + [(160, 96)] * FRAMES
    # the viewer saw the first setup, and stayed through the change
    assert live_sizes and live_sizes[0] == (320, 180), live_sizes[:3]
    assert live_sizes.count((160, 96)) == FRAMES, live_sizes[-3:]
