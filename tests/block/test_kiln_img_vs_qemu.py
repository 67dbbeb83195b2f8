"""kiln-img against qemu-img on the same images: info (JSON and human), check verdicts and
exit codes, map ranges; and kiln-img's own create, resize and convert checked with QEMU."""

import json
import os
import struct

import pytest

from kilntest.images import (QEMU_IO, MiB, VARIANTS, SharedImages, assert_one_line_error,
                             assert_qemu_clean, build_variant, create_qcow2, kiln_img, kiln_io,
                             make_raw, qemu_img, qemu_io, read_file, refcount_block_offset, run,
                             to_raw_qemu)

INFO_VARIANTS = ["v2-c65536", "v3-c4096", "refbits1", "refbits64", "chain2-raw",
                 "chain3-qcow2", "compressed-zstd", "snapshots", "lazy-refcounts"]


@pytest.fixture(scope="module")
def variants(module_workdir):
    """The images the info, map and check tests only read, made once (each is read by up to
    five tests); at the end, none of them may have changed."""
    v = SharedImages(module_workdir, build_variant)
    yield v
    v.assert_unchanged(deep=True)


@pytest.fixture(autouse=True)
def variants_unchanged(request):
    """After each test that read shared variants: none was written (size and mtime)."""
    yield
    if "variants" in request.fixturenames:
        request.getfixturevalue("variants").assert_unchanged()


def both(*args):
    ours = kiln_img(*args, check=False)
    theirs = qemu_img(*args, check=False)
    return ours, theirs


@pytest.mark.parametrize("variant", INFO_VARIANTS)
def test_info_json_matches(variants, variant):
    img = variants.get(variant)
    ours, theirs = both("info", "--output=json", img)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    a, b = json.loads(ours.stdout), json.loads(theirs.stdout)
    common = set(a) & set(b)
    assert common >= {"virtual-size", "filename", "format", "actual-size", "dirty-flag"}
    for key in sorted(common):
        assert a[key] == b[key], f"{key}: kiln {a[key]!r} != qemu {b[key]!r}"
    assert set(b) - set(a) == set(), f"qemu-img prints more: {set(b) - set(a)}"


@pytest.mark.parametrize("variant", INFO_VARIANTS)
def test_info_human_matches(variants, variant):
    img = variants.get(variant)
    ours, theirs = both("info", img)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout


@pytest.mark.parametrize("variant", ["chain3-qcow2", "chain1-raw"])
def test_info_backing_chain_matches(variants, variant):
    img = variants.get(variant)
    # Walking a chain opens backing files: the top image's format is given (Kiln refuses to
    # follow the backing file of a probed image; see test_probed_image_with_backing_refused).
    ours, theirs = both("info", "-f", "qcow2", "--backing-chain", "--output=json", img)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    assert json.loads(ours.stdout) == json.loads(theirs.stdout)
    ours, theirs = both("info", "-f", "qcow2", "--backing-chain", img)
    assert ours.stdout == theirs.stdout


def test_info_raw_matches(workdir):
    raw = make_raw(os.path.join(workdir, "disk.raw"), 3 * MiB, seed=5)
    for args in (["info", "-f", "raw", raw], ["info", "-f", "raw", "--output=json", raw]):
        ours, theirs = both(*args)
        assert ours.returncode == theirs.returncode == 0
        assert ours.stdout == theirs.stdout


@pytest.mark.parametrize("variant", VARIANTS)
def test_map_json_matches(variants, variant):
    img = variants.get(variant)
    # qemu-img map asks the host file's SEEK_DATA too when its metadata-preallocation heuristic
    # fires (the compressed variants), and ext4 reports an unwritten extent as data only once
    # its pages are in the page cache: read the file first, so that qemu's answer does not
    # depend on what ran before it (kiln-img's open used to read the first 2 MiB). Kiln's map
    # does not ask the file (docs/kiln-img.md).
    with open(img, "rb") as f:
        while f.read(1 << 20):
            pass
    ours, theirs = both("map", "-f", "qcow2", "--output=json", img)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    a, b = json.loads(ours.stdout), json.loads(theirs.stdout)
    if a != b:
        diffs = [f"kiln {x}\nqemu {y}" for x, y in zip(a, b) if x != y][:3]
        pytest.fail(f"{len(a)} vs {len(b)} ranges; first differences:\n" + "\n".join(diffs))


