#!/usr/bin/env bash
# Installs what Tandem's lab and tests need on Debian 12, idempotently:
# Debian packages, and a Rust toolchain if none is on the PATH.
set -euo pipefail

packages=(iproute2 nftables curl ca-certificates gcc libc6-dev pkg-config keepalived procps prometheus qemu-utils libnbd-bin nbdkit)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# keepalived and prometheus are only run by the tests and the benchmark; never let
# their services run on the host.
if command -v systemctl >/dev/null 2>&1; then
    for unit in keepalived prometheus prometheus-node-exporter; do
        systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "deps: installing the Rust toolchain (rustup, stable)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    . "$HOME/.cargo/env"
fi
