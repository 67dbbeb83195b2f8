"""Image locks in QEMU's scheme: while kiln-nbd serves an image, QEMU's tools and kiln-img
refuse to open it without -U and nothing can write its backing file; while QEMU holds an
image, Kiln refuses it. Both sides use the same lock bytes, so each sees the other."""

import os
import time

from kilntest.images import (assert_one_line_error, kiln_img, lock_holder_present, qemu_img,
                             qemu_io, read_file, wait_unlocked)
from kilntest.nbd import KILN_NBD, build_overlay, run, servers, sha256  # noqa: F401  (fixture)


def test_kiln_nbd_locks_what_it_serves(workdir, servers):
    ov, base = build_overlay(os.path.join(workdir, "img"))
    before = read_file(ov)
    base_sum = sha256(base)
    srv = servers.kiln("-f", "qcow2", ov, sock=os.path.join(workdir, "nbd.sock"))

    p = qemu_img("info", ov, check=False)
    assert p.returncode != 0 and 'Failed to get shared "write" lock' in p.stderr, p.stderr
    assert qemu_img("info", "-U", ov).returncode == 0
    p = qemu_io(base, "write -P 0x99 0 4k", check=False)
    assert p.returncode != 0 and 'Failed to get "write" lock' in p.stderr, p.stderr

    for args in (["info", ov], ["check", ov], ["map", ov], ["resize", ov, "+1M"],
                 ["create", "-f", "qcow2", ov, "1M"], ["check", "-r", "leaks", "-U", ov],
                 ["convert", "-f", "qcow2", "-O", "raw", ov, os.path.join(workdir, "c.raw")],
                 # -q and -p change what is printed, not what is locked (as in qemu-img).
                 ["convert", "-f", "qcow2", "-q", "-O", "raw", ov, os.path.join(workdir, "cq.raw")],
                 ["convert", "-f", "qcow2", "-p", "-O", "raw", ov, os.path.join(workdir, "cp.raw")]):
        p = kiln_img(*args, check=False)
        assert_one_line_error(p, "kiln-img")
        assert "lock" in p.stderr or "-U" in p.stderr, (args, p.stderr)
    assert kiln_img("info", "-U", ov).returncode == 0
    assert kiln_img("check", "-U", ov).returncode == 0
    p = qemu_img("convert", "-q", "-O", "raw", ov, os.path.join(workdir, "q.raw"), check=False)
    assert p.returncode != 0 and "lock" in p.stderr, p.stderr
    assert kiln_img("convert", "-U", "-q", "-f", "qcow2", "-O", "raw", ov,
                    os.path.join(workdir, "cu.raw")).returncode == 0
    # Nothing above changed a byte: the refused create did not truncate the image.
    assert sha256(base) == base_sum
    assert len(read_file(ov)) == len(before)

    srv.assert_clean_stop()
    wait_unlocked(ov)
    assert qemu_img("check", ov).returncode == 0
    assert kiln_img("check", ov).returncode == 0


def test_kiln_refuses_what_qemu_holds(workdir, servers):
    ov, base = build_overlay(os.path.join(workdir, "img"))
    qsock = os.path.join(workdir, "q.sock")
    q = servers.qemu_nbd(ov, qsock, "qcow2")
    # qemu-nbd listens before it opens the image: wait until its locks are there.
    deadline = time.monotonic() + 30
    while not lock_holder_present(ov):
        assert time.monotonic() < deadline, "qemu-nbd never locked the image"
        time.sleep(0.01)
    p = run([KILN_NBD, "-k", os.path.join(workdir, "k.sock"), "-f", "qcow2", ov], check=False,
            timeout=30)
    assert p.returncode != 0, "kiln-nbd served an image that qemu-nbd holds"
    assert 'the "write" lock' in p.stderr, p.stderr
    # The base under qemu-nbd's overlay is readable by many but writable by nobody.
    srv = servers.kiln("-r", "-f", "qcow2", base, sock=os.path.join(workdir, "k2.sock"))
    assert srv.alive()
    p = kiln_img("resize", base, "+1M", check=False)
    assert_one_line_error(p, "kiln-img")
    assert 'the "write" lock' in p.stderr or 'the "resize" lock' in p.stderr, p.stderr
    assert kiln_img("info", "-U", ov).returncode == 0
    q.stop()


def test_raw_files_in_use_are_not_overwritten(workdir, servers):
    raw = os.path.join(workdir, "disk.raw")
    with open(raw, "wb") as f:
        f.write(os.urandom(1 << 20))
    before = sha256(raw)
    other = os.path.join(workdir, "other.qcow2")
    kiln_img("create", "-f", "qcow2", other, "1M")
    srv = servers.kiln("-f", "raw", raw, sock=os.path.join(workdir, "nbd.sock"))
    for args in (["create", "-f", "raw", raw, "4M"], ["convert", "-O", "raw", other, raw]):
        p = kiln_img(*args, check=False)
        assert_one_line_error(p, "kiln-img")
        assert 'the "write" lock' in p.stderr, (args, p.stderr)
        assert sha256(raw) == before, f"{args} changed a file in use"
    srv.assert_clean_stop()
    wait_unlocked(raw)
    kiln_img("convert", "-O", "raw", other, raw)
    assert os.path.getsize(raw) == 1 << 20 and sha256(raw) != before
