#!/bin/bash
# Builds Kiln's test guest from Debian packages only:
#   OUTDIR/vmlinuz     Debian cloud kernel (ext4 and the 8250 serial console built in)
#   OUTDIR/initrd.img  static busybox, the virtio/ATA/cdrom/isofs modules, /init (init.sh)
#   OUTDIR/rootfs.raw  ext4 root disk made with mkfs.ext4 -d (no root, no loop devices)
# Downloaded .debs and extracted trees are cached under OUTDIR/cache; a second run with the
# same inputs does nothing. See docs/test-guest.md for how the guest is driven.
#
# Environment:
#   KILN_GUEST_KERNEL_PKG  kernel package (default: what linux-image-cloud-amd64 depends on,
#                          or the one already cached)
#   KILN_GUEST_DISK_SIZE   size of rootfs.raw (default 64M)
set -euo pipefail

die() { echo "build.sh: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
cache=$out/cache
debs=$cache/debs
disk_size=${KILN_GUEST_DISK_SIZE:-64M}

for tool in apt-get apt-cache dpkg-deb cpio gzip mkfs.ext4 flock sha256sum; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done

# Two builds into the same OUTDIR (parallel ctest runs) must not interleave.
exec 9>"$out/.lock"
flock 9

mkdir -p "$debs"

# --- packages ------------------------------------------------------------------------------

cached_deb() {  # prints the cached .deb of package $1, if any
  local f
  for f in "$debs/$1"_*.deb; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  return 0
}

kernel_pkg=${KILN_GUEST_KERNEL_PKG:-}
if [ -z "$kernel_pkg" ]; then
  f=$(ls "$debs"/linux-image-*-cloud-amd64_*.deb 2>/dev/null | sort | tail -n 1 || true)
  if [ -n "$f" ]; then
    kernel_pkg=$(basename "$f" | cut -d_ -f1)
  else
    kernel_pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
                 awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
    [ -n "$kernel_pkg" ] || die "cannot resolve linux-image-cloud-amd64 (run apt-get update)"
  fi
fi

fetch() {  # prints the path of package $1's .deb, downloading it once
  local deb
  deb=$(cached_deb "$1")
  if [ -z "$deb" ]; then
    echo "build.sh: downloading $1" >&2
    (cd "$debs" && apt-get download -q "$1" >&2 2>/dev/null) ||
      (cd "$debs" && apt-get download "$1" >&2) || die "apt-get download $1 failed"
    deb=$(cached_deb "$1")
    [ -n "$deb" ] || die "apt-get download $1 left no .deb in $debs"
  fi
  echo "$deb"
}

extract() {  # extracts .deb $1 once, prints the tree
  local tree=$cache/tree/$(basename "$1" .deb)
  if [ ! -e "$tree/.done" ]; then
    rm -rf "$tree" "$tree.tmp"
    mkdir -p "$tree.tmp"
    dpkg-deb -x "$1" "$tree.tmp"
    touch "$tree.tmp/.done"
    mv "$tree.tmp" "$tree"
  fi
  echo "$tree"
}

kernel_deb=$(fetch "$kernel_pkg")
busybox_deb=$(fetch busybox-static)

# Nothing to do when the inputs (packages, this script, the init, the disk size) are unchanged.
key=$( { basename "$kernel_deb"; basename "$busybox_deb"; echo "$disk_size";
         cat "${BASH_SOURCE[0]}" "$here/init.sh" "$here/udhcpc.script"; } | sha256sum | cut -d' ' -f1)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$key" ] &&
   [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] && [ -f "$out/rootfs.raw" ]; then
  echo "build.sh: $out is up to date ($kernel_pkg)"
  exit 0
fi
rm -f "$out/.stamp"

kernel_tree=$(extract "$kernel_deb")
busybox_tree=$(extract "$busybox_deb")
busybox=$busybox_tree/bin/busybox
[ -x "$busybox" ] || die "no busybox in $busybox_deb"
kver=$(ls "$kernel_tree/lib/modules" | head -n 1)
[ -n "$kver" ] || die "no modules in $kernel_deb"
moddir=$kernel_tree/lib/modules/$kver
vmlinuz=$kernel_tree/boot/vmlinuz-$kver
[ -f "$vmlinuz" ] || die "no kernel image in $kernel_deb"

work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- modules: the wanted ones and their dependencies, dependencies first -------------------
# The package ships no modules.dep (depmod runs at install time) and kmod may be absent, so the
# order comes from each module's own .modinfo "depends=" field.
wanted="virtio_pci virtio_blk virtio_net virtio_scsi ata_piix sr_mod isofs"
declare -A modpath=() loaded=()
while IFS= read -r f; do
  name=$(basename "$f" .ko)
  modpath[${name//-/_}]=$f
done < <(find "$moddir/kernel" -name '*.ko')

order=()
add_module() {
  local m=${1//-/_} dep deps
  [ -n "${loaded[$m]:-}" ] && return 0
  [ -n "${modpath[$m]:-}" ] || die "module $m not in $kernel_pkg"
  loaded[$m]=1
  deps=$(tr '\0' '\n' < "${modpath[$m]}" | sed -n 's/^depends=//p' | head -n 1)
  for dep in ${deps//,/ }; do add_module "$dep"; done
  order+=("$m")
}
for m in $wanted; do add_module "$m"; done

# --- initramfs -----------------------------------------------------------------------------
ir=$work/initramfs
mkdir -p "$ir"/{bin,sbin,usr/bin,usr/sbin,etc/kiln,proc,sys,dev,tmp,mnt,run,lib/modules}
cp "$busybox" "$ir/bin/busybox"
while IFS= read -r applet; do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$ir/$(dirname "$applet")"
  ln -sf /bin/busybox "$ir/$applet"
done < <("$busybox" --list-full)
: > "$ir/etc/kiln/modules"
for m in "${order[@]}"; do
  cp "${modpath[$m]}" "$ir/lib/modules/$m.ko"
  echo "$m" >> "$ir/etc/kiln/modules"
done
install -m 0755 "$here/init.sh" "$ir/init"
install -m 0755 "$here/udhcpc.script" "$ir/etc/kiln/udhcpc.script"
echo "$kernel_pkg $kver" > "$ir/etc/kiln/kernel"
(cd "$ir" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) |
  gzip -9n > "$work/initrd.img"

# --- root disk -----------------------------------------------------------------------------
# The root holds the same busybox and init so that it is usable on its own (switch_root) too.
rd=$work/rootfs
mkdir -p "$rd"/{bin,sbin,etc,kiln,data,tmp,proc,sys,dev,mnt}
cp "$busybox" "$rd/bin/busybox"
ln -s busybox "$rd/bin/sh"
install -m 0755 "$here/init.sh" "$rd/sbin/kiln-init"
echo kiln-guest > "$rd/etc/hostname"
cat > "$rd/etc/kiln-guest-release" <<EOF
KILN_GUEST=1
KERNEL=$kver
EOF
echo "hello from the kiln test guest" > "$rd/kiln/hello.txt"
# Users, as a real image has them: file injection (SSH keys, passwords) resolves owners here.
mkdir -p "$rd/root" "$rd/home/kiln"
chmod 0700 "$rd/root"
cat > "$rd/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
kiln:x:1000:1000:Kiln test user:/home/kiln:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat > "$rd/etc/group" <<'EOF'
root:x:0:
kiln:x:1000:
nogroup:x:65534:
EOF
cat > "$rd/etc/shadow" <<'EOF'
root:*:19000:0:99999:7:::
kiln:!:19000:0:99999:7:::
nobody:*:19000:0:99999:7:::
EOF
chmod 0640 "$rd/etc/shadow"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tkiln-guest\n' > "$rd/etc/hosts"
# Fixed UUID, hash seed, times: the same inputs give the same bytes.
find "$rd" -exec touch -h -d @1700000000 {} +
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -b 4096 -L kiln-root \
  -U 6b696c6e-2d67-7565-7374-2d726f6f7466 -E root_owner=0:0,hash_seed=6b696c6e-0000-0000-0000-000000000001 \
  -d "$rd" "$work/rootfs.raw" "$disk_size"

# --- publish -------------------------------------------------------------------------------
cp "$vmlinuz" "$work/vmlinuz"
for f in vmlinuz initrd.img rootfs.raw; do mv -f "$work/$f" "$out/$f"; done
echo "$key" > "$out/.stamp"
echo "build.sh: built $out ($kernel_pkg; modules: ${order[*]})"
