#!/bin/bash
# run-in-libvirt-ns.sh COMMAND [ARGS...]
#
# Runs COMMAND next to a private libvirtd (QEMU driver), all inside new network, mount and PID
# namespaces: the host's network namespace, /etc/libvirt, /run and /var are never touched, and
# every process started here (libvirtd, QEMU, kiln-nbd, dnsmasq) dies with the namespace.
#
# Inside: /run and /var are fresh tmpfs mounts, /etc/libvirt is a temporary directory with a
# qemu.conf that runs QEMU as $KILN_LIBVIRT_QEMU_USER (default root; user and group of that
# name) without a security driver, cgroups or a /dev namespace (which a container may not
# allow), without dynamic ownership (what QEMU opens must already be its user's: kiln-spawn
# sees to that) and without virtlogd. libvirt looks up its compiled-in
# QEMU user (libvirt-qemu) before it reads qemu.conf, so if the host lacks that user (the
# libvirt-daemon-system package makes it) a copy of /etc/passwd and /etc/group with it is
# bind-mounted over the originals, inside the namespace only.
set -euo pipefail

if [ "${KILN_IN_LIBVIRT_NS:-}" != 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "run-in-libvirt-ns.sh: needs root" >&2; exit 1; }
  for tool in unshare /usr/sbin/libvirtd virsh qemu-system-x86_64; do
    command -v "$tool" >/dev/null || { echo "run-in-libvirt-ns.sh: missing $tool" >&2; exit 1; }
  done
  exec env KILN_IN_LIBVIRT_NS=1 unshare --net --mount --pid --fork --kill-child "$0" "$@"
fi

work=$(mktemp -d /tmp/kiln-libvirt-ns.XXXXXX)
cleanup() {
  [ -n "${libvirtd_pid:-}" ] && kill "$libvirtd_pid" 2>/dev/null && wait "$libvirtd_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mount --make-rprivate /
mount -t proc proc /proc
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var
mkdir -p /var/tmp /var/lib /var/log /var/cache /run/lock
ln -s /run /var/run
ln -s /run/lock /var/lock
chmod 1777 /var/tmp

mkdir -p "$work/etc-libvirt"
qemu_user=${KILN_LIBVIRT_QEMU_USER:-root}
case "$qemu_user" in *[!a-z0-9_-]*|'') echo "run-in-libvirt-ns.sh: bad KILN_LIBVIRT_QEMU_USER" >&2; exit 1;; esac
cat > "$work/etc-libvirt/qemu.conf" <<CONF
user = "$qemu_user"
group = "$qemu_user"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
CONF
echo 'log_outputs = "3:stderr"' > "$work/etc-libvirt/libvirtd.conf"
mount --bind "$work/etc-libvirt" /etc/libvirt
if ! getent passwd libvirt-qemu >/dev/null; then
  cp /etc/passwd "$work/passwd"
  cp /etc/group "$work/group"
  echo "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin" >> "$work/passwd"
  getent group libvirt-qemu >/dev/null || echo "libvirt-qemu:x:64055:" >> "$work/group"
  getent group kvm >/dev/null || echo "kvm:x:64056:" >> "$work/group"
  mount --bind "$work/passwd" /etc/passwd
  mount --bind "$work/group" /etc/group
fi
ip link set lo up

/usr/sbin/libvirtd > "$work/libvirtd.log" 2>&1 &
libvirtd_pid=$!
for _ in $(seq 300); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  kill -0 "$libvirtd_pid" 2>/dev/null || { cat "$work/libvirtd.log" >&2; exit 1; }
  sleep 0.1
done
virsh -c qemu:///system version >/dev/null || { echo "libvirtd did not answer" >&2; cat "$work/libvirtd.log" >&2; exit 1; }

export KILN_LIBVIRTD_LOG="$work/libvirtd.log"
"$@"
