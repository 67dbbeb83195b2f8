#!/bin/busybox sh
# /init of Kiln's test guest (busybox sh). It loads the modules listed in /etc/kiln/modules,
# mounts the root disk on /mnt, runs the actions named by kiln.test= on the kernel command line,
# then syncs, unmounts and powers off. Every line meant for tests starts with "KILN-TEST: ".
#
# Kernel command line (all optional):
#   kiln.test=A[,B...]  actions, run in order (default: info)
#       info        print /etc/kiln-guest-release of the root disk
#       cat         print the file kiln.path of the root disk between BEGIN/END markers
#       write       write kiln.data (or base64 kiln.data64) to kiln.path on the root disk, sync
#       loop        write numbered records (see below), each followed by sync and a
#                   "KILN-TEST: synced N" line
#       script      run the shell script given base64-encoded in kiln.script (ROOT=/mnt)
#       configdrive mount the config drive (label config-2, iso9660) and print its OpenStack files
#       dhcp        udhcpc on eth0, print the address, ping the gateway
#       shell       interactive shell on the console (for people, not tests)
#   kiln.root=DEV       root disk (default /dev/vda); kiln.root=none: do not mount one
#   kiln.path=PATH      file for cat/write (default /kiln/hello.txt, /kiln/marker)
#   kiln.count=N        loop: number of records (default 20)
#   kiln.secs=S         loop: keep writing for at least S seconds (then stop after count too)
#   kiln.sleep=S        loop: pause after each record (default 0; fractions allowed)
#   kiln.direct=1       loop: O_DIRECT record files, pause between write and sync (see act_loop)
#   kiln.rootflags=OPTS mount options of the root disk (e.g. commit=60)
#   kiln.end=poweroff|reboot|hang   what happens at the end (default poweroff)
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
# The initramfs has no /dev/console node (making one needs root): take it from devtmpfs.
exec </dev/console >/dev/console 2>&1

say() { echo "KILN-TEST: $*"; }

K_TEST=info K_ROOT=/dev/vda K_PATH= K_DATA= K_DATA64= K_COUNT=20 K_SECS=0 K_SLEEP=0
K_SCRIPT= K_END=poweroff K_DIRECT=0 K_ROOTFLAGS=
for word in $(cat /proc/cmdline); do
  case "$word" in
    kiln.test=*) K_TEST=${word#*=} ;;
    kiln.root=*) K_ROOT=${word#*=} ;;
    kiln.path=*) K_PATH=${word#*=} ;;
    kiln.data=*) K_DATA=${word#*=} ;;
    kiln.data64=*) K_DATA64=${word#*=} ;;
    kiln.count=*) K_COUNT=${word#*=} ;;
    kiln.secs=*) K_SECS=${word#*=} ;;
    kiln.sleep=*) K_SLEEP=${word#*=} ;;
    kiln.script=*) K_SCRIPT=${word#*=} ;;
    kiln.end=*) K_END=${word#*=} ;;
    kiln.direct=*) K_DIRECT=${word#*=} ;;
    kiln.rootflags=*) K_ROOTFLAGS=${word#*=} ;;
  esac
done

finish() {
  cd /
  sync
  if grep -q " /mnt " /proc/mounts; then
    umount /mnt || { say "FAIL umount /mnt"; mount -o remount,ro /mnt; }
  fi
  sync
  say "end $1"
  case "$K_END" in
    reboot) reboot -f ;;
    hang) while :; do sleep 3600; done ;;
    *) poweroff -f ;;
  esac
  sleep 10
}

fail() { say "FAIL $*"; finish failed; }

say "init $(cat /etc/kiln/kernel 2>/dev/null)"
for m in $(cat /etc/kiln/modules); do
  insmod "/lib/modules/$m.ko" || say "warning: insmod $m failed"
done

wait_for_block() {  # $1 device, $2 tenths of a second
  i=0
  while [ ! -b "$1" ] && [ "$i" -lt "$2" ]; do usleep 100000; i=$((i + 1)); done
  [ -b "$1" ]
}

if [ "$K_ROOT" != none ]; then
  wait_for_block "$K_ROOT" 100 || fail "no root disk $K_ROOT"
  mount -t ext4 ${K_ROOTFLAGS:+-o "$K_ROOTFLAGS"} "$K_ROOT" /mnt || fail "mount $K_ROOT"
  say "root mounted $K_ROOT"
fi

act_info() {
  cat /mnt/etc/kiln-guest-release 2>/dev/null | while read -r l; do say "info $l"; done
}

act_cat() {
  p=${K_PATH:-/kiln/hello.txt}
  [ -f "/mnt$p" ] || { say "FAIL cat $p: no such file"; return 1; }
  say "BEGIN cat $p"
  cat "/mnt$p"
  say "END cat $p"
}

