#!/usr/bin/env bash
# Install the Debian packages streamer needs when they are missing, and those named as
# arguments (make test-image adds debootstrap and systemd-container).
# As root it installs them; otherwise it prints the command to run and fails.
set -euo pipefail
# nginx + rtmp: the test server; ffmpeg: benchmarks; libasound2-dev: pyalsaaudio builds;
# systemd (systemd-analyze) + shellcheck: the boot-service files are checked in tests.
# chromium: the status page is rendered headless in a test; openssl: the rtmps:// test CA;
# iproute2: a network namespace is the second host the status page is opened from;
# fonts-dejavu-core: the text filter's monospaced font.
packages=(nginx libnginx-mod-rtmp libnginx-mod-stream ffmpeg libasound2-dev systemd shellcheck
          chromium openssl iproute2 fonts-dejavu-core "$@")
# node + npm: node-media-server, a second RTMP server for the interop tests (tests/interop;
# Debian 12's nodejs 18 is new enough). A node from elsewhere (NodeSource) bundles npm and
# conflicts with Debian's npm package, so these two are needed only when the commands are.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    packages+=(nodejs npm)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
    echo "streamer needs these packages and this system has no apt-get: ${missing[*]}" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "streamer needs these Debian packages. Install them, then run make again:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "installing missing packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
