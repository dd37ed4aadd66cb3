"""Command line: ``streamer run`` streams, ``streamer demo`` shows it all on loopback."""

from __future__ import annotations

import os

# numpy's OpenBLAS starts a spinning thread per core when it is imported (0.05-0.1 s of CPU
# and of start-up time measured here); nothing in streamer does linear algebra. Before the
# imports below bring numpy in; a value set by the user wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import asyncio
import contextlib
import gc
import importlib
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from streamer import backends
from streamer import log as logsetup
from streamer.access import PageSecurity
from streamer.config import DEFAULT_PATH, Config, destinations, load_config, with_overrides
from streamer.controls.panel import open_controls
from streamer.device import Device
from streamer.exc import ConfigError, StreamerError
from streamer.net.bitrate import DEFAULT_MIN_KBPS
from streamer.settings import Settings
from streamer.state import ERROR, LIVE, RECONNECTING, mermaid_diagram
from streamer.systemd import Notifier, watchdog_pings

if TYPE_CHECKING:
    from streamer.controls.panel import Controls
    from streamer.status import StatusServer

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


def _degrees(text: str) -> int | str:
    """``--rotate``: a whole number, or the text as given for the config check to refuse."""
    try:
        return int(text)
    except ValueError:
        return text


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


def _names_help(
    choices: Sequence[backends.Backend[Any]], default: str, *, explain: bool = False
) -> str:
    """``one of: sim, sim:sync, ... (sim)``: the names ``streamer.backends`` lists.

    ``explain`` adds what the default does; ``%`` is doubled for argparse.
    """
    text = f"one of: {backends.choices(choices)} ({default})"
    chosen = backends.find(choices, default)
    if explain and chosen is not None:
        text += f"; {chosen.name}: {chosen.about}"
    return text.replace("%", "%%")


_DEFAULTS = Config()
CAMERA_HELP = _names_help(backends.CAMERAS, _DEFAULTS.video.camera)
MICROPHONE_HELP = _names_help(backends.MICROPHONES, _DEFAULTS.audio.microphone)
ENCODER_HELP = _names_help(backends.ENCODERS, _DEFAULTS.video.encoder, explain=True)


def _add_stream_options(p: argparse.ArgumentParser) -> None:
    """Flags that override the config file: None means "not given"."""
    p.add_argument("--camera", metavar="NAME", help=CAMERA_HELP)
    p.add_argument("--microphone", metavar="NAME", help=MICROPHONE_HELP)
    p.add_argument("--size", type=_size, help="WIDTHxHEIGHT (1280x720)")
    p.add_argument("--fps", type=_ranged(float, 1, 120), help="frames/s (30)")
    p.add_argument("--video-bitrate", type=_ranged(int, 50, 50000, " kbps"), help="kbps (2500)")
    p.add_argument("--audio-bitrate", type=_ranged(int, 16, 512, " kbps"), help="kbps (128)")
    p.add_argument("--encoder", metavar="NAME", help=ENCODER_HELP)
    p.add_argument(
        "--filter",
        dest="filters",
        action="append",
        metavar="SPEC",
        help="beauty[=0..1] | watermark=FILE.png[:CORNER][:margin=N][:opacity=X] | mirror "
        "(repeatable; replaces [video] filters)",
    )
    p.add_argument(
        "--rotate",
        type=_degrees,
        metavar="DEGREES",
        help="turn the picture clockwise: 0, 90, 180 or 270 (0), for a camera mounted sideways "
        "or upside down; 90 and 270 stream HEIGHTxWIDTH of --size",
    )
    p.add_argument(
        "--drop-threshold-ms",
        type=_ranged(int, 100, 10000, " ms"),
        help="send-queue depth above which video frames are dropped (700)",
    )
    p.add_argument(
        "--min-video-bitrate",
        type=_ranged(int, 50, 50000, " kbps"),
        help=f"adaptive bitrate never goes below this ({DEFAULT_MIN_KBPS} kbps)",
    )
    p.add_argument(
        "--no-adaptive-bitrate",
        dest="adaptive_bitrate",
        action="store_const",
        const=False,
        help="keep the video bitrate fixed whatever the link does",
    )
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["auto", "console", "plain", "json"])


class _Parser(argparse.ArgumentParser):
    """argparse whose one-line error goes where the log goes (JSON under journald)."""

    def error(self, message: str) -> NoReturn:
        if not logsetup.json_output():
            super().error(message)
        logsetup.fatal(f"{self.prog}: {message}", 2)
        sys.exit(2)


