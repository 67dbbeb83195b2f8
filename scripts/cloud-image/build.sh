#!/usr/bin/env bash
# Builds Kiln's cloud image from Debian packages and prints its path: Debian 12 on a disk with
# an MBR partition table, GRUB for BIOS in the MBR and the gap after it, one ext4 root
# (LABEL=cloudimg-rootfs) from the first MiB to the end, cloud-init, sshd and growpart inside.
# The guest boots from its own disk: no kernel or initrd from outside.
#
#   scripts/cloud-image/build.sh [--cache DIR] [--size SIZE] [--force]
#
# The image is cached in DIR (default $KILN_IMAGE_CACHE or /var/cache/kiln/images) under a
# name made from a hash of its inputs (this script, customize.sh, guest-packages.txt, the
# size): a change to any of them builds a new one, and an unchanged checkout reuses it.
# Needs root (mmdebstrap's root mode: the tree's files are owned by root), the packages
# mmdebstrap, grub-pc-bin, fdisk, e2fsprogs and qemu-utils, and Debian's archive through apt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${KILN_IMAGE_CACHE:-/var/cache/kiln/images}
size=2G
force=
while [ $# -gt 0 ]; do
  case $1 in
    --cache) cache=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h | --help) sed -n '6,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done

key=$( (cat "$here/build.sh" "$here/customize.sh" "$here/guest-packages.txt"; echo "$size") |
  sha256sum | cut -c1-16)
out="$cache/kiln-debian-12-$key.qcow2"
mkdir -p "$cache"
# One build at a time per cache; a second caller waits and then finds the image.
exec 9>"$cache/.build.lock"
flock 9
if [ -s "$out" ] && [ -z "$force" ]; then
  echo "$out"
  exit 0
fi

work=$(mktemp -d "$cache/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"
log="$work/build.log"
pkgs=$(sed 's/#.*//' "$here/guest-packages.txt" | tr -s ' \n' ',' | sed 's/^,//; s/,$//')

echo "build.sh: building the cloud image (mmdebstrap, a few minutes; log in $log)" >&2
# --variant=apt: Essential packages plus apt and the list above, no Recommends (what a
# cloud image needs is listed explicitly). Documentation and translations left out.
if ! mmdebstrap --mode=root --variant=apt --include="$pkgs" \
  --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="copy-in $here/customize.sh /tmp" \
  --customize-hook='chroot "$1" sh /tmp/customize.sh' \
  --customize-hook='rm -f "$1/tmp/customize.sh"' \
  bookworm "$root" >"$log" 2>&1; then
  tail -20 "$log" >&2
  echo "build.sh: mmdebstrap failed" >&2
  exit 1
fi
# mmdebstrap copies the build host's resolv.conf in for the downloads and leaves it: guests
# asked the build host's DNS server. The image has resolvconf's, which holds the instance's
# servers (network_data.json through ifupdown, or DHCP).
rm -f "$root/etc/resolv.conf"
ln -s ../run/resolvconf/resolv.conf "$root/etc/resolv.conf"

# The disk: MBR, one bootable Linux partition from 1 MiB (the gap before it holds GRUB's
# core image) to the end.
bytes=$(numfmt --from=iec "$size")
disk="$work/disk.raw"
truncate -s "$bytes" "$disk"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$disk"
part_bytes=$((bytes - 1048576))
# The root filesystem, filled from the tree without mounting anything, then placed at 1 MiB.
truncate -s "$part_bytes" "$work/root.ext4"
mke2fs -q -F -t ext4 -L cloudimg-rootfs -d "$root" "$work/root.ext4" "$((part_bytes / 1024))k"
dd if="$work/root.ext4" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none

# GRUB for BIOS without a loop device: the core image (modules to read an MBR partition and
# ext4, its prefix pointing at /boot/grub on the first partition) goes into the sectors after
# the MBR; grub-mkimage fills in the sector count of its first-sector loader, and boot.img's
# own default is to load that from sector 1. The MBR keeps its partition table: only the
# 440 bytes of boot code are written.
grubdir=/usr/lib/grub/i386-pc
grub-mkimage -O i386-pc -o "$work/core.img" -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos ext2 normal linux serial terminal echo test configfile
core_sectors=$(( ($(stat -c %s "$work/core.img") + 511) / 512 ))
if [ "$core_sectors" -ge 2047 ]; then
  echo "build.sh: GRUB's core image ($core_sectors sectors) does not fit before the partition" >&2
  exit 1
fi
dd if="$grubdir/boot.img" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$disk" bs=512 seek=1 conv=notrunc status=none

qemu-img convert -q -f raw -O qcow2 "$disk" "$work/image.qcow2"
mv "$work/image.qcow2" "$out"
echo "$out"
