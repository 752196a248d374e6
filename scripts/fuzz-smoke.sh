#!/usr/bin/env bash
# Builds the fuzz targets of the network decoders (heartbeats, quorum datagrams, probe
# replies, SNMP requests, the SNMPv3 USM, NBD requests and options, replication frames, compressed ones too,
# and a downloaded image's signature file and GPT)
# on the stable toolchain (libFuzzer with SanitizerCoverage; cargo-fuzz needs nightly
# only for the sanitizers) and runs each for a bounded number of inputs. Any crash
# fails. For long runs:
#   cd fuzz && cargo fuzz run heartbeat_decode        (nightly)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# With an explicit --target, RUSTFLAGS reach only the target code, not build scripts
# and proc macros (as cargo-fuzz does it).
target="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --quiet --target "$target" --bins
runs="${FUZZ_RUNS:-2000000}"
for t in heartbeat_decode quorum_decode probe_reply snmp_request snmp_usm nbd_request mirror_frame mirror_frame_zstd image_headers; do
    mkdir -p "corpus/$t"
    echo "fuzz $t: $runs runs"
    "target/$target/release/$t" "corpus/$t" -runs="$runs" -max_len=1500 -print_final_stats=1 2>&1 | tail -n 4
done
