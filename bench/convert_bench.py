#!/usr/bin/python3
"""kiln-img convert next to qemu-img convert on the same 2 GiB qcow2 image: plain, -c zlib and
-c zstd, qemu-img with its defaults and with `-m 16 -W`. Prints a Markdown table of medians:
wall time, throughput (virtual bytes per second), CPU seconds (user + system of the tool),
output size (bytes allocated), and kiln-img's throughput as a multiple of qemu-img's best.

    bench/convert_bench.py                    # 2 GiB, 3 repeats
    bench/convert_bench.py --quick            # 512 MiB, 1 repeat
    bench/convert_bench.py --source IMG.qcow2 # any qcow2 (taken as it is)

The default source is realistic: the Kiln cloud image (/var/cache/kiln/images/*.qcow2, Debian,
2 GiB virtual, ~400 MiB of data, the rest unallocated) plus, in its empty upper half, 256 MiB
of log-like text, 128 MiB of random bytes, 128 MiB of low-entropy binary and 128 MiB of zeros
written as data; without the cloud image the same generated content over an empty disk. Every
run writes a new file and is timed until the file is synced (qemu-img does not fsync its
output by default; kiln-img does). Numbers are only as quiet as the machine."""

import argparse
import glob
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1024 * 1024
HERE = os.path.dirname(os.path.abspath(__file__))
CLOUD = "/var/cache/kiln/images/*.qcow2"

MODES = [
    ("plain", ["-O", "qcow2"]),
    ("-c zlib", ["-O", "qcow2", "-c"]),
    ("-c zstd", ["-O", "qcow2", "-c", "-o", "compression_type=zstd"]),
]
# qemu-img variants: defaults, and the parallel options that help it most.
QEMU_VARIANTS = [("qemu-img", []), ("qemu-img -m 16 -W", ["-m", "16", "-W"])]
KILN_VARIANTS = [("kiln-img", []), ("kiln-img -m 16 -W", ["-m", "16", "-W"])]


def sh(*args):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True)


def find_kiln_img(build):
    for d in ([build] if build else []) + ["build/release", "build"]:
        p = os.path.join(HERE, "..", d, "nbdserver", "tools", "kiln-img")
        if os.path.exists(p):
            return os.path.abspath(p)
    return shutil.which("kiln-img")


def generated_content(f, start, scale):
    """Writes the generated regions into raw file f from `start` (sizes times `scale`)."""
    rng = random.Random(7)
    f.seek(start)
    words = [b"kiln", b"qcow2", b"cluster", b"GET", b"/api/v1/images", b"200", b"404", b"INFO",
             b"WARN", b"systemd[1]:", b"Started", b"session", b"user", b"eth0", b"DHCPACK"]
    line_block = b"".join(
        b"2026-12-03T17:%02d:%02d host %s %s %s %d\n" % (
            rng.randrange(60), rng.randrange(60), rng.choice(words), rng.choice(words),
            rng.choice(words), rng.randrange(100000)) for _ in range(20000))
    written = 0
    while written < int(256 * MiB * scale):  # text: compresses well
        chunk = line_block[rng.randrange(len(line_block) // 2):]
        f.write(chunk)
        written += len(chunk)
    f.write(os.urandom(int(128 * MiB * scale)))  # random: does not compress
    alphabet = bytes(rng.randrange(256) for _ in range(16))
    low = bytes(rng.choice(alphabet) for _ in range(MiB))
    for _ in range(int(128 * MiB * scale) // MiB):  # low entropy binary
        f.write(low)
    f.write(bytes(int(128 * MiB * scale)))  # zeros written as data


def make_source(d, size, explicit):
    if explicit:
        return explicit
    raw = os.path.join(d, "src.raw")
    clouds = sorted(glob.glob(CLOUD))
    if clouds and size >= 2048 * MiB:
        sh("qemu-img", "convert", "-O", "raw", clouds[0], raw)
        with open(raw, "r+b") as f:
            f.truncate(size)
            generated_content(f, 1024 * MiB, 1.0)
    else:
        with open(raw, "wb") as f:
            f.truncate(size)
            generated_content(f, size // 8, size / (2048 * MiB))
    src = os.path.join(d, "src.qcow2")
    sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, src)
    os.unlink(raw)
    return src


def timed(cmd, out):
    """Wall seconds (until `out` is synced) and CPU seconds of the command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    subprocess.run(["sync", out], check=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="2048", help="MiB (generated source)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--source", help="an existing qcow2 image to convert")
    ap.add_argument("--build", help="build directory (default build/release)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = (512 if args.quick else int(args.size)) * MiB
    repeat = 1 if args.quick else args.repeat
    kiln = find_kiln_img(args.build)
    if not kiln:
        sys.exit("kiln-img not found (build it, or pass --build)")
    d = tempfile.mkdtemp(prefix="kiln-convert-bench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
    try:
        src = make_source(d, size, args.source)
        vsize = json.loads(sh("qemu-img", "info", "--output=json", src).stdout)["virtual-size"]
        qmap = json.loads(sh("qemu-img", "map", "--output=json", src).stdout)
        data = sum(r["length"] for r in qmap if r["data"])
        out = os.path.join(d, "out.qcow2")
        # Warm the page cache with the source once, for every tool alike.
        with open(src, "rb") as f:
            while f.read(8 * MiB):
                pass
        results = []
        for mode, opts in MODES:
            for tool, binary, variants in (("qemu", "qemu-img", QEMU_VARIANTS),
                                           ("kiln", kiln, KILN_VARIANTS)):
                for name, extra in variants:
                    walls, cpus, sizes = [], [], []
                    for _ in range(repeat):
                        if os.path.exists(out):
                            os.unlink(out)
                        subprocess.run(["sync"], check=True)
                        cmd = [binary, "convert", "-f", "qcow2", *opts, *extra, src, out]
                        wall, cpu = timed(cmd, out)
                        walls.append(wall)
                        cpus.append(cpu)
                        sizes.append(os.stat(out).st_blocks * 512)
                    results.append({
                        "mode": mode, "tool": tool, "name": name,
                        "command": " ".join(["kiln-img" if binary == kiln else binary,
                                             "convert", "-f", "qcow2", *opts, *extra,
                                             "SRC", "DST"]),
                        "wall": statistics.median(walls), "cpu": statistics.median(cpus),
                        "size": statistics.median(sizes)})
        if args.json:
            print(json.dumps({"virtual_size": vsize, "data": data, "results": results},
                             indent=1))
            return
        print(f"source: {vsize // MiB} MiB virtual, {data // MiB} MiB data; "
              f"{os.cpu_count()} CPUs; median of {repeat}; load {os.getloadavg()[0]:.2f}\n")
        print("| mode | tool | wall s | MiB/s (virtual) | CPU s | output MiB | vs best qemu-img |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for mode, _ in MODES:
            rows = [r for r in results if r["mode"] == mode]
            best_qemu = min(r["wall"] for r in rows if r["tool"] == "qemu")
            for r in rows:
                ratio = best_qemu / r["wall"]
                print(f"| {mode} | {r['name']} | {r['wall']:.2f} | "
                      f"{vsize / MiB / r['wall']:.0f} | {r['cpu']:.2f} | "
                      f"{r['size'] / MiB:.0f} | {ratio:.2f}x |")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
