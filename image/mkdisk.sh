#!/usr/bin/env bash
# Assembles a raw GPT disk from the slot payload image/build.sh left in target/image/:
#   p1 "TANDEM-ESP"  FAT32, EFI system partition + legacy BIOS bootable: systemd-boot
#                    (\EFI\BOOT\BOOTX64.EFI), SYSLINUX, slots /tandem/a and /tandem/b,
#                    loader entries with boot counting (tandem-<generation>-<slot>[+tries].conf)
#   p2 "tandem-data" ext4: tandem.toml, network.conf, state/, log/
# No loop mounts: mkfs.vfat + mtools + `syslinux --install` on a partition file,
# `mke2fs -d` for the data partition, dd into place, gptmbr.bin in the protective MBR.
# Usage: image/mkdisk.sh OUT [--data DIR] [--fallback-test]
#   --data DIR        populate the data partition from DIR (default: image/data)
#   --fallback-test   also fill slot B with a build whose init never becomes healthy,
#                     on trial with one try (for tests/image.rs)
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: image/mkdisk.sh OUT [--data DIR] [--fallback-test]}
shift
data=image/data
fallback=0
while [ $# -gt 0 ]; do
    case "$1" in
        --data) data=$2; shift 2 ;;
        --fallback-test) fallback=1; shift ;;
        *) echo "mkdisk: unknown argument $1" >&2; exit 2 ;;
    esac
done

work=target/image
slot="$work/slot"
tandem="$work/tandem-static"
[ -f "$slot/vmlinuz" ] && [ -f "$slot/initrd.img" ] && [ -x "$tandem" ] \
    || { echo "mkdisk: run ./image/build.sh first" >&2; exit 2; }

esp_mib=96
data_mib=64
tmp=$(mktemp -d "$PWD/$work/mkdisk.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# The ESP as a directory tree first; the loader entries are its boot state.
opts="console=tty0 console=ttyS0,115200 panic=10 loglevel=4"
esp="$tmp/esp"
mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries" "$esp/tandem/a" "$esp/tandem/b"
cp /usr/lib/systemd/boot/efi/systemd-bootx64.efi "$esp/EFI/BOOT/BOOTX64.EFI"
printf 'timeout 0\nconsole-mode keep\neditor no\n' > "$esp/loader/loader.conf"
# The slot's version (`tandem --version`), shown by `tandem image status`.
payload=("$slot/vmlinuz" "$slot/initrd.img")
[ -f "$slot/version" ] && payload+=("$slot/version")
cp "${payload[@]}" "$esp/tandem/a/"
entry() { # slot generation file extra-options
    printf 'title Tandem (slot %s, generation %s)\nlinux /tandem/%s/vmlinuz\ninitrd /tandem/%s/initrd.img\noptions %s tandem.slot=%s%s\n' \
        "$1" "$2" "$1" "$1" "$opts" "$1" "$4" > "$esp/loader/entries/$3"
}
entry a 1 tandem-1-a.conf ""
if [ "$fallback" = 1 ]; then
    cp "${payload[@]}" "$esp/tandem/b/"
    entry b 2 "tandem-2-b+1.conf" " tandem.test_unhealthy=1 tandem.health_timeout=5"
fi
"$tandem" image sync-loader --esp "$esp"

truncate -s "${esp_mib}M" "$tmp/esp.img"
mkfs.vfat -F 32 -s 1 -h 2048 -n TANDEM-ESP "$tmp/esp.img" >/dev/null
(cd "$esp" && for d in $(find . -mindepth 1 -type d | sort); do mmd -i "$tmp/esp.img" "::${d#.}"; done)
(cd "$esp" && for f in $(find . -type f | sort); do mcopy -i "$tmp/esp.img" "$f" "::${f#.}"; done)
syslinux --install "$tmp/esp.img"

mkdir -p "$tmp/data"
cp -a "$data/." "$tmp/data/"
mkdir -p "$tmp/data/state" "$tmp/data/log"
truncate -s "${data_mib}M" "$tmp/data.img"
mke2fs -q -t ext4 -L tandem-data -E root_owner=0:0 -d "$tmp/data" "$tmp/data.img"

rm -f "$out"
truncate -s $((1 + esp_mib + data_mib + 1))M "$out"
sgdisk \
    -n 1:2048:+"${esp_mib}"M -t 1:ef00 -c 1:TANDEM-ESP -A 1:set:2 \
    -n 2:0:+"${data_mib}"M -t 2:8300 -c 2:tandem-data "$out" >/dev/null
dd if=/usr/lib/SYSLINUX/gptmbr.bin of="$out" bs=440 count=1 conv=notrunc status=none
dd if="$tmp/esp.img" of="$out" bs=1M seek=1 conv=notrunc status=none
dd if="$tmp/data.img" of="$out" bs=1M seek=$((1 + esp_mib)) conv=notrunc status=none
echo "mkdisk: $out"
