"""kiln-img convert against QEMU: every source kind (raw, qcow2 with a backing chain, zero
clusters, compressed clusters, extended L2 entries) into raw and qcow2 targets with qemu-img's
options. Each result must read as the source does through QEMU (qemu-img compare) and through
Kiln, qcow2 targets must pass qemu-img check, compressed targets must hold compressed clusters
that QEMU reads, and zeros must not be written as data (allocation compared with qemu-img's own
convert of the same source). Bad options get qemu-img's message and exit code."""

import json
import os
import random
import subprocess

import pytest

from kilntest import sampled_matrix
from kilntest.images import (KILN_IMG, MiB, SharedImages, assert_one_line_error, assert_qemu_clean,
                             assert_same_bytes, build_variant, create_qcow2, fill_qemu, header_get,
                             kiln_img, make_raw, qemu_img, qemu_io, read_file, scaled, to_raw_qemu,
                             zero_clusters)

SOURCES = ["raw", "v2-c65536", "v3-c65536", "chain2-qcow2", "chain1-raw", "compressed-zlib",
           "compressed-zstd", "extended-l2"]

# Target format and options (as for both tools), with an id.
TARGETS = {
    "raw": ["-O", "raw"],
    "raw-S0": ["-O", "raw", "-S", "0"],
    "raw-falloc": ["-O", "raw", "-o", "preallocation=falloc"],
    "raw-full": ["-O", "raw", "-o", "preallocation=full"],
    "qcow2": ["-O", "qcow2"],
    "qcow2-c4k-v2": ["-O", "qcow2", "-o", "cluster_size=4k,compat=0.10"],
    "qcow2-c2M": ["-O", "qcow2", "-o", "cluster_size=2M"],
    "qcow2-c512": ["-O", "qcow2", "-o", "cluster_size=512"],
    "qcow2-extl2": ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=128k"],
    "qcow2-S0": ["-O", "qcow2", "-S", "0"],
    "qcow2-S64k": ["-O", "qcow2", "-S", "64k"],
    "qcow2-m16W": ["-O", "qcow2", "-m", "16", "-W"],
    "qcow2-m1": ["-O", "qcow2", "-m", "1"],
    "qcow2-metadata": ["-O", "qcow2", "-o", "preallocation=metadata"],
    "qcow2-falloc": ["-O", "qcow2", "-o", "preallocation=falloc"],
    "qcow2-full": ["-O", "qcow2", "-o", "preallocation=full"],
    "qcow2-extl2-metadata": ["-O", "qcow2", "-o", "preallocation=metadata,extended_l2=on"],
    "qcow2-lazy-ref8": ["-O", "qcow2", "-o", "lazy_refcounts=on,refcount_bits=8"],
    "zlib": ["-O", "qcow2", "-c"],
    "zlib-v2-c4k": ["-O", "qcow2", "-c", "-o", "compat=0.10,cluster_size=4k"],
    "zlib-ref1": ["-O", "qcow2", "-c", "-o", "refcount_bits=1"],
    "zlib-extl2-W": ["-O", "qcow2", "-c", "-W", "-o", "extended_l2=on"],
    "zstd": ["-O", "qcow2", "-c", "-o", "compression_type=zstd"],
    "zstd-c2M": ["-O", "qcow2", "-c", "-o", "compression_type=zstd,cluster_size=2M"],
}


def make_source(name, d):
    if name == "raw":
        raw = make_raw(os.path.join(d, "src.raw"), 8 * MiB + 12345, seed=3)
        # Zeros written as data: the convert must not copy them as data.
        with open(raw, "r+b") as f:
            f.seek(2 * MiB)
            f.write(bytes(MiB))
        return raw, "raw"
    if name == "extended-l2":
        img = create_qcow2(os.path.join(d, "src.qcow2"), 8 * MiB, cluster=65536,
                           extra_opts="extended_l2=on")
        fill_qemu(img, 8 * MiB, 65536, seed=21, count=20)
        zero_clusters(img, 65536, 8 * MiB)
        qemu_io(img, "write -z 3000 5000", "write -P 0x31 100000 3000")
        return img, "qcow2"
    return build_variant(name, d), "qcow2"


def out_format(opts):
    return opts[opts.index("-O") + 1]


def allocated(path):
    return os.stat(path).st_blocks * 512


def qcow2_check_json(path):
    return json.loads(qemu_img("check", "--output=json", path).stdout)


