"""Malformed images, one per test: kiln-img info and kiln-io read must fail with one clear
line, without a crash, a sanitizer report, or a giant allocation (address space is limited
in uninstrumented builds)."""

import hashlib
import json
import os
import shutil
import struct
import tempfile

import pytest

from kilntest.images import (KILN_IMG, KILN_IO, QEMU_IO, MiB, assert_one_line_error, create_qcow2,
                             header_get, header_set, kiln_img, kiln_io, make_raw, patch_bytes,
                             qemu_img, qemu_io, read_file, run)
from kilntest.nbd import Servers, control


def good_image(d, name="img.qcow2", **kw):
    img = create_qcow2(os.path.join(d, name), kw.pop("size", 4 * MiB), **kw)
    qemu_io(img, "write -P 0x11 0 128k", "write -P 0x22 1M 64k")
    return img


@pytest.fixture(scope="module")
def ctl():
    """The control socket of one kiln-nbd for the whole module: hostile images are added as
    exports through it, where a program sees why an image is refused."""
    d = tempfile.mkdtemp(prefix="kiln-it-hostile-", dir=os.environ.get("KILN_TEST_TMPDIR") or None)
    s = Servers(d)
    try:
        path = os.path.join(d, "ctl.sock")
        srv = s.kiln("-e", "0", sock=os.path.join(d, "nbd.sock"), control=path)
        yield path
        assert control(path, "list-exports") == {"ok": True, "exports": []}
        srv.assert_clean_stop()
    finally:
        s.close()
        shutil.rmtree(d, ignore_errors=True)


def expect_refused(img, chain=False, fmt=None, reason=None, ctl=None):
    """Refused by kiln-img info and kiln-io read with one line, and by kiln-nbd's control
    socket with that line and `reason` (docs/common.md): "corrupt" for an image that breaks the
    format or its limits, "unsupported" for valid qcow2 that Kiln does not read."""
    fmt_args = ["-f", fmt] if fmt else []
    info_args = ["info", *fmt_args] + (["--backing-chain"] if chain else []) + [img]
    p = kiln_img(*info_args, check=False, limit_memory=True, timeout=60)
    assert_one_line_error(p, "kiln-img")
    print(f"\n  {os.path.basename(img)}: {p.stderr.strip()}")
    p = kiln_io(img, "read 0 64k", extra=["-r", *fmt_args], check=False, limit_memory=True,
                timeout=60)
    assert_one_line_error(p, "kiln-io")
    r = control(ctl, "add-export", name="hostile", path=img, format="qcow2",
                **{"read-only": True})
    assert r["ok"] is False and r["reason"] == reason, r
    assert r["error"].startswith(img + ": ") and "\n" not in r["error"], r
    return p.stderr


def add_header_extension(img, ext_type, payload):
    """Appends a header extension after the existing ones (v3 header, 104 bytes)."""
    hdr_len = header_get(img, "header_length")
    with open(img, "r+b") as f:
        f.seek(hdr_len)
        pos = hdr_len
        while True:
            f.seek(pos)
            t, n = struct.unpack(">II", f.read(8))
            if t == 0:
                break
            pos += 8 + (n + 7) // 8 * 8
        padded = payload + b"\0" * ((8 - len(payload) % 8) % 8)
        f.seek(pos)
        f.write(struct.pack(">II", ext_type, len(payload)) + padded + struct.pack(">II", 0, 0))


def test_bad_magic(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "magic", 0x12345678)
    expect_refused(img, fmt="qcow2", reason="corrupt", ctl=ctl)


def test_truncated_header(workdir, ctl):
    img = good_image(workdir)
    os.truncate(img, 50)
    expect_refused(img, fmt="qcow2", reason="corrupt", ctl=ctl)


def test_truncated_tables(workdir, ctl):
    img = good_image(workdir)
    # Cut the file inside the metadata: the refcount table and L1 table are gone.
    os.truncate(img, 65536 + 100)
    expect_refused(img, reason="corrupt", ctl=ctl)


