"""Every byte Kiln reads from an image made by QEMU equals what QEMU reads: images of every
qcow2 variant converted to raw by kiln-img and by qemu-img must be identical, and the raw
copy made by kiln-img must be sparse where the image reads as zeros."""

import os

import pytest

from kilntest.images import (VARIANTS, assert_same_bytes, build_variant, kiln_io, read_file,
                             to_raw_kiln, to_raw_qemu)


@pytest.mark.parametrize("variant", VARIANTS)
def test_convert_matches_qemu(workdir, variant):
    img = build_variant(variant, workdir)
    ours = to_raw_kiln(img, os.path.join(workdir, "kiln.raw"))
    theirs = to_raw_qemu(img, os.path.join(workdir, "qemu.raw"))
    a, b = read_file(ours), read_file(theirs)
    assert_same_bytes(a, b, f"{variant}: kiln-img convert vs qemu-img convert")
    # Sparse: kiln-img leaves holes where the guest sees zeros, like qemu-img does.
    ours_blocks = os.stat(ours).st_blocks
    theirs_blocks = os.stat(theirs).st_blocks
    assert ours_blocks <= theirs_blocks + 64, (variant, ours_blocks, theirs_blocks)


@pytest.mark.parametrize("variant", ["v3-c4096", "chain2-raw", "compressed-zstd", "snapshots"])
def test_kiln_io_reads_match(workdir, variant):
    """Reads through kiln-io (dump, and read -P on a uniform range) agree with qemu-img."""
    img = build_variant(variant, workdir)
    theirs = read_file(to_raw_qemu(img, os.path.join(workdir, "qemu.raw")))
    dump = os.path.join(workdir, "dump.raw")
    ro = ["-r", "-f", "qcow2"]  # an overlay's format is given, never probed
    kiln_io(img, f"dump {dump}", extra=ro)
    assert_same_bytes(read_file(dump), theirs, f"{variant}: kiln-io dump")
    # Find a uniform run of at least 300 bytes and verify it with read -P.
    step = 4096
    for off in range(0, len(theirs) - step, step):
        chunk = theirs[off:off + step]
        if chunk == bytes([chunk[0]]) * step and chunk[0] != 0:
            p = kiln_io(img, f"read -P {chunk[0]} {off + 7} {step - 7}", extra=ro)
            assert f"read {step - 7}/{step - 7} bytes at offset {off + 7}" in p.stdout
            bad = kiln_io(img, f"read -P {(chunk[0] + 1) % 256} {off} {step}", extra=ro,
                          check=False)
            assert bad.returncode == 1 and f"offset {off}" in bad.stderr, bad.stderr
            break
    else:
        pytest.fail("no uniform range found to verify")
