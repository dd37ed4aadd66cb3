"""The config file (``/etc/streamer/config.toml``), checked field by field.

The service starts at boot with nobody watching, so every mistake must end it
with one line that names the file (or ``command line``), the field as
``section.key``, the bad value and what is allowed. The stream key is a
secret: messages show a URL at most as ``scheme://host/app/***`` and never
print what a key file holds.

``load_config`` reads the file, ``with_overrides`` lays command-line values
over it (checked by the same rules), ``destinations`` gives the publish
targets.

Destinations: ``[stream]`` is the first (as it always was), and each
``[[destination]]`` table adds one, with the same keys::

    [stream]
    url = "rtmp://a.rtmp.youtube.com/live2"
    key_file = "youtube.key"
    name = "youtube"            # optional: logs, /status, /metrics; else the host

    [[destination]]
    url = "rtmps://live-api-s.facebook.com:443/rtmp"
    key_file = "facebook.key"
    name = "facebook"

Errors name a table as ``destination[N]``, counting the ``[[destination]]``
tables of the file from 1. ``--url`` (repeatable) replaces them all.
"""

from __future__ import annotations

import ipaddress
import json
import re
import stat
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import structlog

from streamer import backends
from streamer import log as logsetup
from streamer.exc import ConfigError
from streamer.net.bitrate import DEFAULT_MIN_KBPS
from streamer.net.sendqueue import DEFAULT_DROP_THRESHOLD_MS
from streamer.rtmp.url import RtmpUrl, parse_url
from streamer.settings import NAME_PATTERN, NAME_RULE, ROTATE_RULE, ROTATIONS, Target, targets

log = structlog.get_logger("streamer.config")

DEFAULT_PATH = Path("/etc/streamer/config.toml")
COMMAND_LINE = "command line"


@dataclass(frozen=True, slots=True)
class StreamSection:
    """``[stream]`` or one ``[[destination]]`` table: where to publish."""

    url: str | None = None  # no default: the server is the user's choice
    key_file: Path | None = None  # absolute; then ``url`` has no key
    name: str = ""  # "" = named by the URL's host

    def __repr__(self) -> str:
        """Configs get logged: the URL shows as ``scheme://host/app/***``."""
        url = None if self.url is None else _redacted(self.url, keyless=self.key_file is not None)
        name = f", name={self.name!r}" if self.name else ""
        return f"StreamSection(url={url!r}, key_file={self.key_file!r}{name})"


@dataclass(frozen=True, slots=True)
class VideoSection:
    camera: str = "sim"
    size: tuple[int, int] = (1280, 720)
    fps: float = 30.0
    bitrate_kbps: int = 2500
    encoder: str = "auto"
    filters: tuple[str, ...] = ()  # e.g. ("beauty=0.6", "watermark=logo.png:bottom-right")
    rotate: int = 0  # degrees clockwise; size stays the camera's (90/270 stream it turned)


@dataclass(frozen=True, slots=True)
class AudioSection:
    microphone: str = "sim"
    bitrate_kbps: int = 128


@dataclass(frozen=True, slots=True)
class NetworkSection:
    drop_threshold_ms: int = DEFAULT_DROP_THRESHOLD_MS
    min_video_bitrate_kbps: int = DEFAULT_MIN_KBPS
    adaptive_bitrate: bool = True
    max_reconnects: int = 10
    reconnect_delay_s: float = 1.0  # the first reconnect delay; doubles on each attempt
    reconnect_max_delay_s: float = 30.0  # the longest reconnect delay
    error_cooldown_s: float = 60.0  # service mode: wait before retrying after an error


@dataclass(frozen=True, slots=True)
class ControlsSection:
    button: str = ""  # "" = no button
    led: str = ""  # "" = no LED


@dataclass(frozen=True, slots=True)
class StatusSection:
    port: int = 8089  # 0 = no status page
    address: str = "127.0.0.1"  # any other address needs a password (streamer set-password)
    password_file: Path | None = None  # None: status-password next to the config file
    tls_cert: Path | None = None  # both set: the page is served over HTTPS
    tls_key: Path | None = None
    metrics_token_file: Path | None = None  # a bearer token Prometheus may scrape with


@dataclass(frozen=True, slots=True)
class RecordSection:
    dir: Path | None = None  # None = no recording; relative paths are next to the config file
    minutes: float = 5.0  # length of one segment
    keep_gb: float = 0.0  # remove the oldest segments past this total; 0 = keep them all