@pytest.mark.parametrize("bits", [8, 22, 63])
def test_cluster_bits_out_of_range(workdir, bits, ctl):
    img = good_image(workdir)
    header_set(img, "cluster_bits", bits)
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_l1_past_eof(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "l1_table_offset", 1 << 40)
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_l1_absurdly_large(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "l1_size", 0x7fffffff)
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_virtual_size_absurd(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "size", 1 << 62)
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_refcount_table_past_eof(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "refcount_table_offset", 1 << 40)
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_refcount_table_absurdly_large(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "refcount_table_clusters", 0xffffffff)
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_l1_at_offset_zero(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "l1_table_offset", 0)
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_refcount_table_overlaps_l1(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "refcount_table_offset", header_get(img, "l1_table_offset"))
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_backing_name_too_long(workdir, ctl):
    img = good_image(workdir)
    name = b"b" * 1500
    size = os.path.getsize(img)
    patch_bytes(img, size, name)
    header_set(img, "backing_file_offset", size)
    header_set(img, "backing_file_size", len(name))
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_backing_loop(workdir, ctl):
    a = os.path.join(workdir, "a.qcow2")
    b = os.path.join(workdir, "b.qcow2")
    create_qcow2(b, 4 * MiB)
    create_qcow2(a, 4 * MiB, backing=b, backing_fmt="qcow2")
    # Point b at a: create b again over a, then restore a's header pointing at b.
    os.rename(a, a + ".keep")
    create_qcow2(a, 4 * MiB)
    os.remove(b)
    create_qcow2(b, 4 * MiB, backing=a, backing_fmt="qcow2")
    os.replace(a + ".keep", a)
    expect_refused(a, chain=True, reason="corrupt", ctl=ctl)


def test_backing_self_loop(workdir, ctl):
    a = os.path.join(workdir, "a.qcow2")
    create_qcow2(a, 4 * MiB)
    tmp = os.path.join(workdir, "t.qcow2")
    create_qcow2(tmp, 4 * MiB, backing=a, backing_fmt="qcow2")
    os.replace(tmp, a)  # a now names itself as backing
    expect_refused(a, chain=True, reason="corrupt", ctl=ctl)


def test_backing_without_format(workdir, ctl):
    base = make_raw(os.path.join(workdir, "base.raw"), 4 * MiB, seed=1)
    img = good_image(workdir, backing=base, backing_fmt="raw")
    # Turn the backing-format extension (0xe2792aca) into an unknown, ignorable one.
    with open(img, "r+b") as f:
        head = f.read(65536)
    pos = head.find(struct.pack(">I", 0xe2792aca))
    assert pos > 0
    patch_bytes(img, pos, struct.pack(">I", 0x12345678))
    expect_refused(img, chain=True, reason="unsupported", ctl=ctl)


def test_encryption(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "crypt_method", 1)
    err = expect_refused(img, reason="unsupported", ctl=ctl)
    assert "encrypt" in err.lower(), err


def test_external_data_file(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "incompatible_features", header_get(img, "incompatible_features") | 4)
    err = expect_refused(img, reason="unsupported", ctl=ctl)
    assert "data" in err.lower(), err


def test_unknown_incompatible_bit(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "incompatible_features", header_get(img, "incompatible_features") | 1 << 20)
    expect_refused(img, reason="unsupported", ctl=ctl)


def test_extended_l2_small_clusters(workdir, ctl):
    """Extended L2 entries with 4 KiB clusters (128-byte subclusters): QEMU refuses them too."""
    img = good_image(workdir, cluster=4096)
    header_set(img, "incompatible_features", header_get(img, "incompatible_features") | 16)
    err = expect_refused(img, reason="unsupported", ctl=ctl)
    assert "extended L2" in err, err


def extended_image_with_entry(d, desc=None, bitmap=None, compressed=False):
    """An extended-L2 image whose first L2 entry is patched: `desc` (descriptor, None keeps
    it) and `bitmap`. Returns the image."""
    img = os.path.join(d, "ext.qcow2")
    if compressed:
        src = make_raw(os.path.join(d, "src.raw"), 1 * MiB, seed=1)
        qemu_img("convert", "-c", "-O", "qcow2", "-o", "extended_l2=on", src, img)
    else:
        create_qcow2(img, 1 * MiB, extra_opts="extended_l2=on")
        qemu_io(img, "write -P 0x11 0 4k")
    l1 = header_get(img, "l1_table_offset")
    with open(img, "rb") as f:
        f.seek(l1)
        l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
        f.seek(l2)
        old_desc, old_bitmap = struct.unpack(">QQ", f.read(16))
    patch_bytes(img, l2, struct.pack(">QQ", old_desc if desc is None else desc,
                                     old_bitmap if bitmap is None else bitmap))
    return img


