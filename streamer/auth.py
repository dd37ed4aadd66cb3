"""Who may use the status page off loopback: a password, sessions, a limiter, a metrics token.

The status page may listen on a LAN address only with a password. Its hash
lives in ``status-password`` next to the config file, one line in a
self-describing format (the parameters travel with the hash, so they can be
raised later without breaking old files)::

    scrypt$16384$8$1$<salt, base64>$<hash, base64>

(standard base64 alphabet, no ``=`` padding; 16-byte salt, 32-byte hash).
The file must be mode 600 and readable by the service user ``streamer``;
``streamer set-password`` writes it so. Prometheus gets ``/metrics`` with a
bearer token read from its own file.

Everything here is pure: time comes in as ``now`` (use ``time.monotonic()``:
a Pi has no real-time clock and its wall clock jumps when NTP syncs after
boot). No message or log line ever holds a password, a hash or a token.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import ipaddress
import os
import pwd
import secrets
import stat
import sys
import unicodedata
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path

import structlog

from streamer import log as logsetup
from streamer.config import DEFAULT_PATH
from streamer.exc import ConfigError

log = structlog.get_logger("streamer.auth")

SERVICE_USER = "streamer"
PASSWORD_FILE = "status-password"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # a login form posts it; scrypt need not chew megabytes

# scrypt cost: 16 MiB and ~50-75 ms on a desktop core, a few hundred ms on a Pi 4:
# slow enough to make offline guessing dear, fast enough for a login on a Pi.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
# Stored parameters are read from a file: bound what a verify may cost (memory 128*n*r*p).
_MAX_MEMORY = 64 * 1024 * 1024
_MAXMEM = _MAX_MEMORY + 1024 * 1024  # OpenSSL's own overhead on top of 128*n*r*p


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _secret_bytes(password: str) -> bytes:
    """NFC first: a browser and a terminal may send the same password composed differently."""
    return unicodedata.normalize("NFC", password).encode("utf-8")


def check_new_password(password: str) -> None:
    """Refuse a password too weak (or too long) to set, with a line saying why."""
    if not password:
        raise ConfigError("the password is empty; choose one of at least 8 characters")
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"the password is too short; use at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise ConfigError(f"the password is too long; use at most {MAX_PASSWORD} characters")
    if any(ch in password for ch in "\r\n"):
        raise ConfigError("the password must be one line")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """The stored form of a new password (``n``, ``r``, ``p`` other than the defaults: tests)."""
    check_new_password(password)
    salt = os.urandom(SALT_BYTES)
    digest = hashlib.scrypt(
        _secret_bytes(password), salt=salt, n=n, r=r, p=p, maxmem=_MAXMEM, dklen=HASH_BYTES
    )
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


@dataclass(frozen=True, slots=True)
class _Stored:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes


def _parse(stored: str) -> _Stored:
    """The parts of a stored hash; ``ValueError`` (without the text) when it is not one."""
    parts = stored.strip().split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not scrypt$n$r$p$salt$hash")
    try:
        n, r, p = (int(part, 10) for part in parts[1:4])
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (ValueError, binascii.Error):
        raise ValueError("bad number or base64") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r * p > _MAX_MEMORY:
        raise ValueError("scrypt parameters out of range")
    if not 8 <= len(salt) <= 64 or not 16 <= len(digest) <= 64:
        raise ValueError("salt or hash of a wrong length")
    return _Stored(n, r, p, salt, digest)


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (constant-time compare)."""
    try:
        s = _parse(stored)
    except ValueError:
        raise ConfigError(
            "the stored status page password is malformed; run `streamer set-password` again"
        ) from None
    if len(password) > MAX_PASSWORD:
        return False
    digest = hashlib.scrypt(
        _secret_bytes(password), salt=s.salt, n=s.n, r=s.r, p=s.p, maxmem=_MAXMEM,
        dklen=len(s.digest),
    )  # fmt: skip
    return hmac.compare_digest(digest, s.digest)


# --- files ------------------------------------------------------------------------------------


def password_path(config_path: Path) -> Path:
    """``status-password`` beside the config file: /etc/streamer/status-password."""
    return config_path.parent / PASSWORD_FILE


def _me() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def _read_private(path: Path, what: str, missing: str, *, limit: int = 4096) -> str:
    """A small text file that only its owner may read or write; ``ConfigError`` otherwise.

    The mode is checked on the open descriptor, then the content is read from it:
    nothing can swap the file in between.
    """
    shown = f"{what} {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"{shown} does not exist: {missing}") from None
    except PermissionError:
        raise ConfigError(
            f"{shown} cannot be read by user {_me()} (permission denied); the service runs as "
            f"user {SERVICE_USER}, which must own it: sudo chown {SERVICE_USER} {path}"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{shown} cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{shown} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"{shown} has mode {mode:04o}: group or others may read or write it; "
                f"fix: chmod 600 {path}"
            )
        try:
            raw = file.read(limit + 1)
        except OSError as exc:
            raise ConfigError(f"{shown} cannot be read ({exc.strerror or exc})") from None
    if len(raw) > limit:
        raise ConfigError(f"{shown} is too large ({limit} bytes at most)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{shown} is not UTF-8 text") from None


