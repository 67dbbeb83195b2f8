#!/usr/bin/python3
"""kiln-spawn boot throughput through the work queue with 1 and 2 compute-host agents (issue 15):
boots per second and p50/p99 seconds from `kiln-spawn boot` to its return with the instance
active. The boots run on a host "api" that is disabled in the scheduler, so every boot is queued
for an agent ("c1", "c2"), which builds it; the scheduler spreads them. Control plane only:
libvirt's test driver (no guest runs; "active" is the domain defined and started in the agent's
test driver), kiln-net without plumbing, one SQLite store, one kiln-nbd (the World of
tests/kilntest/spawn.py in a temporary directory, removed afterwards). So it measures the
queue, the agents' serial build of the steps (port, overlay, config drive, export, domain) and
the store, not QEMU.

    bench/boot_throughput_bench.py [--build build/release] [--boots 24] [--concurrency 8]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, ".."))


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def one_run(World, make_qcow2, agents, boots, concurrency):
    d = tempfile.mkdtemp(prefix="kiln-boot-bench.")
    world = World(d)
    procs = []
    try:
        world.env["KILN_HOST"] = "api"
        world.spawn("image-create", "img", make_qcow2(os.path.join(d, "b.qcow2"), "16M"))
        world.spawn("host-set", "api", "--disable", "--reason", "api only")
        for i in range(agents):
            name = f"c{i + 1}"
            world.spawn("host-register", "--name", name, "--vcpus", "64", "--memory-mb",
                        "262144", "--disk-gb", "4000")
            procs.append(subprocess.Popen(
                world.spawn_cmd("agent", "--host", name, "--poll-interval", "20"),
                env=world.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        times, pending = [], list(range(boots))
        running = {}
        t0 = time.monotonic()
        while pending or running:
            while pending and len(running) < concurrency:
                i = pending.pop(0)
                p = subprocess.Popen(world.spawn_cmd("boot", f"vm{i}", "--image", "img",
                                                     "--flavor", "m1.tiny", "--net",
                                                     "demo-net", "--wait-timeout", "600"),
                                     env=world.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
                running[p] = time.monotonic()
            for p in list(running):
                if p.poll() is not None:
                    if p.returncode != 0:
                        raise SystemExit(f"boot failed: {p.stderr.read()}")
                    times.append(time.monotonic() - running.pop(p))
            time.sleep(0.01)
        wall = time.monotonic() - t0
        per_host = {}
        for h in world.spawn_json("hypervisor-stats")["hosts"]:
            per_host[h["hypervisor_hostname"]] = h["running_vms"]
        return wall, times, per_host
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        world.close()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(TOP, "build", "release"))
    ap.add_argument("--boots", type=int, default=24)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    b = os.path.abspath(a.build)
    os.environ["KILN_SPAWN"] = os.path.join(b, "spawn", "kiln-spawn")
    os.environ["KILN_NET"] = os.path.join(b, "netplumb", "kiln-net")
    os.environ["KILN_NBD"] = os.path.join(b, "nbdserver", "kiln-nbd", "kiln-nbd")
    sys.path.insert(0, os.path.join(TOP, "tests"))
    from kilntest.spawn import World, make_qcow2

    print(f"load average before: {os.getloadavg()[0]:.2f}; {a.boots} boots, "
          f"{a.concurrency} at a time\n")
    print("| agents | boots/s | p50 s | p99 s | mean s | instances per host |")
    print("|---|---|---|---|---|---|")
    for agents in (1, 2):
        wall, times, per_host = one_run(World, make_qcow2, agents, a.boots, a.concurrency)
        hosts = ", ".join(f"{k} {v}" for k, v in sorted(per_host.items()) if k != "api")
        print(f"| {agents} | {len(times) / wall:.2f} | {pct(times, 50):.2f} | "
              f"{pct(times, 99):.2f} | {statistics.mean(times):.2f} | {hosts} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
