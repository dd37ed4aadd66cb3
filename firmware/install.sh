#!/usr/bin/env bash
# Install streamer as a boot service on Raspberry Pi OS. From the repository:
#
#   sudo firmware/install.sh              install, enable, and start once the stream key is set
#   firmware/install.sh --dry-run         print every action, change nothing
#   DESTDIR=/path firmware/install.sh     write the files under /path only (building an image
#                                         or a package): apt, useradd, pip and systemctl are
#                                         printed, not run
#
# Running it again is safe, also after a step failed: the config and the stream
# key are never overwritten and the boot fragment is appended once; the package
# and the unit are updated. A first install writes the camera and microphone the
# board has into the config (streamer/detect.py; PROBE_ROOT=DIR looks under DIR).
set -euo pipefail

usage() {
    sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

dry_run=0
for arg in "$@"; do
    case "$arg" in
        -n | --dry-run) dry_run=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "install.sh: unknown argument: $arg" >&2
            usage >&2
            exit 2
            ;;
    esac
done

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname -- "$here")
destdir=${DESTDIR:-}
destdir=${destdir%/}

user=streamer
venv=/opt/streamer/venv
unit=/etc/systemd/system/streamer.service
conf_dir=/etc/streamer
config=$conf_dir/config.toml
key=$conf_dir/stream.key
home=/var/lib/streamer
fragment=$here/boot-config.txt
marker=$(head -n 1 "$fragment")
# python3-dev and gcc: pyalsaaudio builds from source where no wheel exists (arm64);
# fonts-dejavu-core: the text filter's monospaced font (the clock's digits keep their place).
apt_packages=(python3-venv python3-dev gcc libasound2 libasound2-dev ffmpeg fonts-dejavu-core)
# From the Raspberry Pi OS archive; the venv sees them through --system-site-packages.
pi_packages=(python3-picamera2 python3-lgpio)
groups=(video audio gpio)

say() { printf '%s\n' "$*"; }
warn() { printf 'install.sh: %s\n' "$*" >&2; }

# step WHAT [HINT]: what runs now; if it fails, the exit trap says so and that a re-run is safe.
step=
hint=
step() {
    step=$1
    hint=${2:-}
}
scratch=
on_exit() {
    local status=$?
    if [[ -n $scratch ]]; then rm -f -- "$scratch"; fi
    if ((status != 0)) && [[ -n $step ]]; then
        warn "FAILED while $step (exit status $status)."
        if [[ -n $hint ]]; then warn "$hint"; fi
        warn "The steps before it are done; $config and $key are kept if they exist."
        warn "Fix the problem above, then run install.sh again: every step is safe to repeat."
    fi
}
trap on_exit EXIT

# quote ARGS...: the command as one line a shell would read back (quotes only where needed).
quote() {
    local out=() arg
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
            out+=("$arg")
        else
            out+=("'${arg//\'/\'\\\'\'}'")
        fi
    done
    printf '%s' "${out[*]}"
}

# file_op CMD...: writes under DESTDIR (printed; not run with --dry-run).
file_op() {
    if ((dry_run)); then
        say "would run: $(quote "$@")"
    else
        say "+ $(quote "$@")"
        "$@"
    fi
}

# system_op CMD...: changes the running system (not run with --dry-run or DESTDIR).
system_op() {
    if ((dry_run)); then
        say "would run: $(quote "$@")"
    elif [[ -n $destdir ]]; then
        say "skip (DESTDIR): $(quote "$@")"
    else
        say "+ $(quote "$@")"
        "$@"
    fi
}

append_fragment() {
    # A blank line first, unless the file is new or empty.
    if [[ -s $1 ]]; then printf '\n' >>"$1"; fi
    cat -- "$fragment" >>"$1"
}

# Raspberry Pi OS offers python3-picamera2; a DESTDIR build targets a Pi image.
pi_os() {
    [[ -n $destdir ]] || apt-cache show python3-picamera2 >/dev/null 2>&1
}

if ((!dry_run)) && [[ -z $destdir ]] && ((EUID != 0)); then
    warn "run as root: sudo $0 (or --dry-run to see what it would do)"
    exit 1
fi
if ((dry_run)); then
    say "dry run: nothing is changed"
fi
if [[ -n $destdir ]]; then say "installing files under DESTDIR=$destdir"; fi

# --- Debian packages ---
step "installing the Debian packages (apt-get)" \
    "Check the network and the package sources (apt-get update); dpkg may need: dpkg --configure -a"
system_op apt-get update -q
packages=("${apt_packages[@]}")
extras=alsa,gpio
pi_camera=0
if pi_os; then
    packages+=("${pi_packages[@]}")
    extras=pi,alsa,gpio
    pi_camera=1
else
    warn "python3-picamera2 is not available (not Raspberry Pi OS?): installing without" \
        "the Pi camera backend (a first install picks a USB webcam: camera = \"v4l2\")"
fi
system_op env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${packages[@]}"

# --- service user ---
step "creating the service user $user and its groups"
if [[ -z $destdir ]] && getent passwd "$user" >/dev/null; then
    say "user $user exists"
