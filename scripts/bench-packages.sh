#!/bin/bash
# Install the Debian packages a benchmark's peer or profiler needs, only
# those missing (root, apt). Benchmarks call it through their make target
# so that `make test` never needs them. Usage: scripts/bench-packages.sh PKG...
set -u
missing=()
for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "bench: installing ${missing[*]} (apt-get)"
# tshark asks whether non-root users may capture: no.
echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
    || { echo "bench: could not install ${missing[*]} (needs root and apt)" >&2; exit 1; }