@pytest.mark.parametrize("case", ["alloc-and-zero", "alloc-without-host", "compressed-bitmap"])
def test_extended_l2_invalid_bitmap(workdir, case):
    """qcow2.txt's invalid subcluster bitmaps: reading the cluster fails with one line (EIO),
    without a crash; kiln-img check counts a corruption and names it, as qemu-img check
    finds the image corrupt too."""
    if case == "alloc-and-zero":
        img = extended_image_with_entry(workdir, bitmap=1 | (1 << 32))
    elif case == "alloc-without-host":
        img = extended_image_with_entry(workdir, desc=0, bitmap=1)
    else:
        img = extended_image_with_entry(workdir, bitmap=1 << 40, compressed=True)
    p = kiln_io(img, "read 0 4k", extra=["-r", "-f", "qcow2"], check=False, limit_memory=True,
                timeout=60)
    assert_one_line_error(p, "kiln-io")
    assert "Input/output error" in p.stderr, p.stderr
    c = kiln_img("check", img, check=False, timeout=60)
    assert c.returncode == 2, (c.returncode, c.stdout, c.stderr)
    assert "subcluster" in c.stdout + c.stderr, c.stdout + c.stderr
    assert "Sanitizer" not in c.stderr and "runtime error" not in c.stderr, c.stderr
    assert qemu_img("check", img, check=False).returncode == 2


def test_version_unknown(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "version", 4)
    expect_refused(img, reason="unsupported", ctl=ctl)


def test_refcount_order_too_big(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "refcount_order", 7)
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_header_length_absurd(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "header_length", 0xfffffff0)
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_header_extension_absurd_length(workdir, ctl):
    img = good_image(workdir)
    add_header_extension(img, 0x12345678, b"x")
    # Make that extension claim to be 4 GiB long.
    hdr_len = header_get(img, "header_length")
    with open(img, "rb") as f:
        f.seek(hdr_len)
        data = f.read(4096)
    pos = hdr_len + data.find(struct.pack(">I", 0x12345678))
    patch_bytes(img, pos + 4, struct.pack(">I", 0xfffffff0))
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_snapshot_table_absurd(workdir, ctl):
    img = good_image(workdir)
    header_set(img, "nb_snapshots", 0x7fffffff)
    header_set(img, "snapshots_offset", 65536)
    expect_refused(img, reason="corrupt", ctl=ctl)


def test_l2_entry_past_eof_reads_fail_cleanly(workdir):
    """An L2 entry pointing far past the end of the file: reading it must fail (or read zeros)
    without a crash; the header itself is fine so info succeeds."""
    img = good_image(workdir)
    l1 = header_get(img, "l1_table_offset")
    with open(img, "rb") as f:
        f.seek(l1)
        l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
    patch_bytes(img, l2, struct.pack(">Q", (1 << 63) | (1 << 50)))
    p = kiln_io(img, "read 0 64k", extra=["-r"], check=False, limit_memory=True, timeout=60)
    assert p.returncode in (0, 1), p.stderr
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    if p.returncode:
        assert_one_line_error(p, "kiln-io")


@pytest.mark.parametrize("write", ["write -P 0x77 4k 4k", "write -P 0x77 0 128k"],
                         ids=["one-cluster", "run-of-clusters"])
def test_l2_entry_with_unaligned_host_offset_is_not_written_through(workdir, write):
    """An L2 entry of ours (COPIED) whose host offset is not cluster-aligned: reads refuse it,
    and so must writes, in place or not. Written through, the data would land across two host
    clusters, wherever the entry says (here: 512 bytes into guest cluster 0's data). The second
    case writes two clusters at once (one host write for a run of allocated clusters)."""
    img = good_image(workdir)
    l1 = header_get(img, "l1_table_offset")
    l2 = be64(img, l1) & 0x00fffffffffffe00
    host = be64(img, l2) & 0x00fffffffffffe00
    patch_bytes(img, l2, struct.pack(">Q", (1 << 63) | (host + 512)))
    before = read_file(img)
    p = kiln_io(img, write, check=False, timeout=60)
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    assert "Input/output error" in p.stdout + p.stderr, p.stdout + p.stderr
    # Guest cluster 0's own host cluster, which the bad entry points 512 bytes into, is as it
    # was. (Guest cluster 1 is a good one: the run case may write it.)
    assert read_file(img)[host:host + 65536] == before[host:host + 65536]


@pytest.mark.parametrize("target", ["l1_table_offset", "refcount_table_offset"])
@pytest.mark.parametrize("write", ["write -P 0x77 4k 4k", "write -P 0x77 0 128k"],
                         ids=["one-cluster", "run-of-clusters"])