def _set_password_hint(path: Path) -> str:
    config = path.parent / DEFAULT_PATH.name
    where = "" if config == DEFAULT_PATH else f" --config {config}"
    return f"run `sudo streamer set-password{where}`"


def load_password_file(path: Path) -> str:
    """The stored hash the status page checks logins against."""
    hint = _set_password_hint(path)
    text = _read_private(path, "status page password file", f"no password set: {hint}")
    stored = text.removesuffix("\n")
    try:
        _parse(stored)
    except ValueError:
        raise ConfigError(
            f"status page password file {path} is malformed "
            f"(not a hash written by `streamer set-password`): {hint} again"
        ) from None
    logsetup.add_secret(stored)
    return stored


def resolve_owner(owner: str | None) -> str | None:
    """Who should own the password file: ``owner``, else the service user when it exists.

    ``None`` leaves the file to whoever writes it. Only root can give a file away.
    """
    if owner is None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return None
        return SERVICE_USER
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise ConfigError(f"--owner {owner}: no such user on this machine") from None
    if os.geteuid() != 0 and uid != os.geteuid():
        raise ConfigError(f"--owner {owner}: only root can give the file to another user")
    return owner


def write_password_file(path: Path, stored: str, owner: str | None) -> None:
    """Replace the file atomically; it is mode 600 from its creation, never briefly wider.

    ``owner`` (a user name, when root) gets the file so the service can read it;
    ``None`` leaves it to the writer.
    """
    try:
        _parse(stored)
    except ValueError:
        raise ConfigError("refusing to write a malformed password hash") from None
    ids = None
    if owner is not None:
        try:
            user = pwd.getpwnam(owner)
        except KeyError:
            raise ConfigError(f"--owner {owner}: no such user on this machine") from None
        ids = (user.pw_uid, user.pw_gid)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:
        raise ConfigError(f"cannot write {path}: directory {path.parent} does not exist") from None
    except PermissionError:
        raise ConfigError(
            f"cannot write {path} (permission denied); run it as root: sudo streamer set-password"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)  # exact, whatever the umask
            if ids is not None:
                os.fchown(file.fileno(), *ids)
            file.write(stored.encode("ascii") + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc})") from None
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable: a Pi loses power rather than shutting down."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


MIN_TOKEN = 16


def load_token_file(path: Path) -> str:
    """The bearer token Prometheus must send for /metrics (registered as a secret)."""
    shown = f"metrics token file {path}"
    text = _read_private(
        path,
        "metrics token file",
        f"create it: (umask 077; openssl rand -hex 32 > {path}); sudo chown {SERVICE_USER} {path}",
    )
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ConfigError(f"{shown} is empty; it must hold the token on one line")
    if any(ch.isspace() for ch in text):
        raise ConfigError(f"{shown} must hold only the token: one line without spaces")
    if not all("!" <= ch <= "~" for ch in text):
        raise ConfigError(f"{shown} holds non-printable characters; use printable ASCII")
    if len(text) < MIN_TOKEN:
        raise ConfigError(
            f"{shown} holds a token too short (at least {MIN_TOKEN} characters); "
            "make one with: openssl rand -hex 32"
        )
    logsetup.add_secret(text)
    return text


