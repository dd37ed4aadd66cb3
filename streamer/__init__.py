"""streamer: a camera + microphone device that broadcasts live over RTMP."""

__version__ = "0.1.0"
