#!/bin/sh
# Runs inside the new root (chroot) once the packages are installed: turns a Debian tree into
# a cloud image. Nothing here may be specific to one machine: no MAC, no host keys, no
# machine-id, the root found by its label.
set -eu

# The root by LABEL (the partition may move or be renamed; the disk may be vda or sda).
cat > /etc/fstab <<'FSTAB'
LABEL=cloudimg-rootfs  /  ext4  defaults,discard,errors=remount-ro  0  1
FSTAB

# The boot menu: serial console first (a cloud guest's only console), the kernel and initrd
# through Debian's /vmlinuz and /initrd.img links, so a kernel upgrade inside keeps booting.
mkdir -p /boot/grub
cat > /boot/grub/grub.cfg <<'GRUB'
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
menuentry 'Debian GNU/Linux 12 (Kiln cloud image)' {
  linux /vmlinuz root=LABEL=cloudimg-rootfs ro console=tty0 console=ttyS0,115200n8
  initrd /initrd.img
}
GRUB

# virtio disks, NICs and the config drive's ISO 9660 before the root is mounted.
printf '%s\n' virtio_pci virtio_blk virtio_net virtio_scsi ext4 isofs >> /etc/initramfs-tools/modules
update-initramfs -u -k all

# cloud-init: the two OpenStack datasources (config drive first, as Nova attaches it), then
# None so that a guest without either still boots. growpart and resizefs are in Debian's
# default module list.
cat > /etc/cloud/cloud.cfg.d/90-kiln.cfg <<'CLOUD'
datasource_list: [ ConfigDrive, OpenStack, None ]
# One host key type: RSA key generation takes tens of seconds under emulation.
ssh_genkeytypes: [ ed25519 ]
# The image's own locale (below), so the locale module has nothing to generate.
locale: C.UTF-8
# The instance's hostname in /etc/hosts: sudo looks it up on every call, and through a DNS
# server that does not answer that took 10 s each time.
manage_etc_hosts: true
CLOUD
# C.UTF-8 is built into glibc: set it without generating any locale.
echo 'LANG=C.UTF-8' > /etc/default/locale

# Timers a short-lived cloud guest does not need at boot (apt's downloads need a mirror).
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer >/dev/null 2>&1 || true

# Interfaces are written by cloud-init (network_data.json); only loopback here.
cat > /etc/network/interfaces <<'IFACES'
auto lo
iface lo inet loopback
source /etc/network/interfaces.d/*
IFACES

# Per-instance identity is made at first boot: host keys (cloud-init's ssh module), the
# machine-id (systemd), the hostname (cloud-init).
rm -f /etc/ssh/ssh_host_*
# Host keys normally come from cloud-init; if it did not make any (no datasource found), sshd
# makes its own rather than failing to start. Only then: `ssh-keygen -A` would add the key
# types cloud-init was told not to make (an RSA key takes tens of seconds under emulation).
mkdir -p /etc/systemd/system/ssh.service.d
cat > /etc/systemd/system/ssh.service.d/10-host-keys.conf <<'UNIT'
[Service]
ExecStartPre=/bin/sh -c 'ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -A'
UNIT
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
echo localhost > /etc/hostname
# Not /tmp: mmdebstrap keeps its apt configuration there until it has cleaned up, and without
# it its final `apt-get update` (with no sources, to empty the image's lists) would run on the
# HOST's configuration and empty the host's package lists. build.sh removes this script.
rm -rf /var/lib/cloud/* /var/log/*.log /var/tmp/*
apt-get clean
rm -rf /var/lib/apt/lists/*
