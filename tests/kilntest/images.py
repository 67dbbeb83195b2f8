"""The block layer's test helpers: running kiln-img and kiln-io, building images of every
qcow2 variant with QEMU's own tools, a byte model of a disk, and comparisons."""

import fcntl
import json
import os
import random
import resource
import shutil
import struct
import time
import zlib

from kilntest import SANITIZED, SCALE, KiB, MiB, scaled  # noqa: F401  (re-exported)
from kilntest import content_digest
from kilntest import run as _run

KILN_IMG = os.environ.get("KILN_IMG", "kiln-img")
KILN_IO = os.environ.get("KILN_IO", "kiln-io")
QEMU_IMG = shutil.which("qemu-img") or "qemu-img"
QEMU_IO = shutil.which("qemu-io") or "qemu-io"


def _limit_memory():
    # A hostile image must not make a tool allocate gigabytes. ASan reserves a huge shadow
    # mapping, so the address-space limit only applies to uninstrumented builds.
    limit = 2 * 1024 * MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def run(args, check=True, limit_memory=False, input=None, timeout=600):
    """Runs a command, returns CompletedProcess with text stdout/stderr."""
    preexec = _limit_memory if (limit_memory and not SANITIZED) else None
    return _run(args, check=check, input=input, timeout=timeout, preexec_fn=preexec)


def qemu_img(*args, check=True):
    return run([QEMU_IMG, *args], check=check)


def qemu_io(image, *cmds, fmt="qcow2", check=True):
    args = [QEMU_IO, "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    p = run(args + [image], check=check)
    # qemu-io reports some failures only in its output.
    if check:
        assert "failed" not in p.stdout and "failed" not in p.stderr, p.stdout + p.stderr
    return p


def kiln_img(*args, check=True, **kw):
    return run([KILN_IMG, *args], check=check, **kw)


def kiln_io(image, *cmds, extra=(), check=True, **kw):
    args = [KILN_IO, *extra, image]
    for c in cmds:
        args += ["-c", c]
    return run(args, check=check, **kw)


def assert_one_line_error(p, tool):
    """A failure must be a non-zero exit, no signal, one line on stderr naming the tool."""
    assert p.returncode > 0, f"{tool} exited with {p.returncode}: {p.stderr}"
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{tool}: expected one error line, got:\n{p.stderr}"
    assert lines[0].startswith(f"{tool}: "), lines[0]
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr


F_OFD_GETLK = 36


def lock_holder_present(path):
    """True while some process holds one of QEMU's lock bytes (100-103, 200-203) on `path`."""
    with open(path, "rb") as f:
        for byte in (100, 101, 102, 103, 200, 201, 202, 203):
            req = struct.pack("hh4xqqi4x", fcntl.F_WRLCK, os.SEEK_SET, byte, 1, 0)
            got = fcntl.fcntl(f.fileno(), F_OFD_GETLK, req)
            if struct.unpack("hh4xqqi4x", got)[0] != fcntl.F_UNLCK:
                return True
    return False


def wait_unlocked(path, timeout=10.0):
    """Waits until no process holds the image's locks. A process killed with in-flight
    io_uring requests lets go of its files only when the kernel has torn its ring down, a
    little after the process itself is gone. Returns the seconds waited."""
    start = time.monotonic()
    while lock_holder_present(path):
        assert time.monotonic() - start < timeout, f"{path} still locked after {timeout} s"
        time.sleep(0.002)
    return time.monotonic() - start


def qemu_check(image):
    """(exit code, parsed JSON or None) of `qemu-img check --output=json`."""
    p = qemu_img("check", "--output=json", image, check=False)
    try:
        data = json.loads(p.stdout) if p.stdout.strip() else None
    except json.JSONDecodeError:
        data = None
    return p.returncode, data, p.stderr


def assert_qemu_clean(image):
    rc, data, err = qemu_check(image)
    assert rc == 0 and data and data.get("corruptions", 0) == 0 and data.get("leaks", 0) == 0, \
        f"qemu-img check {image}: rc={rc} {data} {err}"


def to_raw_qemu(image, out, fmt="qcow2"):
    qemu_img("convert", "-f", fmt, "-O", "raw", image, out)
    return out


def to_raw_kiln(image, out, fmt="qcow2"):
    kiln_img("convert", "-f", fmt, "-O", "raw", image, out)
    return out


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def first_difference(a, b):
    if len(a) != len(b):
        return f"length {len(a)} != {len(b)}"
    # Binary search on chunk equality keeps this fast for large buffers.
    lo, hi = 0, len(a)
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return f"offset {i}: {a[i]:#04x} != {b[i]:#04x}"
    return None


def assert_same_bytes(a, b, what):
    if a != b:
        raise AssertionError(f"{what}: first difference at {first_difference(a, b)}")


# ---------------------------------------------------------------------------------------------
# qcow2 header access (the few fields the tests patch)

HDR = {
    "magic": (0, ">I"), "version": (4, ">I"), "backing_file_offset": (8, ">Q"),
    "backing_file_size": (16, ">I"), "cluster_bits": (20, ">I"), "size": (24, ">Q"),
    "crypt_method": (32, ">I"), "l1_size": (36, ">I"), "l1_table_offset": (40, ">Q"),
    "refcount_table_offset": (48, ">Q"), "refcount_table_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"), "snapshots_offset": (64, ">Q"),
    "incompatible_features": (72, ">Q"), "compatible_features": (80, ">Q"),
    "autoclear_features": (88, ">Q"), "refcount_order": (96, ">I"), "header_length": (100, ">I"),
}