@pytest.mark.parametrize("variant", ["v3-c65536", "chain2-qcow2", "chain1-raw"])
def test_map_human_matches(variants, variant):
    img = variants.get(variant)
    ours, theirs = both("map", "-f", "qcow2", img)
    assert ours.returncode == theirs.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout


def test_map_human_compressed_refused(workdir):
    img = build_variant("compressed-zlib", workdir)
    ours, theirs = both("map", img)
    assert theirs.returncode == 1 and ours.returncode == 1
    assert ours.stderr.strip() == "kiln-img: File contains external, encrypted or compressed clusters."


# --- check -----------------------------------------------------------------------------------

def leaky_image(d, name):
    """An image with two leaked clusters: refcounts raised for clusters nothing references."""
    img = create_qcow2(os.path.join(d, name), 64 * MiB)
    qemu_io(img, "write 0 64k")
    rb = refcount_block_offset(img)
    end = os.path.getsize(img) // 65536
    patch_bytes_at(img, rb + 2 * end, struct.pack(">HH", 1, 1))
    os.truncate(img, (end + 2) * 65536)
    return img


def corrupt_image(d, name):
    """A data cluster whose refcount is 0 while an L2 entry points at it."""
    img = create_qcow2(os.path.join(d, name), 64 * MiB)
    qemu_io(img, "write 0 64k", "write 1M 64k")
    rb = refcount_block_offset(img)
    patch_bytes_at(img, rb + 2 * 5, struct.pack(">H", 0))
    return img


def patch_bytes_at(path, off, data):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def strip_filename(j):
    j = dict(j)
    j.pop("filename", None)
    return j


@pytest.mark.parametrize("output", ["human", "json"])
@pytest.mark.parametrize("variant", [
    "v3-c65536", "v3-c512", "compressed-zlib", "snapshots", "refbits1", "refbits16", "chain1-raw",
    "v2-c65536", "chain2-qcow2", "chain3-qcow2", "lazy-refcounts"])
def test_check_clean(variants, variant, output):
    img = variants.get(variant)
    ours, theirs = both("check", f"--output={output}", img)
    assert (ours.returncode, theirs.returncode) == (0, 0), (variant, ours.stdout, ours.stderr)
    assert ours.stdout == theirs.stdout


@pytest.mark.parametrize("output", ["human", "json"])
def test_check_leaks(workdir, output):
    img = leaky_image(workdir, "leak.qcow2")
    ours, theirs = both("check", f"--output={output}", img)
    assert (ours.returncode, theirs.returncode) == (3, 3), ours.stderr
    # The leaked clusters are named on stderr, one line each, as qemu-img does.
    assert ours.stderr == theirs.stderr
    strip = lambda s: "\n".join(line for line in s.splitlines() if "end-offset" not in line  # noqa
                                 and "end offset" not in line)
    assert strip(ours.stdout) == strip(theirs.stdout)


def test_check_leaks_end_offset(workdir):
    img = leaky_image(workdir, "leak.qcow2")
    ours, theirs = both("check", "--output=json", img)
    assert json.loads(ours.stdout)["image-end-offset"] == json.loads(theirs.stdout)["image-end-offset"]


def test_check_repair_leaks(workdir):
    a = leaky_image(workdir, "a.qcow2")
    b = leaky_image(workdir, "b.qcow2")
    ours = kiln_img("check", "-r", "leaks", a, check=False)
    theirs = qemu_img("check", "-r", "leaks", b, check=False)
    assert (ours.returncode, theirs.returncode) == (0, 0), ours.stderr
    assert_qemu_clean(a)
    # Same report, except the image end offset qemu-img may shrink differently.
    strip = lambda s: [line for line in s.splitlines() if not line.startswith("Image end")]  # noqa
    assert strip(ours.stdout) == strip(theirs.stdout)


def test_check_repair_leaks_json(workdir):
    a = leaky_image(workdir, "a.qcow2")
    ours = kiln_img("check", "-r", "all", "--output=json", a, check=False)
    assert ours.returncode == 0, ours.stderr
    j = json.loads(ours.stdout)
    assert j["leaks-fixed"] == 2 and "leaks" not in j
    assert_qemu_clean(a)