def _add_set_password(sub: Any) -> None:
    """``streamer set-password``: the status page's password, hashed beside the config."""
    p = sub.add_parser("set-password", help="set the status page's password (needed off loopback)")
    p.add_argument(
        "--config",
        type=Path,
        help=f"the device's settings; the password goes beside it (default {DEFAULT_PATH})",
    )
    p.add_argument(
        "--stdin",
        action="store_true",
        help="read the password as one line from stdin (automatic when stdin is not a terminal)",
    )
    p.add_argument(
        "--owner", metavar="USER", help="give the file to USER (default: streamer, if it exists)"
    )


def _set_password(args: argparse.Namespace) -> int:
    from streamer.auth import set_password_command

    return set_password_command(args.config, args.stdin, args.owner)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="stream camera and microphone to an RTMP server")
    run.add_argument(
        "--config",
        type=Path,
        help=f"settings file (default {DEFAULT_PATH}; flags override it)",
    )
    run.add_argument(
        "--url",
        action="append",
        help="rtmp[s]://host[:port]/app/streamkey; repeat it to publish the same stream to "
        "several servers (replaces the file's [stream] and [[destination]] tables)",
    )
    run.add_argument(
        "--duration", type=_ranged(float, 0.1, 1e9, " s"), help="stop after this many seconds"
    )
    run.add_argument(
        "--service",
        action="store_true",
        help="boot-service mode: retry forever, errors retried after --error-cooldown",
    )
    run.add_argument(
        "--max-reconnects",
        type=_ranged(int, 0, 1_000_000),
        help="CLI mode: reconnect attempts in a row before giving up (10)",
    )
    run.add_argument(
        "--reconnect-delay",
        type=_ranged(float, 0.1, 3600, " s"),
        metavar="SECONDS",
        help="wait before the first reconnect attempt, doubling after each, "
        "at most 4 s apart for the first 90 s of an outage (1)",
    )
    run.add_argument(
        "--reconnect-max-delay",
        type=_ranged(float, 0.1, 3600, " s"),
        metavar="SECONDS",
        help="the longest wait between reconnect attempts, reached after 4.5 minutes "
        "of outage (30)",
    )
    run.add_argument(
        "--error-cooldown",
        type=_ranged(float, 1, 86400, " s"),
        metavar="SECONDS",
        help="service mode: time in error before trying again (60)",
    )
    run.add_argument("--record", metavar="DIR", help="also record locally into DIR (MKV segments)")
    run.add_argument(
        "--record-minutes",
        type=_ranged(float, 0.05, 1440, " min"),
        help="length of a recorded segment (5)",
    )
    run.add_argument(
        "--record-keep",
        type=_ranged(float, 0, 100000, " GB"),
        metavar="GB",
        help="remove the oldest segments past this total size (0 = keep all)",
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        help="rtmps:// without checking the server's certificate (only for testing)",
    )
    run.add_argument(
        "--status-port",
        type=_ranged(int, 0, 65535),
        help="port of the status page and /metrics (8089; 0 = off)",
    )
    run.add_argument(
        "--status-address",
        metavar="IP",
        help="address the status page listens on (127.0.0.1; any other needs set-password)",
    )
    run.add_argument(
        "--button", metavar="PIN", help="GPIO pin of the start/stop button, e.g. GPIO17"
    )
    run.add_argument("--led", metavar="PIN", help="GPIO pin of the status LED, e.g. GPIO27")
    _add_stream_options(run)
    demo = sub.add_parser("demo", help="stream the simulated device to a local nginx-rtmp")
    demo.add_argument(
        "--duration", type=_ranged(float, 0.1, 1e9, " s"), default=30.0, help="seconds (30)"
    )
    _add_stream_options(demo)
    demo.set_defaults(camera="sim:sync", microphone="sim:sync")
    sub.add_parser("state-diagram", help="print the state machine as a mermaid diagram")
    doctor = sub.add_parser(
        "doctor", help="what hardware, encoders and permissions this device has; how to fix it"
    )
    doctor.add_argument(
        "--config", type=Path, help=f"the device's settings (default {DEFAULT_PATH})"
    )
    doctor.add_argument(
        "--url",
        action="append",
        help="check that this RTMP server answers a handshake (repeatable; "
        "replaces the file's destinations)",
    )
    doctor.add_argument("--camera", metavar="NAME", help=f"overrides [video] camera; {CAMERA_HELP}")
    doctor.add_argument(
        "--microphone", metavar="NAME", help=f"overrides [audio] microphone; {MICROPHONE_HELP}"
    )
    doctor.add_argument(
        "--encoder", metavar="NAME", help=f"overrides [video] encoder; {ENCODER_HELP}"
    )
    doctor.add_argument("--button", metavar="PIN", help="overrides [controls] button")
    doctor.add_argument("--led", metavar="PIN", help="overrides [controls] led")
    _add_set_password(sub)
    return parser


