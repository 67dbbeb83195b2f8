"""kiln-img amend -o refcount_bits=N against qemu-img 7.2: every width to every width on images
with data, internal snapshots and compressed clusters. Where qemu-img changes the width,
kiln-img's result passes qemu-img check, shows the new width in qemu-img info, and holds the
same active image and snapshots (qemu-img compare); where qemu-img refuses (a refcount the new
width cannot hold, compat=0.10, a bad width), kiln-img refuses with the same message and leaves
the file as it was."""

import json
import os
import random
import shutil
import tempfile

import pytest

from kilntest import sha256
from kilntest.images import (MiB, assert_one_line_error, assert_qemu_clean, create_qcow2,
                             fill_qemu, kiln_img, qemu_img, qemu_io, read_file)

WIDTHS = [1, 2, 4, 8, 16, 32, 64]
CLUSTER = 4096
SIZE = 2 * MiB


def half_random_raw(path):
    """Clusters that compress to about half: compressed clusters share host clusters."""
    rng = random.Random(5)
    with open(path, "wb") as f:
        for i in range(SIZE // CLUSTER):
            if i % 3 == 2:
                f.write(bytes(CLUSTER))
            else:
                f.write(rng.randbytes(CLUSTER // 2) + bytes([i % 251]) * (CLUSTER // 2))
    return path


def source(d, bits):
    """An image of width `bits` with as much sharing as the width allows: data only for 1 bit,
    a snapshot for 2, compressed clusters and two snapshots from 4 up."""
    img = os.path.join(d, f"src{bits}.qcow2")
    if bits < 4:
        create_qcow2(img, SIZE, cluster=CLUSTER, refcount_bits=bits)
        fill_qemu(img, SIZE, CLUSTER, seed=bits, count=20)
    else:
        raw = half_random_raw(os.path.join(d, "half.raw"))
        qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o",
                 f"cluster_size={CLUSTER},refcount_bits={bits}", raw, img)
        qemu_io(img, "write -P 0x31 0 64k", "write -P 0x32 300000 5000")
    if bits >= 2:
        qemu_img("snapshot", "-c", "s1", img)
        qemu_io(img, "write -P 0x41 100k 200k", "write -z 1M 64k", f"write -P 0x42 {SIZE - 4096} 4k")
    if bits >= 4:
        qemu_img("snapshot", "-c", "s2", img)
        qemu_io(img, "write -P 0x51 40k 8k", "discard 1536k 64k")
    assert_qemu_clean(img)
    return img


@pytest.fixture(scope="module")
def sources():
    # A directory of its own, not tmp_path_factory's: pytest keeps its base directories (and
    # a link into them) in /tmp after every run.
    d = tempfile.mkdtemp(prefix="kiln-amend-")
    try:
        yield {b: source(d, b) for b in WIDTHS}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def snapshot_names(img):
    info = json.loads(qemu_img("info", "--output=json", img).stdout)
    return [s["name"] for s in info.get("snapshots", [])]


def same_snapshot(a, b, name, d):
    outs = []
    for n, img in enumerate((a, b)):
        out = os.path.join(d, f"snap{n}.raw")
        qemu_img("convert", "-l", f"snapshot.name={name}", "-f", "qcow2", "-O", "raw", img, out)
        outs.append(read_file(out))
    return outs[0] == outs[1]


@pytest.mark.parametrize("old", WIDTHS)
def test_every_width_to_every_width(workdir, sources, old):
    src = sources[old]
    refused = []
    for new in WIDTHS:
        if new == old:
            continue
        ours, theirs = os.path.join(workdir, "k.qcow2"), os.path.join(workdir, "q.qcow2")
        shutil.copyfile(src, ours)
        shutil.copyfile(src, theirs)
        before = sha256(ours)
        k = kiln_img("amend", "-f", "qcow2", "-o", f"refcount_bits={new}", ours, check=False)
        q = qemu_img("amend", "-f", "qcow2", "-o", f"refcount_bits={new}", theirs, check=False)
        assert k.returncode == q.returncode, (old, new, k.stderr, q.stderr)
        if q.returncode:
            assert_one_line_error(k, "kiln-img")
            assert k.stderr.replace("kiln-img: ", "qemu-img: ") == q.stderr, (old, new)
            assert sha256(ours) == before
            refused.append(new)
            continue
        assert k.stdout == q.stdout == ""
        assert_qemu_clean(ours)
        info = json.loads(qemu_img("info", "--output=json", ours).stdout)
        assert info["format-specific"]["data"]["refcount-bits"] == new
        p = qemu_img("compare", "-f", "qcow2", "-F", "qcow2", src, ours, check=False)
        assert p.returncode == 0, (old, new, p.stdout)
        for name in snapshot_names(src):
            assert same_snapshot(src, ours, name, workdir), (old, new, name)
        # Kiln's own check reads the new width the same way.
        kiln_img("check", "-f", "qcow2", ours)
    # What is refused is the narrowest widths (those below the largest refcount), and the
    # sources share enough for some refusals.
    assert refused == WIDTHS[:len(refused)], refused
    if old >= 2:
        assert 1 in refused


def test_overflow_refused_untouched_and_exact_message(workdir, sources):
    img = os.path.join(workdir, "k.qcow2")
    shutil.copyfile(sources[8], img)
    before = read_file(img)
    p = kiln_img("amend", "-f", "qcow2", "-o", "refcount_bits=1", img, check=False)
    assert_one_line_error(p, "kiln-img")
    assert "Cannot decrease refcount entry width to 1 bits: Cluster at offset 0x" in p.stderr
    assert read_file(img) == before


@pytest.mark.parametrize("opts,amend", [
    ("compat=0.10", "refcount_bits=8"),
    ("compat=0.10", "compat=0.10,refcount_bits=32"),
    ("compat=1.1", "refcount_bits=3"),
    ("compat=1.1", "refcount_bits=128"),
    ("compat=1.1,refcount_bits=8", "compat=0.10"),
])
def test_refused_like_qemu(workdir, opts, amend):
    imgs = []
    for who in ("k", "q"):
        img = os.path.join(workdir, f"{who}.qcow2")
        qemu_img("create", "-q", "-f", "qcow2", "-o", opts, img, "4M")
        qemu_io(img, "write -P 7 0 100k")
        imgs.append(img)
    before = read_file(imgs[0])
    k = kiln_img("amend", "-f", "qcow2", "-o", amend, imgs[0], check=False)
    q = qemu_img("amend", "-f", "qcow2", "-o", amend, imgs[1], check=False)
    assert k.returncode == q.returncode == 1, (k.stderr, q.stderr)
    assert_one_line_error(k, "kiln-img")
    assert k.stderr.replace("kiln-img: ", "qemu-img: ") == q.stderr
    assert read_file(imgs[0]) == before


def test_with_compat_change(workdir):
    """A v2 image upgraded and given another width in one amend, and back down to 16 bits and
    v2 in one amend, as qemu-img orders the steps."""
    img = create_qcow2(os.path.join(workdir, "v2.qcow2"), 4 * MiB, compat="0.10")
    fill_qemu(img, 4 * MiB, 65536, seed=3)
    want = os.path.join(workdir, "want.raw")
    qemu_img("convert", "-f", "qcow2", "-O", "raw", img, want)
    kiln_img("amend", "-f", "qcow2", "-o", "compat=1.1,refcount_bits=4", img)
    info = json.loads(qemu_img("info", "--output=json", img).stdout)["format-specific"]["data"]
    assert (info["compat"], info["refcount-bits"]) == ("1.1", 4)
    assert_qemu_clean(img)
    kiln_img("amend", "-f", "qcow2", "-o", "compat=0.10,refcount_bits=16", img)
    info = json.loads(qemu_img("info", "--output=json", img).stdout)["format-specific"]["data"]
    assert (info["compat"], info["refcount-bits"]) == ("0.10", 16)
    assert_qemu_clean(img)
    assert qemu_img("compare", "-f", "raw", "-F", "qcow2", want, img).returncode == 0


def test_hostile_refcount_table_bounded(workdir):
    """A refcount table whose entries all name one block, and one that points past the end of
    the file: a clear error, nothing written."""
    img = create_qcow2(os.path.join(workdir, "h.qcow2"), 4 * MiB, cluster=CLUSTER)
    qemu_io(img, "write -P 1 0 1M")
    data = bytearray(read_file(img))
    rt = int.from_bytes(data[48:56], "big")
    block = data[rt:rt + 8]
    for i in range(CLUSTER // 8):
        data[rt + 8 * i:rt + 8 * i + 8] = block
    with open(img, "wb") as f:
        f.write(data)
    p = kiln_img("amend", "-f", "qcow2", "-o", "refcount_bits=64", img, check=False, timeout=60)
    assert_one_line_error(p, "kiln-img")
    assert "used twice" in p.stderr
    assert read_file(img) == data
    data[rt:rt + 8] = (1 << 50).to_bytes(8, "big")
    with open(img, "wb") as f:
        f.write(data)
    p = kiln_img("amend", "-f", "qcow2", "-o", "refcount_bits=64", img, check=False, timeout=60)
    assert_one_line_error(p, "kiln-img")
    assert "outside the file" in p.stderr
    assert read_file(img) == data
