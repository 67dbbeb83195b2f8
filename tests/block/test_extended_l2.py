"""Extended L2 entries (subclusters) against QEMU: images with extended_l2=on of several cluster
sizes, made by qemu-img and by kiln-img, over a backing file; Kiln writes, zero-writes and
discards (whole and partial subclusters, aligned and not) through kiln-io, and afterwards:
every byte read back through kiln-img and qemu-img equals the model, `qemu-img check` is
clean, and `qemu-img map` and kiln-img map agree on what is data and what is zero. The other
way round, images QEMU wrote (partial subclusters, zero subclusters, compressed clusters) read
the same through Kiln."""

import json
import os
import random
import struct

import pytest

from kilntest import KiB, MiB, scaled
from kilntest.images import (Model, apply_model, assert_qemu_clean, assert_same_bytes,
                             kiln_img, kiln_io, make_raw, qemu_img, qemu_io, read_file,
                             to_raw_kiln, to_raw_qemu, write_script)
from kilntest.nbd import servers, unix_uri  # noqa: F401  (fixture)

CLUSTERS = [16 * KiB, 64 * KiB, 128 * KiB, 2 * MiB]


def overlay(workdir, cluster, maker, size):
    make_raw(os.path.join(workdir, "base.raw"), size, seed=cluster)
    img = os.path.join(workdir, "img.qcow2")
    opts = f"cluster_size={cluster},extended_l2=on"
    args = ["create", "-q", "-f", "qcow2", "-o", opts, "-b", "base.raw", "-F", "raw", img]
    if maker == "qemu":
        qemu_img(*args)
    else:
        kiln_img(*args)
    return img


def subcluster_ops(rng, size, cluster, count):
    """Writes, zero-writes and discards sized and placed around subcluster boundaries."""
    sc = cluster // 32
    ops = []
    for i in range(count):
        kind = rng.choices(["write", "zero", "zero-u", "discard", "flush"], [60, 12, 8, 12, 3])[0]
        if kind == "flush":
            ops.append(("flush", 0, 0, 0))
            continue
        r = rng.random()
        if r < 0.3:
            length = rng.randint(1, sc)              # inside one or two subclusters
        elif r < 0.6:
            length = sc * rng.randint(1, 8)          # whole subclusters
        elif r < 0.8:
            length = rng.randint(1, 2 * cluster)
        else:
            length = cluster * rng.randint(1, 2)     # whole clusters
        length = min(length, size)
        off = rng.randrange(0, size - length + 1)
        if rng.random() < 0.5:
            off -= off % sc
        if rng.random() < 0.2:
            off -= off % cluster
        ops.append((kind, off, length, rng.randint(1, 255)))
    return ops


def kiln_map(img):
    p = kiln_img("map", "-f", "qcow2", "--output=json", img)
    return json.loads(p.stdout)


def qemu_map(img):
    p = qemu_img("map", "-f", "qcow2", "--output=json", img)
    return json.loads(p.stdout)


