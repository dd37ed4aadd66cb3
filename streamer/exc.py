"""One exception root; every subclass carries a message a user can act on."""

from __future__ import annotations


class StreamerError(Exception):
    """Root of every error the program reports to a user.

    ``message`` is one line, safe to print (never contains the stream key);
    ``exit_code`` is what the CLI exits with when this error ends a run.
    """

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(StreamerError):
    """The configuration or command line is wrong; retrying cannot help."""

    exit_code = 2


class DeviceError(StreamerError):
    """A camera, microphone or encoder is missing, busy or failed."""


class ConnectFailed(StreamerError):
    """The RTMP server could not be reached (refused, unknown host, timeout)."""


class ConnectionLost(StreamerError):
    """An established RTMP connection broke or stalled."""


class DeliveryFailed(StreamerError):
    """A run reached its end, but the server got too little of the video captured live."""


class ProtocolError(StreamerError):
    """The server sent something that is not valid RTMP."""


class PublishRejected(StreamerError):
    """The server refused the stream (bad key, unknown app, name in use).

    ``code`` is the server's status code (e.g. ``NetStream.Publish.BadName``)
    and ``description`` its own words, both shown to the user.
    """

    def __init__(self, code: str, description: str) -> None:
        text = f"server rejected the stream: {code}"
        if description:
            text += f" ({description})"
        super().__init__(text)
        self.code = code
        self.description = description
