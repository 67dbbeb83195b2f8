#!/usr/bin/python3
"""kiln-spawn: time from `kiln-spawn boot` to the domain running, and to the guest's first
console line, for one boot at a time and for ten in parallel (p50/p99/max). Prints Markdown
tables and, with --plot, draws a PNG.

    bench/spawn_bench.py                       # both series below, 5 rounds each
    bench/spawn_bench.py --driver test         # logic only: libvirt's test:///default driver
    sudo bench/spawn_bench.py --driver qemu    # a real libvirtd + QEMU (TCG) and the test guest
    sudo bench/spawn_bench.py --driver qemu --cloud-image IMAGE   # ... and Kiln's cloud image

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
boot time is first line -> /init and is reported separately.

`--cloud-image PATH` (with `--driver qemu`) adds Kiln's real cloud image (docs/cloud-image.md:
GRUB from its own disk over NBD, cloud-init, sshd), booted `--cloud-rounds` times (default 1)
one at a time after the test guest's series, in the same sandbox, with a key and the default
security group opened to SSH: time from `boot` to running, to the first console line, to
cloud-init finished (its final message on the serial console), and to the first successful
command through `kiln-spawn ssh`. The guest's own boot time is reported separately: its kernel
and userspace times from `systemd-analyze`, and its uptime when cloud-init finished (the final
message's "Up N seconds")."""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(TOP, "scripts", "lib"))
from kiln_cloud import allow_ssh_and_ping  # noqa: E402
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

    def __init__(self, build, d, driver, guest=None, libvirt_uri="qemu:///system",
                 cloud_image=None):
        self.build, self.dir, self.driver, self.guest = build, d, driver, guest
        self.cloud_image = cloud_image
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
        if cloud_image:
            img = cloud_image
        elif guest:
            sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", f"{guest}/rootfs.raw", img)
        else:
            sh("qemu-img", "create", "-q", "-f", "qcow2", img, "1G")
        sh(*self.spawn, "image-create", "bench-image", img, env=self.env)
        sh(*self.spawn, "config-set", "host_memory_mb", "65536", env=self.env)
        if cloud_image:
            # The image's root is 2 GiB; cloud-init grows it to the flavor's disk.
            sh(*self.spawn, "flavor-create", "c1.bench", "--vcpus", "1", "--ram", "1024",
               "--disk", "4", env=self.env)
            self.key = f"{d}/id_bench"
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.key)
            self.net = net
            self.ssh_allowed = False

    def boot_args(self, name):
        flavor = "c1.bench" if self.cloud_image else "m1.tiny"
        args = [*self.spawn, "boot", name, "--image", "bench-image", "--flavor", flavor,
                "--net", "bench-net"]
        if self.cloud_image:
            args += ["--key-file", self.key + ".pub"]
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

    def ssh(self, name, command, timeout=60):
        """`kiln-spawn ssh` as the image's user; the CompletedProcess (None on a timeout)."""
        try:
            return subprocess.run(
                [*self.spawn, "ssh", name, "-l", "debian", "-i", self.key, "-o", "BatchMode=yes",
                 "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "--", command],
                env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def boot_cloud(self, name, timeout=1200):
        """Boots the cloud image once; returns seconds from `boot` to running, to the first
        console line, to cloud-init finished and to the first SSH command, and the guest's own
        kernel and userspace times and uptime at cloud-init's end (None where not seen)."""
        self.ids = {}
        t0 = time.monotonic()
        p = subprocess.run(self.boot_args(name) + ["--format", "json"], env=self.env,
                           capture_output=True, text=True)
        r = {"running": time.monotonic() - t0, "first_line": None, "cloud_init": None,
             "ssh": None, "guest_kernel": None, "guest_userspace": None,
             "guest_up_at_cloud_init": None}
        if p.returncode != 0:
            sys.exit(f"spawn_bench: boot {name} failed: {p.stderr.strip()}")
        self.ids[name] = json.loads(p.stdout)["id"]
        if not self.ssh_allowed:  # the tenant's default group exists from its first port on
            allow_ssh_and_ping(lambda *a: sh(*self.net, *a, env=self.env))
            self.ssh_allowed = True
        final = re.compile(r"Cloud-init v\. \S+ finished at .*Up ([0-9.]+) seconds")
        deadline = t0 + timeout

        # The console is watched in a thread of its own, every 0.1 s, so that an SSH attempt
        # that waits for its timeout does not delay what the console shows.
        def watch():
            while time.monotonic() < deadline and r["cloud_init"] is None:
                try:
                    text = open(self.console(name), errors="replace").read()
                except OSError:
                    text = ""
                now = time.monotonic() - t0
                if r["first_line"] is None and text.strip():
                    r["first_line"] = now
                m = final.search(text)
                if m:
                    r["cloud_init"], r["guest_up_at_cloud_init"] = now, float(m.group(1))
                time.sleep(0.1)
        watcher = threading.Thread(target=watch)
        watcher.start()
        while time.monotonic() < deadline and r["ssh"] is None:
            q = self.ssh(name, "true", timeout=30)
            if q is not None and q.returncode == 0:
                r["ssh"] = time.monotonic() - t0
            else:
                time.sleep(0.5)
        watcher.join()
        q = self.ssh(name, "systemd-analyze")
        m = q and re.search(r"Startup finished in ([0-9.]+)(m?s) \(kernel\) \+ "
                            r"(?:([0-9]+)min )?([0-9.]+)(m?s) \(userspace\)", q.stdout)
        if m:
            r["guest_kernel"] = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
            r["guest_userspace"] = (int(m.group(3) or 0) * 60 +
                                    float(m.group(4)) / (1000 if m.group(5) == "ms" else 1))
        elif q is not None:
            print(f"spawn_bench: systemd-analyze said: {q.stdout.strip()} {q.stderr.strip()}",
                  file=sys.stderr)
        return r

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


def run_cloud(build, cloud_image, rounds, libvirt_uri):
    """`rounds` boots of the cloud image, one at a time, each deleted before the next."""
    with tempfile.TemporaryDirectory(prefix="kiln-spawn-bench-cloud.") as d:
        env = Env(build, d, "qemu", None, libvirt_uri, cloud_image=cloud_image)
        try:
            out = []
            for r in range(rounds):
                out.append(env.boot_cloud(f"cloud{r}"))
                out[-1]["phases"] = env.phases(f"cloud{r}")
                env.delete([f"cloud{r}"])
            return out
        finally:
            env.close()


def cloud_table(res, busybox):
    """The cloud image's boots next to the test guest's one-boot figures."""
    print("\n### real cloud image (Debian 12: GRUB from its disk, cloud-init, sshd), real "
          "libvirtd + QEMU TCG, next to the test guest\n")
    print("| measure (s from `kiln-spawn boot`) | cloud image, n | p50 | max | "
          "test guest, p50 |")
    print("|---|---|---|---|---|")
    bb = {"running": [x[0] for x in busybox["one"]],
          "first_line": [x[1] for x in busybox["one"] if x[1] is not None],
          "cloud_init": [x[2] for x in busybox["one"] if x[2] is not None]} if busybox else {}
    rows = [("running", "to running (boot returned)"),
            ("first_line", "to first console line"),
            ("cloud_init", "to cloud-init finished (test guest: to its /init)"),
            ("ssh", "to first successful SSH command"),
            ("guest_kernel", "guest's own: kernel (systemd-analyze)"),
            ("guest_userspace", "guest's own: userspace to boot finished (systemd-analyze)"),
            ("guest_up_at_cloud_init", "guest's own: uptime at cloud-init's end")]
    for key, label in rows:
        v = [x[key] for x in res if x[key] is not None]
        b = bb.get(key)
        print(f"| {label} | {len(v)} | {pct(v, 50):.1f} | {max(v) if v else float('nan'):.1f} | "
              + (f"{pct(b, 50):.1f} |" if b else "- |"))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", help="build directory (default: build/release, build-spawn, ...)")
    ap.add_argument("--driver", choices=["test", "qemu", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--parallel", type=int, default=10)
    ap.add_argument("--plot", help="write a PNG here")
    ap.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    ap.add_argument("--cloud-image", help="with --driver qemu: also boot this cloud image "
                    "(Kiln's, docs/cloud-image.md)")
    ap.add_argument("--cloud-rounds", type=int, default=1)
    ap.add_argument("--inner", help=argparse.SUPPRESS)  # the sandbox's libvirt URI
    a = ap.parse_args()
    build = find_build(a.build)

    if a.inner:  # inside the libvirt sandbox's namespaces
        guest = os.path.join(build, "tests", "e2e", "guest")
        res = run_driver(build, "qemu", a.rounds, a.parallel, guest, a.inner)
        if a.cloud_image:
            res["cloud"] = run_cloud(build, a.cloud_image, a.cloud_rounds, a.inner)
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
                                    "--rounds", str(a.rounds), "--parallel", str(a.parallel),
                                    *(["--cloud-image", os.path.abspath(a.cloud_image),
                                       "--cloud-rounds", str(a.cloud_rounds)]
                                      if a.cloud_image else [])],
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
        if res.get("cloud"):
            cloud_table(res["cloud"], res)
            steps = list(res["cloud"][0]["phases"])
            print("\nwhere the cloud image's boot goes (p50 ms per step):\n")
            print("| " + " | ".join(steps) + " |")
            print("|" + "---|" * len(steps))
            print("| " + " | ".join(f"{pct([c['phases'].get(s, 0) for c in res['cloud']], 50):.0f}"
                                    for s in steps) + " |")
    if a.plot:
        plot(a.plot, results, a.parallel)
    if a.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