# config field -> command-line flag (argparse dest) that overrides it
OVERRIDES = {
    "stream.url": "url",
    "video.camera": "camera",
    "video.size": "size",
    "video.fps": "fps",
    "video.bitrate_kbps": "video_bitrate",
    "video.encoder": "encoder",
    "video.filters": "filters",
    "video.rotate": "rotate",
    "audio.microphone": "microphone",
    "audio.bitrate_kbps": "audio_bitrate",
    "network.drop_threshold_ms": "drop_threshold_ms",
    "network.min_video_bitrate_kbps": "min_video_bitrate",
    "network.adaptive_bitrate": "adaptive_bitrate",
    "network.max_reconnects": "max_reconnects",
    "network.reconnect_delay_s": "reconnect_delay",
    "network.reconnect_max_delay_s": "reconnect_max_delay",
    "network.error_cooldown_s": "error_cooldown",
    "controls.button": "button",
    "controls.led": "led",
    "status.port": "status_port",
    "status.address": "status_address",
    "record.dir": "record",
    "record.minutes": "record_minutes",
    "record.keep_gb": "record_keep",
    "log.level": "log_level",
    "log.format": "log_format",
}


def config_from(args: argparse.Namespace, base: Config) -> Config:
    """The file's settings with every flag the user gave on top."""
    return with_overrides(base, {key: getattr(args, dest, None) for key, dest in OVERRIDES.items()})


def settings_from(config: Config, args: argparse.Namespace) -> Settings:
    v, a, n, r = config.video, config.audio, config.network, config.record
    return Settings(
        urls=destinations(config),
        camera=v.camera,
        microphone=a.microphone,
        width=v.size[0],
        height=v.size[1],
        fps=v.fps,
        video_bitrate_kbps=v.bitrate_kbps,
        audio_bitrate_kbps=a.bitrate_kbps,
        encoder=v.encoder,
        filters=v.filters,
        rotate=v.rotate,
        drop_threshold_ms=n.drop_threshold_ms,
        min_video_bitrate_kbps=n.min_video_bitrate_kbps,
        adaptive_bitrate=n.adaptive_bitrate,
        max_reconnects=n.max_reconnects,
        reconnect_delay=n.reconnect_delay_s,
        reconnect_max_delay=n.reconnect_max_delay_s,
        error_cooldown=n.error_cooldown_s,
        duration=args.duration,
        service=getattr(args, "service", False),
        insecure=getattr(args, "insecure", False),
        record_dir=str(r.dir) if r.dir else None,
        record_minutes=r.minutes,
        record_keep_gb=r.keep_gb or None,
    )


def _tell_systemd(notifier: Notifier, state: str, reason: str) -> None:
    """STATUS on every transition; READY once the service is up (live or retrying)."""
    notifier.status(f"{state}: {reason}")
    if state in (LIVE, RECONNECTING, ERROR):
        notifier.ready()


def _on_loop(loop: asyncio.AbstractEventLoop, command: Callable[[str], None], by: str) -> None:
    loop.call_soon_threadsafe(command, by)


async def start_status_page(
    streamer: Device,
    panel: Controls,
    *,
    port: int,
    host: str,
    security: PageSecurity | None,
) -> StatusServer | None:
    """Serve the status page, or say why not and return None: the stream matters more.

    aiohttp takes 0.25-0.4 s and 10 MB to import: in a thread, so that the event
    loop (the button, signals) stays responsive meanwhile.
    """
    security = security or PageSecurity()
    try:
        module = await asyncio.to_thread(importlib.import_module, "streamer.status")
        status: StatusServer = module.StatusServer(
            lambda: {**streamer.snapshot(), "controls": panel.summary()},
            on_start=lambda: streamer.start("status page"),
            on_stop=lambda: streamer.stop("status page"),
            on_text=lambda text, index: streamer.set_text(text, index, "status page"),
            port=port,
            host=host,
            history=streamer.history.as_json,
            preview=streamer.preview_jpeg,
            password_hash=security.password_hash,
            metrics_token=security.metrics_token,
            ssl_context=security.ssl_context,
        )
        await status.start()
    except StreamerError as exc:
        log.error("status page disabled", reason=exc.message)
        return None
    except Exception:  # a fault of the page is logged; it never takes the stream down
        log.exception("status page disabled by an unexpected error")
        return None
    return status