def test_check_corruption(workdir):
    img = corrupt_image(workdir, "bad.qcow2")
    ours, theirs = both("check", "--output=json", img)
    assert (ours.returncode, theirs.returncode) == (2, 2), ours.stderr
    a, b = json.loads(ours.stdout), json.loads(theirs.stdout)
    assert a["corruptions"] == b["corruptions"] > 0
    assert a.get("leaks", 0) == b.get("leaks", 0)
    # A corrupt image cannot be fixed with -r leaks; like qemu-img, exit non-zero.
    p = kiln_img("check", "-r", "leaks", img, check=False)
    assert p.returncode in (1, 2), p.stdout + p.stderr


def test_check_raw_unsupported(workdir):
    raw = make_raw(os.path.join(workdir, "d.raw"), MiB, seed=1)
    ours, theirs = both("check", "-f", "raw", raw)
    assert ours.returncode == theirs.returncode == 63
    assert_one_line_error(ours, "kiln-img")


# --- create / resize / convert ---------------------------------------------------------------

CREATE_CASES = [
    ["-f", "qcow2", "{d}/x.qcow2", "64M"],
    ["-f", "qcow2", "-o", "cluster_size=4k,refcount_bits=1", "{d}/x.qcow2", "1G"],
    ["-f", "qcow2", "-o", "compat=0.10", "{d}/x.qcow2", "10M"],
    ["-f", "qcow2", "-o", "cluster_size=512", "{d}/x.qcow2", "3M"],
    ["-f", "qcow2", "-o", "cluster_size=2M,refcount_bits=64", "{d}/x.qcow2", "5G"],
    ["-f", "qcow2", "-o", "lazy_refcounts=on,compression_type=zstd", "{d}/x.qcow2", "1T"],
    ["-f", "qcow2", "-b", "base.raw", "-F", "raw", "{d}/x.qcow2"],
    ["-f", "qcow2", "-b", "base.raw", "-F", "raw", "{d}/x.qcow2", "20M"],
    ["-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", "{d}/x.qcow2"],
    ["-f", "raw", "{d}/x.raw", "1536k"],
]


@pytest.mark.parametrize("case", range(len(CREATE_CASES)))
def test_create_like_qemu(workdir, case):
    make_raw(os.path.join(workdir, "base.raw"), 4 * MiB, seed=2)
    create_qcow2(os.path.join(workdir, "mid.qcow2"), 6 * MiB, backing=os.path.join(
        workdir, "base.raw"), backing_fmt="raw")
    args = [a.format(d=workdir) for a in CREATE_CASES[case]]
    target = args[-1] if not args[-1][0].isdigit() else args[-2]
    ours = kiln_img("create", *args)
    ours_info = qemu_img("info", "--output=json", target).stdout
    if target.endswith(".qcow2"):
        assert_qemu_clean(target)
    os.remove(target)
    theirs = qemu_img("create", *args)
    theirs_info = qemu_img("info", "--output=json", target).stdout
    assert ours.stdout == theirs.stdout
    a, b = json.loads(ours_info), json.loads(theirs_info)
    a.pop("actual-size")
    b.pop("actual-size")
    assert a == b


