#!/usr/bin/env python3
"""netplumb benchmark: how long `kiln-net` takes to plumb a network and its ports.

    sudo bench/net_bench.py [--ports 200] [--build build/release] [--json]

Everything runs inside namespaces this script creates: it re-executes itself under
`unshare --net --mount --pid --fork --mount-proc --kill-child` (as the integration tests do), with
KILN_STATE_DIR and KILN_RUN_DIR in a temporary directory. The root namespace's links, routes and
nftables are never touched, no packet leaves the namespaces, and every process started (dnsmasq
included) dies with the namespace.

Measured through the CLI, so every number includes starting kiln-net and opening SQLite. Wall
time depends on what else the machine runs; the CPU time of each port-create (user + system of
kiln-net and what it waits for) is recorded too, and the load average before and after:
1. the Neutron walkthrough of issue 5 from scratch, each step and the total;
2. `port-create` of N ports, each plumbed (tap, DHCP host entry, security group chains), on a
   network `bench-net` (10.96.0.0/16, DHCP, on the walkthrough's router), in a fresh namespace;
   then, in another fresh namespace, the same N ports with `--no-plumb` followed by one `apply`
   (model time vs plumbing time);
3. a no-op `apply`, with only the walkthrough plumbed and with the N ports plumbed.
Prints a Markdown table (or JSON with --json). Nothing here is asserted: it measures.
"""
import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

INNER_ENV = "KILN_NET_BENCH_INNER"      # set in the re-executed copy: "series:outer-netns-inode"
NOOP_APPLY_RUNS = 20

WALKTHROUGH = [
    ("net-create demo-net (vxlan 1)",
     "net-create --tenant-id demo demo-net --provider:network_type vxlan "
     "--provider:segmentation_id 1"),
    ("subnet-create demo-subnet (gateway, DNS, DHCP)",
     "subnet-create --tenant-id demo --ip-version 4 --name demo-subnet demo-net 192.168.0.0/24 "
     "--gateway 192.168.0.1 --dns-nameserver 8.8.8.8"),
    ("router-create demo-router", "router-create --tenant-id demo demo-router"),
    ("router-interface-add demo-router demo-subnet",
     "router-interface-add demo-router demo-subnet"),
    ("net-create public (external)", "net-create public --router:external=True"),
    ("subnet-create public-subnet",
     "subnet-create --ip-version 4 --gateway 172.24.1.1 public 172.24.1.0/24 "
     "--allocation-pool start=172.24.1.100,end=172.24.1.200 --disable-dhcp --name public-subnet"),
    ("router-gateway-set demo-router public", "router-gateway-set demo-router public"),
]

# The network the ports go on (room for 65k ports; demo-net's /24 holds only 252).
BENCH_NET = [
    "--tenant-id demo net-create bench-net --provider:network_type vxlan "
    "--provider:segmentation_id 2",
    "--tenant-id demo subnet-create --ip-version 4 --name bench-subnet bench-net 10.96.0.0/16 "
    "--dns-nameserver 8.8.8.8",
    "router-interface-add demo-router bench-subnet",
]

KILN_PREFIXES = ("brq", "tap", "vxlan-", "gre-", "qr-", "qg-", "ns-")


def log(msg):
    print(f"net_bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- inside the namespaces

class KilnNet:
    def __init__(self, binary):
        self.binary = binary
        self.last_cpu = 0.0  # user + system seconds of the last run

    def run(self, args):
        """Runs kiln-net ARGS (a string or list); returns (seconds, stdout, stderr)."""
        argv = [self.binary] + (args.split() if isinstance(args, str) else list(args))
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=120)
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.last_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if p.returncode != 0:
            raise RuntimeError(f"'kiln-net {' '.join(argv[1:])}' exited {p.returncode}: "
                               f"{p.stderr.strip()}")
        return dt, p.stdout, p.stderr


