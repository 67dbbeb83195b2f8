#!/usr/bin/python3
"""kiln-fs mount (FUSE) next to a kernel loop mount of the same ext4 image: 256 MiB sequential
write and read, and a tree of small files (tar x, then tar c after a remount). Prints a Markdown
table (MB/s, files/s, ratio to the kernel).

    sudo bench/fuse_bench.py                     # 1 GiB image, 256 MiB file, 5000 small files
    sudo bench/fuse_bench.py --quick             # 512 MiB image, 64 MiB file, 1000 files
    sudo unshare -m --propagation private bench/fuse_bench.py   # see below

fuse2fs (e2fsprogs' FUSE driver over the same libext2fs; package fuse2fs, in
bench/extra-packages.txt) is measured beside the kernel when installed. Run the script in a
private mount namespace: a namespace that another process creates while the kernel's loop
mount is up keeps a copy of it, and the unmount then does not write the ext4 back.

Each figure is the median of --repeats runs on a fresh image. Writes are timed until the data
is in the image file: the write, then the unmount (the kernel's unmount writes back its page
cache; for kiln-fs, the process's exit after its final flush). Reads are timed after a remount
and a drop of the page cache, so the data comes from the image. Needs root (loop mounts,
drop_caches), e2fsprogs, fuse3, qemu-utils; run it on an idle host."""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import io
import tarfile
import tempfile
import time

MiB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))


def sh(*args, **kw):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, **kw)


def find_binary(path, name):
    for d in ("build-fuse", "build/release", "build", "build/dev"):
        p = os.path.join(HERE, "..", d, path, name)
        if os.path.exists(p):
            return os.path.abspath(p)
    return shutil.which(name)


def is_mounted(path):
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class KernelMount:
    name = "kernel loop mount"

    def __init__(self, image):
        self.image = image

    def mount(self, mnt):
        sh("mount", "-t", "ext4", "-o", "loop", self.image, mnt)

    def unmount(self, mnt):
        sh("umount", mnt)  # writes back the page cache; autoclear detaches the loop device


