"""The status page's password, sessions, login limiter and metrics token (streamer.auth)."""

from __future__ import annotations

import io
import os
import pwd
import stat
import time
from pathlib import Path

import pytest

from streamer import auth
from streamer.__main__ import main
from streamer.auth import (
    LoginLimiter,
    Sessions,
    hash_password,
    load_password_file,
    load_token_file,
    password_path,
    token_matches,
    verify_password,
    write_password_file,
)
from streamer.exc import ConfigError

PASSWORD = "correct horse battery"
FAST = {"n": 2**4, "r": 1, "p": 1}  # the format and logic, without the cost
TOKEN = "f3a9c1d27b6e4058a1c2"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def stored() -> str:
    """One hash with the real parameters, shared: the cost is paid once."""
    return hash_password(PASSWORD)


# --- hashes -----------------------------------------------------------------------------------


def test_real_parameters_round_trip_and_take_a_bounded_time(stored: str) -> None:
    assert stored.startswith(f"scrypt${2**14}$8$1$")
    start = time.perf_counter()
    assert verify_password(PASSWORD, stored)
    assert time.perf_counter() - start < 2.0  # ~0.06 s here; a Pi 4 is a few times slower
    assert not verify_password(PASSWORD + "!", stored)


def test_the_stored_text_is_one_line_without_the_password(stored: str) -> None:
    assert PASSWORD not in stored
    assert "\n" not in stored
    _, n, r, p, salt, digest = stored.split("$")
    assert (n, r, p) == ("16384", "8", "1")
    assert len(auth._unb64(salt)) == 16
    assert len(auth._unb64(digest)) == 32


def test_two_hashes_of_one_password_differ_and_both_verify() -> None:
    one, two = hash_password(PASSWORD, **FAST), hash_password(PASSWORD, **FAST)
    assert one != two
    assert one.split("$")[4] != two.split("$")[4]  # the salt
    assert verify_password(PASSWORD, one) and verify_password(PASSWORD, two)
    assert not verify_password("Correct horse battery", one)
    assert not verify_password("", one)


def test_composed_and_decomposed_forms_are_one_password() -> None:
    stored = hash_password("caf\u00e9-password", **FAST)
    assert verify_password("cafe\u0301-password", stored)


@pytest.mark.parametrize("password", ["", "short", "1234567"])
def test_short_passwords_are_refused_when_set(password: str) -> None:
    with pytest.raises(ConfigError, match="at least 8 characters"):
        hash_password(password)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        PASSWORD,
        "scrypt$16384$8$1$c2FsdA",
        "bcrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$x$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$1048576$8$1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16384$8$1$not*base64$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "scrypt$16384$8$1$AAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_malformed_stored_values_raise_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="malformed") as caught:
        verify_password(PASSWORD, bad)
    assert PASSWORD not in caught.value.message


# --- the password file ------------------------------------------------------------------------


def test_password_path_is_beside_the_config() -> None:
    path = password_path(Path("/etc/streamer/config.toml"))
    assert path == Path("/etc/streamer/status-password")


def test_written_file_is_0600_even_with_an_open_umask(tmp_path: Path) -> None:
    path = tmp_path / "status-password"
    stored = hash_password(PASSWORD, **FAST)
    old = os.umask(0)
    try:
        write_password_file(path, stored, None)
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert path.read_text() == stored + "\n"
    assert load_password_file(path) == stored
    assert [p.name for p in tmp_path.iterdir()] == ["status-password"]  # no temp file left


def test_rewriting_replaces_the_file_and_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "status-password"
    write_password_file(path, hash_password("first-password", **FAST), None)
    write_password_file(path, hash_password(PASSWORD, **FAST), None)
    assert mode(path) == 0o600
    assert verify_password(PASSWORD, load_password_file(path))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_root_gives_the_file_to_the_owner(tmp_path: Path) -> None:
    path = tmp_path / "status-password"
    write_password_file(path, hash_password(PASSWORD, **FAST), "nobody")
    assert os.stat(path).st_uid == pwd.getpwnam("nobody").pw_uid
    assert mode(path) == 0o600


def test_an_unknown_owner_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "status-password"
    with pytest.raises(ConfigError, match="no-such-user-here: no such user"):
        write_password_file(path, hash_password(PASSWORD, **FAST), "no-such-user-here")
    assert not path.exists()


def test_a_malformed_hash_is_never_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="malformed"):
        write_password_file(tmp_path / "status-password", PASSWORD, None)
    assert list(tmp_path.iterdir()) == []


def test_missing_password_file_says_how_to_set_one(tmp_path: Path) -> None:
    path = tmp_path / "status-password"
    with pytest.raises(ConfigError) as caught:
        load_password_file(path)
    message = caught.value.message
    assert "\n" not in message
    assert str(path) in message
    assert "no password set" in message
    assert f"streamer set-password --config {tmp_path / 'config.toml'}" in message