else
    system_op useradd --system --user-group --home-dir "$home" --no-create-home \
        --shell /usr/sbin/nologin --comment "streamer service" "$user"
fi
for group in "${groups[@]}"; do
    if [[ -z $destdir ]] && ! getent group "$group" >/dev/null; then
        # The unit's SupplementaryGroups= fails the start if a group is missing.
        # (Raspberry Pi OS has gpio, and the udev rule that gives it /dev/gpiochip*.)
        warn "group $group does not exist: creating it (the unit lists it)"
        system_op groupadd --system "$group"
    fi
    system_op usermod --append --groups "$group" "$user"
done

# --- the program: a venv that also sees apt's picamera2 and libcamera ---
step "creating the venv $venv"
if [[ -z $destdir && -x $venv/bin/python && -x $venv/bin/pip ]]; then
    say "venv $venv exists"
else
    # Over a half-made venv too: it is completed, nothing else in it is lost.
    system_op python3 -m venv --system-site-packages "$venv"
fi
step "installing the program into $venv (pip)" \
    "pip needs the network (PyPI) and builds pyalsaaudio with gcc: its message above says which."
system_op "$venv/bin/pip" install --quiet "${repo}[${extras}]"

# --- files ---
step "installing the unit, the config and the key file"
file_op install -d -m 0755 "$destdir/etc/systemd/system"
file_op install -m 0644 "$repo/systemd/streamer.service" "$destdir$unit"

file_op install -d -m 0755 "$destdir$conf_dir"
# 0644: the config names the key file but holds no secret (keep the key out of the URL).
if [[ -e $destdir$config ]]; then
    say "keeping existing $destdir$config"
elif [[ -n $destdir && -z ${PROBE_ROOT:-} ]]; then
    say "camera and microphone: the defaults (DESTDIR: this machine is not the device)"
    file_op install -m 0644 "$here/config.toml" "$destdir$config"
else
    # The board's own camera and microphone, found by the system python3 from this checkout
    # (standard library only: it needs neither the venv nor the network).
    probe=(--root "${PROBE_ROOT:-/}")
    if ((!pi_camera)); then probe+=(--no-picamera2); fi
    scratch=$(mktemp)
    say "camera and microphone of this board, for $config (edit it to change them):"
    if PYTHONPATH=$repo python3 -m streamer.detect "${probe[@]}" \
        --template "$here/config.toml" --output "$scratch" && [[ -s $scratch ]]; then
        file_op install -m 0644 "$scratch" "$destdir$config"
    else
        warn "could not detect the camera and microphone: the defaults go into $config"
        file_op install -m 0644 "$here/config.toml" "$destdir$config"
    fi
fi

key_created=0
if [[ -e $destdir$key ]]; then
    say "keeping existing $destdir$key"
else
    # Empty placeholder, readable by the service user only.
    file_op install -m 0600 /dev/null "$destdir$key"
    key_created=1
fi
system_op chown "$user:$user" "$destdir$key"

step "adding the boot fragment"
boot=
if [[ -e $destdir/boot/firmware/config.txt ]]; then
    boot=/boot/firmware/config.txt
elif [[ -e $destdir/boot/config.txt ]]; then
    boot=/boot/config.txt # before Raspberry Pi OS bookworm
elif [[ -n $destdir ]]; then
    boot=/boot/firmware/config.txt
    file_op install -d -m 0755 "$destdir/boot/firmware"
else
    warn "no /boot/firmware/config.txt (not a Raspberry Pi?): boot fragment not added"
fi
boot_changed=0
if [[ -n $boot ]]; then
    if [[ -e $destdir$boot ]] && grep -qxF -- "$marker" "$destdir$boot"; then
        say "$destdir$boot already has the streamer fragment"
    else
        file_op append_fragment "$destdir$boot"
        boot_changed=1
    fi
fi

# --- service ---
step "enabling the service (systemctl)" "journalctl -u streamer -n 50 may say why."
system_op systemctl daemon-reload
key_set=0
if [[ -s $destdir$key ]] && grep -q '[^[:space:]]' "$destdir$key" 2>/dev/null; then
    key_set=1
fi
if ((key_set)); then
    if [[ -z $destdir ]] && systemctl is-active --quiet streamer 2>/dev/null; then
        system_op systemctl enable streamer
        system_op systemctl restart streamer # picks up the new package
    else
        system_op systemctl enable --now streamer
    fi
else
    system_op systemctl enable streamer
fi

step=
say ""
if ((dry_run)); then
    say "dry run: nothing was changed."
else
    say "streamer is installed."
fi
if ((!key_set)); then
    if ((key_created && !dry_run)); then say "Created an empty stream key file $key."; fi
    say "Next: put the stream key (only the key) in $key,"
    say "      set the server URL, camera, microphone and pins in $config,"
    say "      then: sudo systemctl start streamer"
fi
if ((boot_changed)); then say "Boot config $boot changed: reboot for the camera and pin settings."; fi
say "Logs:   journalctl -u streamer -f"
say "Status: http://127.0.0.1:8089/ on the device (JSON: /status)"
