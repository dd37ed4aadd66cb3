"""A booted Debian 12 in systemd-nspawn: the device that ``firmware/install.sh`` is tested on.

The base root file system (``debootstrap``) is built once and cached under
``STREAMER_IMAGE_CACHE`` (default ``/var/cache/streamer-image``); every run
boots its own copy (an overlay on the base, or ``cp -a`` where overlays are
not allowed) in ``CACHE/runs/``, removed at the end, so runs never see each
other's changes.

Found working on hosts whose PID 1 is not systemd (containers, CI runners):
``--register=no --keep-unit`` (no machined, no D-Bus on the host), commands
run inside with ``nsenter`` into the container's PID 1 (``machinectl`` and
``systemd-run -M`` need machined). The host network is shared, so 127.0.0.1
inside is the host's loopback: the test's nginx-rtmp is reachable there.

Nothing here names a package host: the Debian mirror is the one the host's
apt uses, and pip inside sees the host's pip configuration and CAs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SUITE = "bookworm"  # Debian 12, what Raspberry Pi OS is built on
PACKAGES = ("systemd", "dbus", "python3", "python3-venv", "ca-certificates")
CACHE = Path(os.environ.get("STREAMER_IMAGE_CACHE", "/var/cache/streamer-image"))
MAX_AGE_DAYS = 30  # an older base is built again (its systemd and Python move with point releases)
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REBOOT_EXIT = 133  # systemd-nspawn's exit status when the container asked for a reboot


# Seconds each measured step took, in order; printed at the end of the run (conftest.py).
TIMES: dict[str, float] = {}


def measured(name: str, seconds: float) -> float:
    TIMES[name] = seconds
    say(f"{name}: {seconds:.1f} s")
    return seconds


class Unavailable(Exception):
    """This machine cannot run the image test; the message says why (the test is skipped)."""


def say(text: str) -> None:
    """A progress line, shown as it happens (``make test-image`` runs pytest with -s)."""
    print(f"[image] {text}", flush=True)


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


# --- the host: Debian mirror, pip configuration, CAs ---


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]


def _one_line_sources(text: str) -> Iterator[tuple[str, dict[str, str], list[str]]]:
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "deb":
            continue
        options: dict[str, str] = {}
        if words[1].startswith("["):  # deb [signed-by=... arch=...] URI SUITE COMPONENTS
            end = next(i for i, w in enumerate(words) if w.endswith("]"))
            opts = " ".join(words[1 : end + 1]).strip("[]").split()
            options = dict(o.partition("=")[::2] for o in opts)
            words = [words[0], *words[end + 1 :]]
        if len(words) >= 3:
            yield words[1], options, words[2:]


def _deb822_sources(text: str) -> Iterator[tuple[str, dict[str, str], list[str]]]:
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line.startswith(("#", " ", "\t")) or ":" not in line:
                continue  # comments, and continuation lines (an inline Signed-By key)
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        options = {"signed-by": fields.get("signed-by", "")}
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                yield uri, options, [suite, *fields.get("components", "").split()]


def debian_sources(etc: Path = Path("/etc/apt")) -> list[AptSource]:
    """The host's apt entries for Debian 12 (bookworm, -updates, -security), in its order.

    Entries signed by another key than Debian's own (a vendor's repository
    that happens to name its suite bookworm) are left out.
    """
    found: list[AptSource] = []
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    parsed = [(f, _one_line_sources) for f in files]
    parsed += [(f, _deb822_sources) for f in sorted((etc / "sources.list.d").glob("*.sources"))]
    for path, parse in parsed:
        if not path.is_file():
            continue
        for uri, options, (suite, *components) in parse(path.read_text(errors="replace")):
            signed_by = options.get("signed-by", "")
            if signed_by and "debian-archive-keyring" not in signed_by:
                continue
            if suite == SUITE or suite.startswith(SUITE + "-"):
                source = AptSource(uri.rstrip("/"), suite, tuple(components) or ("main",))
                if source not in found:
                    found.append(source)
    return found


def debian_mirror(sources: Sequence[AptSource]) -> str:
    """``STREAMER_IMAGE_MIRROR``, else the host's mirror for bookworm; reachable, or Unavailable."""
    mirror = os.environ.get("STREAMER_IMAGE_MIRROR", "").rstrip("/")
    if not mirror:
        mirror = next((s.uri for s in sources if s.suite == SUITE), "")
    if not mirror:
        raise Unavailable(
            f"no Debian {SUITE} mirror in /etc/apt/sources.list* (set STREAMER_IMAGE_MIRROR)"
        )
    release = f"{mirror}/dists/{SUITE}/Release"
    try:
        with urllib.request.urlopen(release, timeout=15) as answer:
            answer.read(1)
    except OSError as exc:
        raise Unavailable(f"the Debian mirror does not answer ({release}: {exc})") from exc
    return mirror


