"""kiln-img compare, measure, commit, rebase and amend against qemu-img 7.2 on the same inputs:
the same output and exit codes, and images that qemu-img check finds clean and qemu-img compare
finds holding what the guest saw before."""

import json
import os
import re
import subprocess
import time

import pytest

from kilntest import sampled_matrix
from kilntest.nbd import servers  # noqa: F401  (fixture)
from kilntest.images import (KILN_IMG, QEMU_IMG, MiB, assert_one_line_error, assert_qemu_clean,
                             create_qcow2, fill_qemu, kiln_img, lock_holder_present, make_raw,
                             qemu_img, qemu_io, read_file, wait_unlocked)


def both(*args):
    return kiln_img(*args, check=False), qemu_img(*args, check=False)


def assert_same(ours, theirs):
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), \
        f"kiln rc={ours.returncode} {ours.stdout!r} {ours.stderr!r}\n" \
        f"qemu rc={theirs.returncode} {theirs.stdout!r} {theirs.stderr!r}"


def path(d, name):
    return os.path.join(d, name)


def qemu_same(a, b, fmt_a="qcow2", fmt_b="qcow2"):
    p = qemu_img("compare", "-f", fmt_a, "-F", fmt_b, a, b, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def info(img):
    return json.loads(qemu_img("info", "-U", "--output=json", img).stdout)


# ---------------------------------------------------------------------------------------------
# compare

def pair(d, size_a=4 * MiB, size_b=4 * MiB, opts=""):
    a = create_qcow2(path(d, "a.qcow2"), size_a, extra_opts=opts or None)
    b = create_qcow2(path(d, "b.qcow2"), size_b, extra_opts=opts or None)
    qemu_io(a, "write -P 1 0 1M", "write -P 3 2M 64k")
    qemu_io(b, "write -P 1 0 1M", "write -P 3 2M 64k")
    return a, b


# (commands for qemu-io on b) -> the two images differ at a sector qemu-img reports.
DIFFERENCES = {
    "identical": [],
    "first-sector": ["write -P 2 0 100"],
    "mid-cluster": ["write -P 2 70000 1"],
    "unallocated-vs-data": ["write -P 9 3M 10"],
    "zero-vs-data": ["write -z 2M 64k"],
    "explicit-zeros-vs-unallocated": ["write -P 0 3M 64k"],
    "same-bytes-different-allocation": ["write -P 3 2M 4096", "write -z 2M+4096 4096"],
}


@pytest.mark.parametrize("case", sorted(DIFFERENCES))
@pytest.mark.parametrize("strict", [False, True])
def test_compare_matches_qemu(workdir, case, strict):
    a, b = pair(workdir)
    cmds = [c.replace("2M+4096", str(2 * MiB + 4096)) for c in DIFFERENCES[case]]
    if cmds:
        qemu_io(b, *cmds)
    flags = ["-s"] if strict else []
    results = [both("compare", *flags, x, y) for x, y in ((a, b), (b, a))]
    for ours, theirs in results:
        assert_same(ours, theirs)
    assert results[0][0].returncode in (0, 1)


@pytest.mark.parametrize("strict", [False, True])
def test_compare_size_mismatch(workdir, strict):
    a, b = pair(workdir, 4 * MiB, 6 * MiB)
    flags = ["-s"] if strict else []
    assert_same(*both("compare", *flags, a, b))  # the extra part is zero: identical (warning)
    qemu_io(b, "write -P 7 5M+700 3".replace("5M+700", str(5 * MiB + 700)))
    assert_same(*both("compare", *flags, a, b))
    assert_same(*both("compare", *flags, b, a))


def test_compare_qcow2_raw_chain_and_compressed(workdir):
    base = make_raw(path(workdir, "base.raw"), 4 * MiB, seed=3)
    top = create_qcow2(path(workdir, "top.qcow2"), 4 * MiB, backing=base, backing_fmt="raw")
    qemu_io(top, "write -P 5 1M 4k")
    flat = path(workdir, "flat.raw")
    qemu_img("convert", "-f", "qcow2", "-O", "raw", top, flat)
    comp = path(workdir, "comp.qcow2")
    qemu_img("convert", "-c", "-f", "qcow2", "-O", "qcow2", top, comp)
    for x, y, fx, fy in ((top, flat, "qcow2", "raw"), (comp, top, "qcow2", "qcow2"),
                         (base, top, "raw", "qcow2")):
        assert_same(*both("compare", "-f", fx, "-F", fy, x, y))
        assert_same(*both("compare", "-s", "-f", fx, "-F", fy, x, y))


def test_compare_extended_l2_subclusters(workdir):
    a, b = pair(workdir, opts="cluster_size=64k,extended_l2=on")
    qemu_io(b, "write -z 4096 2048", "write -P 8 8192 512")
    assert_same(*both("compare", a, b))
    assert_same(*both("compare", "-s", a, b))


def test_compare_quiet_and_errors(workdir):
    a, b = pair(workdir)
    qemu_io(b, "write -P 2 0 1")
    assert_same(*both("compare", "-q", a, b))
    ours, theirs = both("compare", a, path(workdir, "missing"))
    assert ours.returncode == theirs.returncode == 2
    assert_one_line_error(ours, "kiln-img")
    ours, theirs = both("compare", a)
    assert ours.returncode == theirs.returncode == 1


# ---------------------------------------------------------------------------------------------
# measure

def measure_inputs(d):
    q = create_qcow2(path(d, "in.qcow2"), 20 * MiB + 512, cluster=65536)
    fill_qemu(q, 20 * MiB, 65536, seed=21)
    qemu_io(q, f"write -z {8 * MiB} {2 * MiB}")
    x = create_qcow2(path(d, "x.qcow2"), 20 * MiB, cluster=16384, extra_opts="extended_l2=on")
    qemu_io(x, "write -P 1 5000 3000", "write -P 2 1M 300k", "write -z 4M 1M")
    v2 = create_qcow2(path(d, "v2.qcow2"), 8 * MiB, compat="0.10")
    fill_qemu(v2, 8 * MiB, 65536, seed=22)
    raw = make_raw(path(d, "in.raw"), 12 * MiB + 100, seed=23)
    comp = path(d, "comp.qcow2")
    qemu_img("convert", "-c", "-O", "qcow2", q, comp)
    top = create_qcow2(path(d, "top.qcow2"), 24 * MiB, backing=q, backing_fmt="qcow2")
    qemu_io(top, "write -P 4 22M 100k")
    return {"qcow2": q, "extl2": x, "v2": v2, "raw": raw, "compressed": comp, "chain": top}


TARGETS = [
    [], ["-O", "raw"], ["-O", "qcow2"],
    ["-O", "qcow2", "-o", "cluster_size=512"], ["-O", "qcow2", "-o", "cluster_size=2M"],
    ["-O", "qcow2", "-o", "cluster_size=16k,extended_l2=on"],
    ["-O", "qcow2", "-o", "refcount_bits=1"], ["-O", "qcow2", "-o", "refcount_bits=64"],
    ["-O", "qcow2", "-o", "compat=0.10"], ["-O", "qcow2", "-o", "preallocation=metadata"],
    ["-O", "qcow2", "-o", "preallocation=full"], ["-O", "qcow2", "-o", "preallocation=falloc"],
    ["-O", "qcow2", "-o", "backing_file=whatever,backing_fmt=raw"],
    ["-O", "qcow2", "-o", "lazy_refcounts=on,compression_type=zstd"],
]


@pytest.fixture(scope="module")
def measure_images(module_workdir):
    """The inputs of every measure case, made once: measure only reads them."""
    return measure_inputs(module_workdir)


@pytest.mark.parametrize("target", sampled_matrix(range(len(TARGETS)),
                                                  [str(n) for n in range(len(TARGETS))]))
def test_measure_matches_qemu(measure_images, target):
    inputs = measure_images
    args = TARGETS[target]
    for name, img in inputs.items():
        fmt = "raw" if name == "raw" else "qcow2"
        for out in ("human", "json"):
            assert_same(*both("measure", f"--output={out}", *args, "-f", fmt, img))
    for size in ("0", "1000", "1G", "7T", "100M"):
        assert_same(*both("measure", *args, "--size", size))


@pytest.mark.parametrize("args", [
    [], ["--size", "1G", "FILE"], ["-O", "qcow2", "-o", "cluster_size=3000", "--size", "1M"],
    ["-O", "qcow2", "-o", "cluster_size=4k,extended_l2=on", "--size", "1M"],
    ["-O", "qcow2", "-o", "bogus=1", "--size", "1M"],
    ["-O", "qcow2", "-o", "compat=0.10,refcount_bits=8", "--size", "1M"],
])
def test_measure_errors_exit_like_qemu(workdir, args):
    img = create_qcow2(path(workdir, "i.qcow2"), MiB)
    args = [img if a == "FILE" else a for a in args]
    ours, theirs = both("measure", *args)
    assert ours.returncode == theirs.returncode == 1, (ours.stderr, theirs.stderr)
    assert_one_line_error(ours, "kiln-img")


# ---------------------------------------------------------------------------------------------
# commit

def chain(d, base_fmt="qcow2", top_opts=None, grow=False):
    """base (4 MiB) <- mid <- top (6 MiB if grow), data and zero clusters in every layer."""
    if base_fmt == "raw":
        base = make_raw(path(d, "base.img"), 4 * MiB, seed=31)
    else:
        base = create_qcow2(path(d, "base.img"), 4 * MiB)
        fill_qemu(base, 4 * MiB, 65536, seed=31)
    mid = create_qcow2(path(d, "mid.qcow2"), 4 * MiB, backing=base, backing_fmt=base_fmt)
    qemu_io(mid, "write -P 1 0 64k", f"write -P 4 {2 * MiB} {MiB}")
    top = create_qcow2(path(d, "top.qcow2"), 6 * MiB if grow else 4 * MiB, backing=mid,
                       backing_fmt="qcow2", extra_opts=top_opts)
    qemu_io(top, "write -P 2 64k 64k", f"write -z {2 * MiB + 102400} 64k",
            f"write -P 9 {3 * MiB + 5} 4k", "write -z 0 4096")
    if grow:
        qemu_io(top, f"write -P 7 {5 * MiB} 100k")
    return base, mid, top


def view(img, out):
    qemu_img("convert", "-U", "-f", "qcow2", "-O", "raw", img, out)
    return out


def own_allocations(img):
    return [e for e in json.loads(qemu_img("map", "-U", "--output=json", img).stdout)
            if e["depth"] == 0 and e.get("present", True)]


@pytest.mark.parametrize("case", ["plain", "raw-base", "grow", "extended-l2", "keep", "deep-base"])
def test_commit_matches_qemu(workdir, case):
    dirs = {}
    for who in ("kiln", "qemu"):
        d = path(workdir, who)
        os.mkdir(d)
        base, mid, top = chain(d, base_fmt="raw" if case == "raw-base" else "qcow2",
                               top_opts="cluster_size=64k,extended_l2=on"
                               if case == "extended-l2" else None,
                               grow=case == "grow")
        before = view(top, path(d, "before.raw"))
        args = ["commit", "-f", "qcow2"]
        if case == "keep":
            args.append("-d")
        if case == "deep-base":
            args += ["-b", base]
        tool = kiln_img if who == "kiln" else qemu_img
        p = tool(*args, top)
        assert p.stdout == "Image committed.\n"
        dirs[who] = (base, mid, top, before)
    base, mid, top, before = dirs["kiln"]
    target = base if case == "deep-base" else mid  # a qcow2 image in both cases
    # The base now shows the guest what the overlay showed; the overlay's view is unchanged.
    qemu_same(before, target, "raw", "qcow2")
    qemu_same(before, top, "raw", "qcow2")
    for img in (top, mid) + ((base,) if case != "raw-base" else ()):
        assert_qemu_clean(img)
    # The same layout as qemu-img leaves: the overlay emptied unless -d or -b.
    qb, qm, qt, _ = dirs["qemu"]
    assert bool(own_allocations(top)) == bool(own_allocations(qt))
    assert info(target)["virtual-size"] == info(qm if target == mid else qb)["virtual-size"]


def test_commit_errors_like_qemu(workdir):
    base, mid, top = chain(workdir)
    for args in (["commit", "-f", "qcow2", base], ["commit", "-f", "qcow2", "-b", "nothere", top],
                 ["commit", "-f", "qcow2", "-b", top, top]):
        ours, theirs = both(*args)
        assert ours.returncode == theirs.returncode == 1
        assert_one_line_error(ours, "kiln-img")
        assert ours.stderr.split(": ", 1)[1] == theirs.stderr.split(": ", 1)[1]
    # A probed image never leads kiln-img to write into the file its header names.
    p = kiln_img("commit", top, check=False)
    assert_one_line_error(p, "kiln-img")
    assert "-f qcow2" in p.stderr


# ---------------------------------------------------------------------------------------------
# rebase

def rebase_setup(d, top_opts=None):
    base, mid, top = chain(d, top_opts=top_opts)
    # Old and new backing differ in a single byte of a cluster that the top leaves to them:
    # the whole cluster must be copied, not just the sector, or the rest would read as zeros.
    qemu_io(base, f"write -P 0x33 {MiB} 64k")
    qemu_io(mid, f"write -P 5 {MiB + 700} 1")
    other = create_qcow2(path(d, "other.qcow2"), 3 * MiB)
    fill_qemu(other, 3 * MiB, 65536, seed=41)
    return base, mid, top, other


@pytest.mark.parametrize("target", ["base", "other", "none"])
@pytest.mark.parametrize("top_opts", [None, "cluster_size=64k,extended_l2=on",
                                      "cluster_size=4096"])
def test_rebase_safe_keeps_content(workdir, target, top_opts):
    base, mid, top, other = rebase_setup(workdir, top_opts)
    before = view(top, path(workdir, "before.raw"))
    new = {"base": "base.img", "other": "other.qcow2", "none": ""}[target]
    args = ["rebase", "-f", "qcow2", "-b", new] + (["-F", "qcow2"] if new else []) + [top]
    p = kiln_img(*args)
    assert p.stdout == ""
    qemu_same(before, top, "raw", "qcow2")
    assert_qemu_clean(top)
    i = info(top)
    assert i.get("backing-filename", "") == new
    assert i.get("backing-filename-format", "") == ("qcow2" if new else "")


@pytest.mark.parametrize("compat", ["1.1", "0.10"])
def test_rebase_unsafe_header_like_qemu(workdir, compat):
    """-u changes the header only, byte for byte as qemu-img rebase -u writes it."""
    base = create_qcow2(path(workdir, "base.qcow2"), 4 * MiB)
    imgs = []
    for who in ("kiln", "qemu"):
        img = create_qcow2(path(workdir, f"{who}.qcow2"), 4 * MiB, compat=compat,
                           backing=base, backing_fmt="qcow2")
        qemu_io(img, "write -P 1 64k 64k")
        imgs.append(img)
    ours, theirs = imgs
    for new, fmt in (("some/other-name.raw", "raw"), ("", None), ("base.qcow2", "qcow2")):
        extra = ["-F", fmt] if fmt else []
        kiln_img("rebase", "-u", "-f", "qcow2", "-b", new, *extra, ours)
        qemu_img("rebase", "-u", "-f", "qcow2", "-b", new, *extra, theirs)
        with open(ours, "rb") as a, open(theirs, "rb") as b:
            assert a.read() == b.read(), f"header after rebase -u -b {new!r} differs"
    assert_qemu_clean(ours)  # the last backing file exists


def test_rebase_errors_like_qemu(workdir):
    base, mid, top, other = rebase_setup(workdir)
    for args in (["rebase", "-f", "qcow2", top],
                 ["rebase", "-f", "qcow2", "-b", "base.img", top]):
        ours, theirs = both(*args)
        assert ours.returncode == theirs.returncode == 1
        assert_one_line_error(ours, "kiln-img")
    assert info(top)["backing-filename"] == "mid.qcow2"


# ---------------------------------------------------------------------------------------------
# amend

def amend_pair(d, opts="compat=1.1"):
    base = create_qcow2(path(d, "b.qcow2"), 8 * MiB)
    qemu_io(base, f"write -P 3 0 {8 * MiB}")
    out = []
    for who in ("kiln", "qemu"):
        img = path(d, f"{who}.qcow2")
        qemu_img("create", "-q", "-f", "qcow2", "-o", opts, "-b", "b.qcow2", "-F", "qcow2", img)
        qemu_io(img, "write -P 1 0 64k", f"write -z {MiB} 128k", f"write -P 5 {MiB + 65536} 4k",
                f"write -z {3 * MiB} 64k")
        out.append(img)
    return out


def assert_same_info(ours, theirs):
    a, b = info(ours), info(theirs)
    for k in ("filename", "actual-size"):
        a.pop(k), b.pop(k)
    assert a == b


@pytest.mark.parametrize("steps", [
    ["compat=0.10"], ["compat=0.10", "compat=1.1"], ["lazy_refcounts=on"],
    ["lazy_refcounts=on", "lazy_refcounts=off"], ["size=20M"], ["compat=1.1,size=9M"],
    ["compat=0.10", "compat=1.1,lazy_refcounts=on,size=10M"], ["refcount_bits=16"],
    ["backing_file=b.qcow2,backing_fmt=qcow2"],
])
def test_amend_matches_qemu(workdir, steps):
    ours, theirs = amend_pair(workdir)
    before = view(ours, path(workdir, "before.raw"))
    for o in steps:
        kiln_img("amend", "-f", "qcow2", "-o", o, ours)
        qemu_img("amend", "-f", "qcow2", "-o", o, theirs)
        assert_same_info(ours, theirs)
        assert_qemu_clean(ours)
    # Growing adds zeros at the end; the rest reads as before.
    qemu_img("compare", "-f", "raw", "-F", "qcow2", before, ours)


@pytest.mark.parametrize("opt", ["cluster_size=4k", "extended_l2=on", "compression_type=zstd",
                                 "preallocation=full", "encrypt.format=luks", "foo=bar",
                                 "backing_fmt=raw", "backing_file=x", "data_file=x"])
def test_amend_refuses_like_qemu(workdir, opt):
    ours, theirs = amend_pair(workdir)
    with open(ours, "rb") as f:
        header = f.read(65536)
    a, b = kiln_img("amend", "-o", opt, ours, check=False), \
        qemu_img("amend", "-o", opt, theirs, check=False)
    assert a.returncode == b.returncode == 1, (a.stderr, b.stderr)
    assert_one_line_error(a, "kiln-img")
    with open(ours, "rb") as f:
        assert f.read(65536) == header


@pytest.mark.parametrize("opts,amend", [
    ("compat=1.1,extended_l2=on,cluster_size=64k", "compat=0.10"),
    ("compat=1.1,refcount_bits=8", "compat=0.10"),
    ("compat=1.1", "compat=0.10,lazy_refcounts=on"),
])
def test_amend_refuses_what_cannot_change(workdir, opts, amend):
    ours, _ = amend_pair(workdir, opts)
    a = kiln_img("amend", "-o", amend, ours, check=False)
    assert_one_line_error(a, "kiln-img")
    assert_qemu_clean(ours)


# ---------------------------------------------------------------------------------------------
# locks, snapshots, compressed clusters

def test_writing_commands_respect_locks(workdir, servers):
    """An image that qemu-nbd holds is neither committed, rebased nor amended (nor is a base
    written under it), and nothing changes; compare and measure read it only with -U."""
    base, mid, top = chain(workdir)
    before = {p: read_file(p) for p in (base, mid, top)}
    q = servers.qemu_nbd(top, path(workdir, "q.sock"), "qcow2")
    deadline = time.monotonic() + 30
    while not lock_holder_present(top):
        assert time.monotonic() < deadline, "qemu-nbd never locked the image"
        time.sleep(0.01)
    for args in (["commit", "-f", "qcow2", top], ["commit", "-f", "qcow2", "-d", top],
                 ["rebase", "-f", "qcow2", "-b", "", top],
                 ["rebase", "-u", "-f", "qcow2", "-b", "", top],
                 ["amend", "-f", "qcow2", "-o", "lazy_refcounts=on", top],
                 ["compare", top, top], ["measure", "-O", "qcow2", "-f", "qcow2", top]):
        p = kiln_img(*args, check=False)
        assert p.returncode != 0, args
        assert "lock" in p.stderr, (args, p.stderr)
    assert kiln_img("compare", "-U", "-f", "qcow2", "-F", "qcow2", top, top).returncode == 0
    assert kiln_img("measure", "-U", "-O", "qcow2", "-f", "qcow2", top).returncode == 0
    q.stop()
    wait_unlocked(top)
    assert {p: read_file(p) for p in (base, mid, top)} == before


def test_commit_overlay_with_internal_snapshot(workdir):
    """The overlay's L2 tables are shared with a snapshot: emptying copies them, the snapshot
    keeps its data."""
    base, mid, top = chain(workdir)
    snap_view = view(top, path(workdir, "snap.raw"))
    qemu_img("snapshot", "-c", "s1", top)  # no write after it: the L2 table stays shared
    before = view(top, path(workdir, "before.raw"))
    assert kiln_img("commit", "-f", "qcow2", top).stdout == "Image committed.\n"
    assert_qemu_clean(top)
    assert_qemu_clean(mid)
    qemu_same(before, top, "raw", "qcow2")
    qemu_same(before, mid, "raw", "qcow2")
    assert own_allocations(top) == []
    # The snapshot keeps its own clusters: what the overlay itself held when it was taken.
    out = path(workdir, "s1.raw")
    qemu_img("convert", "-f", "qcow2", "-l", "snapshot.name=s1", "-O", "raw", top, out)
    got, want = read_file(out), read_file(snap_view)
    for off, length in ((64 * 1024, 64 * 1024), (3 * MiB + 5, 4096)):
        assert got[off:off + length] == want[off:off + length]


def test_commit_and_rebase_compressed_overlay(workdir):
    base, mid, _ = chain(workdir)
    src = create_qcow2(path(workdir, "src.qcow2"), 4 * MiB, backing=mid, backing_fmt="qcow2")
    qemu_io(src, "write -P 0x21 0 1M", f"write -P 0x22 {3 * MiB} 512k")
    top = path(workdir, "comp.qcow2")
    qemu_img("convert", "-c", "-f", "qcow2", "-O", "qcow2", "-B", "mid.qcow2", "-F", "qcow2",
             src, top)
    assert "compressed" in qemu_img("check", "--output=json", top).stdout
    before = view(top, path(workdir, "before.raw"))
    kiln_img("rebase", "-f", "qcow2", "-b", "base.img", "-F", "qcow2", top)
    qemu_same(before, top, "raw", "qcow2")
    assert_qemu_clean(top)
    assert kiln_img("commit", "-f", "qcow2", top).stdout == "Image committed.\n"
    qemu_same(before, base, "raw", "qcow2")
    qemu_same(before, top, "raw", "qcow2")
    assert_qemu_clean(top)
    assert_qemu_clean(base)


def snapshot_view(img, name, out):
    qemu_img("convert", "-U", "-f", "qcow2", "-l", f"snapshot.name={name}", "-O", "raw", img, out)
    return read_file(out)


@pytest.mark.parametrize("backing", [False, True])
def test_amend_downgrade_with_snapshots_like_qemu(workdir, backing):
    """compat=0.10 on an image whose snapshots hold zero clusters of both kinds (with and
    without a host cluster), shared L2 tables and zeroed clusters still shared with a snapshot,
    over a backing file or not: every snapshot (read by qemu-img) and the active image read as
    before, and qemu-img check is clean. (qemu-img 7.2's own amend of this image writes zeros
    into the cluster that the active image zeroed but the snapshots still hold: their data is
    lost and its check reports OFLAG_COPIED errors. Kiln does not follow it there.)"""
    d = workdir
    b = None
    if backing:
        b = create_qcow2(path(d, "b.qcow2"), 4 * MiB)
        qemu_io(b, f"write -P 0x0b 0 {4 * MiB}")
    img = create_qcow2(path(d, "img.qcow2"), 4 * MiB, backing=b, backing_fmt="qcow2")
    qemu_io(img, "write -P 1 0 1M", "write -z 64k 128k", "write -z 2M 192k",
            "write -z -u 512k 64k")
    qemu_img("snapshot", "-c", "s1", img)
    qemu_io(img, "write -P 2 64k 64k", "write -z 3M 64k", "write -z 256k 64k")
    qemu_img("snapshot", "-c", "s2", img)  # shares untouched L2 tables with s1
    qemu_io(img, "write -P 3 2M 64k", "write -z 0 64k")
    want = {n: snapshot_view(img, n, path(d, f"{n}.raw")) for n in ("s1", "s2")}
    active = view(img, path(d, "active.raw"))
    kiln_img("amend", "-f", "qcow2", "-o", "compat=0.10", img)
    assert_qemu_clean(img)
    assert info(img)["format-specific"]["data"]["compat"] == "0.10"
    qemu_same(active, img, "raw", "qcow2")
    for n, data in want.items():
        assert snapshot_view(img, n, path(d, f"k-{n}.raw")) == data, n
    assert kiln_img("check", "-f", "qcow2", img).returncode == 0
    # Back to v3 and a write to every cluster: the image stays consistent.
    kiln_img("amend", "-f", "qcow2", "-o", "compat=1.1", img)
    qemu_io(img, f"write -P 4 0 {4 * MiB}")
    assert_qemu_clean(img)


# ---------------------------------------------------------------------------------------------
# -p: qemu-img's progress lines for compare, commit and rebase

PROGRESS = re.compile(rb"    \((\d+\.\d\d)/100%\)\r")


def run_bytes(tool, *args):
    # Bytes, not text: text mode would turn each carriage return into a newline.
    return subprocess.run([KILN_IMG if tool == "kiln" else QEMU_IMG, *args], capture_output=True,
                          check=False)


def split_progress(out):
    """The progress values at the start of `out`, and what follows them."""
    values, pos = [], 0
    while m := PROGRESS.match(out, pos):
        values.append(float(m.group(1)))
        pos = m.end()
    return values, out[pos:]


def assert_progress_like_qemu(ours, theirs):
    """The same shape as qemu-img's: 0% first, never backwards, 100% at the end if qemu-img
    gets there, and the same text after the last line (result, newlines)."""
    assert ours.returncode == theirs.returncode, (ours.stderr, theirs.stderr)
    v_ours, rest_ours = split_progress(ours.stdout)
    v_theirs, rest_theirs = split_progress(theirs.stdout)
    assert v_theirs, theirs.stdout
    assert v_ours and v_ours[0] == 0.0 and v_ours == sorted(v_ours), ours.stdout
    assert (v_ours[-1] == 100.0) == (v_theirs[-1] == 100.0), (ours.stdout, theirs.stdout)
    assert rest_ours == rest_theirs


@pytest.mark.parametrize("case", ["identical", "different"])
def test_compare_progress_like_qemu(workdir, case):
    a, b = pair(workdir, size_a=16 * MiB, size_b=16 * MiB)
    if case == "different":
        qemu_io(b, f"write -P 9 {12 * MiB} 512")
    args = ["compare", "-f", "qcow2", "-F", "qcow2", a, b]
    assert_progress_like_qemu(run_bytes("kiln", args[0], "-p", *args[1:]),
                              run_bytes("qemu", args[0], "-p", *args[1:]))
    ours, theirs = run_bytes("kiln", args[0], "-p", "-q", *args[1:]), \
        run_bytes("qemu", args[0], "-p", "-q", *args[1:])
    assert ours.stdout == theirs.stdout == b"" and ours.returncode == theirs.returncode


@pytest.mark.parametrize("case", ["commit", "commit-b", "rebase", "rebase-u"])
def test_commit_rebase_progress_like_qemu(workdir, case):
    out = {}
    for who in ("kiln", "qemu"):
        d = path(workdir, who)
        os.mkdir(d)
        base, mid, top = chain(d)
        before = view(top, path(d, "before.raw"))
        args = {"commit": ["commit", "-p", "-f", "qcow2", top],
                "commit-b": ["commit", "-p", "-f", "qcow2", "-b", base, top],
                "rebase": ["rebase", "-p", "-f", "qcow2", "-b", "base.img", "-F", "qcow2", top],
                "rebase-u": ["rebase", "-p", "-u", "-f", "qcow2", "-b", "mid.qcow2", "-F",
                             "qcow2", top]}[case]
        out[who] = run_bytes(who, *args)
        quiet = run_bytes(who, *args[:1], "-q", *args[1:])
        assert quiet.returncode == 0 and quiet.stdout == b""
        qemu_same(before, top, "raw", "qcow2")
    assert_progress_like_qemu(out["kiln"], out["qemu"])
