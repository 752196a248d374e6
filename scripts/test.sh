#!/usr/bin/env bash
# Installs what the tests need (Debian packages, idempotently) and runs the whole
# test suite: formatting, lints, unit tests, the seeded simulation, the lab tests in
# network namespaces (as root), the appliance image's QEMU boot tests (tests/image.rs
# builds the image once with image/build.sh), and a short failover benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

step() { printf '\n=== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

step "the .deb (scripts/deb.sh: installs cargo-deb into .tools/ if missing; tests/deb.rs needs it)"
./scripts/deb.sh

step "the proto-next build (every protocol one version up) for the rolling upgrade lab test"
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --features proto-next
mkdir -p "$target/proto-next"
cp "$target/debug/tandem" "$target/proto-next/tandem"
cargo build --quiet

step "cargo test (unit, simulation, lab)"
cargo test --quiet -- --test-threads 2

step "fuzz target builds and survives a short run"
./scripts/fuzz-smoke.sh

step "failover benchmark (short)"
cargo build --release --quiet
target/release/tandem lab bench failover --trials 3

step "mirror benchmark (short): unreplicated, sync and async peers, nbdkit, qemu-nbd, sync over a 1 Gbit/s link, CPU per GiB, QD1 latency, capped resync"
target/release/tandem bench mirror --size-mib 256 --resync-mib 64 --cap-mbit 400

echo
echo "all checks passed"