def links():
    out = subprocess.run(["ip", "-o", "link", "show"], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def noop_applies(kn, runs):
    times = []
    for _ in range(runs):
        dt, _, err = kn.run("apply")
        if err.strip():
            raise RuntimeError(f"'apply' was expected to change nothing, but said: {err.strip()}")
        times.append(dt)
    return times


def check_ports_plumbed(kn, expected):
    ports = json.loads(kn.run("--format json port-list")[1])
    mine = [p for p in ports if str(p.get("name", "")).startswith("bench-p")]
    if len(mine) != expected:
        raise RuntimeError(f"expected {expected} bench ports in the model, found {len(mine)}")
    have = links()
    missing = [p["id"] for p in mine if "tap" + p["id"][:11] not in have]
    if missing:
        raise RuntimeError(f"{len(missing)} ports have no tap device, e.g. {missing[0]}")


def inner(args, series, out_path):
    kn = KilnNet(args.kiln_net)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    res = {"series": series}

    # 1. The walkthrough, from scratch.
    steps = []
    for label, cmd in WALKTHROUGH:
        dt, _, _ = kn.run(cmd)
        steps.append({"step": label, "seconds": dt})
    res["walkthrough"] = steps
    for cmd in BENCH_NET:
        kn.run(cmd)
    if series == "plumbed":
        res["noop_apply_walkthrough"] = noop_applies(kn, NOOP_APPLY_RUNS)

    # 2. N ports.
    flags = ["--no-plumb"] if series == "noplumb" else []
    times, cpu = [], []
    for i in range(args.ports):
        dt, _, _ = kn.run(flags + ["--tenant-id", "demo", "port-create", "bench-net",
                                   "--name", f"bench-p{i}"])
        times.append(dt)
        cpu.append(kn.last_cpu)
        if (i + 1) % 50 == 0:
            log(f"{series}: {i + 1}/{args.ports} ports")
    res["port_create"] = times
    res["port_create_cpu"] = cpu
    if series == "noplumb":
        dt, _, _ = kn.run("apply")
        res["apply_after_noplumb"] = dt
    check_ports_plumbed(kn, args.ports)

    # 3. A no-op apply with the ports plumbed.
    res["noop_apply_ports"] = noop_applies(kn, NOOP_APPLY_RUNS)
    res["links_in_namespace"] = len(links())
    with open(out_path, "w") as f:
        json.dump(res, f)


# ---------------------------------------------------------------- outside

def find_kiln_net(build):
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [build] if os.path.isabs(build) else [build, os.path.join(here, build)]
    for c in candidates:
        p = os.path.join(c, "netplumb", "kiln-net")
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return os.path.abspath(p)
    sys.exit(f"net_bench: no kiln-net under {' or '.join(candidates)}/netplumb "
             "(build it, or give --build DIR)")


def netns_inode():
    return os.stat("/proc/self/ns/net").st_ino


def root_kiln_links():
    try:
        return {n for n in os.listdir("/sys/class/net") if n.startswith(KILN_PREFIXES)}
    except OSError:
        return set()


def run_series(args, series, tmp):
    """Runs one series in fresh namespaces; returns its results."""
    d = os.path.join(tmp, series)
    env = dict(os.environ)
    env.update({
        INNER_ENV: f"{series}:{netns_inode()}",
        "KILN_STATE_DIR": os.path.join(d, "state"),
        "KILN_RUN_DIR": os.path.join(d, "run"),
        "PATH": env.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin",
    })
    os.makedirs(env["KILN_STATE_DIR"])
    os.makedirs(env["KILN_RUN_DIR"])
    out_path = os.path.join(d, "result.json")
    cmd = ["unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child",
           "--propagation", "private", sys.executable, os.path.abspath(__file__),
           "--ports", str(args.ports), "--kiln-net", args.kiln_net, "--out", out_path]
    p = subprocess.Popen(cmd, env=env)
    try:
        rc = p.wait()
    finally:
        if p.poll() is None:      # interrupted: unshare's death SIGKILLs the namespace's init
            p.terminate()
            p.wait()
    if rc != 0:
        raise RuntimeError(f"the {series} series failed (exit {rc})")
    with open(out_path) as f:
        return json.load(f)


def pct(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]


def summary(values):
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90),
            "p99": pct(values, 99), "max": max(values), "mean": statistics.fmean(values)}


def tenths(values):
    """p50 of the first and of the last tenth of a series (how the cost grows with the ports)."""
    k = max(1, len(values) // 10)
    return [statistics.median(values[:k]), statistics.median(values[-k:])]


def machine():
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "cpu": cpu}


def report(args, plumbed, noplumb, load_before):
    n = args.ports
    walk = plumbed["walkthrough"]
    model_total = sum(noplumb["port_create"])
    apply_all = noplumb["apply_after_noplumb"]
    m = machine()
    m["loadavg_1min_before_after"] = [load_before, os.getloadavg()[0]]
    return {
        "machine": m,
        "kiln_net": args.kiln_net,
        "ports": n,
        "walkthrough": {"steps": walk, "total": sum(s["seconds"] for s in walk),
                        "total_second_namespace": sum(s["seconds"]
                                                      for s in noplumb["walkthrough"])},
        "port_create_plumbed": summary(plumbed["port_create"]),
        "port_create_plumbed_p50_first_last_tenth": tenths(plumbed["port_create"]),
        "port_create_no_plumb": summary(noplumb["port_create"]),
        "port_create_plumbed_cpu": summary(plumbed["port_create_cpu"]),
        "port_create_no_plumb_cpu": summary(noplumb["port_create_cpu"]),
        "apply_after_no_plumb": {"seconds": apply_all, "per_port": apply_all / n},
        "no_plumb_plus_apply_per_port": (model_total + apply_all) / n,
        "noop_apply_walkthrough": summary(plumbed["noop_apply_walkthrough"]),
        "noop_apply_ports": summary(plumbed["noop_apply_ports"]),
        "noop_apply_ports_after_bulk_apply": summary(noplumb["noop_apply_ports"]),
    }