@dataclass
class PipSetup:
    """What pip inside needs to find packages as the host's pip does."""

    files: list[Path]  # config files, copied to the same paths (user files of root: as root)
    env: dict[str, str]  # PIP_* variables, passed to every command run inside
    copy: list[Path]  # files the config names (constraints...): copied where the image lacks them
    bind: list[Path]  # local package directories it names: bound read-only at the same paths


def host_pip_setup() -> PipSetup:
    """Read the host's pip configuration (``pip config debug``: files, values, PIP_* variables)."""
    setup = PipSetup(files=[], env={}, copy=[], bind=[])
    setup.env = {k: v for k, v in os.environ.items() if k.startswith("PIP_")}
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "debug"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    values: list[tuple[str, str]] = [(k.lower(), v) for k, v in setup.env.items()]
    variant = ""
    for line in done.stdout.splitlines():
        if re.match(r"^\S+:$", line):
            variant = line[:-1]
            continue
        found = re.match(r"^  (/\S+), exists: True$", line)
        if found and variant in ("global", "user"):
            setup.files.append(Path(found.group(1)))
            continue
        setting = re.match(r"^    ([\w.:-]+): (.*)$", line)
        if setting:
            values.append((setting.group(1).lower(), setting.group(2)))
    for key, value in values:
        for word in value.strip("'\"").split():
            path = Path(word.removeprefix("file://"))
            if not path.is_absolute() or not path.exists():
                continue
            if path.is_file():
                setup.copy.append(path)
            else:
                # An index's pages link to files beside it (../../files/...): bind its parent.
                index = key.replace("_", "-").endswith("index-url")
                setup.bind.append(path.parent if index else path)
    setup.bind = sorted(set(setup.bind))
    setup.copy = sorted(set(setup.copy))
    return setup


def extra_ca_certificates() -> list[Path]:
    """The CAs the host added to its trust store (``update-ca-certificates`` reads them)."""
    return sorted(Path("/usr/local/share/ca-certificates").rglob("*.crt"))


# --- the base root file system (cached) ---


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _no_mounts_under(path: Path) -> bool:
    prefix = str(path.resolve()) + "/"
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    return not any((line.split()[4] + "/").startswith(prefix) for line in mounts)


def remove_tree(path: Path) -> None:
    """rm -rf, refusing to descend into anything still mounted (it could be a bind of real data)."""
    if not path.exists():
        return
    if not _no_mounts_under(path):
        raise RuntimeError(f"{path} still has something mounted below it: not removing it")
    shutil.rmtree(path)


@dataclass(frozen=True)
class Base:
    path: Path
    cached: bool
    build_seconds: float  # what debootstrap took (this run, or when the cached copy was built)


def base_rootfs(mirror: str, timeout: float = 1200) -> Base:
    """The Debian root file system every run copies: from the cache, or built now."""
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()
    root = CACHE / f"{SUITE}-{arch}"
    stamp = CACHE / f"{SUITE}-{arch}.json"
    wanted = {"suite": SUITE, "arch": arch, "packages": sorted(PACKAGES)}
    CACHE.mkdir(parents=True, exist_ok=True)
    with locked(CACHE / ".lock"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            built = json.loads(stamp.read_text())
            age_days = (time.time() - float(built.pop("built"))) / 86400
            seconds = float(built.pop("seconds"))
            if built == wanted and age_days < MAX_AGE_DAYS and (root / "sbin/init").exists():
                say(f"base root file system: cached {root} ({age_days:.1f} days old)")
                return Base(root, cached=True, build_seconds=seconds)
        say(f"base root file system: debootstrap {SUITE} into {root} (takes minutes)")
        partial = CACHE / f"{SUITE}-{arch}.partial"
        stamp.unlink(missing_ok=True)
        remove_tree(partial)
        remove_tree(root)
        start = time.monotonic()
        command = ["debootstrap", f"--include={','.join(PACKAGES)}", SUITE, str(partial), mirror]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"debootstrap did not finish within {timeout:.0f} s", pytrace=False)
        if done.returncode != 0:
            log = partial / "debootstrap" / "debootstrap.log"
            details = log.read_text(errors="replace") if log.exists() else done.stderr
            pytest.fail(
                f"debootstrap failed (exit {done.returncode}):\n{tail(details)}", pytrace=False
            )
        seconds = time.monotonic() - start
        partial.rename(root)
        stamp.write_text(json.dumps({**wanted, "built": time.time(), "seconds": seconds}) + "\n")
        return Base(root, cached=False, build_seconds=seconds)


# --- one run: a copy of the base, booted ---


