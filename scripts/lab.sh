#!/usr/bin/env bash
# Tandem's main job on built-in defaults: builds Tandem, then brings up a two-node lab
# cluster in network namespaces that protects a demo HTTP service behind a floating IP,
# and prints where to look. Tear it down with: target/release/tandem lab down
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release --quiet
exec target/release/tandem lab up "$@"
