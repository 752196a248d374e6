#!/usr/bin/env bash
# Builds the Tandem appliance disk image from Debian's package archive and a static
# `tandem` binary, without loop mounts or containers:
#   target/image/tandem.img      raw GPT disk (UEFI: systemd-boot, BIOS: SYSLINUX)
#   target/image/tandem.img.zst  the same, compressed for distribution
# Stages (all under target/image/): the Debian kernel .deb (apt-get download,
# dpkg-deb -x), the static binary (own cargo target dir), the initramfs root, then
# image/mkdisk.sh assembles the disk. Usage: ./image/build.sh [--no-compress] [--sign KEY]
# --sign KEY (a secret key from `tandem image keygen`): the image trusts that key's public
# half for updates (/etc/tandem/update.pub) and target/image/tandem.img{,.zst}.sig are
# written. Without it the image accepts no update (`tandem image update` refuses).
set -euo pipefail
cd "$(dirname "$0")/.."

compress=1
sign_key=
while [ $# -gt 0 ]; do
    case "$1" in
        --no-compress) compress=0 ;;
        --sign) sign_key=${2:?--sign needs a key file}; shift ;;
        *) echo "image: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

work=target/image
mkdir -p "$work/debs"
say() { printf 'image: %s\n' "$*"; }

for tool in dpkg-deb apt-get cpio zstd depmod modprobe mkfs.vfat mcopy syslinux sgdisk mke2fs e2fsck ldd; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "image: missing $tool; run ./scripts/deps.sh" >&2
        exit 2
    }
done
for f in /bin/busybox /usr/lib/systemd/boot/efi/systemd-bootx64.efi /usr/lib/SYSLINUX/gptmbr.bin; do
    [ -e "$f" ] || { echo "image: missing $f; run ./scripts/deps.sh" >&2; exit 2; }
done

# 1. The Debian kernel: whatever linux-image-amd64 points at.
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$kpkg" ] || { echo "image: cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 2; }
kver=${kpkg#linux-image-}
deb=$(ls "$work"/debs/"${kpkg}"_*.deb 2>/dev/null | head -n1 || true)
if [ -z "$deb" ]; then
    say "downloading $kpkg"
    (cd "$work/debs" && apt-get download "$kpkg" 2>/dev/null)
    deb=$(ls "$work"/debs/"${kpkg}"_*.deb | head -n1)
fi
kdir="$PWD/$work/kernel-$kver"
if [ ! -f "$kdir/.done" ]; then
    say "extracting $(basename "$deb")"
    rm -rf "$kdir"
    dpkg-deb -x "$deb" "$kdir"
    depmod -b "$kdir" "$kver"
    touch "$kdir/.done"
fi

# 2. The static tandem binary, without the benchmarks (cargo feature `bench`).
say "building the static tandem binary"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --quiet --no-default-features \
    --target x86_64-unknown-linux-gnu --target-dir "$work/cargo"
bin="$work/cargo/x86_64-unknown-linux-gnu/release/tandem"

# 3. The initramfs root: busybox, tandem, the init scripts and the modules a server needs.
root="$work/root"
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,data,root,boot/efi,var/log,usr/share/udhcpc}
cp -a image/rootfs/. "$root/"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
ln -s ../bin/busybox "$root/sbin/init"
ln -s bin/busybox "$root/init"
install -m 0755 "$bin" "$root/bin/tandem"
strip "$root/bin/tandem"
# e2fsprogs for the filesystem resource (mke2fs -t ext4, e2fsck -p), with the shared
# libraries they link; they replace busybox's ext2-only mke2fs.
for b in /sbin/mke2fs /sbin/e2fsck; do
    rm -f "$root/bin/${b##*/}"
    cp "$b" "$root/sbin/"
    ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}'
done | sort -u | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$root/etc/"
# The keys this image trusts for updates.
mkdir -p "$root/etc/tandem"
if [ -n "$sign_key" ]; then
    "$bin" image public-key --key "$sign_key" > "$root/etc/tandem/update.pub"
else
    say "not signed (no --sign KEY): this image will refuse every update"
    printf '# No key: this image was built without --sign and accepts no update.\n' \
        > "$root/etc/tandem/update.pub"
fi

modules=(virtio_pci virtio_net virtio_blk virtio_scsi e1000 e1000e igb ixgbe i40e tg3 r8169
    ahci ata_piix nvme sd_mod sr_mod ext4 vfat nls_cp437 nls_iso8859_1 nls_ascii nbd
    xhci_pci ehci_pci usbhid hid_generic crc32c_generic crc32c_intel
    # Watchdogs for [quorum] watchdog: the i6300ESB (QEMU's and many boards'), by
    # modalias like the rest; softdog for machines without one (modprobe it by hand).
    i6300esb softdog)
kmods="$kdir/lib/modules/$kver"
mkdir -p "$root/lib/modules/$kver"
cp "$kmods"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/"
for m in "${modules[@]}"; do
    modprobe -d "$kdir" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}'
done | sort -u | while read -r ko; do
    rel=${ko#"$kdir"/}
    mkdir -p "$root/$(dirname "$rel")"
    cp "$ko" "$root/$rel"
done
depmod -b "$root" "$kver"
# Loaded at every boot; the rest only when a device asks for it (modalias).
printf '%s\n' virtio_pci sd_mod ext4 vfat nls_cp437 nls_iso8859_1 nls_ascii crc32c_intel \
    crc32c_generic > "$root/etc/modules"

say "packing the initramfs"
slot="$work/slot"
rm -rf "$slot"
mkdir -p "$slot"
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) \
    | zstd -q -19 -T0 > "$slot/initrd.img"
cp "$kdir/boot/vmlinuz-$kver" "$slot/vmlinuz"
"$bin" --version > "$slot/version"
cp "$bin" "$work/tandem-static"
strip "$work/tandem-static"
say "slot payload: $(du -sh "$slot" | cut -f1) (kernel $kver)"

# 4. The disk.
image/mkdisk.sh "$work/tandem.img"
if [ "$compress" = 1 ]; then
    zstd -q -f -19 -T0 "$work/tandem.img" -o "$work/tandem.img.zst"
    size=$(stat -c %s "$work/tandem.img.zst")
    say "raw $(stat -c %s "$work/tandem.img") bytes, compressed $size bytes"
    if [ "$size" -gt $((64 * 1024 * 1024)) ]; then
        echo "image: the compressed image is over the 64 MiB budget" >&2
        exit 1
    fi
fi
if [ -n "$sign_key" ]; then
    for f in "$work/tandem.img" "$work/tandem.img.zst"; do
        [ -f "$f" ] && say "signed: $("$bin" image sign --key "$sign_key" "$f")"
    done
fi
say "done: $work/tandem.img"
