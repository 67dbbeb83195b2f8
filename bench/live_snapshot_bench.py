#!/usr/bin/python3
"""The guest-visible stall of kiln-nbd's live snapshot and commit (docs/kiln-nbd.md, "Live
snapshot and commit").

fio (ioengine=nbd, 4 KiB random writes at QD 16 over a Unix socket, every request's latency
logged) writes to an export while the control socket takes a live snapshot every INTERVAL
seconds (and, with --commit, commits it again between snapshots). A first run without any
switch gives the baseline. For each switch it reports the longest request latency seen while
it ran (the window from the request to the reply, widened by SLACK ms on each side, to cover
the alignment of fio's clock with ours), next to the longest latency of the baseline run, and
the time kiln-nbd held the export's requests for each snapshot and commit (its log lines). Nothing is asserted.

    bench/live_snapshot_bench.py [--build build/release] [--seconds 12] [--interval 1]
                                 [--size 1G] [--commit] [--dir DIR] [--json]

Run it on a quiet machine: a compiler in the background shows up as stalls."""

import argparse
import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SLACK_MS = 100


def sh(*args):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True)


class Control:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.buf = b""

    def __call__(self, cmd, **kw):
        self.s.sendall(json.dumps({"cmd": cmd, **kw}).encode() + b"\n")
        while b"\n" not in self.buf:
            self.buf += self.s.recv(65536)
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)


def wait_socket(path, proc):
    for _ in range(500):
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            sys.exit(f"kiln-nbd exited: {proc.returncode}")
        time.sleep(0.01)
    sys.exit(f"{path} did not appear")


def run_once(args, work, switches):
    """One fio run; returns (per-switch max latency in ms, baseline-style overall max, held us
    from the server's log, fio's write IOPS)."""
    for f in glob.glob(os.path.join(work, "*")):
        if os.path.isfile(f) or os.path.islink(f) or f.endswith(".sock"):
            os.unlink(f)
    base = os.path.join(work, "base.qcow2")
    sh("qemu-img", "create", "-q", "-f", "qcow2", base, args.size)
    sock, ctl, log = (os.path.join(work, n) for n in ("nbd.sock", "ctl.sock", "kiln-nbd.log"))
    nbd = os.path.join(args.build, "nbdserver", "kiln-nbd", "kiln-nbd")
    with open(log, "w") as lf:
        srv = subprocess.Popen([nbd, "-k", sock, "--control", ctl], stdout=lf, stderr=lf)
    try:
        wait_socket(ctl, srv)
        c = Control(ctl)
        r = c("add-export", name="vm", path=base, format="qcow2")
        assert r["ok"], r
        uri = f"nbd+unix:///vm?socket={sock}"
        # Allocate the region first, so that the measured writes are not copy-on-write.
        sh("fio", "--name=fill", "--ioengine=nbd", f"--uri={uri}", "--rw=write", "--bs=1M",
           "--iodepth=8", f"--size={args.region}")
        lat = os.path.join(work, "lat")
        t0 = time.monotonic()
        fio = subprocess.Popen(
            ["fio", "--name=w", "--ioengine=nbd", f"--uri={uri}", "--rw=randwrite", "--bs=4k",
             "--iodepth=16", f"--size={args.region}", "--time_based",
             f"--runtime={args.seconds}", f"--write_lat_log={lat}", "--log_avg_msec=0",
             "--output-format=json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        windows = []
        if switches:
            time.sleep(1.0)
            n = 0
            while time.monotonic() - t0 < args.seconds - 1 and fio.poll() is None:
                n += 1
                s = time.monotonic()
                r = c("snapshot", name="vm", path=os.path.join(work, f"s{n}.qcow2"))
                e = time.monotonic()
                assert r["ok"], r
                windows.append(("snapshot", s - t0, e - t0))
                if args.commit:
                    time.sleep(args.interval / 2)
                    s = time.monotonic()
                    r = c("commit", name="vm")
                    assert r["ok"], r
                    while True:
                        j = c("jobs")["jobs"][0]
                        if j["state"] in ("completed", "failed", "cancelled"):
                            break
                        time.sleep(0.005)
                    e = time.monotonic()
                    assert j["state"] == "completed", j
                    windows.append(("commit", s - t0, e - t0))
                    time.sleep(args.interval / 2)
                else:
                    time.sleep(args.interval)
        out, err = fio.communicate()
        if fio.returncode != 0:
            sys.exit(f"fio failed: {err}")
        iops = json.loads(out[out.index("{"):])["jobs"][0]["write"]["iops"]
        entries = []
        for path in glob.glob(lat + "_clat*.log") or glob.glob(lat + "_lat*.log"):
            with open(path) as f:
                for line in f:
                    t_ms, ns = line.split(",")[:2]
                    entries.append((int(t_ms) / 1000.0, int(ns) / 1e6))
        overall = max((ms for _, ms in entries), default=0.0)
        per = []
        for kind, s, e in windows:
            inside = [ms for t, ms in entries
                      if s - SLACK_MS / 1000 <= t <= e + SLACK_MS / 1000]
            per.append((kind, round((e - s) * 1000, 1), max(inside, default=0.0)))
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(timeout=60)
    text = open(log).read()
    held = {"snapshot": [int(m) for m in re.findall(r"live snapshot.*requests held (\d+) us", text)],
            "commit": [int(m) for m in re.findall(r"commit completed.*requests held (\d+) us", text)]}
    return per, overall, held, iops


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build", "release"))
    ap.add_argument("--seconds", type=int, default=12)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--region", default="256M")
    ap.add_argument("--commit", action="store_true", help="commit each snapshot back")
    ap.add_argument("--dir", help="where the images go (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kiln-live-bench-", dir=args.dir)
    try:
        _, baseline, _, base_iops = run_once(args, work, False)
        per, overall, held, iops = run_once(args, work, True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"baseline_max_ms": baseline, "baseline_iops": base_iops,
                          "switch_run_max_ms": overall, "switch_run_iops": iops,
                          "switches": per, "held_us": held}))
        return
    print(f"nproc {os.cpu_count()}, load {os.getloadavg()[0]:.1f}, 4 KiB random writes QD16, "
          f"{args.seconds} s runs")
    print(f"baseline (no switch): longest request {baseline:.2f} ms, {base_iops:.0f} IOPS")
    print(f"with switches: longest request {overall:.2f} ms, {iops:.0f} IOPS\n")
    print("| # | operation | control request (ms) | longest request around it (ms) |")
    print("|---:|---|---:|---:|")
    for i, (kind, dur, ms) in enumerate(per, 1):
        print(f"| {i} | {kind} | {dur} | {ms:.2f} |")
    for kind, us in held.items():
        if us:
            print(f"\nrequests held by kiln-nbd per {kind} (us): median "
                  f"{statistics.median(us):.0f}, max {max(us)}")
    worst = [ms for _, _, ms in per]
    if worst:
        print(f"longest request during a switch: median {statistics.median(worst):.2f} ms, "
              f"max {max(worst):.2f} ms (baseline max {baseline:.2f} ms)")


if __name__ == "__main__":
    main()
