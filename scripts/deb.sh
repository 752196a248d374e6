#!/usr/bin/env bash
# Builds the .deb for a non-appliance Debian host with cargo-deb: the binary, the
# systemd unit (pkg/tandem.service), /etc/tandem/tandem.toml (from
# examples/tandem.toml, a conffile, mode 0600), /var/lib/tandem (tmpfiles.d and the
# unit's StateDirectory), bash/zsh/fish completions and man pages generated from the
# CLI (`tandem generate`). Prints the .deb's path last.
#
#   scripts/deb.sh [--profile release|dev] [--no-build] [--output DIR] [--fast]
#
# (--fast: quicker, larger compression; tests/deb.rs packages its own build so.)
#
# cargo-deb is installed into .tools/ in this clone if it is missing (its build
# directory too, removed afterwards). Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

CARGO_DEB_VERSION=3.8.0
profile=release
build=1
output=
fast=
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="$2"; shift 2 ;;
        --no-build) build=; shift ;;
        --output) output="$2"; shift 2 ;;
        --fast) fast=1; shift ;;
        *) echo "deb.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

tools="$PWD/.tools"
if [ ! -x "$tools/bin/cargo-deb" ]; then
    echo "deb: installing cargo-deb $CARGO_DEB_VERSION into .tools/" >&2
    CARGO_TARGET_DIR="$tools/build" cargo install cargo-deb --version "$CARGO_DEB_VERSION" \
        --locked --quiet --root "$tools"
    rm -rf "$tools/build"
fi

target="${CARGO_TARGET_DIR:-$PWD/target}"
case "$profile" in
    dev) out_dir="$target/debug" ;;
    *) out_dir="$target/$profile" ;;
esac
[ -z "$build" ] || cargo build --quiet --profile "$profile"
# Completions and man pages from this very binary, where the assets expect them
# (cargo-deb maps target/release/ to the profile's output directory).
rm -rf "$out_dir/generated"
"$out_dir/tandem" generate completions "$out_dir/generated/completions" >/dev/null
"$out_dir/tandem" generate man "$out_dir/generated/man" >/dev/null

args=(--no-build --profile "$profile")
[ -z "$output" ] || args+=(--output "$output")
[ -z "$fast" ] || args+=(--fast)
PATH="$tools/bin:$PATH" cargo deb "${args[@]}"