def test_l2_entry_pointing_at_metadata_is_not_written_through(workdir, target, write):
    """An L2 entry of ours (COPIED), aligned and inside the file, but pointing at the L1 or
    the refcount table: a guest write through it would rewrite the image's own tables, and
    with them its whole mapping. QEMU's overlap check refuses it; so must Kiln, in place or
    not, and leave those bytes as they were. (The header's cluster cannot be named: an entry
    whose offset is 0 is unallocated.)"""
    img = good_image(workdir)
    l1 = header_get(img, "l1_table_offset")
    l2 = be64(img, l1) & 0x00fffffffffffe00
    victim = header_get(img, target)
    patch_bytes(img, l2, struct.pack(">Q", (1 << 63) | victim))
    before = read_file(img)
    p = kiln_io(img, write, check=False, timeout=60)
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    assert "Input/output error" in p.stdout + p.stderr, p.stdout + p.stderr
    assert read_file(img)[victim:victim + 65536] == before[victim:victim + 65536]


# --- Refcount structures that say the header and tables are free -------------------------

def hostile_refcounts(d, case):
    """An image whose refcounts claim that the clusters holding the header and the tables are
    free: the first refcount table entry with reserved bits set (and, as a fuzzer found, later
    entries past the end of the file), the first entry zero (no refcount block for the range
    holding the header), or the first refcount block zeroed."""
    img = good_image(d)
    rt = header_get(img, "refcount_table_offset")
    rb = be64(img, rt)
    if case == "reserved-bits":
        patch_bytes(img, rt, struct.pack(">QQ", rb | 4, 1 << 61))
    elif case == "zero-entry":
        patch_bytes(img, rt, struct.pack(">Q", 0))
    else:
        patch_bytes(img, rb, bytes(65536))
    return img


@pytest.mark.parametrize("case", ["reserved-bits", "zero-entry", "zeroed-block"])
def test_write_with_hostile_refcounts_fails_and_keeps_the_image(workdir, case, ctl):
    """A write that must allocate fails with EIO at once instead of handing out the header's
    cluster (which overwrote the header, or, for the zero entry, looped forever writing a
    refcount block over it); the file is unchanged, kiln-nbd keeps serving, and check -r all
    then repairs the image so that writes work and qemu-img check is clean."""
    img = hostile_refcounts(workdir, case)
    before = read_file(img)
    p = kiln_io(img, "write -P 0x77 2M 4k", extra=["-f", "qcow2"], check=False,
                limit_memory=True, timeout=60)
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    assert p.returncode == 1 and "Input/output error" in p.stderr, p.stderr
    assert read_file(img) == before

    r = control(ctl, "add-export", name="refcounts", path=img, format="qcow2")
    assert r["ok"] is True, r
    try:
        sock = os.path.join(os.path.dirname(ctl), "nbd.sock")
        url = f"nbd+unix:///refcounts?socket={sock}"
        p = run([QEMU_IO, "-f", "raw", "-c", "write -P 0x77 2M 4k", url], check=False, timeout=60)
        assert "error" in (p.stdout + p.stderr).lower(), (p.stdout, p.stderr)
        p = run([QEMU_IO, "-f", "raw", "-c", "read -P 0x11 0 128k", url], check=False,
                timeout=60)
        assert p.returncode == 0 and "error" not in (p.stdout + p.stderr).lower(), p.stdout
    finally:
        assert control(ctl, "remove-export", name="refcounts")["ok"] is True
    assert read_file(img) == before

    kiln_img("check", "-r", "all", img, check=False, timeout=60)
    kiln_io(img, "write -P 0x77 2M 4k", extra=["-f", "qcow2"], timeout=60)
    qemu_img("check", img)
    qemu_io(img, "read -P 0x11 0 128k", "read -P 0x22 1M 64k", "read -P 0x77 2M 4k")


# --- A raw disk whose guest wrote a qcow2 header naming a host file -------------------------

SECRET = b"HOST-SECRET root:$6$salt$hash:19000:0:99999:7:::\n"