def token_matches(header_value: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header is ``Bearer <token>`` (scheme in any case)."""
    if not header_value:
        return False
    scheme, _, given = header_value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    # compare_digest on bytes: a str with non-ASCII characters would raise instead
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8"))


# --- sessions and the limiter -------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    created: float
    seen: float


class Sessions:
    """Login sessions held in memory (a restart logs everyone out, which is fine).

    A session ends after ``idle`` seconds unused (7 days) or ``lifetime`` after
    login whatever its use (30 days). At most ``limit`` live at once: a new one
    pushes out the least recently used. Tokens are kept only as SHA-256
    digests, so a lookup's timing says nothing about a valid token.
    """

    def __init__(
        self, *, idle: float = 7 * 86400, lifetime: float = 30 * 86400, limit: int = 64
    ) -> None:
        self.idle, self.lifetime, self.limit = idle, lifetime, limit
        self._live: OrderedDict[bytes, _Session] = OrderedDict()  # least recently used first

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "replace")).digest()

    def _expired(self, session: _Session, now: float) -> bool:
        return now - session.seen > self.idle or now - session.created > self.lifetime

    def create(self, now: float) -> str:
        """A new session's cookie value."""
        for key in [k for k, s in self._live.items() if self._expired(s, now)]:
            del self._live[key]
        while len(self._live) >= self.limit:
            self._live.popitem(last=False)
        token = secrets.token_urlsafe(32)
        self._live[self._key(token)] = _Session(now, now)
        return token

    def valid(self, token: str | None, now: float) -> bool:
        """Whether ``token`` is a live session; using it keeps it from going idle."""
        if not token:
            return False
        key = self._key(token)
        session = self._live.get(key)
        if session is None:
            return False
        if self._expired(session, now):
            del self._live[key]
            return False
        session.seen = now
        self._live.move_to_end(key)
        return True

    def revoke(self, token: str | None) -> None:
        """Log out: the token is no longer valid (unknown tokens are ignored)."""
        if token:
            self._live.pop(self._key(token), None)

    def __len__(self) -> int:
        return len(self._live)


@dataclass(slots=True)
class _Failures:
    count: int
    last: float
    until: float  # no attempt from this peer before then


def peer_key(address: str) -> str:
    """The unit a limit applies to: an IPv4 address, or an IPv6 /64 (one home's many addresses)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class LoginLimiter:
    """Slow down password guessing, per peer and all peers together.

    From one peer: ``free`` failures (5) come at no cost; from then on each
    failure makes it wait 1 s, 2 s, 4 s ... at most ``max_wait`` (5 min).
    A success clears the peer. All peers together: no more than
    ``global_limit`` failures (30) in ``window`` seconds (60), against guessing
    spread over many addresses; while that trips everyone waits, the owner too,
    for at most a minute. Memory is bounded: a peer idle for ``forget`` (1 h)
    is forgotten, and past ``max_peers`` the longest idle is dropped (the
    global limit still holds it).
    """

    def __init__(
        self,
        *,
        free: int = 5,
        max_wait: float = 300.0,
        global_limit: int = 30,
        window: float = 60.0,
        forget: float = 3600.0,
        max_peers: int = 1024,
    ) -> None:
        self.free, self.max_wait = free, max_wait
        self.global_limit, self.window = global_limit, window
        self.forget, self.max_peers = forget, max_peers
        self._peers: OrderedDict[str, _Failures] = OrderedDict()  # least recent failure first
        self._recent: deque[float] = deque(maxlen=global_limit)  # the last failures, any peer

    def _prune(self, now: float) -> None:
        while self._peers:
            key, first = next(iter(self._peers.items()))
            if now - first.last <= self.forget:
                break
            del self._peers[key]

    def retry_after(self, peer: str, now: float) -> float:
        """Seconds before ``peer`` may try a password (0: now). Check before verifying."""
        self._prune(now)
        wait = 0.0
        entry = self._peers.get(peer_key(peer))
        if entry is not None:
            wait = max(wait, entry.until - now)
        return max(wait, self._global_wait(now), 0.0)

    def failed(self, peer: str, now: float) -> None:
        """A wrong password from ``peer``."""
        self._prune(now)
        key = peer_key(peer)
        entry = self._peers.pop(key, None) or _Failures(0, now, now)
        entry.count += 1
        entry.last = now
        if entry.count >= self.free:
            doublings = min(entry.count - self.free, 62)  # 2.0**1100 would overflow
            entry.until = now + min(2.0**doublings, self.max_wait)
            if entry.count == self.free:
                log.warning("status page: repeated wrong passwords", peer=key)
        self._peers[key] = entry
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        paused = self._global_wait(now) > 0
        self._recent.append(now)
        if not paused and self._global_wait(now) > 0:
            log.warning("status page: too many wrong passwords from all peers; logins paused")

    def _global_wait(self, now: float) -> float:
        if len(self._recent) < self.global_limit:
            return 0.0
        return max(self._recent[0] + self.window - now, 0.0)

    def succeeded(self, peer: str) -> None:
        """The right password from ``peer``: its count starts again."""
        self._peers.pop(peer_key(peer), None)

    def __len__(self) -> int:
        return len(self._peers)


# --- the command ------------------------------------------------------------------------------


def _read_new_password(use_stdin: bool) -> str:
    """One line from stdin (scripts), else typed twice at the terminal."""
    if use_stdin or not sys.stdin.isatty():
        line = sys.stdin.readline()
        if not line:
            raise ConfigError("no password on stdin; nothing was written")
        password = line.removesuffix("\n").removesuffix("\r")
        check_new_password(password)
        return password
    try:
        password = getpass.getpass("New status page password: ")
        check_new_password(password)
        again = getpass.getpass("Again: ")
    except EOFError:
        raise ConfigError("no password given; nothing was written") from None
    if again != password:
        raise ConfigError("the two passwords differ; nothing was written")
    return password


def set_password_command(config: Path | None, use_stdin: bool, owner: str | None) -> int:
    """``streamer set-password``: hash a new password into the file beside the config."""
    path = password_path(DEFAULT_PATH if config is None else config)
    chosen = resolve_owner(owner)  # before asking: a wrong --owner fails at once
    stored = hash_password(_read_new_password(use_stdin))
    write_password_file(path, stored, chosen)
    print(f"status page password written to {path} (mode 600, owner {chosen or _me()})")
    print(
        'to use it: set [status] address (e.g. address = "0.0.0.0") in '
        f"{DEFAULT_PATH if config is None else config}, then: sudo systemctl restart streamer"
    )
    return 0