def test_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "status-password"
    stored = hash_password(PASSWORD, **FAST)
    write_password_file(path, stored, None)
    path.chmod(0o644)
    with pytest.raises(ConfigError) as caught:
        load_password_file(path)
    message = caught.value.message
    assert "\n" not in message
    assert "mode 0644" in message
    assert f"chmod 600 {path}" in message
    assert stored not in message and PASSWORD not in message


@pytest.mark.parametrize("content", [PASSWORD + "\n", "", "scrypt$16384$8$1$\n"])
def test_malformed_password_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "status-password"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        load_password_file(path)
    message = caught.value.message
    assert "\n" not in message
    assert str(path) in message and "malformed" in message
    assert "streamer set-password" in message
    assert PASSWORD not in message


def test_unreadable_password_file_names_the_service_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # root reads any file: make the open fail as it would for another user.
    path = tmp_path / "status-password"

    def denied(*_args: object, **_kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("streamer.auth.os.open", denied)
    with pytest.raises(ConfigError) as caught:
        load_password_file(path)
    message = caught.value.message
    assert "permission denied" in message
    assert "user streamer" in message and f"chown streamer {path}" in message


# --- the metrics token ------------------------------------------------------------------------


def token_file(tmp_path: Path, content: str, file_mode: int = 0o600) -> Path:
    path = tmp_path / "metrics-token"
    path.write_text(content)
    path.chmod(file_mode)
    return path


def test_token_file_with_one_trailing_newline(tmp_path: Path) -> None:
    assert load_token_file(token_file(tmp_path, TOKEN + "\n")) == TOKEN
    assert load_token_file(token_file(tmp_path, TOKEN)) == TOKEN


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", "is empty"),
        ("\n", "is empty"),
        (f"{TOKEN} extra\n", "without spaces"),
        (f"{TOKEN}\n\n", "without spaces"),
        (f"{TOKEN}\x01\n", "non-printable"),
        ("short-token\n", "too short"),
    ],
)
def test_bad_token_files_are_refused(tmp_path: Path, content: str, words: str) -> None:
    path = token_file(tmp_path, content)
    with pytest.raises(ConfigError, match=words) as caught:
        load_token_file(path)
    assert str(path) in caught.value.message
    assert "\n" not in caught.value.message


def test_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = token_file(tmp_path, TOKEN + "\n", 0o644)
    with pytest.raises(ConfigError) as caught:
        load_token_file(path)
    assert f"chmod 600 {path}" in caught.value.message
    assert TOKEN not in caught.value.message


def test_missing_token_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics-token"
    with pytest.raises(ConfigError, match="does not exist") as caught:
        load_token_file(path)
    assert f"openssl rand -hex 32 > {path}" in caught.value.message


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),
        (f"BEARER  {TOKEN} ", True),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {TOKEN[:-1]}", False),
        ("Bearer ", False),
        (f"Basic {TOKEN}", False),
        (TOKEN, False),
        (f"Bearer {TOKEN[:-1]}\u00e9", False),
        ("", False),
        (None, False),
    ],
)
def test_bearer_header(header: str | None, ok: bool) -> None:
    assert token_matches(header, TOKEN) is ok


# --- sessions ---------------------------------------------------------------------------------

DAY = 86400.0


def test_session_lives_while_used_and_expires_when_idle() -> None:
    sessions = Sessions()
    token = sessions.create(now=0.0)
    assert len(token) >= 40
    assert sessions.valid(token, now=6 * DAY)
    assert sessions.valid(token, now=12 * DAY)  # use slides the idle limit on
    assert not sessions.valid(token, now=19.5 * DAY)  # 7.5 days unused
    assert not sessions.valid(token, now=12 * DAY)  # gone for good
    assert len(sessions) == 0


def test_session_ends_at_its_absolute_age_however_used() -> None:
    sessions = Sessions()
    token = sessions.create(now=0.0)
    for day in range(1, 30):
        assert sessions.valid(token, now=day * DAY)
    assert not sessions.valid(token, now=30 * DAY + 1)


def test_revoke_and_unknown_tokens() -> None:
    sessions = Sessions()
    one, two = sessions.create(0.0), sessions.create(0.0)
    assert one != two
    sessions.revoke(one)
    assert not sessions.valid(one, 1.0)
    assert sessions.valid(two, 1.0)
    assert not sessions.valid(None, 1.0)
    assert not sessions.valid("", 1.0)
    assert not sessions.valid("made-up", 1.0)
    sessions.revoke("made-up")
    sessions.revoke(None)