def probed_disk(d):
    """A guest's raw disk holding a qcow2 header (as the guest could write it) that names a
    host file, format raw, as backing file."""
    secret = os.path.join(d, "shadow")
    with open(secret, "wb") as f:
        f.write(SECRET * 4096)
    disk = os.path.join(d, "guest.raw")
    qemu_img("create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", disk, "4M")
    return disk, secret


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize("args", [
    ("kiln-io", ["{disk}", "-c", "read 0 64k"]),
    ("kiln-io", ["-r", "{disk}", "-c", "read 0 64k"]),
    ("kiln-io", ["{disk}", "-c", "write -P 1 100 10", "-c", "flush"]),
    ("kiln-img", ["map", "{disk}"]),
    ("kiln-img", ["map", "--output=json", "{disk}"]),
    ("kiln-img", ["convert", "-O", "raw", "{disk}", "{out}"]),
    ("kiln-img", ["info", "--backing-chain", "{disk}"]),
], ids=["io-rw", "io-ro", "io-write", "map", "map-json", "convert", "info-chain"])
def test_probed_image_naming_a_backing_file_is_refused(workdir, args):
    """Without a format, the tools refuse the disk with one line naming the backing file and
    telling how to give the format; the host file reaches neither the output nor the disk."""
    tool, argv = args
    disk, secret = probed_disk(workdir)
    out = os.path.join(workdir, "out.raw")
    before = sha256(disk)
    argv = [a.format(disk=disk, out=out) for a in argv]
    p = run([KILN_IO if tool == "kiln-io" else KILN_IMG, *argv], check=False)
    assert SECRET not in (p.stdout + p.stderr).encode()
    assert_one_line_error(p, tool)
    assert f"backing file '{secret}'" in p.stderr and "-f qcow2" in p.stderr, p.stderr
    assert sha256(disk) == before
    assert not os.path.exists(out) or SECRET not in read_file(out)


def test_probed_image_header_commands_still_work(workdir):
    """info and check read the header only: they work on the probed disk, show the backing
    file's name and open nothing. With an explicit format the tools do what they are told."""
    disk, secret = probed_disk(workdir)
    before = sha256(disk)
    p = kiln_img("info", disk)
    assert f"backing file: {secret}" in p.stdout and "backing file format: raw" in p.stdout
    assert json.loads(kiln_img("info", "--output=json", disk).stdout)["backing-filename"] == secret
    assert kiln_img("check", disk).returncode == 0
    assert sha256(disk) == before
    # Trusted as qcow2: the chain is opened (what the user asked for).
    p = kiln_io(disk, "read -P 0x48 0 1", extra=["-r", "-f", "qcow2"])
    assert p.returncode == 0
    # As raw (what it really is): the guest's own bytes, the header among them.
    dump = os.path.join(workdir, "dump.raw")
    kiln_io(disk, f"dump {dump}", extra=["-r", "-f", "raw"])
    assert read_file(dump)[:os.path.getsize(disk)] == read_file(disk)
    assert SECRET not in read_file(dump)


# --- check and the repair of a dirty image: bounded by what the file really allocates --------
# Each image is a few MiB on disk; before the bounds, check sized its counters from the file's
# length (a sparse terabyte), walked every snapshot's tables again, and printed one line per
# leaked cluster.

def be64(path, off):
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack(">Q", f.read(8))[0]


def append_cluster_aligned(path, data, cluster):
    size = os.path.getsize(path)
    off = (size + cluster - 1) // cluster * cluster
    patch_bytes(path, off, data)
    return off


