"""Seeded random sequences of writes, write-zeroes, discards and flushes done by kiln-io on
qcow2 images of several kinds, and the same sequence applied to a model: afterwards the image
passes `qemu-img check` with no errors and no leaks, and reads (through qemu-img and through
kiln-img) equal the model. Discarded bytes are unspecified until written again. The *_direct
variants run the same through O_DIRECT (kiln-io -t none / directsync): unaligned requests and
metadata updates of a few bytes go through bounce buffers and read-modify-writes."""

import os
import random

import pytest

from kilntest.images import (MiB, Model, apply_model, assert_qemu_clean, build_variant,
                             create_qcow2, header_get, kiln_io, make_raw, parallel_batches,
                             random_ops,
                             read_file, scaled, to_raw_kiln, to_raw_qemu, write_script)

# name -> builder of the starting image
SERIAL_VARIANTS = {
    "fresh-v3-64k": lambda d: create_qcow2(os.path.join(d, "img.qcow2"), 16 * MiB),
    "fresh-v2-64k": lambda d: create_qcow2(os.path.join(d, "img.qcow2"), 16 * MiB, compat="0.10"),
    "fresh-v3-512": lambda d: create_qcow2(os.path.join(d, "img.qcow2"), 2 * MiB, cluster=512),
    "fresh-v3-4k-refbits1": lambda d: create_qcow2(os.path.join(d, "img.qcow2"), 4 * MiB,
                                                   cluster=4096, refcount_bits=1),
    "fresh-v3-2M": lambda d: create_qcow2(os.path.join(d, "img.qcow2"), 24 * MiB, cluster=2 * MiB),
    "chain2-raw": lambda d: build_variant("chain2-raw", d),
    "chain3-qcow2": lambda d: build_variant("chain3-qcow2", d),
    "snapshots": lambda d: build_variant("snapshots", d),
    "compressed-zlib": lambda d: build_variant("compressed-zlib", d),
    "lazy-refcounts": lambda d: build_variant("lazy-refcounts", d),
    # Extended L2 entries (subclusters) over a raw backing file.
    "extl2-128k-chain": lambda d: create_qcow2(
        os.path.join(d, "img.qcow2"), 16 * MiB, cluster=128 * 1024,
        backing=make_raw(os.path.join(d, "base.raw"), 16 * MiB, seed=11), backing_fmt="raw",
        extra_opts="extended_l2=on"),
}


def cluster_of(img):
    return 1 << header_get(img, "cluster_bits")


def check_against_model(workdir, img, model, what):
    assert_qemu_clean(img)
    theirs = read_file(to_raw_qemu(img, os.path.join(workdir, "qemu.raw")))
    model.compare(theirs, f"{what}: qemu-img read vs model")
    ours = read_file(to_raw_kiln(img, os.path.join(workdir, "kiln.raw")))
    model.compare(ours, f"{what}: kiln-img read vs model")


@pytest.mark.parametrize("variant", list(SERIAL_VARIANTS))
def test_random_ops_serial(workdir, variant, cache=None):
    img = SERIAL_VARIANTS[variant](workdir)
    cluster = cluster_of(img)
    model = Model(read_file(to_raw_qemu(img, os.path.join(workdir, "initial.raw"))))
    size = len(model.data)
    rng = random.Random(f"serial-{variant}")
    max_clusters = 1 if cluster >= MiB else 4
    ops = random_ops(rng, size, cluster, scaled(3000, 300), max_clusters=max_clusters)
    script = os.path.join(workdir, "ops.txt")
    write_script(script, ops)
    p = kiln_io(img, extra=["-f", "qcow2", *(["-t", cache] if cache else []), "--script", script])
    assert p.stdout.count("ok ") == len(ops)
    for op in ops:
        apply_model(model, op)
    check_against_model(workdir, img, model, f"{variant} -t {cache or 'writeback'}")