def test_session_count_is_capped_dropping_the_least_recently_used() -> None:
    sessions = Sessions(limit=64)
    first = sessions.create(0.0)
    second = sessions.create(1.0)
    others = [sessions.create(2.0 + i) for i in range(62)]
    assert sessions.valid(first, 100.0)  # first is now the most recently used
    newest = sessions.create(101.0)
    assert len(sessions) == 64
    assert not sessions.valid(second, 102.0)
    assert sessions.valid(first, 102.0)
    assert sessions.valid(newest, 102.0)
    assert all(sessions.valid(t, 102.0) for t in others)


# --- the login limiter ------------------------------------------------------------------------


def test_five_failures_then_doubling_waits_capped_at_five_minutes() -> None:
    limiter = LoginLimiter()
    now = 0.0
    for _ in range(4):
        limiter.failed("192.0.2.1", now)
        assert limiter.retry_after("192.0.2.1", now) == 0
    waits = []
    for _ in range(12):
        limiter.failed("192.0.2.1", now)
        wait = limiter.retry_after("192.0.2.1", now)
        waits.append(wait)
        assert limiter.retry_after("192.0.2.1", now + wait) == 0
        now += wait + 10  # > window/30: the global limit stays out of it
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert limiter.retry_after("192.0.2.2", now - 10) == 0  # another peer is not held


def test_success_clears_the_peer() -> None:
    limiter = LoginLimiter()
    for _ in range(6):
        limiter.failed("192.0.2.1", 0.0)
    assert limiter.retry_after("192.0.2.1", 0.0) == 2
    limiter.succeeded("192.0.2.1")
    assert limiter.retry_after("192.0.2.1", 0.0) == 0
    for _ in range(4):
        limiter.failed("192.0.2.1", 1.0)
    assert limiter.retry_after("192.0.2.1", 1.0) == 0


def test_global_limit_trips_for_failures_spread_over_many_peers() -> None:
    limiter = LoginLimiter()
    for i in range(29):
        limiter.failed(f"10.0.{i}.1", 10.0 + i)
    assert limiter.retry_after("10.9.9.9", 39.0) == 0
    limiter.failed("10.0.99.1", 39.0)  # the 30th within a minute
    assert limiter.retry_after("10.9.9.9", 39.0) == pytest.approx(31.0)  # until 10.0 + 60
    assert limiter.retry_after("10.9.9.9", 70.0) == 0  # the oldest left the window


def test_ipv6_peers_are_limited_by_their_64() -> None:
    limiter = LoginLimiter()
    for i in range(5):
        limiter.failed(f"2001:db8:1:2::{i + 1}", 0.0)
    assert limiter.retry_after("2001:db8:1:2::ffff", 0.0) == 1
    assert limiter.retry_after("2001:db8:1:3::1", 0.0) == 0
    limiter.failed("::ffff:192.0.2.7", 0.0)
    assert len(limiter) == 2 and "192.0.2.7" in limiter._peers


def test_limiter_memory_is_bounded() -> None:
    limiter = LoginLimiter(max_peers=100, global_limit=10**9)
    for i in range(1000):
        limiter.failed(f"10.{i // 256}.{i % 256}.1", float(i))
    assert len(limiter) == 100
    limiter.failed("192.0.2.1", 999.0 + 3601.0)
    assert len(limiter) == 1  # everyone idle for an hour is forgotten


def test_global_failure_record_is_bounded() -> None:
    limiter = LoginLimiter()
    for i in range(10_000):
        limiter.failed("192.0.2.1", float(i))
    assert len(limiter._recent) == 30


# --- streamer set-password --------------------------------------------------------------------


def test_set_password_from_stdin_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["set-password", "--config", str(config), "--stdin"]) == 0
    path = tmp_path / "status-password"
    assert mode(path) == 0o600
    assert verify_password(PASSWORD, load_password_file(path))
    out = capsys.readouterr().out
    assert str(path) in out
    assert "[status] address" in out and "systemctl restart streamer" in out
    assert PASSWORD not in out


def test_set_password_refuses_a_short_password_on_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["set-password", "--config", str(tmp_path / "config.toml")]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_interactive_mismatch_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter([PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    assert main(["set-password", "--config", str(tmp_path / "config.toml")]) == 2
    err = capsys.readouterr().err
    assert "the two passwords differ; nothing was written" in err
    assert len(err.strip().splitlines()) == 1
    assert PASSWORD not in err
    assert list(tmp_path.iterdir()) == []


def test_interactive_match_writes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr("getpass.getpass", lambda prompt="": PASSWORD)
    assert main(["set-password", "--config", str(tmp_path / "config.toml")]) == 0
    assert verify_password(PASSWORD, load_password_file(tmp_path / "status-password"))


def test_interactive_end_of_input_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def eof(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr("sys.stdin", _Terminal())
    monkeypatch.setattr("getpass.getpass", eof)
    assert main(["set-password", "--config", str(tmp_path / "config.toml")]) == 2
    assert "no password given" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