act_write() {
  p=${K_PATH:-/kiln/marker}
  mkdir -p "$(dirname "/mnt$p")"
  if [ -n "$K_DATA64" ]; then
    echo "$K_DATA64" | base64 -d > "/mnt$p" || { say "FAIL write $p"; return 1; }
  else
    echo "$K_DATA" > "/mnt$p" || { say "FAIL write $p"; return 1; }
  fi
  sync
  say "wrote $p $(sha256sum < "/mnt$p" | cut -d' ' -f1)"
}

# Each record: a line "record N" appended to /loop/records and a 64 KiB file /loop/rec-N full of
# "record N" lines, then sync (a flush reaches the disk). "synced N" is printed only after the
# sync returned, so every record printed as synced must be on the disk. kiln.sleep pauses after
# each record. With kiln.direct=1 the 64 KiB file is written with O_DIRECT (the disk has it but
# has not been asked to flush it), "written N" is printed, the pause comes between the write and
# the sync, then "synced N".
act_loop() {
  mkdir -p /mnt/loop
  start=$(cut -d. -f1 /proc/uptime)
  n=0
  while :; do
    now=$(cut -d. -f1 /proc/uptime)
    if [ "$n" -ge "$K_COUNT" ] && [ $((now - start)) -ge "$K_SECS" ]; then break; fi
    n=$((n + 1))
    echo "record $n" >> /mnt/loop/records || { say "FAIL loop write $n"; return 1; }
    if [ "$K_DIRECT" = 1 ]; then
      yes "record $n" | head -c 65536 |
        dd of="/mnt/loop/rec-$n" bs=65536 count=1 iflag=fullblock oflag=direct status=none ||
        { say "FAIL loop write $n"; return 1; }
      say "written $n"
      [ "$K_SLEEP" = 0 ] || sleep "$K_SLEEP"
      sync
      say "synced $n"
    else
      yes "record $n" | head -c 65536 > "/mnt/loop/rec-$n" || { say "FAIL loop write $n"; return 1; }
      sync
      say "synced $n"
      [ "$K_SLEEP" = 0 ] || sleep "$K_SLEEP"
    fi
  done
  say "loop done $n"
}

act_script() {
  [ -n "$K_SCRIPT" ] || { say "FAIL script: no kiln.script"; return 1; }
  echo "$K_SCRIPT" | base64 -d > /tmp/kiln-script.sh || { say "FAIL script: bad base64"; return 1; }
  ROOT=/mnt sh /tmp/kiln-script.sh
  rc=$?
  say "script exit $rc"
  return $rc
}

act_configdrive() {
  dev=
  mkdir -p /media/cd
  for d in /dev/sr0 /dev/sr1 /dev/vd[b-z]; do
    wait_for_block "$d" 20 || continue
    if mount -t iso9660 -o ro "$d" /media/cd 2>/dev/null; then
      [ -d /media/cd/openstack ] && { dev=$d; break; }
      umount /media/cd
    fi
  done
  [ -n "$dev" ] || { say "FAIL configdrive: not found"; return 1; }
  say "configdrive $dev"
  for f in meta_data.json user_data network_data.json vendor_data.json; do
    [ -f "/media/cd/openstack/latest/$f" ] || continue
    say "BEGIN configdrive $f"
    cat "/media/cd/openstack/latest/$f"; echo
    say "END configdrive $f"
  done
  umount /media/cd
}

act_dhcp() {
  i=0
  while [ ! -e /sys/class/net/eth0 ] && [ "$i" -lt 50 ]; do usleep 100000; i=$((i + 1)); done
  ip link set lo up
  ip link set eth0 up || { say "FAIL dhcp: no eth0"; return 1; }
  udhcpc -i eth0 -s /etc/kiln/udhcpc.script -n -q -t 5 -T 1 >/dev/null 2>&1 ||
    { say "FAIL dhcp: no lease"; return 1; }
  . /run/kiln-lease
  say "dhcp ip=$ip mask=$subnet router=$router"
  if [ -n "$router" ]; then
    if ping -c 3 -W 2 "$router" >/dev/null 2>&1; then say "ping $router ok"
    else say "FAIL ping $router"; return 1; fi
  fi
}

status=0
for a in $(echo "$K_TEST" | tr ',' ' '); do
  case "$a" in
    info|cat|write|loop|script|configdrive|dhcp)
      case "$a" in
        info|cat|write|loop) [ "$K_ROOT" != none ] || { say "FAIL $a needs a root disk"; status=1; continue; } ;;
      esac
      "act_$a" || status=1 ;;
    shell) setsid cttyhack sh ;;
    *) say "FAIL unknown action $a"; status=1 ;;
  esac
done
if [ "$status" = 0 ]; then finish ok; else finish failed; fi