def assert_converted(src, sfmt, dst, dfmt, workdir, what, theirs=None):
    """The target reads as the source through QEMU and through Kiln, and is clean. `theirs`:
    the source as QEMU reads it (a raw file), if already made."""
    p = qemu_img("compare", "-f", sfmt, "-F", dfmt, src, dst, check=False)
    assert p.returncode == 0, f"{what}: qemu-img compare: {p.stdout} {p.stderr}"
    if dfmt == "qcow2":
        assert_qemu_clean(dst)
    if theirs is None:
        theirs = to_raw_qemu(src, os.path.join(workdir, "check-qemu.raw"), fmt=sfmt)
    ours = os.path.join(workdir, "check-kiln.raw")
    kiln_img("convert", "-f", dfmt, "-O", "raw", dst, ours)
    assert_same_bytes(read_file(ours), read_file(theirs), f"{what}: read back by Kiln")


# Every source into the main targets, and every target from three kinds of source.
CORE_TARGETS = ["raw", "qcow2", "zlib", "zstd", "qcow2-extl2"]
MATRIX = ([(s, t) for s in SOURCES for t in CORE_TARGETS]
          + [(s, t) for s in ("raw", "chain2-qcow2", "compressed-zlib") for t in TARGETS
             if t not in CORE_TARGETS])


def make_source_and_read(name, d):
    """The source `name` in `d`, and beside it the raw file QEMU reads from it."""
    src, sfmt = make_source(name, d)
    return src, sfmt, to_raw_qemu(src, os.path.join(d, "qemu-read.raw"), fmt=sfmt)


@pytest.fixture(scope="module")
def sources(module_workdir):
    """The matrix's sources, each made once per module: the matrix converts each of them up to
    24 times, and making one cost as much as a conversion. Conversions only read a source; each
    test checks that its source's files did not change (size and mtime), the module their bytes
    at its end."""
    s = SharedImages(module_workdir, make_source_and_read)
    yield s
    s.assert_unchanged(deep=True)


@pytest.mark.parametrize("source,target",
                         sampled_matrix(MATRIX, [f"{s}->{t}" for s, t in MATRIX]))
def test_convert_matrix(workdir, sources, source, target):
    src, sfmt, src_raw = sources.get(source)
    opts = TARGETS[target]
    dfmt = out_format(opts)
    ours = os.path.join(workdir, "kiln.out")
    theirs = os.path.join(workdir, "qemu.out")
    kiln_img("convert", "-f", sfmt, *opts, src, ours)
    qemu_img("convert", "-f", sfmt, *opts, src, theirs)
    sources.assert_unchanged(source)
    assert_converted(src, sfmt, ours, dfmt, workdir, f"{source} -> {target}", theirs=src_raw)

    if dfmt == "qcow2":
        info = json.loads(qemu_img("info", "--output=json", ours).stdout)
        qinfo = json.loads(qemu_img("info", "--output=json", theirs).stdout)
        for key in ("cluster-size", "virtual-size"):
            assert info[key] == qinfo[key], (key, info[key], qinfo[key])
        spec, qspec = info["format-specific"]["data"], qinfo["format-specific"]["data"]
        for key in ("compat", "compression-type", "lazy-refcounts", "refcount-bits",
                    "extended-l2"):
            assert spec.get(key) == qspec.get(key), (key, spec.get(key), qspec.get(key))
    if "-c" in opts:
        # Compressed clusters that QEMU sees as such (check counts them, map gives no offset).
        ours_c = qcow2_check_json(ours).get("compressed-clusters", 0)
        theirs_c = qcow2_check_json(theirs).get("compressed-clusters", 0)
        assert ours_c > 0 and ours_c >= theirs_c * 0.9, (ours_c, theirs_c)
        ranges = json.loads(qemu_img("map", "--output=json", ours).stdout)
        assert any(r["data"] and "offset" not in r for r in ranges), ranges
        if "compression_type=zstd" in " ".join(opts):
            assert header_get(ours, "incompatible_features") & (1 << 3)
    # Zeros are not written as data: the target takes about what qemu-img's takes (and
    # everything with -S 0 or full preallocation, as qemu-img's).
    slack = 256 * 1024 + allocated(theirs) // 20
    assert allocated(ours) <= allocated(theirs) + slack, (allocated(ours), allocated(theirs))
    if any("preallocation=" in o for o in opts):
        # Laid out as QEMU lays out a preallocated image (QEMU ends the file of an extended-L2
        # metadata preallocation inside the last cluster; Kiln at its end).
        assert 0 <= os.path.getsize(ours) - os.path.getsize(theirs) < 65536
    if "-S" in opts and opts[opts.index("-S") + 1] == "0" or "preallocation=full" in opts:
        assert allocated(ours) >= os.path.getsize(src) // 2 if sfmt == "raw" else True
        assert allocated(ours) + slack >= allocated(theirs), (allocated(ours), allocated(theirs))


