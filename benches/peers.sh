#!/usr/bin/env bash
# Installs the peers the `reel bench` comparisons start themselves: nginx (with thread pools,
# for `reel bench nginx`) and wrk (the closed-loop load of `reel bench nginx` and
# `reel bench migration`). Installs only what is missing; Debian/Ubuntu (apt-get), as root.
#
# Usage: benches/peers.sh
set -euo pipefail
missing=()
for tool in nginx wrk; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "peers.sh: nginx and wrk are installed"
    exit 0
fi
apt-get update
apt-get install -y "${missing[@]}"