def markdown(r):
    ms = lambda s: f"{s * 1000:.1f}"
    m = r["machine"]
    n = r["ports"]
    before, after = m["loadavg_1min_before_after"]
    lines = [f"Machine: {m['nproc']} CPUs ({m['cpu'] or 'unknown CPU'}), kernel {m['kernel']}; "
             f"kiln-net {r['kiln_net']}; load average (1 min) {before:.1f} before, "
             f"{after:.1f} after", "",
             "Plumbing the walkthrough from scratch (one run):", "",
             "| step | ms |", "|---|---:|"]
    for s in r["walkthrough"]["steps"]:
        lines.append(f"| {s['step']} | {ms(s['seconds'])} |")
    lines.append(f"| **total** | **{ms(r['walkthrough']['total'])}** |")
    lines += ["", f"Ports ({n}) and apply, through the CLI (ms):", "",
              "| operation | runs | p50 | p90 | p99 | max | mean |",
              "|---|---:|---:|---:|---:|---:|---:|"]

    def row(label, s):
        lines.append(f"| {label} | {s['n']} | {ms(s['p50'])} | {ms(s['p90'])} | {ms(s['p99'])} "
                     f"| {ms(s['max'])} | {ms(s['mean'])} |")

    row("port-create (model + plumbing)", r["port_create_plumbed"])
    row("port-create --no-plumb (model only)", r["port_create_no_plumb"])
    row("port-create (model + plumbing): CPU time", r["port_create_plumbed_cpu"])
    row("port-create --no-plumb (model only): CPU time", r["port_create_no_plumb_cpu"])
    first, last = r["port_create_plumbed_p50_first_last_tenth"]
    lines.append(f"| port-create (model + plumbing): p50 of the first / last tenth | | "
                 f"{ms(first)} / {ms(last)} | | | | |")
    row("no-op apply (walkthrough only)", r["noop_apply_walkthrough"])
    row(f"no-op apply ({n} ports)", r["noop_apply_ports"])
    a = r["apply_after_no_plumb"]
    lines += ["", "Model time vs plumbing time, per port (ms):", "",
              "| | ms per port |", "|---|---:|",
              f"| port-create, plumbed one by one (mean) | {ms(r['port_create_plumbed']['mean'])} |",
              f"| port-create --no-plumb (mean) | {ms(r['port_create_no_plumb']['mean'])} |",
              f"| one apply plumbing all {n} ports ({ms(a['seconds'])} ms in all) "
              f"| {ms(a['per_port'])} |",
              f"| --no-plumb + one apply | {ms(r['no_plumb_plus_apply_per_port'])} |"]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ports", type=int, default=200, help="ports to create (default 200)")
    ap.add_argument("--build", default="build/release",
                    help="build directory holding netplumb/kiln-net (default build/release)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    ap.add_argument("--kiln-net", help=argparse.SUPPRESS)   # inner use
    ap.add_argument("--out", help=argparse.SUPPRESS)        # inner use
    args = ap.parse_args()
    if not 1 <= args.ports <= 60000:
        ap.error("--ports must be between 1 and 60000")

    if os.environ.get(INNER_ENV):
        series, outer_ino = os.environ[INNER_ENV].split(":")
        # Refuse to plumb anything unless this is really a namespace of our own.
        if str(netns_inode()) == outer_ino or os.getpid() != 1:
            sys.exit("net_bench: not inside a fresh network/PID namespace; refusing to run")
        try:
            inner(args, series, args.out)
        except Exception as e:  # noqa: BLE001 - one line for the user
            log(f"{series}: {e}")
            sys.exit(1)
        return

    if os.geteuid() != 0:
        sys.exit("net_bench: needs root (it creates network namespaces)")
    for tool in ("unshare", "ip"):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            sys.exit(f"net_bench: required tool '{tool}' is missing")
    if not os.access("/usr/sbin/dnsmasq", os.X_OK) and not os.environ.get("KILN_DNSMASQ"):
        sys.exit("net_bench: /usr/sbin/dnsmasq is missing (dnsmasq-base)")
    args.kiln_net = find_kiln_net(args.build)

    # SIGTERM/SIGHUP: unwind like Ctrl-C so the temporary directory goes and unshare is killed.
    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    before = root_kiln_links()
    load_before = os.getloadavg()[0]
    tmp = tempfile.mkdtemp(prefix="kiln-net-bench.")
    os.chmod(tmp, 0o755)  # dnsmasq rereads its files as nobody
    try:
        log(f"kiln-net {args.kiln_net}; {args.ports} ports; temporary dir {tmp}")
        plumbed = run_series(args, "plumbed", tmp)
        noplumb = run_series(args, "noplumb", tmp)
    except KeyboardInterrupt:
        sys.exit("net_bench: interrupted")
    except RuntimeError as e:
        sys.exit(f"net_bench: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    leaked = root_kiln_links() - before
    if leaked:
        log(f"WARNING: new kiln-like links in the root namespace: {sorted(leaked)}")

    r = report(args, plumbed, noplumb, load_before)
    if args.json:
        print(json.dumps(r, indent=2))
    else:
        print(markdown(r))


if __name__ == "__main__":
    main()