@pytest.mark.parametrize("args,fragment", [
    (["-f", "qcow2", "{d}/x.qcow2"], "size"),
    (["-f", "qcow2", "{d}/x.qcow2", "1Q"], "size"),
    (["-f", "qcow2", "-o", "cluster_size=1000", "{d}/x.qcow2", "1M"], "Cluster size"),
    (["-f", "qcow2", "-o", "cluster_size=4M", "{d}/x.qcow2", "1M"], "Cluster size"),
    (["-f", "qcow2", "-o", "refcount_bits=3", "{d}/x.qcow2", "1M"], "Refcount width"),
    (["-f", "qcow2", "-o", "compat=0.10,refcount_bits=1", "{d}/x.qcow2", "1M"], "1.1"),
    (["-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "{d}/x.qcow2", "1M"], "1.1"),
    (["-f", "qcow2", "-o", "compression_type=lz4", "{d}/x.qcow2", "1M"], "lz4"),
    (["-f", "qcow2", "-o", "foo=bar", "{d}/x.qcow2", "1M"], "foo"),
    (["-f", "qcow2", "-b", "nonexistent", "-F", "raw", "{d}/x.qcow2"], "nonexistent"),
    (["-f", "qcow2", "-b", "base.raw", "{d}/x.qcow2"], "format"),
    (["-f", "raw", "-b", "base.raw", "-F", "raw", "{d}/x.raw", "1M"], "raw"),
    (["-f", "qcow2", "/nonexistent-dir/x.qcow2", "1M"], "nonexistent-dir"),
])
def test_create_errors(workdir, args, fragment):
    """The same mistakes make qemu-img fail too."""
    make_raw(os.path.join(workdir, "base.raw"), MiB, seed=2)
    p = kiln_img("create", *[a.format(d=workdir) for a in args], check=False)
    assert_one_line_error(p, "kiln-img")
    assert fragment in p.stderr
    q = qemu_img("create", *[a.format(d=workdir) for a in args], check=False)
    assert q.returncode != 0


def test_create_overlay_reads_backing(workdir):
    base = make_raw(os.path.join(workdir, "base.raw"), 5 * MiB + 1000, seed=9)
    top = os.path.join(workdir, "top.qcow2")
    kiln_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", top, "8M")
    assert_qemu_clean(top)
    got = read_file(to_raw_qemu(top, os.path.join(workdir, "out.raw")))
    want = read_file(base)
    assert got[:len(want)] == want and got[len(want):] == bytes(len(got) - len(want))


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_resize_grow(workdir, fmt):
    img = os.path.join(workdir, f"x.{fmt}")
    kiln_img("create", "-q", "-f", fmt, img, "5M")
    qemu_io(img, "write -P 0x33 4M 1M", fmt=fmt)
    p = kiln_img("resize", "-f", fmt, img, "+3M")
    assert p.stdout == "Image resized.\n"
    p = kiln_img("resize", "-f", fmt, img, "1G")
    assert p.stdout == "Image resized.\n"
    info = json.loads(qemu_img("info", "-f", fmt, "--output=json", img).stdout)
    assert info["virtual-size"] == 1 << 30
    if fmt == "qcow2":
        assert_qemu_clean(img)
    # What a reader sees, byte for byte: the old data, then zeros to 1 GiB. qemu-img compare
    # against a raw file made by QEMU's tools (qemu-io's pattern check of 1019 MiB took 10 s).
    ref = os.path.join(workdir, "ref.raw")
    qemu_img("create", "-q", "-f", "raw", ref, "1G")
    qemu_io(ref, "write -P 0x33 4M 1M", fmt="raw")
    qemu_img("compare", "-q", "-f", fmt, "-F", "raw", img, ref)


def test_resize_shrink_refused(workdir):
    img = os.path.join(workdir, "x.qcow2")
    kiln_img("create", "-q", "-f", "qcow2", img, "5M")
    for args in (["resize", img, "4M"], ["resize", img, "--", "-1M"],
                 ["resize", "--shrink", img, "1M"]):
        p = kiln_img(*args, check=False)
        assert_one_line_error(p, "kiln-img")
        assert "hrink" in p.stderr
    assert json.loads(qemu_img("info", "--output=json", img).stdout)["virtual-size"] == 5 * MiB


def test_convert_is_sparse(workdir):
    img = create_qcow2(os.path.join(workdir, "x.qcow2"), 256 * MiB)
    qemu_io(img, "write -P 1 0 64k", "write -P 2 200M 1M")
    out = os.path.join(workdir, "out.raw")
    kiln_img("convert", "-O", "raw", img, out)
    assert os.path.getsize(out) == 256 * MiB
    assert os.stat(out).st_blocks * 512 < 4 * MiB
    ref = os.path.join(workdir, "ref.raw")
    qemu_img("create", "-q", "-f", "raw", ref, "256M")
    qemu_io(ref, "write -P 1 0 64k", "write -P 2 200M 1M", fmt="raw")
    qemu_img("compare", "-q", "-f", "raw", "-F", "raw", out, ref)


@pytest.mark.parametrize("cmd", [["info"], ["check"], ["map"], ["resize", "{f}", "1G"],
                                 ["convert", "-O", "raw", "{f}", "{d}/out.raw"]])
def test_missing_file(workdir, cmd):
    f = os.path.join(workdir, "nonexistent.qcow2")
    args = [a.format(f=f, d=workdir) for a in cmd]
    if "{f}" not in cmd:
        args.append(f)
    p = kiln_img(*args, check=False)
    assert_one_line_error(p, "kiln-img")
    assert p.returncode == 1


def test_create_unsupported_format(workdir):
    p = kiln_img("create", "-f", "vmdk", os.path.join(workdir, "x.vmdk"), "1M", check=False)
    assert_one_line_error(p, "kiln-img")
    assert "vmdk" in p.stderr


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["info"], ["info", "--output=xml", "x"],
                                  ["create", "-f", "qcow2"], ["check", "-r", "some", "x"],
                                  ["info", "--bogus", "x"], ["convert", "-O", "qcow2", "a", "b"]])
