"""Command line: ``streamer run`` streams, ``streamer demo`` shows it all on loopback."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog

from streamer import log as logsetup
from streamer.app import Settings, Streamer
from streamer.exc import StreamerError
from streamer.rtmp.url import parse_url

log = structlog.get_logger("streamer")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"size must be WIDTHxHEIGHT, e.g. 1280x720 (got {text!r})"
        ) from None
    if not (16 <= w <= 4096 and 16 <= h <= 4096) or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"size {text} must be even numbers between 16 and 4096")
    return w, h


def _ranged(kind: type[int] | type[float], low: float, high: float, unit: str = ""):  # type: ignore[no-untyped-def]
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is out of range {low:g}..{high:g}{unit}")
        return value

    return parse


def _add_stream_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--camera", default="sim", help="sim (default)")
    p.add_argument("--microphone", default="sim", help="sim (default) or none")
    p.add_argument("--size", type=_size, default=(1280, 720), help="WIDTHxHEIGHT (1280x720)")
    p.add_argument("--fps", type=_ranged(float, 1, 120), default=30.0, help="frames/s (30)")
    p.add_argument(
        "--video-bitrate", type=_ranged(int, 50, 50000, " kbps"), default=2500, help="kbps (2500)"
    )
    p.add_argument(
        "--audio-bitrate", type=_ranged(int, 16, 512, " kbps"), default=128, help="kbps (128)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="auto", choices=["auto", "console", "plain", "json"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="stream camera and microphone to an RTMP server")
    run.add_argument("--url", required=True, help="rtmp://host[:port]/app/streamkey")
    run.add_argument(
        "--duration", type=_ranged(float, 0.1, 1e9, " s"), help="stop after this many seconds"
    )
    _add_stream_options(run)
    demo = sub.add_parser("demo", help="stream the simulated device to a local nginx-rtmp")
    demo.add_argument(
        "--duration", type=_ranged(float, 0.1, 1e9, " s"), default=30.0, help="seconds (30)"
    )
    _add_stream_options(demo)
    return parser


def settings_from(args: argparse.Namespace, url: str) -> Settings:
    width, height = args.size
    return Settings(
        url=parse_url(url),
        camera=args.camera,
        microphone=args.microphone,
        width=width,
        height=height,
        fps=args.fps,
        video_bitrate_kbps=args.video_bitrate,
        audio_bitrate_kbps=args.audio_bitrate,
        duration=args.duration,
    )


async def stream(settings: Settings) -> None:
    """Run one stream; SIGINT/SIGTERM end it cleanly (unpublish, close hardware)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await Streamer(settings).run(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_demo(args: argparse.Namespace) -> None:
    from streamer.localserver import LocalRtmpServer

    with LocalRtmpServer() as server:
        url = server.url("demo")
        print(f"local nginx-rtmp listening on 127.0.0.1:{server.port}", flush=True)
        print(f"watch it with:  ffplay -fflags nobuffer {url}", flush=True)
        print(
            f"streaming the simulated camera and microphone for {args.duration:g} s (Ctrl-C stops)",
            flush=True,
        )
        asyncio.run(stream(settings_from(args, url)))
        for path in server.recordings():
            print(f"the server recorded {path.stat().st_size / 1e6:.1f} MB ({path.name})")
    print("demo finished; the local server is stopped and its files removed")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logsetup.configure(args.log_level, args.log_format)
    try:
        if args.command == "run":
            asyncio.run(stream(settings_from(args, args.url)))
        elif args.command == "demo":
            run_demo(args)
    except StreamerError as exc:
        print(f"streamer: error: {logsetup.redact(exc.message)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