@dataclass
class Result:
    returncode: int
    output: str  # stdout and stderr, interleaved


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umount(path: Path) -> None:
    if os.path.ismount(path):
        done = subprocess.run(["umount", str(path)], capture_output=True, timeout=30, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "--lazy", str(path)], timeout=30, check=False)


def _ours(pid: int, rundir: Path) -> bool:
    """Is ``pid`` still a process of that run, not a reused PID?

    Its command line names the run directory (nspawn, nginx), or its mounts
    do (the container's init).
    """
    for name in ("cmdline", "mountinfo"):
        with contextlib.suppress(OSError):
            if str(rundir) in Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace"):
                return True
    return False


def _kill_recorded(rundir: Path, pidfile: Path, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text())
        if _ours(pid, rundir):
            os.kill(pid, sig)


def remove_stale_runs() -> None:
    """Clean up after earlier test processes that were killed before they could.

    Their container (its init first: every process inside goes with it, then
    nspawn), their nginx-rtmp and its files, their run directory.
    """
    runs = CACHE / "runs"
    for rundir in sorted(runs.glob("*")) if runs.is_dir() else []:
        with contextlib.suppress(OSError, ValueError):
            if _pid_alive(int((rundir / "owner").read_text())):
                continue  # a test running now
        say(f"cleaning up after a killed run: {rundir}")
        _kill_recorded(rundir, rundir / "leader.pid")
        _kill_recorded(rundir, rundir / "nspawn.pid")
        with contextlib.suppress(OSError):
            server = Path((rundir / "nginx.dir").read_text())
            _kill_recorded(server, server / "nginx.pid", signal.SIGQUIT)
            if server.name.startswith("streamer-rtmp-"):
                time.sleep(1)
                shutil.rmtree(server, ignore_errors=True)
        time.sleep(1)
        _umount(rundir / "root")
        remove_tree(rundir)