def header_get(path, field):
    off, fmt = HDR[field]
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def header_set(path, field, value):
    off, fmt = HDR[field]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(fmt, value))


def patch_bytes(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def refcount_block_offset(path):
    """Host offset of the first refcount block (16-bit refcounts assumed by callers)."""
    rt = header_get(path, "refcount_table_offset")
    with open(path, "rb") as f:
        f.seek(rt)
        return struct.unpack(">Q", f.read(8))[0]


# ---------------------------------------------------------------------------------------------
# Images of every variant, made with QEMU's tools

def fill_qemu(image, size, cluster, seed, fmt="qcow2", count=12):
    """Writes a deterministic mix of aligned and unaligned patterned ranges with qemu-io."""
    rng = random.Random(seed)
    cmds = []
    for _ in range(count):
        length = rng.choice([1, 511, 512, 4096, cluster, cluster * 2 + 123, rng.randrange(1, 3 * cluster)])
        length = min(length, size // 4)
        off = rng.randrange(0, size - length)
        if rng.random() < 0.5:
            off -= off % 512
        cmds.append(f"write -P {rng.randrange(1, 256)} {off} {length}")
    # Always something at the very start and right before the end.
    cmds.append(f"write -P 0x5a 0 {min(cluster, 65536)}")
    cmds.append(f"write -P 0xa5 {size - 1000} 1000")
    qemu_io(image, *cmds, fmt=fmt)


def make_raw(path, size, seed):
    with open(path, "wb") as f:
        f.truncate(size)
    fill_qemu(path, size, 65536, seed, fmt="raw")
    return path


def create_qcow2(path, size=None, cluster=65536, compat="1.1", refcount_bits=16, backing=None,
                 backing_fmt=None, extra_opts=None):
    opts = [f"cluster_size={cluster}", f"compat={compat}"]
    if compat != "0.10":
        opts.append(f"refcount_bits={refcount_bits}")
    if extra_opts:
        opts.append(extra_opts)
    args = ["create", "-q", "-f", "qcow2", "-o", ",".join(opts)]
    if backing:
        args += ["-b", os.path.basename(backing), "-F", backing_fmt]
    args.append(path)
    if size is not None:
        args.append(str(size))
    qemu_img(*args)
    return path


class QemuLuksImages:
    """Empty LUKS-encrypted qcow2 images made by `qemu-img create`, for the suites that check
    Kiln against QEMU's encryption. Before it creates one, qemu-img measures PBKDF2's speed
    (runs of at least half a second each, whatever encrypt.iter-time asks: 2.5 s of CPU here),
    so an image of the same passphrase, size and options is made once in `d` and each caller
    gets a copy of it. The copies share the salts and master key; no test needs them to differ."""

    def __init__(self, d):
        self.d, self.made = d, {}

    def create(self, img, secret_file, size, options, extra=()):
        """Makes `img` (a copy); `options`: qemu-img's -o, naming the secret object sec0 that
        `secret_file` holds; `extra`: more of qemu-img create's arguments."""
        key = (read_file(secret_file), str(size), options, tuple(extra))
        made = self.made.get(key)
        if made is None:
            made = os.path.join(self.d, f"luks-{len(self.made)}.qcow2")
            secret = os.path.join(self.d, f"luks-{len(self.made)}.key")
            shutil.copyfile(secret_file, secret)
            # On a loaded machine qemu-img sometimes cannot measure ("Unable to get accurate
            # CPU usage"): try again.
            for _ in range(10):
                p = qemu_img("create", "-q", "-f", "qcow2", "--object",
                             f"secret,id=sec0,file={secret}", "-o", options, *extra, made, str(size),
                             check=False)
                if p.returncode == 0:
                    break
                assert "Unable to get accurate CPU usage" in p.stderr, p.stderr
            else:
                raise AssertionError(f"qemu-img create failed: {p.stderr}")
            self.made[key] = made
        shutil.copyfile(made, img)
        return img


def zero_clusters(image, cluster, size):
    """Both kinds of zero clusters: write -z on unallocated (zero plain), write -z on allocated
    (zero allocated), write -z -u on allocated, and a discard."""
    c = cluster
    base = (size - 8 * c) // c * c
    qemu_io(image,
            f"write -P 0x77 {base} {4 * c}",
            f"write -z {base + 6 * c} {2 * c}",        # unallocated -> zero plain
            f"write -z {base} {c}",                     # allocated -> zero, allocation kept
            f"write -z -u {base + c} {c}",              # allocated -> may unmap
            f"discard {base + 2 * c} {c}",
            f"write -z {base + 3 * c + 512} 1024")      # partial: zeros written in place


def build_variant(name, d):
    """Builds the image called `name` in directory d (with its backings) and returns its path."""
    p = lambda f: os.path.join(d, f)  # noqa: E731
    size = 8 * MiB
    if name.startswith("v2-") or name.startswith("v3-c"):
        compat = "0.10" if name.startswith("v2") else "1.1"
        cluster = int(name.split("-c")[1])
        vsize = {512: 2 * MiB, 4096: 4 * MiB, 65536: 8 * MiB, 2 * MiB: 24 * MiB}.get(cluster, size)
        img = create_qcow2(p("img.qcow2"), vsize, cluster=cluster, compat=compat)
        fill_qemu(img, vsize, cluster, seed=zlib.crc32(name.encode()))
        if compat == "1.1":
            zero_clusters(img, cluster, vsize)
        return img
    if name.startswith("refbits"):
        bits = int(name[len("refbits"):])
        img = create_qcow2(p("img.qcow2"), 4 * MiB, cluster=4096, refcount_bits=bits)
        fill_qemu(img, 4 * MiB, 4096, seed=bits, count=30)
        return img
    if name.startswith("chain"):
        # chainN-raw / chainN-qcow2: depth N, bottom raw or qcow2, each layer larger than
        # the one below it, data in every layer.
        depth = int(name[5])
        bottom_fmt = name.split("-")[1]
        sizes = [3 * MiB + 12345 if bottom_fmt == "raw" else 3 * MiB]
        for _ in range(depth):
            sizes.append(sizes[-1] + 2 * MiB + (512 if bottom_fmt == "raw" else 0))
        sizes = [s - s % 512 if i > 0 else s for i, s in enumerate(sizes)]
        if bottom_fmt == "raw":
            below = make_raw(p("base.raw"), sizes[0], seed=1)
        else:
            below = create_qcow2(p("base.qcow2"), sizes[0], cluster=65536)
            fill_qemu(below, sizes[0], 65536, seed=1)
        fmt = bottom_fmt
        for level in range(1, depth + 1):
            cluster = [65536, 4096, 65536 * 4][level % 3]
            img = create_qcow2(p(f"l{level}.qcow2"), sizes[level], cluster=cluster, backing=below,
                               backing_fmt=fmt)
            fill_qemu(img, sizes[level], cluster, seed=100 + level, count=6)
            qemu_io(img, f"write -z {cluster * 3} {cluster}")  # zero over backing data
            below, fmt = img, "qcow2"
        return below
    if name.startswith("compressed-"):
        ctype = name.split("-")[1]
        src = create_qcow2(p("src.qcow2"), size, cluster=65536)
        fill_qemu(src, size, 65536, seed=7, count=20)
        img = p("img.qcow2")
        qemu_img("convert", "-c", "-O", "qcow2", "-o", f"compression_type={ctype}", src, img)
        # Some uncompressed writes on top of compressed clusters too.
        qemu_io(img, "write -P 0x42 70000 5000", "write -P 0x43 1000000 65536")
        return img
    if name == "snapshots":
        img = create_qcow2(p("img.qcow2"), size, cluster=65536)
        fill_qemu(img, size, 65536, seed=11)
        qemu_img("snapshot", "-c", "first", img)
        fill_qemu(img, size, 65536, seed=12)
        qemu_img("snapshot", "-c", "second", img)
        qemu_io(img, "write -P 0x99 0 100000", f"write -z {2 * MiB} {MiB}")
        return img
    if name == "lazy-refcounts":
        img = create_qcow2(p("img.qcow2"), size, cluster=65536, extra_opts="lazy_refcounts=on")
        fill_qemu(img, size, 65536, seed=13)
        return img
    raise ValueError(name)


class SharedImages:
    """Images made once per module for tests that only read them: `build(name, dir)` makes
    one in a directory of its own (with its backing files) and returns what get(name) hands
    out. assert_unchanged() checks that no test wrote to any file of it (size and mtime; with
    deep, the bytes, by content_digest)."""

    def __init__(self, d, build):
        self.d, self.build, self.made = d, build, {}

    def get(self, name):
        if name not in self.made:
            sd = os.path.join(self.d, name)
            os.makedirs(sd)
            value = self.build(name, sd)
            files = sorted(os.path.join(sd, f) for f in os.listdir(sd))
            self.made[name] = (value, {f: (self._stamp(f), content_digest(f)) for f in files})
        return self.made[name][0]

    @staticmethod
    def _stamp(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns

    def assert_unchanged(self, name=None, deep=False):
        for n in [name] if name else list(self.made):
            for f, (stamp, digest) in self.made[n][1].items():
                assert self._stamp(f) == stamp, f"{n}: {f} was written"
                if deep:
                    assert content_digest(f) == digest, f"{n}: {f} changed"


VARIANTS = (
    ["v2-c65536", "v3-c512", "v3-c4096", "v3-c65536", f"v3-c{2 * MiB}"]
    + [f"refbits{b}" for b in (1, 2, 4, 8, 16, 32, 64)]
    + [f"chain{n}-{f}" for n in (1, 2, 3) for f in ("raw", "qcow2")]
    + ["compressed-zlib", "compressed-zstd", "snapshots", "lazy-refcounts"]
)


# ---------------------------------------------------------------------------------------------
# A model disk: bytes plus ranges whose content is unspecified (discarded).

class Model:
    def __init__(self, data):
        self.data = bytearray(data)
        self.undefined = []  # sorted, disjoint [start, end)

    def _define(self, start, end):
        out = []
        for s, e in self.undefined:
            if e <= start or s >= end:
                out.append((s, e))
                continue
            if s < start:
                out.append((s, start))
            if e > end:
                out.append((end, e))
        self.undefined = out

    def write(self, off, length, byte):
        self.data[off:off + length] = bytes([byte]) * length
        self._define(off, off + length)

    def discard(self, off, length):
        self._define(off, off + length)
        self.undefined.append((off, off + length))
        self.undefined.sort()
        merged = []
        for s, e in self.undefined:
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        self.undefined = merged

    def compare(self, actual, what):
        assert len(actual) == len(self.data), f"{what}: size {len(actual)} != {len(self.data)}"
        pos = 0
        for s, e in self.undefined + [(len(self.data), len(self.data))]:
            if self.data[pos:s] != actual[pos:s]:
                raise AssertionError(
                    f"{what}: first difference at {pos} + "
                    f"{first_difference(bytes(self.data[pos:s]), bytes(actual[pos:s]))}")
            pos = e


def random_ops(rng, size, cluster, count, flush_every=(5, 60), kinds=None, max_clusters=4):
    """Seeded operations: (kind, offset, length, byte) with kind in write/zero/zero-u/discard/
    flush; sizes from one byte to several clusters, aligned and not."""
    kinds = kinds or [("write", 60), ("zero", 12), ("zero-u", 8), ("discard", 8)]
    names = [k for k, _ in kinds]
    weights = [w for _, w in kinds]
    ops = []
    next_flush = rng.randint(*flush_every)
    for i in range(count):
        if i == next_flush:
            ops.append(("flush", 0, 0, 0))
            next_flush = i + rng.randint(*flush_every)
            continue
        kind = rng.choices(names, weights)[0]
        r = rng.random()
        if r < 0.2:
            length = rng.randint(1, 511)
        elif r < 0.5:
            length = 512 * rng.randint(1, max(1, cluster // 512))
        else:
            length = rng.randint(1, max_clusters * cluster)
        length = min(length, size)
        off = rng.randrange(0, size - length + 1)
        if rng.random() < 0.5:
            off -= off % 512
        if rng.random() < 0.2:
            off -= off % cluster
        ops.append((kind, off, length, rng.randint(1, 255)))
    return ops


def parallel_batches(rng, size, cluster, batches, width):
    """Batches of operations that never overlap in bytes but share clusters, each followed
    by a flush."""
    ops = []
    for _ in range(batches):
        n = rng.randint(2, width)
        region = rng.randint(n, min(size, 8 * cluster))
        start = rng.randrange(0, size - region + 1)
        if rng.random() < 0.5:
            start -= start % cluster
        cuts = sorted(rng.sample(range(1, region), n - 1))
        bounds = [0] + cuts + [region]
        batch = []
        for a, b in zip(bounds, bounds[1:]):
            kind = rng.choices(["write", "zero", "zero-u", "discard"], [70, 12, 8, 10])[0]
            batch.append((kind, start + a, b - a, rng.randint(1, 255)))
        rng.shuffle(batch)
        ops += batch
        ops.append(("flush", 0, 0, 0))
    return ops


def script_line(op):
    kind, off, length, byte = op
    if kind == "write":
        return f"write -P {byte} {off} {length}"
    if kind == "zero":
        return f"zero {off} {length}"
    if kind == "zero-u":
        return f"zero -u {off} {length}"
    if kind == "discard":
        return f"discard {off} {length}"
    if kind == "read":  # byte: the values each byte may have
        return f"read -P {','.join(str(b) for b in byte)} {off} {length}"
    return "flush"


def apply_model(model, op):
    kind, off, length, byte = op
    if kind == "write":
        model.write(off, length, byte)
    elif kind in ("zero", "zero-u"):
        model.write(off, length, 0)
    elif kind == "discard":
        model.discard(off, length)


def write_script(path, ops):
    with open(path, "w") as f:
        for op in ops:
            f.write(script_line(op) + "\n")
