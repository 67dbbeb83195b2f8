"""Restart under a running guest: QEMU's NBD client reconnects (reconnect-delay) while kiln-nbd
is SIGKILLed and started again on the same socket and image. The guest carries on and finishes;
every record it reported as synced is in the image, and the image has no corruption (leaks are
allowed after a SIGKILL and repaired with kiln-img check -r leaks)."""

import os
import re
import time

from kilntest.guest import (KILN_IMG, KilnNbd, Qemu, debugfs_cat, debugfs_rdump, fsck_clean,
                            image_to_raw, make_base_and_overlay, qemu_img_check, run, sha256_file)


def numbered(vm, word):
    return [int(m.group(1)) for m in
            (re.fullmatch(rf"{word} (\d+)", x) for x in vm.markers()) if m]


def expected_record_file(n):
    line = f"record {n}\n".encode()
    return (line * (65536 // len(line) + 1))[:65536]


def restart_scenario(guest, workdir, procs, kiln_args, kill_marker, outage):
    """Boots the loop guest on a kiln-nbd export, SIGKILLs the server when the console shows
    kill_marker, restarts it after `outage` seconds, lets the guest finish and checks the image.
    Returns (vm, the last record synced before the kill, the raw image, records whose files
    differ from what the guest wrote)."""
    base, overlay = make_base_and_overlay(guest["rootfs.raw"], workdir)
    base_sha = sha256_file(base)
    sock = os.path.join(workdir, "nbd.sock")
    nbd = KilnNbd(overlay, sock, workdir, tag="nbd1")
    procs.append(nbd)
    nbd.start()

    vm = Qemu(guest, workdir,
              ["-blockdev", f"driver=nbd,server.type=unix,server.path={sock},export=root,"
                            "reconnect-delay=10,node-name=root0",
               "-device", "virtio-blk-pci,drive=root0"],
              {"test": "loop", **kiln_args})
    procs.append(vm)
    vm.start()
    vm.wait_marker(kill_marker, timeout=90)

    nbd.kill()
    synced_at_kill = max(numbered(vm, "synced"), default=0)
    time.sleep(outage)
    assert vm.proc.poll() is None, "the guest died with the server\n" + vm.diagnostics()
    # The disk is the server: with it gone no sync can complete (one reply may have been on its
    # way when the kill landed).
    assert max(numbered(vm, "synced"), default=0) <= synced_at_kill + 1, vm.diagnostics()
    nbd2 = KilnNbd(overlay, sock, workdir, tag="nbd2")
    procs.append(nbd2)
    nbd2.start()

    assert vm.wait_exit(timeout=150) == 0, vm.diagnostics()
    markers = vm.markers()
    assert not [m for m in markers if m.startswith("FAIL")], vm.diagnostics()
    assert "end ok" in markers, vm.diagnostics()
    done = int(vm.wait_marker(r"loop done (\d+)", timeout=1).group(1))
    synced = numbered(vm, "synced")
    assert synced == list(range(1, done + 1)), vm.diagnostics()

    assert nbd2.stop() == 0, nbd2.read_log()
    assert "serving export 'root'" in nbd2.read_log(), \
        "QEMU never reconnected:\n" + nbd2.read_log()

    # A SIGKILL may leak clusters; anything worse is corruption.
    rc, out = qemu_img_check(overlay)
    assert rc in (0, 3), f"qemu-img check ({rc}):\n{out}"
    if rc == 3:
        run([KILN_IMG, "check", "-r", "leaks", overlay])
        rc, out = qemu_img_check(overlay)
    assert rc == 0 and "No errors were found" in out, out
    run([KILN_IMG, "check", overlay])
    assert sha256_file(base) == base_sha, "the base image changed"

    raw = image_to_raw(overlay, workdir)
    fsck_clean(raw)
    records = debugfs_cat(raw, "/loop/records").splitlines()
    assert records == [f"record {n}" for n in range(1, done + 1)]
    loop_dir = debugfs_rdump(raw, "/loop", os.path.join(workdir, "dump"))
    lost = []
    for n in synced:
        with open(os.path.join(loop_dir, f"rec-{n}"), "rb") as f:
            if f.read() != expected_record_file(n):
                lost.append(n)
    return vm, synced_at_kill, done, lost


def test_guest_survives_kiln_nbd_restart(guest, workdir, procs):
    # Killed while the guest pauses after a sync; the guest's next writes meet the outage and
    # wait in QEMU for the reconnect.
    vm, killed_at, done, lost = restart_scenario(
        guest, workdir, procs, {"count": 14, "sleep": 0.8}, r"synced 4", outage=1.0)
    assert done - killed_at >= 10, f"only {done - killed_at} records after the kill"
    assert not lost, f"records reported synced but not in the image: {lost}\n{vm.diagnostics()}"


def test_guest_nbd_restart_keeps_unflushed_writes(guest, workdir, procs):
    # Killed after the server acknowledged an allocating write of the guest and before the
    # guest's flush: the flush then goes to the restarted server. From the guest's side the
    # record is synced, so it must be in the image. (commit=60: no journal commit sneaks a
    # flush in before the kill.)
    vm, killed_at, done, lost = restart_scenario(
        guest, workdir, procs,
        {"count": 5, "direct": 1, "sleep": 2, "rootflags": "commit=60"},
        r"written 3", outage=0.5)
    assert killed_at == 2, vm.diagnostics()
    assert not lost, f"records reported synced but not in the image: {lost}\n{vm.diagnostics()}"