class Container:
    """A copy of ``base`` under ``rundir``, booted with ``systemd-nspawn -b`` on the host network.

    ``binds`` are host directories seen read-only at the same path inside;
    ``overlays`` (host directory, path inside) are writable views whose
    changes stay in the run directory (the host directory is never written).
    """

    def __init__(
        self,
        base: Path,
        rundir: Path,
        machine: str,
        binds: Sequence[Path] = (),
        overlays: Sequence[tuple[Path, str]] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.base, self.rundir, self.machine = base, rundir, machine
        self.root = rundir / "root"
        self.binds, self.overlays = list(binds), list(overlays)
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.boots = 0

    # --- the file system ---

    def create(self) -> str:
        """Make the run's copy of the base; returns how (``overlay`` or ``copy``)."""
        self.rundir.mkdir(parents=True)
        (self.rundir / "owner").write_text(str(os.getpid()))
        self.root.mkdir()
        upper, work = self.rundir / "upper", self.rundir / "work"
        upper.mkdir()
        work.mkdir()
        options = f"lowerdir={self.base},upperdir={upper},workdir={work}"
        done = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.root)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        how = "overlay"
        if done.returncode != 0:
            subprocess.run(["cp", "-a", f"{self.base}/.", str(self.root)], check=True, timeout=600)
            how = "copy"
        for path in [*self.binds, *(Path(inside) for _, inside in self.overlays)]:
            self.path(path).mkdir(parents=True, exist_ok=True)
        return how

    def path(self, inside: str | Path) -> Path:
        """The host path of a file inside the container."""
        return self.root / str(inside).lstrip("/")

    def copy_in(self, host: Path, inside: str | Path | None = None) -> None:
        target = self.path(inside or host)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host, target)

    # --- running ---

    @property
    def console(self) -> Path:
        return self.rundir / f"console-{self.boots}.log"

    def console_tail(self, lines: int = 25) -> str:
        if not self.console.exists():
            return ""
        return tail(self.console.read_text(errors="replace"), lines)

    def probe(self) -> None:
        """Can systemd-nspawn start a container here at all? If not: Unavailable, with its words."""
        try:
            done = subprocess.run(
                [*self._nspawn_command(boot=False), "/bin/true"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise Unavailable("systemd-nspawn cannot start a container here (no answer)") from exc
        if done.returncode != 0:
            raise Unavailable(f"systemd-nspawn cannot start a container here: {tail(done.stderr)}")

    def _nspawn_command(self, boot: bool) -> list[str]:
        command = ["systemd-nspawn", "--quiet", f"--directory={self.root}"]
        command += [f"--machine={self.machine}", "--register=no", "--keep-unit"]
        command += ["--link-journal=no"]  # the container's journal stays inside (persistent)
        command += [f"--bind-ro={path}" for path in self.binds]
        for number, (host, inside) in enumerate(self.overlays):
            upper = self.rundir / f"overlay-{number}"
            upper.mkdir(exist_ok=True)
            command.append(f"--overlay={host}:{upper}:{inside}")
        if boot:
            command += ["--boot", "--console=read-only"]
        return command

    def boot(self, timeout: float = 120) -> float:
        """Boot and wait until systemd says running (or degraded); returns the seconds it took."""
        assert self.proc is None, "already booted"
        self.boots += 1
        start = time.monotonic()
        with self.console.open("wb") as console:
            self.proc = subprocess.Popen(
                self._nspawn_command(boot=True),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.rundir / "nspawn.pid").write_text(str(self.proc.pid))
        end = start + timeout
        self.leader = 0
        while not self.leader:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"systemd-nspawn exited with {self.proc.returncode} while booting:\n"
                    f"{self.console_tail()}",
                    pytrace=False,
                )
            if time.monotonic() > end:
                pytest.fail(f"no container init within {timeout:.0f} s", pytrace=False)
            self.leader = self._find_leader(self.proc.pid)
            time.sleep(0.1)
        (self.rundir / "leader.pid").write_text(str(self.leader))
        state = ""
        while time.monotonic() < end:
            left = max(1.0, end - time.monotonic())
            done = self.run("systemctl", "is-system-running", "--wait", timeout=left, check=False)
            state = done.output.strip()
            if state in ("running", "degraded"):
                if state == "degraded":
                    failed = self.run("systemctl", "--failed", "--no-legend", check=False)
                    say(f"booted degraded; failed units: {failed.output.strip()}")
                return time.monotonic() - start
            time.sleep(0.5)
        pytest.fail(
            f"the container did not finish booting within {timeout:.0f} s "
            f"(systemctl is-system-running: {state!r}):\n{self.console_tail()}",
            pytrace=False,
        )

    @staticmethod
    def _find_leader(nspawn: int) -> int:
        """The container's PID 1 as the host sees it: nspawn's child that is PID 1 inside."""
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                fields = dict(
                    line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
                )
                ns_pids = fields.get("NSpid", "").split()
                if int(fields["PPid"]) == nspawn and len(ns_pids) > 1 and ns_pids[-1] == "1":
                    return int(status.parent.name)
        return 0

    def run(
        self,
        *command: str,
        timeout: float = 60,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> Result:
        """Run a command inside (all its namespaces, a clean environment) and wait for it."""
        assert self.leader, "not booted"
        variables = {"PATH": PATH, "HOME": "/root", "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0"}
        variables |= {"SYSTEMD_PAGER": "", **self.env, **(env or {})}
        argv = ["nsenter", f"--target={self.leader}", "--all", "--root", "--wd", "--"]
        argv += ["env", "-i", *(f"{k}={v}" for k, v in variables.items()), *command]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # killing the group kills the command inside too
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            out, _ = proc.communicate()
            pytest.fail(
                f"`{' '.join(command)}` inside did not finish within {timeout:.0f} s:\n"
                f"{tail(out.decode(errors='replace'))}",
                pytrace=False,
            )
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM, pytest's timeout): nothing may run on. Left
            # alone, the shutdown's SIGSTOP to every process would also stop nsenter for good.
            self._kill(proc)
            proc.communicate()
            raise
        result = Result(proc.returncode, out.decode(errors="replace"))
        if check and result.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` inside exited with {result.returncode}:\n"
                f"{tail(result.output)}",
                pytrace=False,
            )
        return result

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def wait_exit(self, timeout: float) -> int:
        """Wait for systemd-nspawn to end (the container shut down); returns its exit status."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the container did not shut down within {timeout:.0f} s:\n{self.console_tail()}",
                pytrace=False,
            )
        self.proc, self.leader = None, 0
        return code

    def reboot(self, timeout: float = 60) -> None:
        """``systemctl reboot`` inside; nspawn exits with 133, and the same tree boots again."""
        # The command may be cut off as the container goes down: its status says nothing.
        with contextlib.suppress(pytest.fail.Exception):
            self.run("systemctl", "reboot", timeout=timeout, check=False)
        code = self.wait_exit(timeout)
        if code != REBOOT_EXIT:
            pytest.fail(
                f"systemd-nspawn exited with {code} after `systemctl reboot`, not {REBOOT_EXIT}:\n"
                f"{self.console_tail()}",
                pytrace=False,
            )

    def stop(self, timeout: float = 20) -> None:
        """Power off (cleanly if it answers, else killed). Never fails: it runs in cleanups."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None and self.leader:
            with contextlib.suppress(Exception, pytest.fail.Exception):
                self.run("systemctl", "poweroff", "--no-block", timeout=10, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        if proc.poll() is None:
            if self.leader:  # PID 1 of its namespace: every process inside goes with it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        self.proc, self.leader = None, 0

    def destroy(self) -> None:
        """Stop it and remove the run directory with everything the run changed."""
        self.stop()
        _umount(self.root)
        remove_tree(self.rundir)