def test_usage_errors(args):
    p = kiln_img(*args, check=False)
    assert_one_line_error(p, "kiln-img")


def dirty_lazy_image(d, name):
    """A lazy-refcounts image left dirty by a writer that died (qemu-io's abort command)."""
    img = create_qcow2(os.path.join(d, name), 16 * MiB, extra_opts="lazy_refcounts=on")
    p = run_qemu_io_abort(img, "write -P 7 0 1M", "write -P 8 5M 300k", "write -P 9 7M 1k")
    assert p.returncode != 0
    assert json.loads(qemu_img("info", "--output=json", img).stdout)["dirty-flag"] is True
    return img


def run_qemu_io_abort(img, *cmds):
    args = [QEMU_IO, "-f", "qcow2"]
    for c in list(cmds) + ["abort"]:
        args += ["-c", c]
    return run(args + [img], check=False)


def test_dirty_image_info_and_check_like_qemu(workdir):
    img = dirty_lazy_image(workdir, "dirty.qcow2")
    for args in (["info", img], ["info", "--output=json", img],
                 ["check", img], ["check", "--output=json", img]):
        ours, theirs = both(*args)
        assert ours.returncode == theirs.returncode, (args, ours.stderr, theirs.stderr)
        assert ours.stdout == theirs.stdout, args
    assert ours.returncode == 2  # stale refcounts of a dirty image are corruptions


def test_dirty_image_repaired_on_open(workdir):
    img = dirty_lazy_image(workdir, "dirty.qcow2")
    want = read_file(to_raw_qemu(img, os.path.join(workdir, "want.raw")))
    kiln_io(img, "read -P 7 0 1M", "read -P 8 5M 300k", "write -P 10 12M 64k")
    assert_qemu_clean(img)
    assert json.loads(qemu_img("info", "--output=json", img).stdout)["dirty-flag"] is False
    got = read_file(to_raw_qemu(img, os.path.join(workdir, "got.raw")))
    want = bytearray(want)
    want[12 * MiB:12 * MiB + 65536] = bytes([10]) * 65536
    assert got == bytes(want)


