#!/usr/bin/python3
"""kiln-spawn: time from `kiln-spawn boot` to the domain running, and to the guest's first
console line, for one boot at a time and for ten in parallel (p50/p99/max). Prints Markdown
tables and, with --plot, draws a PNG.

    bench/spawn_bench.py                       # both series below, 5 rounds each
    bench/spawn_bench.py --driver test         # logic only: libvirt's test:///default driver
    sudo bench/spawn_bench.py --driver qemu    # a real libvirtd + QEMU (TCG) and the test guest

Every number is wall time of the `kiln-spawn boot` process as a user runs it (process start,
SQLite, claim, port, overlay on the cached base, config drive, NBD export, domain define and
start, and the wait until libvirt says running).

`--driver test` needs no root: kiln-nbd is started here, the network is netplumb's model only
(`--no-plumb`), and the domain is libvirt's test driver (no guest runs).

`--driver qemu` needs root: the script starts a libvirtd of its own (scripts/lib/kiln_sandbox.py)
and re-runs itself inside that sandbox's new network, mount and PID namespaces (nothing of the host's network, /etc/libvirt, /run or /var is touched, and
every process dies with the namespace). There the port is plumbed for real (bridge, tap,
dnsmasq, security groups), the domain is QEMU with TCG (`--virt-type qemu`), and the guest is
tests/guest (direct kernel boot, no `quiet`): "first console line" is the kernel's first line
on the serial console, "guest /init" the guest's own `KILN-TEST: init` line. The guest's own
boot time is first line -> /init and is reported separately."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(TOP, "scripts", "lib"))
from kiln_sandbox import LibvirtSandbox  # noqa: E402


def find_build(arg):
    for d in ([arg] if arg else ["build/release", "build-spawn", "build", "build/dev"]):
        d = os.path.join(TOP, d) if not os.path.isabs(d) else d
        if os.path.exists(os.path.join(d, "spawn", "kiln-spawn")):
            return os.path.abspath(d)
    sys.exit("spawn_bench: no build with spawn/kiln-spawn found (use --build)")


def sh(*args, env=None, check=True):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        sys.exit(f"spawn_bench: {' '.join(map(str, args))} failed: {p.stderr.strip()}")
    return p


def parse_ms(stamp):
    """ "2026-11-26T23:00:41.123Z" -> milliseconds since the epoch."""
    import calendar
    base, frac = stamp.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) * 1000 + int(frac)


def pct(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


class Env:
    """kiln-nbd, a network and an image in a temporary directory; kiln-spawn's command."""

    def __init__(self, build, d, driver, guest=None, libvirt_uri="qemu:///system"):
        self.build, self.dir, self.driver, self.guest = build, d, driver, guest
        self.env = dict(os.environ, KILN_STATE_DIR=f"{d}/state", KILN_RUN_DIR=f"{d}/run")
        os.makedirs(f"{d}/state")
        os.makedirs(f"{d}/run")
        os.chmod(d, 0o755)  # dnsmasq runs as nobody and reads its files under KILN_RUN_DIR
        self.nbd_log = open(f"{d}/kiln-nbd.log", "wb")
        self.nbd = subprocess.Popen(
            # -e 0: kiln-nbd's client limit counts every export's clients together.
            [f"{build}/nbdserver/kiln-nbd/kiln-nbd", "-e", "0", "-k", f"{d}/run/nbd.sock",
             "--control", f"{d}/run/nbd-control.sock"],
            stdout=self.nbd_log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(f"{d}/run/nbd-control.sock"):
            if time.monotonic() > deadline or self.nbd.poll() is not None:
                sys.exit("spawn_bench: kiln-nbd did not start")
            time.sleep(0.01)
        time.sleep(0.05)
        plumb = [] if driver == "qemu" else ["--no-plumb"]
        net = [f"{build}/netplumb/kiln-net", *plumb]
        sh(*net, "net-create", "bench-net", env=self.env)
        sh(*net, "subnet-create", "bench-net", "10.96.0.0/16", "--name", "bench-subnet",
           env=self.env)
        if driver == "qemu":
            sh(*net, "router-create", "bench-router", env=self.env)
            sh(*net, "router-interface-add", "bench-router", "bench-subnet", env=self.env)
        self.spawn = [f"{build}/spawn/kiln-spawn", *plumb,
                      "--libvirt-uri",
                      libvirt_uri if driver == "qemu" else "test:///default",
                      "--nbd-control", f"{d}/run/nbd-control.sock", "--virt-type", "qemu"]
        img = f"{d}/image.qcow2"
        if guest:
            sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", f"{guest}/rootfs.raw", img)
        else:
            sh("qemu-img", "create", "-q", "-f", "qcow2", img, "1G")
        sh(*self.spawn, "image-create", "bench-image", img, env=self.env)
        sh(*self.spawn, "config-set", "host_memory_mb", "65536", env=self.env)

    def boot_args(self, name):
        args = [*self.spawn, "boot", name, "--image", "bench-image", "--flavor", "m1.tiny",
                "--net", "bench-net"]
        if self.guest:
            args += ["--kernel", f"{self.guest}/vmlinuz", "--initrd", f"{self.guest}/initrd.img",
                     "--cmdline", "console=ttyS0 panic=-1 kiln.test=info kiln.end=hang"]
        return args

    def console(self, name):
        return os.path.join(self.dir, "state", "spawn", "instances", self.ids[name],
                            "console.log")

    def boot_many(self, names):
        """Boots `names` at once; returns {name: (to running, to first line, to /init)}."""
        self.ids = {}
        t0 = {}
        procs = {}
        for n in names:
            t0[n] = time.monotonic()
            procs[n] = subprocess.Popen(self.boot_args(n) + ["--format", "json"], env=self.env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        out = {}
        for n, p in procs.items():
            so, se = p.communicate()
            running = time.monotonic() - t0[n]
            if p.returncode != 0:
                sys.exit(f"spawn_bench: boot {n} failed: {se.strip()}")
            self.ids[n] = json.loads(so)["id"]
            out[n] = [running, None, None]
        if self.guest:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(v[2] is None for v in out.values()):
                for n in names:
                    try:
                        text = open(self.console(n), errors="replace").read()
                    except OSError:
                        continue
                    now = time.monotonic() - t0[n]
                    if out[n][1] is None and text.strip():
                        out[n][1] = now
                    if out[n][2] is None and "KILN-TEST: init" in text:
                        out[n][2] = now
                time.sleep(0.01)
        return out

    def phases(self, name):
        """Milliseconds spent in each build step, from the instance's events."""
        show = json.loads(sh(*self.spawn, "show", name, "--format", "json", env=self.env).stdout)
        t = [(e["message"], parse_ms(e["at"])) for e in show["events"]]
        out, step, start = {}, "claim", t[0][1]
        for msg, at in t[1:]:
            if msg.startswith("step ") or msg == "running":
                out[step] = at - start
                step, start = msg[5:] if msg.startswith("step ") else "", at
        return out

    def delete(self, names):
        sh(*self.spawn, "delete", *names, env=self.env)

    def close(self):
        self.nbd.terminate()
        self.nbd.wait(timeout=30)
        self.nbd_log.close()
        if self.driver == "qemu":
            sh(f"{self.build}/netplumb/kiln-net", "teardown", env=self.env, check=False)
            # Namespace files still mounted (a failed run) would keep the directory busy.
            netns = os.path.join(self.dir, "run", "netns")
            for f in os.listdir(netns) if os.path.isdir(netns) else []:
                subprocess.run(["umount", "-l", os.path.join(netns, f)], capture_output=True)


def series(env, rounds, parallel):
    """rounds x one boot, then rounds x `parallel` boots at once."""
    res = {"one": [], "parallel": [], "parallel_wall": []}
    res["phases"] = []
    for r in range(rounds):
        res["one"].append(env.boot_many([f"one{r}"])[f"one{r}"])
        res["phases"].append(env.phases(f"one{r}"))
        env.delete([f"one{r}"])
    for r in range(rounds):
        names = [f"p{r}-{i}" for i in range(parallel)]
        got = env.boot_many(names)
        res["parallel_wall"].append(max(v[0] for v in got.values()))
        res["parallel"] += list(got.values())
        env.delete(names)
    return res


def table(title, res, parallel, guest):
    rows = [("one boot", res["one"]), (f"{parallel} in parallel (each)", res["parallel"])]
    cols = [("to running", 0)]
    if guest:
        cols += [("to first console line", 1), ("to guest /init", 2)]
    print(f"\n### {title}\n")
    print("| series | measure | n | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for label, vals in rows:
        for cname, i in cols:
            v = [x[i] * 1000 for x in vals if x[i] is not None]
            print(f"| {label} | {cname} | {len(v)} | {pct(v, 50):.0f} | {pct(v, 99):.0f} | "
                  f"{max(v) if v else float('nan'):.0f} |")
        if guest and label == "one boot":
            own = [(x[2] - x[1]) * 1000 for x in vals if x[1] is not None and x[2] is not None]
            print(f"| {label} | guest's own boot (first line -> /init) | {len(own)} | "
                  f"{pct(own, 50):.0f} | {pct(own, 99):.0f} | {max(own) if own else 0:.0f} |")
    w = [x * 1000 for x in res["parallel_wall"]]
    print(f"| {parallel} in parallel | all running (round wall time) | {len(w)} | "
          f"{pct(w, 50):.0f} | {pct(w, 99):.0f} | {max(w):.0f} |")
    steps = [k for k in res["phases"][0]] if res.get("phases") else []
    if steps:
        print("\nwhere one boot's time goes (p50 ms per step, from its events; process start and"
              " exit not included):\n")
        print("| " + " | ".join(steps) + " |")
        print("|" + "---|" * len(steps))
        print("| " + " | ".join(f"{pct([p.get(s, 0) for p in res['phases']], 50):.0f}"
                                for s in steps) + " |")


def plot(path, results, parallel):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4))
    data, labels = [], []
    for driver, res in results.items():
        data += [[x[0] * 1000 for x in res["one"]], [x[0] * 1000 for x in res["parallel"]]]
        labels += [f"{driver}: one", f"{driver}: {parallel} parallel"]
        if any(x[1] is not None for x in res["one"]):
            data.append([x[1] * 1000 for x in res["one"] if x[1] is not None])
            labels.append(f"{driver}: first console line")
    ax.boxplot(data, labels=labels, vert=False)
    ax.set_xlabel("ms from `kiln-spawn boot`")
    ax.set_title("kiln-spawn boot latency")
    fig.tight_layout()
    fig.savefig(path)
    print(f"\nplot: {path}")


def run_driver(build, driver, rounds, parallel, guest, libvirt_uri=None):
    with tempfile.TemporaryDirectory(prefix="kiln-spawn-bench.") as d:
        env = Env(build, d, driver, guest, libvirt_uri)
        try:
            return series(env, rounds, parallel)
        finally:
            env.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", help="build directory (default: build/release, build-spawn, ...)")
    ap.add_argument("--driver", choices=["test", "qemu", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--plot", help="write a PNG here")
    ap.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    ap.add_argument("--inner", help=argparse.SUPPRESS)  # the sandbox's libvirt URI
    a = ap.parse_args()
    build = find_build(a.build)

    if a.inner:  # inside the libvirt sandbox's namespaces
        guest = os.path.join(build, "tests", "e2e", "guest")
        res = run_driver(build, "qemu", a.rounds, a.parallel, guest, a.inner)
        print(json.dumps(res))
        return

    results = {}
    if a.driver in ("test", "both"):
        results["test"] = run_driver(build, "test", a.rounds, a.parallel, None)
    if a.driver in ("qemu", "both"):
        if os.geteuid() != 0:
            sys.exit("spawn_bench: --driver qemu needs root (namespaces, libvirtd)")
        sh(os.path.join(TOP, "tests", "guest", "build.sh"),
           os.path.join(build, "tests", "e2e", "guest"))
        with tempfile.TemporaryDirectory(prefix="kiln-spawn-bench-libvirt.") as d:
            lv = LibvirtSandbox(d).start()
            try:
                p = subprocess.run(["nsenter", f"--target={lv.init_pid()}", "--net", "--mount",
                                    "--pid", "--", sys.executable, os.path.abspath(__file__),
                                    "--inner", lv.uri, "--build", build,
                                    "--rounds", str(a.rounds), "--parallel", str(a.parallel)],
                                   capture_output=True, text=True)
            finally:
                lv.stop()
        if p.returncode != 0:
            sys.exit(f"spawn_bench: the qemu series failed: {p.stderr.strip()[-2000:]}")
        results["qemu"] = json.loads(p.stdout.strip().splitlines()[-1])

    print(f"machine: {os.cpu_count()} CPUs, {os.uname().release}; build {build}; "
          f"{a.rounds} rounds")
    for driver, res in results.items():
        title = ("libvirt test driver (logic only, --no-plumb)" if driver == "test" else
                 "real libvirtd + QEMU TCG, plumbed port, test guest")
        table(title, res, a.parallel, driver == "qemu")
    if a.plot:
        plot(a.plot, results, a.parallel)
    if a.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