@dataclass(frozen=True, slots=True)
class LogSection:
    level: str = "info"
    format: str = "auto"


def _no_sources() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; ``path`` is the file read (None: none was).

    ``sources`` maps each field set by the file or the command line
    (``"video.fps"``) to where it came from, so errors found later (the key
    file vanished) still name the right place.
    """

    stream: StreamSection = field(default_factory=StreamSection)
    destination: tuple[StreamSection, ...] = ()  # the [[destination]] tables, in order
    video: VideoSection = field(default_factory=VideoSection)
    audio: AudioSection = field(default_factory=AudioSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    controls: ControlsSection = field(default_factory=ControlsSection)
    status: StatusSection = field(default_factory=StatusSection)
    record: RecordSection = field(default_factory=RecordSection)
    log: LogSection = field(default_factory=LogSection)
    path: Path | None = None
    sources: Mapping[str, str] = field(default_factory=_no_sources, compare=False, repr=False)


# -- the rules, one per field -------------------------------------------------


class _Invalid(Exception):
    """A value broke its rule; the caller prefixes the source and the field."""


Check = Callable[[Any], Any]


def _show(value: Any) -> str:
    """A value as the user wrote it in TOML (strings quoted), kept short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {_show(value)}")
    return value


def _integer(low: int, high: int, note: str = "") -> Check:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, got {_show(value)}")
        if not low <= value <= high:
            raise _Invalid(f"= {value} is out of range {low}..{high}{note}")
        return value

    return check


def _number(low: float, high: float, note: str = "") -> Check:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"must be a number, got {_show(value)}")
        if not low <= value <= high:  # also refuses nan
            raise _Invalid(f"= {_show(value)} is out of range {low}..{high}{note}")
        return float(value)

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {_show(value)}")
    return value


def _choice(*options: str) -> Check:
    def check(value: Any) -> str:
        text = _string(value)
        if text not in options:
            raise _Invalid(f"= {_show(value)} is not one of: {', '.join(options)}")
        return text

    return check


def _size(value: Any) -> tuple[int, int]:
    """``"1280x720"`` from the file; argparse hands over ``(1280, 720)``."""
    rule = 'must be WIDTHxHEIGHT, even numbers between 16 and 4096, e.g. "1280x720"'
    if isinstance(value, tuple) and len(value) == 2:
        shown = "x".join(str(v) for v in value)
        parts: list[Any] = list(value)
    elif isinstance(value, str):
        shown = _show(value)
        parts = value.strip().lower().split("x")
    else:
        raise _Invalid(f'must be a string like "1280x720", got {_show(value)}')
    try:
        if len(parts) != 2 or any(isinstance(p, bool | float) for p in parts):
            raise ValueError
        width, height = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise _Invalid(f"= {shown} {rule}") from None
    if not (16 <= width <= 4096 and 16 <= height <= 4096) or width % 2 or height % 2:
        raise _Invalid(f"= {shown} {rule}")
    return width, height


def _rotation(value: Any) -> int:
    """Degrees clockwise: 0, 90, 180 or 270 (the flag hands over its text when not a number)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"must be {ROTATE_RULE}, got {_show(value)}")
    if value not in ROTATIONS:
        same = f"; {value} turns it as {value % 360} does" if value % 90 == 0 else ""
        raise _Invalid(f"= {value} is not {ROTATE_RULE}{same}")
    return value


def _backend(backends_: Sequence[backends.Backend[Any]]) -> Check:
    """A camera, microphone or encoder name from ``streamer.backends``, refused here
    if it cannot exist, before the boot service tries to open it."""

    def check(value: Any) -> str:
        spec = backends.normalise(backends_, _string(value))
        if spec is None:
            raise _Invalid(f"= {_show(value)} is not one of: {backends.choices(backends_)}")
        return spec

    return check


def _spaced(text: str) -> bool:
    return any(c.isspace() or not c.isprintable() for c in text)


_PIN = re.compile(r"[A-Za-z0-9_]+(?::[A-Za-z0-9_]+)?")


def _pin(value: Any) -> str:
    """Catch typos here; gpiozero judges the name itself when it claims the pin."""
    text = _string(value).strip()
    if text and not _PIN.fullmatch(text):
        raise _Invalid(f'= {_show(value)} is not a GPIO pin name like "GPIO17" ("" for none)')
    return text


def _url(value: Any) -> str | None:
    """Only the type here (never echoing the value); its shape is checked with the key."""
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {_kind(value)}")
    return value.strip() or None


def _name(value: Any) -> str:
    """A destination's name ("" = its host): the rule ``Settings`` applies too."""
    text = _string(value).strip()
    if text and not NAME_PATTERN.fullmatch(text):
        raise _Invalid(f"= {_show(value)} {NAME_RULE}")
    return text


