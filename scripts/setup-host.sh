#!/bin/bash
# Idempotent host set-up for microseg: Debian packages, kernel headers for BCC,
# and the project's virtual environment. Safe to run again: every step first
# checks whether its result is already there and does nothing if it is.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
KREL="$(uname -r)"
export DEBIAN_FRONTEND=noninteractive

# What the product and its tests run: BCC's Python binding, netlink tools,
# the real clients the lab and end-to-end tests drive traffic with, and
# nftables, the baseline bench/policy.py compares the policy against;
# redis-server, which the Redis EVE sink's tests start on a socket of their
# own (tests/unit/test_eve_redis.py; the package's own service is not used);
# python3-cryptography, which decrypts QUIC Initial packets (protocols/quic.py;
# pyproject.toml's requirement, met through the system site packages).
PACKAGES=(python3-bpfcc python3-venv python3-pip iproute2 curl iputils-ping iperf3 ethtool procps nftables bind9-dnsutils openssl redis-server python3-cryptography)

say() { echo "setup: $*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: error: must run as root (installs Debian packages, links kernel headers, loads BPF)" >&2
    exit 1
fi

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        say "apt-get update"
        apt-get update -q >/dev/null
        apt_updated=1
    fi
    say "installing Debian packages: $*"
    apt-get install -y -q --no-install-recommends "$@" >/dev/null
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for p in "${PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi

# Kernel headers for BCC. A distro kernel has linux-headers-$(uname -r); a
# kernel without a package (these VMs run 6.18 on Debian 12) gets Debian's
# newest headers linked in: TC programs only use the stable uapi.
MODDIR="/lib/modules/$KREL"
# Done when the build tree has its generated headers and the sources (either
# in build/ for a distro package or in source/ for the split Debian layout).
headers_ok() {
    [ -d "$MODDIR/build/include/generated" ] &&
        { [ -e "$MODDIR/build/include/uapi/linux/bpf.h" ] || [ -e "$MODDIR/source/include/uapi/linux/bpf.h" ]; }
}
if ! headers_ok; then
    if apt-cache show "linux-headers-$KREL" >/dev/null 2>&1 || { apt_updated=0; apt-get update -q >/dev/null; apt_updated=1; apt-cache show "linux-headers-$KREL" >/dev/null 2>&1; }; then
        apt_install "linux-headers-$KREL"
    else
        arch="$(dpkg --print-architecture)"
        installed "linux-headers-$arch" || apt_install "linux-headers-$arch"
        hdr="$(ls -d /usr/src/linux-headers-*-"$arch" 2>/dev/null | sort -V | tail -1)"
        common="${hdr%-"$arch"}-common"
        if [ -z "$hdr" ] || [ ! -d "$common" ]; then
            echo "setup: error: no kernel headers for $KREL and no linux-headers-$arch fallback found under /usr/src" >&2
            exit 1
        fi
        mkdir -p "$MODDIR"
        ln -sfn "$hdr" "$MODDIR/build"
        ln -sfn "$common" "$MODDIR/source"
        say "linked $MODDIR/build -> $hdr (no headers package for $KREL)"
    fi
fi

# The virtual environment sees Debian's bcc through --system-site-packages,
# which needs Debian's interpreter, not whatever python3 is first on PATH.
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.microseg-installed"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    say "installing microseg (editable) with dev extras into $VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
    echo "$want" > "$stamp"
fi
say "ready"