def test_dirty_image_repaired_by_check(workdir):
    img = dirty_lazy_image(workdir, "dirty.qcow2")
    p = kiln_img("check", "-r", "all", img, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert_qemu_clean(img)


# --- numbers on the command line: parsed strictly (the whole argument, in range) -------------
# Each bad number is one error line naming the argument, exit code 1 as qemu-img, and nothing
# created or changed. Kiln is stricter than qemu-img about some (hexadecimal or space-padded
# sizes, fractions of a byte); where qemu-img refuses too, its exit code is compared.

BAD_SIZES = ["1e3", "0x10", " 12", "12 ", "1.5", "0.1k", "1KB", "1KiB", "1k5", "inf", "nan",
             "+5", "", "1.", ".5k", "1,5k", "16E", "9223372036854775808",
             "18446744073709551616", "99999999999999999999999", "\u0663"]
QEMU_REFUSES_SIZE = {"1e3", "12 ", "1.5", "1KB", "1KiB", "1k5", "inf", "nan", "", ".5k", "1,5k",
                     "16E", "9223372036854775808", "18446744073709551616",
                     "99999999999999999999999"}


@pytest.mark.parametrize("size", BAD_SIZES)
def test_create_size_is_parsed_strictly(workdir, size):
    img = os.path.join(workdir, "x.qcow2")
    p = kiln_img("create", "-f", "qcow2", img, size, check=False)
    assert_one_line_error(p, "kiln-img")
    assert p.returncode == 1 and "Invalid image size" in p.stderr, p.stderr
    assert not os.path.exists(img)
    p = kiln_img("create", "-f", "qcow2", "-o", f"size={size}", img, check=False)
    assert_one_line_error(p, "kiln-img")
    assert not os.path.exists(img)
    if size in QEMU_REFUSES_SIZE:
        assert qemu_img("create", "-f", "qcow2", img, size, check=False).returncode == 1


@pytest.mark.parametrize("size", ["512", "1k", "1.5M", "2G", "0.5k", "1.0k", "3.25M", "1b"])
def test_create_size_values_match_qemu(workdir, size):
    ours, theirs = os.path.join(workdir, "k.qcow2"), os.path.join(workdir, "q.qcow2")
    kiln_img("create", "-q", "-f", "qcow2", ours, size)
    qemu_img("create", "-q", "-f", "qcow2", theirs, size)
    want = json.loads(qemu_img("info", "--output=json", theirs).stdout)["virtual-size"]
    got = json.loads(qemu_img("info", "--output=json", ours).stdout)["virtual-size"]
    assert got == want, (got, want)  # a whole number of sectors, as qemu-img makes it


@pytest.mark.parametrize("amount", ["+1e3", "+0x10", "+1.5", "+", "++1M", "1.5", "abc", "+1KB",
                                    "+ 1M", "+1k5", "+16E", "+0.1k", "1G "])
def test_resize_size_is_parsed_strictly(workdir, amount):
    img = os.path.join(workdir, "x.qcow2")
    kiln_img("create", "-q", "-f", "qcow2", img, "5M")
    before = read_file(img)
    p = kiln_img("resize", "-f", "qcow2", img, amount, check=False)
    assert_one_line_error(p, "kiln-img")
    assert p.returncode == 1 and "Invalid size" in p.stderr, p.stderr
    assert read_file(img) == before


@pytest.mark.parametrize("option,fragment", [
    ("cluster_size=64kk", "cluster size"), ("cluster_size=0x1000", "cluster size"),
    ("cluster_size=65536.5", "cluster size"), ("cluster_size=1e4", "cluster size"),
    ("cluster_size=", "cluster size"), ("cluster_size=4E", "luster size"),
    ("refcount_bits=016", "refcount_bits"), ("refcount_bits=16x", "refcount_bits"),
    ("refcount_bits=1e1", "refcount_bits"), ("refcount_bits=", "refcount_bits"),
    ("refcount_bits=-16", "refcount_bits"), ("refcount_bits= 16", "refcount_bits"),
    ("refcount_bits=99999999999999999999", "refcount_bits"),
])
def test_create_option_numbers_are_parsed_strictly(workdir, option, fragment):
    img = os.path.join(workdir, "x.qcow2")
    p = kiln_img("create", "-f", "qcow2", "-o", option, img, "1M", check=False)
    assert_one_line_error(p, "kiln-img")
    assert p.returncode == 1 and fragment in p.stderr, p.stderr
    assert not os.path.exists(img)


@pytest.mark.parametrize("option", ["cluster_size=4k", "cluster_size=0.5k", "refcount_bits=0x10",
                                    "refcount_bits=8"])
def test_create_option_numbers_match_qemu(workdir, option):
    ours, theirs = os.path.join(workdir, "k.qcow2"), os.path.join(workdir, "q.qcow2")
    kiln_img("create", "-q", "-f", "qcow2", "-o", option, ours, "1M")
    qemu_img("create", "-q", "-f", "qcow2", "-o", option, theirs, "1M")
    a = json.loads(qemu_img("info", "--output=json", ours).stdout)
    b = json.loads(qemu_img("info", "--output=json", theirs).stdout)
    assert a["cluster-size"] == b["cluster-size"]
    assert a["format-specific"]["data"]["refcount-bits"] == \
        b["format-specific"]["data"]["refcount-bits"]