def _path(value: Any) -> Path | None:
    """A file or directory name; "" means none."""
    if isinstance(value, Path):
        return value
    text = _string(value).strip()
    return Path(text) if text else None


# Fields naming a file or directory: relative ones are taken next to the config file.
PATH_KEYS = ("key_file", "dir", "password_file", "tls_cert", "tls_key", "metrics_token_file")


def _address(value: Any) -> str:
    """An IP address to listen on ("0.0.0.0" or "::" for all), or "localhost"."""
    text = _string(value).strip()
    if text == "localhost":
        return text
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _Invalid(
            f'= {_show(value)} is not an IP address (e.g. "127.0.0.1", "0.0.0.0" or "::")'
        ) from None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return _show(value) if isinstance(value, dict | list) else "something else"


def _filters(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _Invalid(
            f'must be a list of filters like ["beauty=0.6", "mirror"], got {_show(value)}'
        )
    from streamer.encode.filters import parse_filter

    for spec in value:
        try:
            parse_filter(spec)
        except ConfigError as exc:
            raise _Invalid(exc.message) from None
    return tuple(value)


DESTINATION_KEYS: Mapping[str, Check] = {"url": _url, "key_file": _path, "name": _name}

# section -> (dataclass, key -> rule); keys are the dataclass's fields.
SCHEMA: Mapping[str, tuple[type[Any], Mapping[str, Check]]] = {
    "stream": (StreamSection, DESTINATION_KEYS),
    "video": (
        VideoSection,
        {
            "camera": _backend(backends.CAMERAS),
            "size": _size,
            "fps": _number(1, 120),
            "bitrate_kbps": _integer(50, 50000),
            "encoder": _backend(backends.ENCODERS),
            "filters": _filters,
            "rotate": _rotation,
        },
    ),
    "audio": (
        AudioSection,
        {"microphone": _backend(backends.MICROPHONES), "bitrate_kbps": _integer(16, 512)},
    ),
    "network": (
        NetworkSection,
        {
            "drop_threshold_ms": _integer(100, 10000),
            "min_video_bitrate_kbps": _integer(50, 50000),
            "adaptive_bitrate": _boolean,
            "max_reconnects": _integer(0, 1_000_000),
            "reconnect_delay_s": _number(0.1, 3600),
            "reconnect_max_delay_s": _number(0.1, 3600),
            "error_cooldown_s": _number(1, 86400),
        },
    ),
    "controls": (ControlsSection, {"button": _pin, "led": _pin}),
    "status": (
        StatusSection,
        {
            "port": _integer(0, 65535, " (0 disables the status page)"),
            "address": _address,
            "password_file": _path,
            "tls_cert": _path,
            "tls_key": _path,
            "metrics_token_file": _path,
        },
    ),
    "record": (
        RecordSection,
        {
            "dir": _path,
            "minutes": _number(0.05, 1440),
            "keep_gb": _number(0, 100000, " (0 keeps every segment)"),
        },
    ),
    "log": (
        LogSection,
        {
            "level": _choice("debug", "info", "warning", "error"),
            "format": _choice("auto", "console", "plain", "json"),
        },
    ),
}


# Sections written as arrays of tables (``[[destination]]``): any number of them.
ARRAYS: Mapping[str, tuple[type[Any], Mapping[str, Check]]] = {
    "destination": (StreamSection, DESTINATION_KEYS),
}


# -- reading ------------------------------------------------------------------


def load_config(path: Path | None) -> Config:
    """Read and check a config file; ``None`` means DEFAULT_PATH, which may be absent.

    A path given explicitly must exist: a typo there must not silently start
    the device with defaults.
    """
    explicit = path is not None
    path = DEFAULT_PATH if path is None else path
    where = f"config {path}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if not explicit:
            return Config()
        raise ConfigError(f"{where}: file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(f"{where}: cannot be read (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {_syntax_error(exc)}") from None
    return _build(data, where, path)


def _syntax_error(exc: tomllib.TOMLDecodeError) -> str:
    """tomllib says ``what (at line 3, column 5)``: lead with the line."""
    text = str(exc).splitlines()[0] if str(exc) else "invalid TOML"
    found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", text)
    if found:
        what, line, column = found.groups()
        return f"TOML syntax error at line {line}: {what} (column {column})"
    found = re.fullmatch(r"(.*) \(at end of document\)", text)
    if found:
        return f"TOML syntax error at the end of the file: {found.group(1)}"
    return f"TOML syntax error: {text}"


def _build(data: Mapping[str, Any], where: str, path: Path) -> Config:
    sections: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, table in data.items():
        if name in ARRAYS:
            cls, checks = ARRAYS[name]
            if not isinstance(table, list) or not all(isinstance(t, dict) for t in table):
                shape = f"a single [{name}] table" if isinstance(table, dict) else "a single value"
                raise ConfigError(
                    f"{where}: {name} must be written [[{name}]], one table per destination, "
                    f"not {shape}"
                )
            sections[name] = tuple(
                cls(**_table(item, f"{name}[{n}]", checks, where, path, sources))
                for n, item in enumerate(table, 1)
            )
            continue
        if name not in SCHEMA:
            raise ConfigError(f"{where}: {_misplaced(name, table)}")
        if not isinstance(table, dict):
            more = " (more destinations go in [[destination]] tables)" if name == "stream" else ""
            what = "an array" if isinstance(table, list) else "a single value"
            raise ConfigError(f"{where}: {name} must be a section [{name}], not {what}{more}")
        cls, checks = SCHEMA[name]
        sections[name] = cls(**_table(table, name, checks, where, path, sources))
    config = Config(**sections, path=path, sources=MappingProxyType(sources))
    _check_network(config, where)
    _resolve(config, complete=False, warn=True)
    return config


def _table(
    table: Mapping[str, Any],
    label: str,
    checks: Mapping[str, Check],
    where: str,
    path: Path,
    sources: dict[str, str],
) -> dict[str, Any]:
    """One table's values, each checked by its rule; relative paths taken next to the file."""
    values: dict[str, Any] = {}
    for key, value in table.items():
        check = checks.get(key)
        if check is None:
            known = ", ".join(sorted(checks))
            raise ConfigError(f"{where}: unknown key {label}.{key} (known: {known})")
        try:
            values[key] = check(value)
        except _Invalid as exc:
            raise ConfigError(f"{where}: {label}.{key} {exc}") from None
        sources[f"{label}.{key}"] = where
    for key in PATH_KEYS:
        named = values.get(key)
        if isinstance(named, Path) and not named.is_absolute():
            values[key] = path.parent.absolute() / named  # not the service's cwd
    return values


def _check_network(config: Config, where: str) -> None:
    """Rules between fields: the first reconnect delay cannot exceed the longest."""
    n = config.network
    if n.reconnect_delay_s > n.reconnect_max_delay_s:
        raise ConfigError(
            f"{where}: network.reconnect_delay_s = {_show(n.reconnect_delay_s)} is above "
            f"network.reconnect_max_delay_s = {_show(n.reconnect_max_delay_s)}; "
            "the first delay cannot be longer than the longest"
        )


def _misplaced(name: str, value: Any) -> str:
    known = ", ".join(sorted([*SCHEMA, *ARRAYS]))
    if isinstance(value, dict):
        return f"unknown section [{name}] (known: {known})"
    homes = [section for section, (_, checks) in SCHEMA.items() if name in checks]
    if homes:  # e.g. ``fps = 30`` above every section header
        return f"{name} is outside any section; it belongs under [{homes[0]}]"
    return f"unknown key {name} outside any section (sections: {known})"


# -- command line ---------------------------------------------------------------


def with_overrides(
    config: Config, overrides: Mapping[str, Any], source: str = COMMAND_LINE
) -> Config:
    """Lay values from ``source`` over ``config``, checked by the file's rules.

    Keys are ``"section.key"``; a value of None means "not given" and leaves
    the file's value. An unknown key is a programming error (ValueError).
    ``stream.url`` given here is one complete publish URL or a list of them
    (``--url`` repeated): they replace every destination of the file, so the
    file's ``stream.key_file``, ``stream.name`` and ``[[destination]]``
    tables no longer apply (unless ``stream.key_file`` or ``stream.name`` is
    given here too).
    """
    changes: dict[str, dict[str, Any]] = {}
    more: tuple[StreamSection, ...] | None = None  # [[destination]] replaced by URLs given here
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        check = SCHEMA[section][1].get(key) if section in SCHEMA else None
        if check is None:
            raise ValueError(f"unknown config field {dotted!r}")
        if value is None:
            continue
        try:
            if dotted == "stream.url" and isinstance(value, list | tuple):
                if not value:
                    raise _Invalid("needs at least one rtmp://host[:port]/app/KEY")
                urls = [check(v) for v in value]
                checked, more = urls[0], tuple(StreamSection(url=u) for u in urls[1:])
            else:
                checked = check(value)
                more = () if dotted == "stream.url" else more
        except _Invalid as exc:
            raise ConfigError(f"{source}: {dotted} {exc}") from None
        if dotted in ("stream.key_file", "record.dir") and checked is not None:
            checked = checked.absolute()
        changes.setdefault(section, {})[key] = checked
    if not changes:
        return config
    stream = changes.get("stream", {})
    if "url" in stream:
        stream.setdefault("key_file", None)
        stream.setdefault("name", "")
    sources = dict(config.sources)
    new_sections: dict[str, Any] = {}
    for section, values in changes.items():
        new_sections[section] = replace(getattr(config, section), **values)
        sources.update({f"{section}.{key}": source for key in values})
    if more is not None:
        new_sections["destination"] = more
        sources = {k: v for k, v in sources.items() if not k.startswith("destination[")}
        sources.update({f"destination[{n}].url": source for n in range(1, len(more) + 1)})
    result = replace(config, **new_sections, sources=MappingProxyType(sources))
    if changes.get("network", {}).keys() & {"reconnect_delay_s", "reconnect_max_delay_s"}:
        _check_network(result, source)
    if stream:
        _resolve(result, complete=False, warn=True)
    return result


# -- the destinations ---------------------------------------------------------


def destinations(config: Config) -> tuple[Target, ...]:
    """Every destination, named: ``[stream]`` first, then each ``[[destination]]``.

    Key files are read again here, so a key rotated since loading is used.
    An unnamed destination is named by its host (``settings.targets``).
    """
    found = _resolve(config, complete=True, warn=False)
    return targets(Target(url, s.name) if s.name else url for _, s, _, url in found)


def stream_url(config: Config) -> str:
    """The first destination's full publish URL (its url plus the key from its key_file)."""
    return _resolve(config, complete=True, warn=False)[0][2]


Resolved = tuple[str, StreamSection, str, RtmpUrl]  # label, section, publish URL, parsed


def _resolve(config: Config, *, complete: bool, warn: bool) -> list[Resolved]:
    """Check every destination: key files, URLs, names; each error names its own field.

    ``complete``: the URLs are needed now, so none at all (or a ``[stream]``
    key_file without its url) is an error; while loading, a flag may still
    bring them.
    """
    s = config.stream
    entries = [(f"destination[{n}]", d) for n, d in enumerate(config.destination, 1)]
    if s.url is not None:
        entries.insert(0, ("stream", s))
    elif complete and (s.key_file is not None or s.name or not entries):
        where = _where(config, "stream")  # where any stream.* was set, else the file
        if s.key_file is not None or s.name:
            given = "stream.key_file" if s.key_file is not None else "stream.name"
            raise ConfigError(
                f"{where}: {given} is set but stream.url is not; "
                "give stream.url = rtmp://host[:port]/app (without the key)"
            )
        raise ConfigError(
            f"{where}: stream.url is not set; give rtmp://host[:port]/app/KEY, "
            "or rtmp://host[:port]/app together with stream.key_file "
            "(more destinations: [[destination]] tables)"
        )
    found: list[Resolved] = []
    for label, section in entries:
        if section.url is None:
            raise ConfigError(
                f"{_where(config, label)}: {label}.url is not set; give "
                f"rtmp://host[:port]/app/KEY, or rtmp://host[:port]/app together with "
                f"{label}.key_file"
            )
        key = None
        if section.key_file is not None:
            where = _where(config, f"{label}.key_file")
            key = _read_key(section.key_file, where, f"{label}.key_file", warn=warn)
        full, parsed = _publish_url(section.url, key, _where(config, f"{label}.url"), label)
        for other, other_section, _, other_url in found:
            if section.name and section.name == other_section.name:
                raise ConfigError(
                    f"{_where(config, f'{label}.name')}: {label}.name = {_show(section.name)} "
                    f"is also {other}.name; each destination needs a name of its own"
                )
            if parsed == other_url:
                raise ConfigError(
                    f"{_where(config, f'{label}.url')}: {label} publishes to "
                    f"{parsed.redacted}, as {other} does; each destination needs its own "
                    "server or stream key"
                )
        found.append((label, section, full, parsed))
    return found


def _where(config: Config, name: str) -> str:
    """Where ``name`` (``section.key``, or a table's label) was set."""
    if name in config.sources:
        return config.sources[name]
    given = [where for key, where in config.sources.items() if key.startswith(f"{name}.")]
    if given:
        return given[0]
    if config.path is not None:
        return f"config {config.path}"
    return f"config {DEFAULT_PATH} (absent)"


def _read_key(path: Path, where: str, field: str, *, warn: bool = False) -> str:
    """The stripped key; registered as a secret at once so no log line can show it."""
    shown = f"{field} {path}"
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{where}: {shown} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: {shown} is a directory, not a file") from None
    except PermissionError:
        raise ConfigError(
            f"{where}: {shown} cannot be read (permission denied); "
            "the user the service runs as needs read access"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{where}: {shown} cannot be read ({exc.strerror or exc})") from None
    try:
        key = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: {shown} is not UTF-8 text") from None
    if not key:
        raise ConfigError(f"{where}: {shown} is empty; it must hold the stream key")
    logsetup.add_secret(key)
    if _spaced(key):
        raise ConfigError(
            f"{where}: {shown} must hold only the stream key, on one line without spaces"
        )
    if warn and mode & stat.S_IROTH:
        log.warning(
            "stream key file is readable by every user of this machine",
            path=str(path),
            fix=f"chmod o-r {path}",
        )
    return key


def _publish_url(url: str, key: str | None, where: str, label: str) -> tuple[str, RtmpUrl]:
    """``url`` (with ``key`` appended) checked by ``parse_url``; errors never show the key."""
    full = url.strip() if key is None else _join(url, key)
    try:
        parsed = parse_url(full)
    except ConfigError as exc:
        raise ConfigError(_url_error(where, f"{label}.url", url, key, exc.message)) from None
    if key is not None and parsed.key != key:
        raise ConfigError(
            f"{where}: {label}.url {_redacted(url, keyless=True)} cannot take the key from "
            f"{label}.key_file; with a key file it must be rtmp://host[:port]/app "
            "(no key, no query string)"
        )
    return full, parsed


def _join(url: str, key: str) -> str:
    """Append ``key`` as the last path segment so that ``parse_url`` gives it back intact."""
    name, question, query = key.partition("?")
    return f"{url.strip().rstrip('/')}/{urllib.parse.quote(name, safe='')}{question}{query}"


def _url_error(where: str, field: str, url: str, key: str | None, reason: str) -> str:
    shown = _redacted(url, keyless=key is not None)
    rest = reason.removeprefix("stream URL ")
    if rest != reason and "://" not in rest.split(" ", 1)[0]:
        text = f"{where}: {field} {shown} {rest}"  # "... must start with rtmp://"
    else:
        text = f"{where}: {field} {shown}: {reason}"
    return logsetup.redact(text)  # a last guard: the key file's key is a registered secret


def _redacted(url: str, *, keyless: bool) -> str:
    """``scheme://host[:port]/app/***``: the last path segment (the key) never shows.

    With a key file the URL should hold no key, so all of its path is shown.
    Query strings and user:password parts are always left out.
    """
    text = url.strip()
    scheme, sep, _ = text.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,9}", scheme):
        return "***" if text else '""'
    try:
        parts = urllib.parse.urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return f"{scheme}://***"
    host = f"[{host}]" if ":" in host else host
    netloc = f"{host}:{port}" if port is not None else host
    segments = [s for s in parts.path.split("/") if s]
    if keyless:
        return "/".join([f"{scheme}://{netloc}", *segments])
    if not segments:
        return f"{scheme}://{netloc}"
    return "/".join([f"{scheme}://{netloc}", *segments[:-1], logsetup.REDACTED])