async def stream(
    settings: Settings,
    button: str | None = None,
    led: str | None = None,
    *,
    status_port: int = 0,
    status_address: str = "127.0.0.1",
    status_security: PageSecurity | None = None,
    streamer: Device | None = None,
    shutdown: asyncio.Event | None = None,
    own_process: bool = False,
) -> None:
    """Run the device; SIGINT/SIGTERM (or ``shutdown``) end it cleanly.

    ``own_process``: the process is the streamer's alone (the CLI), so what
    start-up made may be frozen out of the collector's sight (``gc.freeze``);
    an application that embeds the device keeps its collector as it was.
    """
    shutdown = shutdown or asyncio.Event()
    loop = asyncio.get_running_loop()
    streamer = streamer or Device(settings)
    with contextlib.ExitStack() as controls:
        # A button or LED that cannot be opened is logged and left out: the stream matters more.
        panel = open_controls(
            controls,
            streamer.state,
            button=button,
            led=led,
            # gpiozero calls back from its own thread: hand the command to the loop.
            on_toggle=lambda: _on_loop(loop, streamer.toggle, "button"),
            on_reset=lambda: _on_loop(loop, streamer.reset, "button held"),
        )
        notifier = Notifier.from_env()
        controls.callback(notifier.close)
        streamer.state.subscribe(lambda _old, new, reason: _tell_systemd(notifier, new, reason))
        pings = asyncio.create_task(watchdog_pings(notifier, streamer.healthy))
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown.set)
        status = None
        if status_port:
            # Before the stream, not beside it: its import (0.25-0.4 s of Python) would compete
            # with the first seconds of capture for the interpreter (docs/design.md).
            status = await start_status_page(
                streamer, panel, port=status_port, host=status_address, security=status_security
            )
        if own_process:
            # What was imported and built so far lives as long as the process: frozen, the
            # collector's full passes no longer walk it. Walking it took 90-160 ms on a busy
            # 2-core machine, with the GIL held: the camera thread skipped frames.
            gc.freeze()
        try:
            await streamer.run(shutdown)
        finally:
            notifier.stopping()
            try:
                if status is not None:
                    await status.stop()
            finally:
                pings.cancel()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)


def run_demo(args: argparse.Namespace) -> None:
    from streamer.localserver import LocalRtmpServer

    # The demo never reads the device's config file: sim sync pattern unless told otherwise.
    base = with_overrides(Config(), {"video.camera": "sim:sync", "audio.microphone": "sim:sync"})
    with LocalRtmpServer() as server:
        url = server.url("demo")
        config = with_overrides(config_from(args, base), {"stream.url": url})
        print(f"local nginx-rtmp listening on 127.0.0.1:{server.port}", flush=True)
        print(f"watch it with:  ffplay -fflags nobuffer {url}", flush=True)
        print(
            f"streaming the simulated camera and microphone for {args.duration:g} s (Ctrl-C stops)",
            flush=True,
        )
        asyncio.run(stream(settings_from(config, args), own_process=True))
        for path in server.recordings():
            print(f"the server recorded {path.stat().st_size / 1e6:.1f} MB ({path.name})")
    print("demo finished; the local server is stopped and its files removed")


def doctor(args: argparse.Namespace) -> int:
    """Check the pipeline the device is configured for, as `run` would see it."""
    from streamer.doctor import run_doctor

    problem = None
    try:
        config = config_from(args, load_config(args.config))
    except ConfigError as exc:  # say so, and still check the hardware named by the flags
        problem = exc.message
        config = config_from(args, Config())
    try:
        targets = destinations(config)
    except ConfigError:
        targets = ()  # no server configured: the RTMP check is skipped
    code = run_doctor(
        targets,
        camera=config.video.camera,
        microphone=config.audio.microphone,
        encoder=config.video.encoder,
        button=config.controls.button,
        led=config.controls.led,
        status=config.status,
        config_path=config.path,
    )
    if problem:
        print(f"FAIL  {logsetup.redact(problem)}  -> fix: edit the file (firmware/README.md)")
        return 1
    return code


def run(args: argparse.Namespace) -> None:
    config = config_from(args, load_config(args.config))
    logsetup.configure(config.log.level, config.log.format)
    settings = settings_from(config, args)
    controls = config.controls
    security = None
    if config.status.port:
        # A page that cannot be protected as configured stops the start (exit 2), before any
        # hardware is opened: it is never served open instead.
        from streamer.access import page_security

        security = page_security(config.status, config.path)
    asyncio.run(
        stream(
            settings,
            controls.button or None,
            controls.led or None,
            status_port=config.status.port,
            status_address=config.status.address,
            status_security=security,
            own_process=True,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    logsetup.configure()  # even a bad command line is a log line under journald
    args = build_parser().parse_args(argv)
    logsetup.configure(
        getattr(args, "log_level", None) or "info", getattr(args, "log_format", None) or "auto"
    )
    try:
        if args.command == "run":
            run(args)
        elif args.command == "demo":
            run_demo(args)
        elif args.command == "state-diagram":
            print(mermaid_diagram())
        elif args.command == "doctor":
            return doctor(args)
        elif args.command == "set-password":
            return _set_password(args)
    except StreamerError as exc:
        logsetup.fatal(exc.message, exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        return 0
    except Exception:
        if not logsetup.json_output():
            raise
        log.critical("streamer: crashed", exc_info=True)  # the traceback as one journal entry
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