def test_zero_data_is_not_copied(workdir):
    """Zeros written as data in a raw source become holes in qcow2 (unallocated) unless -S 0."""
    src = os.path.join(workdir, "src.raw")
    with open(src, "wb") as f:
        f.write(b"\x11" * MiB + bytes(4 * MiB) + b"\x22" * MiB)
    out = os.path.join(workdir, "out.qcow2")
    kiln_img("convert", "-f", "raw", "-O", "qcow2", src, out)
    ranges = json.loads(qemu_img("map", "--output=json", out).stdout)
    data = [(r["start"], r["length"]) for r in ranges if r["data"]]
    assert data == [(0, MiB), (5 * MiB, MiB)], ranges
    kiln_img("convert", "-f", "raw", "-O", "qcow2", "-S", "0", src, out)
    ranges = json.loads(qemu_img("map", "--output=json", out).stdout)
    assert all(r["data"] for r in ranges), ranges


def test_incompressible_clusters_stay_plain(workdir):
    """Clusters that do not shrink are written uncompressed; the rest compressed, packed."""
    rng = random.Random(5)
    src = os.path.join(workdir, "src.raw")
    size = scaled(32 * MiB)
    with open(src, "wb") as f:
        for i in range(size // 65536):
            if i % 3 == 0:
                f.write(rng.randbytes(65536))
            elif i % 3 == 1:
                f.write((b"kiln %d " % i) * (65536 // 16) + bytes(65536 - (65536 // 16) * len(b"kiln %d " % i)))
            else:
                f.write(bytes(65536))
    for ctype in ("zlib", "zstd"):
        out = os.path.join(workdir, f"out-{ctype}.qcow2")
        kiln_img("convert", "-f", "raw", "-O", "qcow2", "-c", "-m", "16", "-W", "-o",
                 f"compression_type={ctype}", src, out)
        assert_converted(src, "raw", out, "qcow2", workdir, ctype)
        c = qcow2_check_json(out)
        clusters = size // 65536
        assert c["compressed-clusters"] == (clusters + 1) // 3, c
        assert c["allocated-clusters"] == (clusters + 2) // 3 + (clusters + 1) // 3, c
        # Packed: the compressed text clusters share host clusters.
        assert allocated(out) < (clusters // 3 + clusters // 6 + 16) * 65536


def test_backing_file_B(workdir):
    """-B: the target names the backing file and holds only what differs from it."""
    top = build_variant("chain2-qcow2", workdir)  # l2.qcow2 -> l1.qcow2 -> base.qcow2
    below = os.path.join(workdir, "l1.qcow2")
    out = os.path.join(workdir, "out.qcow2")
    kiln_img("convert", "-f", "qcow2", "-O", "qcow2", "-B", "l1.qcow2", "-F", "qcow2", top, out)
    assert_converted(top, "qcow2", out, "qcow2", workdir, "-B")
    info = json.loads(qemu_img("info", "--output=json", out).stdout)
    assert info["backing-filename"] == "l1.qcow2"
    assert info["backing-filename-format"] == "qcow2"
    # Only the top layer's changes are in the new image.
    full = os.path.join(workdir, "full.qcow2")
    kiln_img("convert", "-f", "qcow2", "-O", "qcow2", top, full)
    assert allocated(out) < allocated(full)
    ranges = json.loads(qemu_img("map", "--output=json", out).stdout)
    top_ranges = json.loads(qemu_img("map", "--output=json", "-f", "qcow2", top).stdout)
    ours_local = sum(r["length"] for r in ranges if r["depth"] == 0 and r["data"])
    theirs_local = sum(r["length"] for r in top_ranges if r["depth"] == 0 and r["data"])
    assert ours_local <= theirs_local, (ours_local, theirs_local)
    assert qemu_img("check", out).returncode == 0
    del below


def test_backing_file_B_unrelated(workdir):
    """-B with a backing file that has nothing to do with the source: zeros must hide it."""
    src = make_raw(os.path.join(workdir, "src.raw"), 4 * MiB, seed=9)
    other = create_qcow2(os.path.join(workdir, "other.qcow2"), 4 * MiB)
    qemu_io(other, "write -P 0x66 0 4M")
    for extra in ([], ["-c"], ["-o", "compat=0.10"]):
        out = os.path.join(workdir, "out.qcow2")
        kiln_img("convert", "-f", "raw", "-O", "qcow2", *extra, "-B", "other.qcow2", "-F",
                 "qcow2", src, out)
        assert_converted(src, "raw", out, "qcow2", workdir, f"-B unrelated {extra}")


@pytest.mark.parametrize("dfmt,compress", [("raw", False), ("qcow2", False), ("qcow2", True)])
def test_no_create_n(workdir, dfmt, compress):
    """-n writes into an existing image: old data where the source reads zeros is zeroed (with
    -c, clusters the target already holds are written uncompressed)."""
    src = build_variant("v3-c65536", workdir)
    out = os.path.join(workdir, "out." + dfmt)
    qemu_img("create", "-q", "-f", dfmt, out, "8M")
    qemu_io(out, "write -P 0x55 0 8M", fmt=dfmt)
    kiln_img("convert", "-n", "-f", "qcow2", "-O", dfmt, *(["-c"] if compress else []), src, out)
    assert_converted(src, "qcow2", out, dfmt, workdir, f"-n {dfmt}")


def test_no_create_missing_target(workdir):
    src = build_variant("v3-c65536", workdir)
    p = kiln_img("convert", "-n", "-O", "qcow2", src, os.path.join(workdir, "nope"), check=False)
    assert_one_line_error(p, "kiln-img")
    assert "Could not open" in p.stderr


def test_progress(workdir):
    src = build_variant("v3-c65536", workdir)
    out = os.path.join(workdir, "out.qcow2")
    p = subprocess.run([KILN_IMG, "convert", "-p", "-O", "qcow2", "-f", "qcow2", src, out],
                       check=True, capture_output=True)
    assert p.stdout.startswith(b"    (0.00/100%)\r"), p.stdout[:40]
    assert p.stdout.endswith(b"    (100.00/100%)\r\n"), p.stdout[-40:]
    assert b"\n" not in p.stdout[:-1]
    assert kiln_img("convert", "-p", "-q", "-O", "qcow2", "-f", "qcow2", src, out).stdout == ""
    assert kiln_img("convert", "-O", "qcow2", "-f", "qcow2", src, out).stdout == ""


# Option errors: (arguments before SRC DST, whether qemu-img's message is the same).
ERRORS = [
    ["-O", "vmdk2"],
    ["-O", "qcow2", "-o", "cluster_size=3"],
    ["-O", "raw", "-c"],
    ["-O", "qcow2", "-S", "100"],
    ["-O", "qcow2", "-m", "0"],
    ["-O", "qcow2", "-m", "17"],
    ["-O", "qcow2", "-m", "x"],
    ["-O", "qcow2", "-o", "foo=1"],
    ["-O", "qcow2", "-o", "preallocation=bogus"],
    ["-O", "raw", "-o", "preallocation=metadata"],
    ["-O", "qcow2", "-o", "compression_type=lz4"],
    ["-O", "raw", "-B", "{src}"],
    ["-O", "qcow2", "-n", "-o", "cluster_size=4k"],
    ["-O", "qcow2", "-c", "-o", "preallocation=metadata"],
    ["-O", "qcow2", "-F", "raw"],
    ["-O", "qcow2", "-B", "{src}"],
    ["-O", "qcow2", "-o", "compat=0.10,compression_type=zstd"],
    ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=4k"],
    ["-O", "raw", "-o", "cluster_size=4k"],
    ["-O", "qcow2", "-B", "{src}", "-F", "qcow2", "-o", "preallocation=metadata"],
]


@pytest.mark.parametrize("args", ERRORS, ids=[" ".join(a) for a in ERRORS])
def test_option_errors(workdir, args):
    src = create_qcow2(os.path.join(workdir, "s.qcow2"), 10 * MiB)
    args = [a.format(src=src) for a in args]
    dst_k, dst_q = os.path.join(workdir, "d"), os.path.join(workdir, "d")
    ours = kiln_img("convert", *args, src, dst_k, check=False)
    assert_one_line_error(ours, "kiln-img")
    theirs = qemu_img("convert", *args, src, dst_q, check=False)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.replace("kiln-img: ", "qemu-img: ") == theirs.stderr, \
        (ours.stderr, theirs.stderr)


def test_sparse_size_not_a_size(workdir):
    src = create_qcow2(os.path.join(workdir, "s.qcow2"), MiB)
    p = kiln_img("convert", "-S", "abc", "-O", "qcow2", src, os.path.join(workdir, "d"),
                 check=False)
    assert_one_line_error(p, "kiln-img")
    assert "Invalid buffer size for sparse output specified" in p.stderr


def test_missing_destination(workdir):
    src = create_qcow2(os.path.join(workdir, "s.qcow2"), MiB)
    ours = kiln_img("convert", "-O", "qcow2", src, check=False)
    theirs = qemu_img("convert", "-O", "qcow2", src, check=False)
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr.replace("kiln-img: ", "qemu-img: ") == theirs.stderr
