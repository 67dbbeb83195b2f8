"""A QEMU guest boots with its root disk on a kiln-nbd export of a qcow2 overlay, writes a file,
syncs and powers off: the overlay checks clean and holds the file, the base is unchanged."""

import hashlib
import os
import secrets

from kilntest.guest import (KILN_IMG, KilnNbd, Qemu, b64, debugfs_cat, fsck_clean, image_to_raw,
                            make_base_and_overlay, qemu_img_check, run, sha256_file)


def test_guest_writes_to_nbd_overlay(guest, workdir, procs):
    base, overlay = make_base_and_overlay(guest["rootfs.raw"], workdir)
    base_sha = sha256_file(base)
    sock = os.path.join(workdir, "nbd.sock")
    nbd = KilnNbd(overlay, sock, workdir)
    procs.append(nbd)
    nbd.start()

    content = f"kiln e2e marker {secrets.token_hex(16)}\n"
    path = "/kiln/e2e-marker"
    vm = Qemu(guest, workdir,
              ["-drive", f"file=nbd:unix:{sock}:exportname=root,format=raw,if=virtio"],
              {"test": "info,write,cat", "path": path, "data64": b64(content)})
    # info reads a file of the base through the overlay; write adds the marker; cat reads it back.
    procs.append(vm)
    vm.start()
    assert vm.wait_exit(timeout=120) == 0, vm.diagnostics()
    markers = vm.markers()
    assert "end ok" in markers, vm.diagnostics()
    assert f"wrote {path} {hashlib.sha256(content.encode()).hexdigest()}" in markers, \
        vm.diagnostics()
    assert "root mounted /dev/vda" in markers
    assert "info KILN_GUEST=1" in markers
    console = vm.console_text().replace("\r", "")
    assert f"KILN-TEST: BEGIN cat {path}\n{content}KILN-TEST: END cat {path}" in console

    assert nbd.stop() == 0, nbd.read_log()

    rc, out = qemu_img_check(overlay)
    assert rc == 0 and "No errors were found" in out, out
    run([KILN_IMG, "check", overlay])

    raw = image_to_raw(overlay, workdir)
    fsck_clean(raw)
    assert debugfs_cat(raw, path) == content
    assert debugfs_cat(raw, "/kiln/hello.txt") == "hello from the kiln test guest\n"
    assert sha256_file(base) == base_sha, "the base image changed"
