#!/usr/bin/env python3
"""Block layer benchmark: 4 KiB random I/O at queue depth 32 through the block layer API on a
qcow2 overlay, against fio (ioengine=io_uring) on the raw file as the limit.

    bench/block_bench.py [--size 2G] [--seconds 10] [--repeat 3] [--build build/release]

Workloads: random reads and writes on an overlay whose clusters are all allocated in the
overlay; copy-on-write on a fresh overlay (4 KiB into every cluster once, random order, so every
request allocates and copies the rest of its cluster from the base). Prints a Markdown table
(medians of the repeats). Nothing here is asserted: it measures.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout


def fio(path, rw, seconds, qd=32):
    out = run(["fio", "--name=limit", f"--filename={path}", f"--rw={rw}", "--bs=4k",
               f"--iodepth={qd}", "--ioengine=io_uring", "--direct=0", "--invalidate=0",
               "--time_based", f"--runtime={seconds}", "--randrepeat=0",
               "--output-format=json"])
    job = json.loads(out)["jobs"][0]
    side = job["read"] if rw == "randread" else job["write"]
    cpu = (job["usr_cpu"] + job["sys_cpu"]) / 100.0
    return {"iops": side["iops"], "mbps": side["bw_bytes"] / 1e6,
            "p99_us": side["clat_ns"]["percentile"].get("99.000000", 0) / 1000.0, "cpu": cpu}


def kiln(bench, image, rw, seconds, qd=32):
    # The overlay's format is given: a probed image that names a backing file is refused.
    out = run([bench, "--image", image, "--format", "qcow2", "--rw", rw, "--qd", str(qd),
               "--seconds", str(seconds)])
    r = json.loads(out)
    r["cpu"] = r["cpu_seconds"] / max(r["seconds"], 1e-9)
    return r


def median(results, key):
    return statistics.median(r[key] for r in results)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="2G")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--build", default=os.path.join(os.path.dirname(__file__), "..", "build", "release"))
    ap.add_argument("--dir", default=None, help="work directory (default: a new temporary one)")
    a = ap.parse_args()
    bench = os.path.join(a.build, "bench", "kiln-block-bench")
    kiln_img = os.path.join(a.build, "nbdserver", "tools", "kiln-img")
    for tool in (bench, kiln_img):
        if not os.access(tool, os.X_OK):
            sys.exit(f"block_bench: {tool} not built (run scripts/setup.sh)")
    for tool in ("fio", "qemu-img", "qemu-io"):
        if not shutil.which(tool):
            sys.exit(f"block_bench: {tool} is missing (run scripts/setup.sh)")

    work = tempfile.mkdtemp(prefix="kiln-bench-", dir=a.dir)
    try:
        raw = os.path.join(work, "base.raw")
        base = os.path.join(work, "base.qcow2")
        alloc = os.path.join(work, "allocated.qcow2")
        print(f"preparing {a.size} images in {work} ...", file=sys.stderr)
        run(["fio", "--name=fill", f"--filename={raw}", f"--size={a.size}", "--rw=write",
             "--bs=1M", "--ioengine=io_uring", "--buffer_compress_percentage=0",
             "--refill_buffers", "--output-format=terse"])
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, base])
        run([kiln_img, "create", "-f", "qcow2", "-b", base, "-F", "qcow2", alloc])
        size = json.loads(run(["qemu-img", "info", "--output=json", raw]))["virtual-size"]
        chunk = 256 << 20
        cmds = []
        for off in range(0, size, chunk):
            cmds += ["-c", f"write -P 0x5a {off} {min(chunk, size - off)}"]
        run(["qemu-io"] + cmds + [alloc])

        os.sync()  # measure the CPU path, not the write-back of the preparation
        rows = []
        for name, rw, fio_rw, image_fn in [
            ("4 KiB random read, allocated overlay", "randread", "randread", lambda i: alloc),
            ("4 KiB random write, allocated overlay", "randwrite", "randwrite", lambda i: alloc),
            ("4 KiB copy-on-write, fresh overlay", "cow", "randwrite", None),
        ]:
            limit, ours = [], []
            for i in range(a.repeat):
                limit.append(fio(raw, fio_rw, a.seconds))
                os.sync()
                if image_fn is None:
                    image = os.path.join(work, f"fresh{i}.qcow2")
                    run([kiln_img, "create", "-f", "qcow2", "-b", base, "-F", "qcow2", image])
                else:
                    image = image_fn(i)
                os.sync()
                ours.append(kiln(bench, image, rw, a.seconds))
                os.sync()
                if image_fn is None:
                    os.unlink(image)
            rows.append((name, limit, ours))

        print(f"\nBlock layer API, one thread, QD 32, {a.size} qcow2 overlay (64 KiB clusters) "
              f"on a qcow2 base; limit = fio io_uring on the raw file; median of {a.repeat}.\n")
        print("| workload | limit IOPS | Kiln IOPS | Kiln MB/s | Kiln p99 µs | Kiln CPU | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name, limit, ours in rows:
            li, oi = median(limit, "iops"), median(ours, "iops")
            print(f"| {name} | {li:,.0f} | {oi:,.0f} | {median(ours, 'mbps'):.1f} | "
                  f"{median(ours, 'p99_us'):.0f} | {median(ours, 'cpu'):.0%} | {oi / li:.0%} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