def classify(ranges, size, step):
    """(data, zero) for every `step`-sized piece of the disk."""
    out = [None] * (size // step)
    for r in ranges:
        for i in range(r["start"] // step, (r["start"] + r["length"]) // step):
            out[i] = (r["data"], r["zero"])
    return out


def assert_maps_agree(img, size, step):
    ours = classify(kiln_map(img), size, step)
    theirs = classify(qemu_map(img), size, step)
    bad = [i for i in range(len(ours)) if ours[i] != theirs[i]]
    assert not bad, (f"map differs at {len(bad)} pieces of {step}; first at {bad[0] * step}: "
                     f"kiln {ours[bad[0]]} qemu {theirs[bad[0]]}")


@pytest.mark.parametrize("maker", ["qemu", "kiln"])
@pytest.mark.parametrize("cluster", CLUSTERS, ids=lambda c: f"c{c // KiB}k")
def test_kiln_writes_read_by_qemu(workdir, cluster, maker):
    size = max(8 * MiB, 6 * cluster)
    img = overlay(workdir, cluster, maker, size)
    info = json.loads(qemu_img("info", "--output=json", img).stdout)
    assert info["format-specific"]["data"]["extended-l2"] is True
    model = Model(read_file(os.path.join(workdir, "base.raw")))
    rng = random.Random(f"extl2-{cluster}-{maker}")
    ops = subcluster_ops(rng, size, cluster, scaled(400, 60))
    script = os.path.join(workdir, "ops.txt")
    write_script(script, ops)
    p = kiln_io(img, extra=["-f", "qcow2", "--script", script])
    assert p.stdout.count("ok ") == len(ops)
    for op in ops:
        apply_model(model, op)
    assert_qemu_clean(img)
    model.compare(read_file(to_raw_qemu(img, os.path.join(workdir, "qemu.raw"))),
                  f"c{cluster} {maker}: qemu-img read vs model")
    model.compare(read_file(to_raw_kiln(img, os.path.join(workdir, "kiln.raw"))),
                  f"c{cluster} {maker}: kiln-img read vs model")
    assert_maps_agree(img, size, cluster // 32)


def test_partial_write_copies_only_the_touched_subclusters(workdir):
    """A 4 KiB write into an unallocated 128 KiB cluster writes the subclusters it touches
    (4 KiB each): the rest of the cluster still reads from the backing file, and the map says
    so. A 5000-byte write touching three subclusters fills the two partial ones from the backing
    file around it."""
    cluster = 128 * KiB
    img = overlay(workdir, cluster, "kiln", 4 * MiB)
    base = read_file(os.path.join(workdir, "base.raw"))
    kiln_io(img, "write -P 0x11 131072 4096", "write -P 0x22 266000 5000",
            extra=["-f", "qcow2"])
    assert_qemu_clean(img)
    got = read_file(to_raw_qemu(img, os.path.join(workdir, "qemu.raw")))
    want = bytearray(base)
    want[131072:135168] = b"\x11" * 4096
    want[266000:271000] = b"\x22" * 5000
    assert_same_bytes(got, bytes(want), "qemu-img read")
    m = [r for r in qemu_map(img) if r["depth"] == 0 and r["data"]]
    assert [(r["start"], r["length"]) for r in m] == [(131072, 4096), (262144, 12288)], m


def test_qemu_written_subclusters_read_the_same(workdir):
    """QEMU's own subcluster writes, zero writes and discards over a backing file: Kiln reads
    the same bytes and reports the same map."""
    cluster = 64 * KiB
    size = 4 * MiB
    img = overlay(workdir, cluster, "qemu", size)
    qemu_io(img, "write -P 0x31 70000 3000", "write -P 0x32 0 2048", "write -z 4096 8192",
            "write -P 0x33 1048576 65536", "write -z 1050624 2048", "discard 2097152 65536",
            "write -P 0x34 3145000 100000")
    ours = read_file(to_raw_kiln(img, os.path.join(workdir, "kiln.raw")))
    theirs = read_file(to_raw_qemu(img, os.path.join(workdir, "qemu.raw")))
    assert_same_bytes(ours, theirs, "kiln-img vs qemu-img read")
    assert_maps_agree(img, size, cluster // 32)


def test_compressed_clusters(workdir):
    """qemu-img convert -c with extended_l2=on: Kiln reads the compressed clusters, and its
    partial writes into them (a whole-cluster copy: compressed clusters have no subclusters)
    leave an image QEMU reads the same and checks clean."""
    size = 4 * MiB
    src = make_raw(os.path.join(workdir, "src.raw"), size, seed=3)
    img = os.path.join(workdir, "img.qcow2")
    qemu_img("convert", "-c", "-O", "qcow2", "-o", "extended_l2=on,cluster_size=65536", src, img)
    assert_same_bytes(read_file(to_raw_kiln(img, os.path.join(workdir, "k.raw"))),
                      read_file(src), "kiln-img read of compressed extended-L2 image")
    model = Model(read_file(src))
    ops = [("write", 1000, 3000, 7), ("zero", 65536 * 3 + 2048, 4096, 0),
           ("write", 65536 * 5 - 100, 200, 9), ("discard", 65536 * 8, 65536, 0)]
    script = os.path.join(workdir, "ops.txt")
    write_script(script, ops)
    kiln_io(img, extra=["-f", "qcow2", "--script", script])
    for op in ops:
        apply_model(model, op)
    assert_qemu_clean(img)
    model.compare(read_file(to_raw_qemu(img, os.path.join(workdir, "q.raw"))), "qemu-img read")


def test_create_options_match_qemu(workdir):
    for opts in ("extended_l2=on,cluster_size=8192", "extended_l2=on,compat=0.10",
                 "extended_l2=maybe"):
        a = kiln_img("create", "-f", "qcow2", "-o", opts, os.path.join(workdir, "a.qcow2"), "1M",
                     check=False)
        b = qemu_img("create", "-f", "qcow2", "-o", opts, os.path.join(workdir, "b.qcow2"), "1M",
                     check=False)
        assert a.returncode == b.returncode == 1, (opts, a.stderr)
        assert a.stderr.replace("kiln-img", "qemu-img").replace("a.qcow2", "b.qcow2") == \
            b.stderr, (opts, a.stderr, b.stderr)
    a = kiln_img("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=131072",
                 os.path.join(workdir, "a.qcow2"), "1G")
    b = qemu_img("create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=131072",
                 os.path.join(workdir, "b.qcow2"), "1G")
    assert a.stdout.replace("a.qcow2", "b.qcow2") == b.stdout
    ia = kiln_img("info", os.path.join(workdir, "a.qcow2")).stdout
    ib = qemu_img("info", os.path.join(workdir, "b.qcow2")).stdout
    assert "extended l2: true" in ia
    assert ia.replace("a.qcow2", "b.qcow2") == ib
    assert_qemu_clean(os.path.join(workdir, "a.qcow2"))


def test_served_by_kiln_nbd(workdir, servers):  # noqa: F811
    """Through kiln-nbd: qemu-io's subcluster writes, zero writes and discards over NBD land
    in an image that qemu-img checks clean and reads like the client read it, and qemu-img
    convert of the export equals qemu-img's read of the file."""
    cluster = 128 * KiB
    size = 4 * MiB
    img = overlay(workdir, cluster, "kiln", size)
    sock = os.path.join(workdir, "nbd.sock")
    srv = servers.kiln("-f", "qcow2", "-t", img, sock=sock)
    uri = unix_uri(sock)
    qemu_io(uri, "write -P 0x41 5000 3000", "write -z 135168 8192", "write -P 0x42 262144 4096",
            "discard 524288 131072", "write -P 0x43 1000000 70000", fmt="raw")
    served = os.path.join(workdir, "served.raw")
    qemu_img("convert", "-f", "raw", "-O", "raw", uri, served)
    srv.assert_clean_stop()
    assert_qemu_clean(img)
    ours = read_file(served)
    assert_same_bytes(ours, read_file(to_raw_qemu(img, os.path.join(workdir, "q.raw"))),
                      "kiln-nbd export vs qemu-img read of the file")
    assert ours[5000:8000] == b"\x41" * 3000 and ours[135168:143360] == bytes(8192)
    assert ours[1000000:1070000] == b"\x43" * 70000


def test_resize_keeps_subclusters(workdir):
    """kiln-img resize of an extended-L2 image (the L1 table grows, 16-byte entries): old data
    stays, new areas take subcluster writes, qemu-img checks it clean and reads the same."""
    img = overlay(workdir, 32 * KiB, "kiln", 4 * MiB)
    kiln_io(img, "write -P 0x51 1000 5000", extra=["-f", "qcow2"])
    kiln_img("resize", "-f", "qcow2", img, "3G")
    kiln_io(img, "write -P 0x52 2G 3000", extra=["-f", "qcow2"])
    assert_qemu_clean(img)
    qemu_io(img, "read -P 0x51 1000 5000", "read -P 0x52 2G 3000", "read -P 0 3000M 4096")


def test_check_repairs_copied_flag_of_extended_entry(workdir):
    """kiln-img check -r all rewrites the COPIED flag of the second 16-byte entry in place (the
    descriptor at entry * 16, not * 8, which would land in the first entry's bitmap)."""
    img = os.path.join(workdir, "e.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=65536", img, "4M")
    qemu_io(img, "write -P 1 0 4k", "write -P 2 64k 4k")
    with open(img, "r+b") as f:
        f.seek(40)
        l1 = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1)
        l2 = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
        f.seek(l2 + 16)
        desc = struct.unpack(">Q", f.read(8))[0]
        f.seek(l2 + 16)
        f.write(struct.pack(">Q", desc & ~(1 << 63)))
    assert qemu_img("check", img, check=False).returncode == 2
    p = kiln_img("check", "-r", "all", img, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert_qemu_clean(img)
    qemu_io(img, "read -P 1 0 4k", "read -P 2 64k 4k", "read -P 0 4k 60k")