class KilnMount:
    def __init__(self, command, image, name):
        self.command = command  # the mount command before IMAGE DIR
        self.image = image
        self.name = name
        self.proc = None

    def mount(self, mnt):
        self.proc = subprocess.Popen(self.command + ["-f", self.image, mnt],
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"kiln-fs mount failed: {self.proc.stderr.read().decode()}")
            time.sleep(0.01)

    def unmount(self, mnt):
        # Busy for a moment after the last close (the kernel's background release): retry.
        for _ in range(300):
            if subprocess.run(["fusermount3", "-u", mnt], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        self.proc.wait(timeout=600)  # the final flush happens before the exit
        err = self.proc.stderr.read().decode()
        self.proc.stderr.close()
        if self.proc.returncode != 0:
            raise SystemExit(f"kiln-fs exited {self.proc.returncode}: {err}")


def make_image(path, size_mib):
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    sh("mkfs.ext4", "-q", "-F", path)


def make_tarball(path, files, seed=7):
    rng = random.Random(seed)
    with tarfile.open(path, "w") as tar:
        for i in range(files):
            data = rng.randbytes(rng.choice([0, 100, 1000, 4096, 8000, 16000]))
            info = tarfile.TarInfo(f"tree/d{i % 50:02d}/s{i // 50 % 10}/f{i:06d}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def run_once(target, mnt, size_mib, tarball, files):
    out = {}
    target.mount(mnt)
    t = time.monotonic()
    sh("dd", "if=/dev/zero", f"of={mnt}/big", "bs=1M", f"count={size_mib}")
    target.unmount(mnt)
    out["seq write"] = size_mib / (time.monotonic() - t)

    target.mount(mnt)
    drop_caches()
    t = time.monotonic()
    sh("dd", f"if={mnt}/big", "of=/dev/null", "bs=1M")
    out["seq read"] = size_mib / (time.monotonic() - t)
    t = time.monotonic()
    sh("tar", "xf", tarball, "-C", mnt)
    target.unmount(mnt)
    out["tar x (small files)"] = files / (time.monotonic() - t)

    target.mount(mnt)
    drop_caches()
    t = time.monotonic()
    sh("tar", "cf", "/dev/null", "-C", mnt, "tree")
    # tar skips reading file data when writing to /dev/null: read it for real.
    sh("sh", "-c", f"find {mnt}/tree -type f -print0 | xargs -0 cat > /dev/null")
    out["read tree (small files)"] = files / (time.monotonic() - t)
    target.unmount(mnt)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kiln-fs", default=find_binary("fusefs", "kiln-fs"))
    ap.add_argument("--fuse-dev", default=find_binary("fusefs/fuse", "kiln-fuse-dev"),
                    help="also measure the same mount over libext2fs's unix_io_manager "
                         "(kiln-fuse-dev), to tell the FUSE layer from kiln-fs's io_manager")
    ap.add_argument("--image-mib", type=int, default=1024)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-qcow2", action="store_true", help="skip kiln-fs on a qcow2 overlay")
    ap.add_argument("--kiln-fs-before", default="",
                    help="a second kiln-fs binary (say, the build before a change), measured "
                         "on raw images in the same runs: column kiln-before")
    ap.add_argument("--only", default="",
                    help="comma-separated kinds to run: kernel,kiln-raw,kiln-qcow2,fuse2fs,"
                         "fuse-dev (default: all that are available)")
    args = ap.parse_args()
    if args.quick:
        args.image_mib, args.size_mib, args.files, args.repeats = 512, 64, 1000, 1
    if os.geteuid() != 0:
        raise SystemExit("fuse_bench.py needs root (loop mounts, drop_caches)")
    if not args.kiln_fs or not os.path.exists(args.kiln_fs):
        raise SystemExit("kiln-fs not found: build it or pass --kiln-fs")

    work = tempfile.mkdtemp(prefix="kiln-fuse-bench-")
    mnt = os.path.join(work, "mnt")
    os.mkdir(mnt)
    results = {}
    try:
        tarball = os.path.join(work, "tree.tar")
        make_tarball(tarball, args.files)
        kinds = ["kernel", "kiln-raw"] + ([] if args.no_qcow2 else ["kiln-qcow2"])
        if shutil.which("fuse2fs"):
            kinds.append("fuse2fs")
        else:
            print("# fuse2fs not installed (package fuse2fs): no fuse2fs column", file=sys.stderr)
        if args.fuse_dev and os.path.exists(args.fuse_dev):
            kinds.append("fuse-dev")
        if args.kiln_fs_before:
            kinds.insert(1, "kiln-before")
        if args.only:
            kinds = [k for k in kinds if k in args.only.split(",")]
        if "kernel" not in kinds:
            raise SystemExit("--only must include kernel (the reference)")
        for rep in range(args.repeats):
            for kind in kinds:
                raw = os.path.join(work, "fs.raw")
                make_image(raw, args.image_mib)
                if kind == "kernel":
                    target = KernelMount(raw)
                elif kind == "kiln-raw":
                    target = KilnMount([args.kiln_fs, "mount"], raw, "kiln-fs mount (raw)")
                elif kind == "kiln-before":
                    target = KilnMount([args.kiln_fs_before, "mount"], raw,
                                       "kiln-fs mount before (raw)")
                elif kind == "fuse2fs":
                    # e2fsprogs' FUSE driver over the same libext2fs, in the foreground too.
                    target = KilnMount(["fuse2fs"], raw, "fuse2fs (raw)")
                elif kind == "fuse-dev":
                    target = KilnMount([args.fuse_dev], raw, "kiln-fuse-dev (raw)")
                else:
                    base = os.path.join(work, "base.qcow2")
                    overlay = os.path.join(work, "overlay.qcow2")
                    sh("qemu-img", "convert", "-O", "qcow2", raw, base)
                    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
                       overlay)
                    target = KilnMount([args.kiln_fs, "mount", "--format", "qcow2"], overlay,
                                       "kiln-fs mount (qcow2 overlay)")
                try:
                    r = run_once(target, mnt, args.size_mib, tarball, args.files)
                finally:
                    if is_mounted(mnt):
                        subprocess.run(["umount", "-l", mnt])
                for k, v in r.items():
                    results.setdefault(kind, {}).setdefault(k, []).append(v)
                print(f"# run {rep + 1} {kind}: " +
                      ", ".join(f"{k} {v:.1f}" for k, v in r.items()), file=sys.stderr)
    finally:
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", mnt])
        shutil.rmtree(work, ignore_errors=True)

    names = {"kernel": "kernel loop", "kiln-raw": "kiln-fs (raw)",
             "kiln-before": "kiln-fs before (raw)",
             "kiln-qcow2": "kiln-fs (qcow2 overlay)",
             "fuse2fs": "fuse2fs (raw)", "fuse-dev": "FUSE layer over unix_io (raw)"}
    kinds = list(results)
    print(f"\nkiln-fs mount vs kernel loop mount: {args.image_mib} MiB ext4 image, "
          f"{args.size_mib} MiB file, {args.files} small files, median of {args.repeats}\n")
    ratios = [k for k in ("kiln-raw", "fuse-dev") if k in kinds]
    vs_fuse2fs = "kiln-raw" in kinds and "fuse2fs" in kinds
    header = "| operation | unit | " + " | ".join(names[k] for k in kinds) + " | " + \
             " | ".join(f"{names[k]} / kernel" for k in ratios) + \
             (" | kiln-fs (raw) / fuse2fs |" if vs_fuse2fs else " |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for op in results["kernel"]:
        unit = "MB/s" if op.startswith("seq") else "files/s"
        med = {k: statistics.median(results[k][op]) for k in kinds}
        cells = " | ".join(f"{med[k]:.0f}" for k in kinds)
        ratio_cells = " | ".join(f"{med[k] / med['kernel']:.2f}" for k in ratios)
        if vs_fuse2fs:
            ratio_cells += f" | {med['kiln-raw'] / med['fuse2fs']:.2f}"
        print(f"| {op} | {unit} | {cells} | {ratio_cells} |")


if __name__ == "__main__":
    main()