@pytest.mark.parametrize("variant,cache", [("fresh-v3-64k", "none"), ("fresh-v3-512", "none"),
                                           ("chain2-raw", "directsync"),
                                           ("compressed-zlib", "none"),
                                           ("fresh-v2-64k", "none"),
                                           ("extl2-128k-chain", "none")])
def test_random_ops_serial_direct(workdir, variant, cache):
    test_random_ops_serial(workdir, variant, cache)


@pytest.mark.parametrize("variant", ["fresh-v3-64k", "fresh-v3-4k-refbits1", "chain2-raw",
                                     "snapshots", "compressed-zlib", "extl2-128k-chain"])
def test_random_ops_parallel(workdir, variant, cache=None):
    img = SERIAL_VARIANTS[variant](workdir)
    cluster = cluster_of(img)
    model = Model(read_file(to_raw_qemu(img, os.path.join(workdir, "initial.raw"))))
    rng = random.Random(f"parallel-{variant}")
    ops = parallel_batches(rng, len(model.data), cluster, scaled(150, 20), 24)
    script = os.path.join(workdir, "ops.txt")
    write_script(script, ops)
    p = kiln_io(img, extra=["-f", "qcow2", *(["-t", cache] if cache else []), "--parallel", "16",
                            "--script", script])
    assert p.stdout.count("ok ") == len(ops)
    for op in ops:
        apply_model(model, op)
    check_against_model(workdir, img, model, f"{variant} --parallel 16 -t {cache or 'writeback'}")


@pytest.mark.parametrize("variant", ["fresh-v3-64k", "fresh-v3-4k-refbits1", "chain2-raw"])
def test_random_ops_parallel_direct(workdir, variant):
    test_random_ops_parallel(workdir, variant, "none")


def racing_batches(rng, model, cluster, batches):
    """Batches where reads race writes (or write-zeroes) of the same bytes, on clusters that
    the writes allocate: every byte read must be its old value or the new one."""
    size = len(model.data)
    ops = []
    for _ in range(batches):
        region = rng.randint(1, 4 * cluster)
        start = rng.randrange(0, size - region + 1)
        if rng.random() < 0.5:
            start -= start % cluster
        new = 0 if rng.random() < 0.2 else rng.randint(1, 255)
        kind = "write" if new else rng.choice(["zero", "zero-u"])
        pieces = rng.randint(1, 4)
        cuts = sorted(rng.sample(range(1, region), pieces - 1)) if region > pieces else []
        bounds = [0] + cuts + [region]
        batch = [(kind, start + a, b - a, new) for a, b in zip(bounds, bounds[1:])]
        for _ in range(rng.randint(1, 8)):
            length = rng.randint(1, region)
            off = start + rng.randrange(0, region - length + 1)
            old = set(model.data[off:off + length])
            batch.append(("read", off, length, tuple(sorted(old | {new}))))
        rng.shuffle(batch)
        ops += batch
        ops.append(("flush", 0, 0, 0))
        for op in batch:
            apply_model(model, op)
    return ops


@pytest.mark.parametrize("cluster", [4096, 65536])
def test_parallel_reads_race_allocating_writes(workdir, cluster):
    size = 8 * MiB
    base = os.path.join(workdir, "base.raw")
    with open(base, "wb") as f:
        f.write(bytes([0x11]) * size)
    img = create_qcow2(os.path.join(workdir, "img.qcow2"), size, cluster=cluster,
                       backing=base, backing_fmt="raw")
    model = Model(read_file(base))
    rng = random.Random(f"race-{cluster}")
    ops = racing_batches(rng, model, cluster, scaled(300, 40))
    script = os.path.join(workdir, "ops.txt")
    write_script(script, ops)
    p = kiln_io(img, extra=["-f", "qcow2", "--parallel", "16", "--script", script], check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("ok ") == len(ops)
    check_against_model(workdir, img, model, f"racing reads, cluster {cluster}")