def sparse_terabyte(d, scattered):
    """512-byte clusters, the file extended (sparse) to 1 TiB; with `scattered`, 32 L2 entries
    point at clusters spread over that terabyte (nothing counts them: corruptions)."""
    img = create_qcow2(os.path.join(d, "sparse.qcow2"), 64 * MiB, cluster=512)
    qemu_io(img, "write -P 0x5a 0 16k")  # the first L2 table's entries 0..31
    l2 = be64(img, header_get(img, "l1_table_offset")) & 0x00FFFFFFFFFFFE00
    if scattered:
        spread = [((1 << 30) + i * 31337 * MiB) // 512 * 512 for i in range(32)]
        entries = b"".join(struct.pack(">Q", (1 << 63) | off) for off in spread)
        patch_bytes(img, l2 + 32 * 8, entries)
    os.truncate(img, 1 << 40)
    return img


def shared_snapshots(d, count=20000):
    """`count` internal snapshots that all share one 1 MiB L1 table whose 131072 entries all
    point at the same L2 table (mapping 64 data clusters)."""
    cluster = 65536
    img = create_qcow2(os.path.join(d, "snaps.qcow2"), 64 * MiB, cluster=cluster)
    qemu_io(img, f"write -P 0x33 0 {64 * cluster}")
    l2 = be64(img, header_get(img, "l1_table_offset")) & 0x00FFFFFFFFFFFE00
    l1_entries = 131072
    l1 = append_cluster_aligned(img, struct.pack(">Q", l2) * l1_entries, cluster)
    entries = []
    for i in range(count):
        ident, name = str(i + 1).encode(), f"s{i}".encode()
        entry = struct.pack(">QIHHIIQII", l1, l1_entries, len(ident), len(name), 0, 0, 0, 0, 16)
        entry += struct.pack(">QQ", 0, 64 * MiB) + ident + name
        entries.append(entry + b"\0" * (-len(entry) % 8))
    snaps = append_cluster_aligned(img, b"".join(entries), cluster)
    header_set(img, "snapshots_offset", snaps)
    header_set(img, "nb_snapshots", count)
    return img


def leaky_refblocks(d, distinct=100):
    """Refcount blocks full of ones: `distinct` blocks (3.2 million leaked clusters) and every
    other refcount table entry pointing at the first of them."""
    cluster = 65536
    img = create_qcow2(os.path.join(d, "leaky.qcow2"), 64 * MiB, cluster=cluster)
    qemu_io(img, "write -P 0x44 0 1M")
    full = struct.pack(">H", 1) * (cluster // 2)
    blocks = [append_cluster_aligned(img, full, cluster) for _ in range(distinct)]
    rt = header_get(img, "refcount_table_offset")
    entries = cluster // 8 * header_get(img, "refcount_table_clusters")
    table = [struct.pack(">Q", be64(img, rt))]
    table += [struct.pack(">Q", b) for b in blocks]
    table += [struct.pack(">Q", blocks[0])] * (entries - len(table))
    patch_bytes(img, rt, b"".join(table))
    return img


def check_json(img):
    p = kiln_img("check", "--output=json", img, check=False, limit_memory=True, timeout=120)
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    assert p.returncode in (0, 2, 3), f"exit {p.returncode}: {p.stderr[-2000:]}"
    lines = p.stderr.splitlines()
    assert len(lines) <= 60, f"{len(lines)} lines of findings:\n" + "\n".join(lines[:20])
    return p.returncode, json.loads(p.stdout), lines


@pytest.mark.parametrize("scattered", [False, True], ids=["clean", "scattered"])
def test_check_sparse_terabyte(workdir, scattered):
    img = sparse_terabyte(workdir, scattered)
    rc, res, lines = check_json(img)
    if scattered:
        # Each scattered cluster: refcount 0 for one reference, and a COPIED flag that says 1.
        assert rc == 2 and res["corruptions"] == 64, (res, lines)
        assert any("more" in line for line in lines), lines
    else:
        assert rc == 0 and res.get("corruptions", 0) == 0 and res.get("leaks", 0) == 0, lines


def test_check_snapshots_sharing_tables(workdir):
    img = shared_snapshots(workdir)
    rc, res, lines = check_json(img)
    # The shared L2 table and its 64 clusters are referenced 2.6 billion times; the 16 clusters
    # of the L1 table and those of the snapshot table have no refcount: corruptions, each
    # cluster counted once.
    assert rc == 2 and res["corruptions"] >= 64 + 1 + 16, res


def test_check_millions_of_leaks(workdir):
    img = leaky_refblocks(workdir)
    rc, res, lines = check_json(img)
    assert rc == 2, (res, lines)  # refcount blocks referenced many times over: corruptions
    assert res["leaks"] >= 100 * 32768 - 100, res
    assert any("more leaked clusters" in line for line in lines), lines


@pytest.mark.parametrize("build", [sparse_terabyte.__name__, shared_snapshots.__name__,
                                   leaky_refblocks.__name__])
def test_dirty_hostile_image_writable_open_is_bounded(workdir, build):
    """A writable open of a dirty image recounts its refcounts (on a reactor thread): it
    repairs the image or refuses it with one line, within bounded memory and time."""
    img = {"sparse_terabyte": lambda d: sparse_terabyte(d, True),
           "shared_snapshots": shared_snapshots, "leaky_refblocks": leaky_refblocks}[build](workdir)
    header_set(img, "incompatible_features", header_get(img, "incompatible_features") | 1)
    p = kiln_io(img, "read 0 4k", "write -P 7 0 4k", extra=["-f", "qcow2"], check=False,
                limit_memory=True, timeout=120)
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    if p.returncode:
        assert_one_line_error(p, "kiln-io")
        assert "repair" in p.stderr, p.stderr
    else:
        rc, res, lines = check_json(img)
        assert rc in (0, 3), (res, lines)
