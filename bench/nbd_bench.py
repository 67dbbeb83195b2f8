#!/usr/bin/python3
"""kiln-nbd next to qemu-nbd, qemu-storage-daemon and nbdkit, with fio's io_uring engine on
the local raw file as the limit. The same images and the same fio jobs (ioengine=nbd over a
Unix socket, --invalidate=0) for every server; prints a Markdown table (IOPS, MB/s, p99
latency, server CPU time, peak RSS, fio's own CPU, ratio against qemu-nbd) and draws a PNG.

    bench/nbd_bench.py --quick                 # ~2 minutes: 256 MiB images, 3 s jobs, 1 repeat
    bench/nbd_bench.py                         # 2 GiB images, 10 s jobs, 3 repeats (medians)
    bench/nbd_bench.py --tls [--quick]         # the cost of TLS: plain, PSK and X.509 sessions
                                               # to kiln-nbd and qemu-nbd with the same keys
    bench/nbd_bench.py --tcp-tls [--quick]     # a remote disk: NBD+TLS (X.509, client certs
                                               # verified) on TCP against the Unix socket
    bench/nbd_bench.py --encrypt [--quick]     # a LUKS-encrypted qcow2 (aes-256-xts), reads,
                                               # kiln-nbd and qemu-nbd given the same key

The TLS table is driven by kiln-nbd-load (bench/nbd_load.cpp, libnbd's asynchronous API) for
its plain rows too, since fio's nbd engine cannot be given TLS key files.

Numbers are only as quiet as the machine: run it on an idle host."""

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

MiB = 1024 * 1024
CLUSTER = 65536
TICK = os.sysconf("SC_CLK_TCK")
HERE = os.path.dirname(os.path.abspath(__file__))

# name, fio arguments, what the image must be ("read": overlay on a base full of data,
# "alloc": an overlay allocated everywhere, "cow": a fresh overlay, replayed log)
JOBS = [
    ("rand read QD1", ["--rw=randread", "--bs=4k", "--iodepth=1"], "read"),
    ("rand read QD32", ["--rw=randread", "--bs=4k", "--iodepth=32"], "read"),
    ("rand read QD32 x4 conns", ["--rw=randread", "--bs=4k", "--iodepth=32", "--numjobs=4",
                                 "--group_reporting"], "read"),
    ("seq read 1M", ["--rw=read", "--bs=1M", "--iodepth=8"], "read"),
    ("copy-on-write 4K", ["--iodepth=32", "--replay_no_stall=1"], "cow"),
    ("rand write allocated", ["--rw=randwrite", "--bs=4k", "--iodepth=32"], "alloc"),
    ("seq write 1M", ["--rw=write", "--bs=1M", "--iodepth=8"], "alloc"),
]


def sh(*args, **kw):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          **kw)


def find_built(*rel):
    for d in ("build/release", "build", "build/dev"):
        p = os.path.join(HERE, "..", d, *rel)
        if os.path.exists(p):
            return os.path.abspath(p)
    return None


def find_kiln_nbd():
    for d in ("build/release", "build", "build/dev"):
        p = os.path.join(HERE, "..", d, "nbdserver", "kiln-nbd", "kiln-nbd")
        if os.path.exists(p):
            return os.path.abspath(p)
    return shutil.which("kiln-nbd")


class Images:
    """base.raw (data everywhere), base.qcow2 (the same, 64 KiB clusters), an empty overlay
    for reads, an allocated overlay for writes; fresh overlays made on demand."""

    def __init__(self, d, size):
        self.d, self.size = d, size
        self.raw = os.path.join(d, "base.raw")
        with open(self.raw, "wb") as f:
            chunk = bytes(random.Random(1).getrandbits(8) for _ in range(MiB))
            for _ in range(size // MiB):
                f.write(chunk)
        self.base = os.path.join(d, "base.qcow2")
        sh("qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o", "cluster_size=65536",
           self.raw, self.base)
        self.read_overlay = self.overlay("read.qcow2")
        self.alloc = self.overlay("alloc.qcow2")
        # In pieces: qemu-io refuses a single request of 2 GiB or more.
        piece = 1024 * MiB
        writes = [a for off in range(0, size, piece)
                  for a in ("-c", f"write -P 0xcd {off} {min(piece, size - off)}")]
        sh("qemu-io", "-f", "qcow2", *writes, self.alloc)
        self.raw_write = os.path.join(d, "write.raw")
        shutil.copyfile(self.raw, self.raw_write)
        # Every cluster written once, 4 KiB at a random place inside it, in random order.
        rng = random.Random(7)
        offsets = list(range(0, size, CLUSTER))
        rng.shuffle(offsets)
        self.cow_log = os.path.join(d, "cow.iolog")
        with open(self.cow_log, "w") as f:
            f.write("fio version 2 iolog\nnbd add\nnbd open\n")
            for o in offsets:
                f.write(f"nbd write {o + 4096 * rng.randrange(16)} 4096\n")
            f.write("nbd close\n")
        self.cow_writes = len(offsets)
        # The images were just written: without this the first jobs run while the kernel writes
        # gigabytes of dirty pages back (on a quiet machine, the first job, QD1 reads, measured
        # 7.8k IOPS for kiln-nbd and 10.0k for qemu-nbd without it, 41.4k and 40.3k with it).
        os.sync()

    def overlay(self, name, opts=None):
        p = os.path.join(self.d, name)
        if os.path.exists(p):
            os.unlink(p)
        # KILN_BENCH_OVERLAY_OPTS: other qcow2 options for the overlays (both servers serve
        # the same image), e.g. "extended_l2=on,cluster_size=131072" for subclusters.
        opts = opts or os.environ.get("KILN_BENCH_OVERLAY_OPTS", "cluster_size=65536")
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "-b", self.base, "-F", "qcow2",
           p)
        return p

    def recycle_memory(self):
        """Writes and deletes a scratch file twice as large as the image, so that the page
        cache a copy-on-write job fills next comes from memory the VM has just used. On a VM
        that reports free pages to its host (free page reporting), a page that was handed back
        costs a fault on the host when it is used again: the same build ran the job at 6-9k
        IOPS (server CPU 1.0-1.2 s) or at 20-30k (0.4 s), depending on whether the memory the
        previous run's overlay freed was still backed (bench/README.md, "Copy-on-write and
        the VM's free memory")."""
        scratch = os.path.join(self.d, "scratch")
        block = b"\xa5" * MiB
        with open(scratch, "wb") as f:
            for _ in range(2 * self.size // MiB + 64):
                f.write(block)
        os.unlink(scratch)

    def image_for(self, kind, raw_only, own_opts=None):
        if raw_only:
            return self.raw if kind == "read" else self.raw_write
        if kind == "read":
            return self.read_overlay
        if kind == "alloc":
            return self.alloc
        return self.overlay("cow.qcow2", own_opts)


class Server:
    def __init__(self, name, argv, sock):
        self.name, self.sock = name, sock
        if os.path.exists(sock):
            os.unlink(sock)
        self.log = open(sock + ".log", "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {open(sock + '.log').read()}")
            time.sleep(0.01)

    def _listening(self):
        with open("/proc/net/unix") as f:
            return any(line.split()[-1] == self.sock and int(line.split()[3], 16) & 0x10000
                       for line in list(f)[1:] if len(line.split()) >= 8)

    def cpu_seconds(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime

    def peak_rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --cache: the host cache mode of every server in the run (qemu's names).
CACHE = "writeback"


def start_server(name, image, fmt, d, kiln):
    sock = os.path.join(d, f"{name}.sock")
    direct = "on" if CACHE in ("none", "directsync") else "off"
    if name == "kiln-nbd":
        argv = [kiln, "-k", sock, "-t", "-e", "4", f"--cache={CACHE}", "-f", fmt, image]
    elif name == "qemu-nbd":
        argv = ["qemu-nbd", "-k", sock, "-t", "-e", "4", "--aio=io_uring", f"--cache={CACHE}",
                "-f", fmt, image]
    elif name == "qemu-storage-daemon":
        argv = ["qemu-storage-daemon",
                "--blockdev", f"driver=file,filename={image},node-name=file,aio=io_uring,"
                              f"cache.direct={direct}",
                "--blockdev", f"driver={fmt},file=file,node-name=disk",
                "--nbd-server", f"addr.type=unix,addr.path={sock}",
                "--export", "type=nbd,id=e0,node-name=disk,name=,writable=on"]
    elif name == "nbdkit":
        argv = ["nbdkit", "-f", "-U", sock, "file", image]
    else:
        raise ValueError(name)
    return Server(name, argv, sock)


def run_fio(target, args, size, runtime, ramp, kind, cow_log, at_ramp_end=None):
    """Runs one fio job. `at_ramp_end` is called once fio's ramp is over, when fio starts
    counting requests, so that a caller can take the server's CPU over the same window."""
    cmd = ["fio", "--name=bench", "--output-format=json", "--invalidate=0", "--direct=0",
           "--time_based=1" if kind != "cow" else "--time_based=0"]
    if target.startswith("nbd"):
        cmd += ["--ioengine=nbd", f"--uri={target}"]
    else:
        cmd += ["--ioengine=io_uring", f"--filename={target}"]
    if kind == "cow":
        if target.startswith("nbd"):
            cmd += [f"--read_iolog={cow_log}"]
        else:
            return None
    else:
        cmd += [f"--size={size}", f"--runtime={runtime}", f"--ramp_time={ramp}"]
    p = subprocess.Popen(cmd + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    if at_ramp_end and kind != "cow" and ramp:
        try:
            p.wait(ramp)  # fio connects within milliseconds; its ramp starts then
        except subprocess.TimeoutExpired:
            at_ramp_end()
    text, stderr = p.communicate()
    if "{" not in text:
        raise RuntimeError(f"fio failed: {stderr}")
    j = json.loads(text[text.index("{"):])
    job = j["jobs"][0]
    side = job["write"] if job["write"]["total_ios"] > job["read"]["total_ios"] else job["read"]
    pct = side.get("clat_ns", {}).get("percentile", {})
    p99 = pct.get("99.000000", 0) / 1000
    elapsed = job.get("job_runtime", 0) / 1000 or runtime
    numjobs = int(next((a.split("=")[1] for a in args if a.startswith("--numjobs=")), 1))
    return {"iops": side["iops"], "mbs": side["bw_bytes"] / 1e6, "p99_us": p99,
            "ios": side["total_ios"],
            # group_reporting averages the jobs' CPU: the total is what the client costs.
            "fio_cpu": (job["usr_cpu"] + job["sys_cpu"]) * numjobs,
            "elapsed": elapsed}


def measure(server_name, job, images, args, d, kiln):
    name, fio_args, kind = job
    raw_only = server_name in ("nbdkit", "fio io_uring (raw file)")
    if raw_only and kind == "cow":
        return None
    # "kiln-nbd (before)": the same server from another build (--kiln-nbd-before).
    if server_name == "kiln-nbd (before)":
        server_name, kiln = "kiln-nbd", args.kiln_nbd_before
    own = args.kiln_overlay_opts if server_name == "kiln-nbd" else None
    image = images.image_for(kind, raw_only, own)
    fmt = "raw" if raw_only else "qcow2"
    if server_name == "fio io_uring (raw file)":
        r = run_fio(image, fio_args, images.size, args.runtime, args.ramp, kind, None)
        if r:
            r.update(server_cpu=None, rss=None)
        return r
    if kind == "cow":
        images.recycle_memory()
    srv = start_server(server_name, image, fmt, d, kiln)
    try:
        uri = f"nbd+unix:///?socket={srv.sock}"
        r = fio_against(srv, uri, fio_args, images.size, args, kind, images.cow_log)
    finally:
        srv.stop()
    return r


def fio_against(srv, uri, fio_args, size, args, kind, cow_log):
    """fio's figures plus the server's CPU over the requests fio counted (its ramp left out;
    a copy-on-write job has none): server_cpu, cpu_per_req_us and the server's peak RSS."""
    start = {"cpu": srv.cpu_seconds()}

    def ramp_over():
        start["cpu"] = srv.cpu_seconds()

    r = run_fio(uri, fio_args, size, args.runtime, args.ramp, kind, cow_log, ramp_over)
    r["server_cpu"] = srv.cpu_seconds() - start["cpu"]
    r["cpu_per_req_us"] = r["server_cpu"] / r["ios"] * 1e6 if r["ios"] else None
    r["rss"] = srv.peak_rss_mib()
    return r


def median(rs, key):
    vals = [r[key] for r in rs if r and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def table(results, servers):
    lines = ["| job | server | IOPS | MB/s | p99 µs | server CPU s | server CPU µs/req "
             "| peak RSS MiB | fio CPU % | vs qemu-nbd |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for job, _, _ in JOBS:
        ref = results.get(("qemu-nbd", job))
        for s in servers:
            r = results.get((s, job))
            if not r:
                continue
            ratio = f"{r['iops'] / ref['iops']:.2f}x" if ref and ref["iops"] else "—"
            f = lambda v, fmt: "—" if v is None else format(v, fmt)  # noqa: E731
            lines.append(f"| {job} | {s} | {f(r['iops'], ',.0f')} | {f(r['mbs'], '.0f')} | "
                         f"{f(r['p99_us'], '.0f')} | {f(r['server_cpu'], '.2f')} | "
                         f"{f(r.get('cpu_per_req_us'), '.1f')} | "
                         f"{f(r['rss'], '.1f')} | {f(r['fio_cpu'], '.0f')} | {ratio} |")
    return "\n".join(lines)


def chart(results, servers, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(python3-matplotlib not installed: no chart)", file=sys.stderr)
        return False
    jobs = [j for j, _, _ in JOBS]
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.8 / len(servers)
    for i, s in enumerate(servers):
        vals = []
        for j in jobs:
            r, ref = results.get((s, j)), results.get(("qemu-nbd", j))
            vals.append(r["iops"] / ref["iops"] if r and ref and ref["iops"] else 0)
        ax.bar([k + i * width for k in range(len(jobs))], vals, width, label=s)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(jobs))])
    ax.set_xticklabels(jobs, rotation=20, ha="right")
    ax.set_ylabel("IOPS relative to qemu-nbd (log scale)")
    ax.set_yscale("log")
    ax.axhline(1, color="grey", linewidth=0.8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return True


# ---------------------------------------------------------------------------------------------
# The cost of TLS: the same client (kiln-nbd-load) against kiln-nbd and qemu-nbd, each plain,
# with pre-shared keys and with X.509 certificates. Server CPU per request is what TLS adds on
# the server's side; the client's own decryption is not counted.

TLS_JOBS = [
    ("4K rand read QD32", ["--rw=randread", "--bs=4096", "--qd=32"], "read"),
    ("1M seq read QD8", ["--rw=read", "--bs=1048576", "--qd=8"], "read"),
    ("1M seq write QD8", ["--rw=write", "--bs=1048576", "--qd=8"], "alloc"),
]
TLS_MODES = ["plain", "psk", "x509"]


class TlsCreds:
    """Throw-away credentials: a CA and a localhost server certificate (ECDSA), a PSK file."""

    def __init__(self, d):
        self.d = os.path.join(d, "tls")
        os.makedirs(self.d, exist_ok=True)
        pki = lambda n: os.path.join(self.d, n)  # noqa: E731

        def template(name, lines):
            with open(pki(name + ".info"), "w") as f:
                f.write("\n".join(lines + ["expiration_days = 2"]) + "\n")
            return pki(name + ".info")

        for k in ("ca", "server"):
            sh("certtool", "--generate-privkey", "--key-type=ecdsa", "--outfile",
               pki(k + "-key.pem"))
        sh("certtool", "--generate-self-signed", "--load-privkey", pki("ca-key.pem"),
           "--template", template("ca", ["cn = bench CA", "ca", "cert_signing_key"]),
           "--outfile", pki("ca-cert.pem"))
        sh("certtool", "--generate-certificate", "--load-privkey", pki("server-key.pem"),
           "--load-ca-certificate", pki("ca-cert.pem"), "--load-ca-privkey", pki("ca-key.pem"),
           "--template", template("server", ["cn = localhost", "dns_name = localhost",
                                              "tls_www_server", "encryption_key",
                                              "signing_key"]),
           "--outfile", pki("server-cert.pem"))
        self.server_dir = os.path.join(self.d, "server")
        self.client_dir = os.path.join(self.d, "client")
        for sub, names in ((self.server_dir, ("ca-cert.pem", "server-cert.pem",
                                               "server-key.pem")),
                           (self.client_dir, ("ca-cert.pem",))):
            os.makedirs(sub, exist_ok=True)
            for n in names:
                shutil.copyfile(pki(n), os.path.join(sub, n))
        self.psk_dir = os.path.join(self.d, "psk")
        os.makedirs(self.psk_dir, exist_ok=True)
        self.psk = os.path.join(self.psk_dir, "keys.psk")
        sh("psktool", "-u", "bench", "-p", self.psk)

    def kiln_args(self, mode):
        return {"plain": [], "psk": ["--tls-psk", self.psk],
                "x509": ["--tls-creds", self.server_dir]}[mode]

    def qemu_args(self, mode):
        if mode == "plain":
            return []
        obj = (f"tls-creds-psk,id=tls0,endpoint=server,dir={self.psk_dir}" if mode == "psk"
               else f"tls-creds-x509,id=tls0,endpoint=server,dir={self.server_dir},"
                    "verify-peer=off")
        return ["--object", obj, "--tls-creds", "tls0"]

    def uri(self, mode, sock):
        if mode == "plain":
            return f"nbd+unix:///?socket={sock}"
        if mode == "psk":
            return f"nbds+unix://bench@/?socket={sock}&tls-psk-file={self.psk}"
        return f"nbds+unix:///?socket={sock}&tls-certificates={self.client_dir}"


def measure_tls(server_name, mode, job, images, creds, args, d):
    name, load_args, kind = job
    image = images.image_for(kind, False)
    sock = os.path.join(d, f"{server_name}-tls.sock")
    if server_name == "kiln-nbd":
        argv = [args.kiln_nbd, "-k", sock, "-t", "-e", "4", "-f", "qcow2",
                *creds.kiln_args(mode), image]
    else:
        argv = ["qemu-nbd", "-k", sock, "-t", "-e", "4", "--aio=io_uring", "--cache=writeback",
                "-f", "qcow2", *creds.qemu_args(mode), image]
    srv = Server(server_name, argv, sock)
    try:
        cpu0 = srv.cpu_seconds()
        p = subprocess.run([args.nbd_load, creds.uri(mode, sock), *load_args,
                            f"--seconds={args.runtime}"], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"kiln-nbd-load failed against {server_name} ({mode}): "
                               f"{p.stderr}")
        r = json.loads(p.stdout)
        r["server_cpu"] = srv.cpu_seconds() - cpu0
        r["cpu_per_req_us"] = r["server_cpu"] / r["ops"] * 1e6 if r["ops"] else None
        r["rss"] = srv.peak_rss_mib()
    finally:
        srv.stop()
    return r


def tls_table(results):
    lines = ["| job | server | session | IOPS | MB/s | p99 µs | server CPU µs/request "
             "| TLS adds, µs/request | peak RSS MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for job, _, _ in TLS_JOBS:
        for s in ("kiln-nbd", "qemu-nbd"):
            plain = results.get((s, "plain", job))
            for m in TLS_MODES:
                r = results.get((s, m, job))
                if not r:
                    continue
                extra = ("—" if m == "plain" or not plain
                         else f"{r['cpu_per_req_us'] - plain['cpu_per_req_us']:.1f}")
                lines.append(f"| {job} | {s} | {m} | {r['iops']:,.0f} | {r['mbs']:.0f} | "
                             f"{r['p99_us']:.0f} | {r['cpu_per_req_us']:.1f} | {extra} | "
                             f"{r['rss']:.1f} |")
    return "\n".join(lines)


def tls_chart(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(python3-matplotlib not installed: no chart)", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, len(TLS_JOBS), figsize=(14, 4.5))
    for ax, (job, _, _) in zip(axes, TLS_JOBS):
        labels, vals, colors = [], [], []
        for s, c in (("kiln-nbd", "tab:orange"), ("qemu-nbd", "tab:blue")):
            for m in TLS_MODES:
                r = results.get((s, m, job))
                if r:
                    labels.append(f"{s}\n{m}")
                    vals.append(r["cpu_per_req_us"])
                    colors.append(c)
        ax.bar(range(len(vals)), vals, color=colors)
        ax.set_xticks(range(len(vals)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(job)
        ax.set_ylabel("server CPU per request, µs")
    fig.tight_layout()
    fig.savefig(path)
    return True


def publish(out, name, text, draw):
    """Prints the table, writes it to OUT/NAME.md and has `draw` make OUT/NAME.png."""
    print(text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, name + ".md"), "w") as f:
        f.write(text + "\n")
    png = os.path.join(out, name + ".png")
    if draw(png):
        print(f"\nchart: {png}", file=sys.stderr)


def load_bench_start(args, tools):
    """What the kiln-nbd-load modes (--tls, --tcp-tls) need before they run."""
    for tool in ("qemu-nbd", "qemu-img", "qemu-io", *tools):
        if not shutil.which(tool):
            sys.exit(f"nbd_bench: {tool} is missing")
    if not args.nbd_load:
        sys.exit("nbd_bench: kiln-nbd-load not found (build bench/, or give --nbd-load)")


@contextlib.contextmanager
def bench_workdir(args):
    """--workdir, or a temporary directory removed afterwards."""
    d = args.workdir or tempfile.mkdtemp(prefix="kiln-nbd-bench-")
    os.makedirs(d, exist_ok=True)
    try:
        yield d
    finally:
        if not args.workdir:
            shutil.rmtree(d, ignore_errors=True)


def alternating_medians(job, variants, repeats, measure_one, keys):
    """{(server, variant, job name): medians of `keys`} for kiln-nbd and qemu-nbd. Servers and
    variants alternate inside each repeat, so that the machine's load falls on all alike; each
    result is printed as it is known."""
    runs = {}
    for _ in range(repeats):
        for s in ("kiln-nbd", "qemu-nbd"):
            for v in variants:
                runs.setdefault((s, v), []).append(measure_one(s, v, job))
    out = {}
    for (s, v), rs in runs.items():
        r = out[(s, v, job[0])] = {k: median(rs, k) for k in keys}
        print(f"{job[0]:20} {s:9} {v:8} {r['iops']:>10,.0f} IOPS "
              f"{r['cpu_per_req_us']:7.1f} µs/req", file=sys.stderr)
    return out


def main_tls(args):
    load_bench_start(args, ("certtool", "psktool"))
    with bench_workdir(args) as d:
        images = Images(d, int(args.size) * MiB)
        creds = TlsCreds(d)
        results = {}
        for job in TLS_JOBS:
            results.update(alternating_medians(
                job, TLS_MODES, args.repeats,
                lambda s, m, j: measure_tls(s, m, j, images, creds, args, d),
                ("iops", "mbs", "p99_us", "cpu_per_req_us", "rss")))
        md = tls_table(results)
        head = (f"TLS cost: {args.size} MiB qcow2 overlay on a qcow2 base; kiln-nbd-load "
                f"(libnbd) over a Unix socket, one connection, {args.runtime} s per run, "
                f"{args.repeats} repeat(s), medians; TLS 1.3 as GnuTLS negotiates it; "
                f"qemu-nbd --aio=io_uring -e 4 with the same credentials.\n\n")
        publish(args.out, "nbd_bench_tls", head + md, lambda png: tls_chart(results, png))


# ---------------------------------------------------------------------------------------------
# A remote guest disk: NBD over TCP with TLS (X.509, client certificates verified, as kiln-spawn's
# disk_transport tcp-tls uses it) against the local Unix socket without TLS, for kiln-nbd and
# qemu-nbd with the same credentials (scripts/kiln-tls-setup). TCP stays on 127.0.0.1: what is
# measured is the cost of the transport and of TLS on this host, not a network.

TCP_TLS_JOBS = [
    ("4K rand read QD1", ["--rw=randread", "--bs=4096", "--qd=1"], "read"),
    ("4K rand read QD32", ["--rw=randread", "--bs=4096", "--qd=32"], "read"),
    ("1M seq read QD8", ["--rw=read", "--bs=1048576", "--qd=8"], "read"),
]
TRANSPORTS = ["unix", "tcp+tls"]
TLS_SETUP = os.path.join(HERE, "..", "scripts", "kiln-tls-setup")


class TcpServer(Server):
    """A server on 127.0.0.1:port, ready once /proc/net/tcp shows it listening."""

    def __init__(self, name, argv, logbase, port):
        self.port = port
        super().__init__(name, argv, logbase)

    def _listening(self):
        want = f"0100007F:{self.port:04X}"
        with open("/proc/net/tcp") as f:
            return any(len(line.split()) > 3 and line.split()[1] == want and
                       line.split()[3] == "0A" for line in list(f)[1:])


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpTlsCreds:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as kiln-spawn's users
    make them."""

    def __init__(self, d):
        self.d = os.path.join(d, "pki")
        sh(TLS_SETUP, "ca", os.path.join(self.d, "ca"))
        self.server_dir = os.path.join(self.d, "server")
        self.client_dir = os.path.join(self.d, "client")
        sh(TLS_SETUP, "server", os.path.join(self.d, "ca"), self.server_dir, "--cn", "bench",
           "--ip", "127.0.0.1")
        sh(TLS_SETUP, "client", os.path.join(self.d, "ca"), self.client_dir, "--cn", "bench")


def measure_tcp_tls(server_name, transport, job, images, creds, args, d):
    _, load_args, kind = job
    image = images.image_for(kind, False)
    sock = os.path.join(d, f"{server_name}-tcp.sock")
    port = free_port()
    if server_name == "kiln-nbd":
        argv = [args.kiln_nbd, "-t", "-e", "4", "-f", "qcow2"]
        listen = (["-k", sock] if transport == "unix" else
                  ["-p", str(port), "-b", "127.0.0.1", "--tls-creds", creds.server_dir,
                   "--tls-verify-peer"])
    else:
        argv = ["qemu-nbd", "-t", "-e", "4", "--aio=io_uring", "--cache=writeback", "-f", "qcow2"]
        listen = (["-k", sock] if transport == "unix" else
                  ["-p", str(port), "-b", "127.0.0.1", "--object",
                   f"tls-creds-x509,id=tls0,endpoint=server,dir={creds.server_dir},"
                   "verify-peer=on", "--tls-creds", "tls0"])
    if transport == "unix":
        srv = Server(server_name, argv + listen + [image], sock)
        uri = f"nbd+unix:///?socket={sock}"
    else:
        srv = TcpServer(server_name, argv + listen + [image], sock, port)
        uri = f"nbds://127.0.0.1:{port}/?tls-certificates={creds.client_dir}"
    try:
        cpu0 = srv.cpu_seconds()
        p = subprocess.run([args.nbd_load, uri, *load_args, f"--seconds={args.runtime}"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"kiln-nbd-load failed against {server_name} ({transport}): "
                               f"{p.stderr}")
        r = json.loads(p.stdout)
        r["server_cpu"] = srv.cpu_seconds() - cpu0
        r["cpu_per_req_us"] = r["server_cpu"] / r["ops"] * 1e6 if r["ops"] else None
    finally:
        srv.stop()
    return r


def tcp_tls_table(results):
    lines = ["| job | server | transport | IOPS | MB/s | p99 µs | server CPU µs/request "
             "| IOPS vs its Unix socket |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for job, _, _ in TCP_TLS_JOBS:
        for s in ("kiln-nbd", "qemu-nbd"):
            local = results.get((s, "unix", job))
            for t in TRANSPORTS:
                r = results.get((s, t, job))
                if not r:
                    continue
                ratio = f"{r['iops'] / local['iops']:.2f}x" if local and local["iops"] else "—"
                lines.append(f"| {job} | {s} | {t} | {r['iops']:,.0f} | {r['mbs']:.0f} | "
                             f"{r['p99_us']:.0f} | {r['cpu_per_req_us']:.1f} | {ratio} |")
    return "\n".join(lines)


def main_tcp_tls(args):
    load_bench_start(args, ("certtool",))
    with bench_workdir(args) as d:
        images = Images(d, int(args.size) * MiB)
        creds = TcpTlsCreds(d)
        results = {}
        for job in TCP_TLS_JOBS:
            results.update(alternating_medians(
                job, TRANSPORTS, args.repeats,
                lambda s, t, j: measure_tcp_tls(s, t, j, images, creds, args, d),
                ("iops", "mbs", "p99_us", "cpu_per_req_us")))
        md = tcp_tls_table(results)
        head = (f"Remote-disk transport: {args.size} MiB qcow2 overlay on a qcow2 base; "
                f"kiln-nbd-load (libnbd), one connection, {args.runtime} s per run, "
                f"{args.repeats} repeat(s), medians. unix = plain NBD on a Unix socket; tcp+tls = "
                f"NBD on 127.0.0.1 TCP with TLS 1.3, X.509, client certificate verified "
                f"(kiln-nbd --tls-verify-peer, qemu-nbd verify-peer=on), same credentials.\n\n")
        publish(args.out, "nbd_bench_tcp_tls", head + md, lambda png: False)


# Encrypted reads: one qcow2 image encrypted with LUKS (qemu-img's defaults, aes-256-xts-plain64,
# sha256) holding data everywhere; both servers open it with the same secret, qemu's syntax.
ENCRYPT_JOBS = [j for j in JOBS if j[0] in ("rand read QD1", "rand read QD32", "seq read 1M")]


def encrypted_image(d, size):
    key = os.path.join(d, "key")
    with open(os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write("bench passphrase")
    raw = os.path.join(d, "enc-base.raw")
    with open(raw, "wb") as f:
        chunk = bytes(random.Random(1).getrandbits(8) for _ in range(MiB))
        for _ in range(size // MiB):
            f.write(chunk)
    img = os.path.join(d, "enc.qcow2")
    for _ in range(10):  # qemu-img gives up timing PBKDF2 on a busy machine now and then
        p = subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "--object",
                            f"secret,id=sec0,file={key}", "-o",
                            "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=200,"
                            "cluster_size=65536", raw, img], capture_output=True, text=True)
        if p.returncode == 0:
            break
    else:
        sys.exit(f"nbd_bench: qemu-img convert failed: {p.stderr}")
    os.unlink(raw)
    return img, key


def measure_encrypted(server_name, job, img, key, args, d, size):
    sock = os.path.join(d, f"{server_name}.sock")
    secret = ["--object", f"secret,id=sec0,file={key}", "--image-opts",
              f"driver=qcow2,file.filename={img},encrypt.key-secret=sec0"]
    if server_name == "kiln-nbd":
        argv = [args.kiln_nbd, "-k", sock, "-t", "-e", "4", f"--cache={CACHE}", *secret]
    else:
        argv = ["qemu-nbd", "-k", sock, "-t", "-e", "4", "--aio=io_uring", f"--cache={CACHE}",
                *secret]
    srv = Server(server_name, argv, sock)
    try:
        r = fio_against(srv, f"nbd+unix:///?socket={sock}", job[1], size, args, job[2], None)
    finally:
        srv.stop()
    return r


def main_encrypt(args):
    size = int(args.size) * MiB
    for tool in ("fio", "qemu-img", "qemu-nbd"):
        if not shutil.which(tool):
            sys.exit(f"nbd_bench: {tool} is missing")
    if not args.kiln_nbd:
        sys.exit("nbd_bench: kiln-nbd not found (build it, or give --kiln-nbd)")
    d = args.workdir or tempfile.mkdtemp(prefix="kiln-nbd-bench-")
    os.makedirs(d, exist_ok=True)
    servers = ["kiln-nbd", "qemu-nbd"]
    jobs = [j for j in ENCRYPT_JOBS
            if not args.jobs or any(k in j[0] for k in args.jobs.split(","))]
    try:
        img, key = encrypted_image(d, size)
        results = {}
        for job in jobs:
            for s in servers:
                runs = [measure_encrypted(s, job, img, key, args, d, size)
                        for _ in range(args.repeats)]
                results[(s, job[0])] = {k: median(runs, k) for k in
                                        ("iops", "mbs", "p99_us", "server_cpu", "rss",
                                         "fio_cpu")}
                print(f"{job[0]:26} {s:26} {results[(s, job[0])]['iops']:>10,.0f} IOPS",
                      file=sys.stderr)
        head = (f"Encrypted reads: a {args.size} MiB qcow2 image encrypted with LUKS "
                f"(aes-256-xts-plain64, sha256; data in every cluster), served by kiln-nbd and "
                f"qemu-nbd --aio=io_uring with the same key (--object secret + --image-opts); "
                f"{args.runtime} s jobs, {args.repeats} repeat(s), medians; --cache={args.cache}; "
                f"Unix socket, fio ioengine=nbd.\n\n")
        publish(args.out, "nbd_bench_encrypt", head + table(results, servers),
                lambda png: chart(results, servers, png))
    finally:
        if not args.workdir:
            shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="2048", help="image size in MiB (default 2048)")
    ap.add_argument("--runtime", type=int, default=10, help="seconds per fio job")
    ap.add_argument("--ramp", type=int, default=2, help="fio ramp_time (not for copy-on-write)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per job; the median is shown")
    ap.add_argument("--quick", action="store_true", help="256 MiB, 3 s jobs, 1 ramp s, 1 repeat")
    ap.add_argument("--servers", default="kiln-nbd,qemu-nbd,qemu-storage-daemon,nbdkit,fio",
                    help="comma-separated subset (fio = io_uring on the raw file)")
    ap.add_argument("--jobs", default="", help="comma-separated substrings of job names")
    ap.add_argument("--kiln-nbd", default=find_kiln_nbd())
    ap.add_argument("--kiln-nbd-before", default=None,
                    help="another kiln-nbd build (e.g. main's) measured beside --kiln-nbd as "
                         "server 'kiln-nbd (before)', alternating with the others")
    ap.add_argument("--tls", action="store_true",
                    help="measure the cost of TLS (plain, PSK, X.509) instead")
    ap.add_argument("--tcp-tls", action="store_true",
                    help="a remote disk's transport: NBD+TLS (X.509) on TCP against the Unix "
                         "socket, kiln-nbd and qemu-nbd")
    ap.add_argument("--encrypt", action="store_true",
                    help="reads of a LUKS-encrypted qcow2, kiln-nbd against qemu-nbd")
    ap.add_argument("--nbd-load", default=find_built("bench", "kiln-nbd-load"))
    ap.add_argument("--out", default=".", help="where nbd_bench.md and nbd_bench.png go")
    ap.add_argument("--cache", default="writeback",
                    choices=["writeback", "none", "directsync", "writethrough", "unsafe"],
                    help="host cache mode of kiln-nbd, qemu-nbd and qemu-storage-daemon "
                         "(none, directsync: O_DIRECT; nbdkit and fio stay buffered)")
    ap.add_argument("--workdir", default=None, help="images go here (default: a temp dir)")
    ap.add_argument("--kiln-overlay-opts", default=None,
                    help="qcow2 options of kiln-nbd's copy-on-write overlay only, e.g. "
                         "extended_l2=on,cluster_size=131072 (kiln-spawn's default) to compare "
                         "each server on its own default overlay")
    args = ap.parse_args()
    if args.quick:
        args.size, args.runtime, args.ramp, args.repeats = "256", 3, 1, 1
    global CACHE
    CACHE = args.cache
    if args.tls:
        return main_tls(args)
    if args.tcp_tls:
        return main_tcp_tls(args)
    if args.encrypt:
        return main_encrypt(args)
    size = int(args.size) * MiB
    servers = [("fio io_uring (raw file)" if s == "fio" else s)
               for s in args.servers.split(",") if s]
    if args.kiln_nbd_before and "kiln-nbd (before)" not in servers:
        servers.insert(servers.index("kiln-nbd") + 1 if "kiln-nbd" in servers else 0,
                       "kiln-nbd (before)")
    jobs = [j for j in JOBS if not args.jobs or any(k in j[0] for k in args.jobs.split(","))]
    if "kiln-nbd" in servers and not args.kiln_nbd:
        sys.exit("nbd_bench: kiln-nbd not found (build it, or give --kiln-nbd)")
    for tool in ("fio", "qemu-img", "qemu-io") + tuple(
            {"qemu-nbd": "qemu-nbd", "qemu-storage-daemon": "qemu-storage-daemon",
             "nbdkit": "nbdkit"}.get(s, "fio") for s in servers):
        if not shutil.which(tool):
            sys.exit(f"nbd_bench: {tool} is missing")
    d = args.workdir or tempfile.mkdtemp(prefix="kiln-nbd-bench-")
    os.makedirs(d, exist_ok=True)
    try:
        print(f"images: {args.size} MiB in {d}", file=sys.stderr)
        images = Images(d, size)
        results = {}
        load0 = os.getloadavg()[0]
        for job in jobs:
            # The servers alternate inside each repeat, so that the machine's load (other
            # processes, the kernel's write-back) falls on all of them alike, and every other
            # repeat goes the other way round, so that none is always first.
            runs = {s: [] for s in servers}
            for rep in range(args.repeats):
                for s in (servers if rep % 2 == 0 else servers[::-1]):
                    r = measure(s, job, images, args, d, args.kiln_nbd)
                    runs[s].append(r)
                    if r and args.repeats > 1:  # the spread, which the medians hide
                        cpu = r.get("server_cpu")
                        print(f"  {job[0]:24} {s:26} run {rep + 1}: {r['iops']:>10,.0f} IOPS"
                              + (f", server CPU {cpu:.2f} s" if cpu is not None else ""),
                              file=sys.stderr)
            for s in servers:
                if not any(runs[s]):
                    continue
                results[(s, job[0])] = {k: median(runs[s], k) for k in
                                        ("iops", "mbs", "p99_us", "server_cpu", "cpu_per_req_us",
                                         "rss", "fio_cpu")}
                r = results[(s, job[0])]
                print(f"{job[0]:26} {s:26} {r['iops']:>10,.0f} IOPS", file=sys.stderr)
        md = table(results, servers)
        opts = os.environ.get("KILN_BENCH_OVERLAY_OPTS", "cluster_size=65536")
        head = (f"kiln-nbd benchmark: {args.size} MiB qcow2 overlay ({opts}) on a qcow2 base "
                f"(64 KiB clusters), raw base for nbdkit and fio; {args.runtime} s jobs, "
                f"{args.repeats} repeat(s), medians; --cache={args.cache}; Unix socket, fio ioengine=nbd, "
                f"--invalidate=0; copy-on-write = a replayed log of one 4 KiB write per "
                f"64 KiB ({images.cow_writes} writes) on a fresh overlay"
                + (f" (kiln-nbd's made with {args.kiln_overlay_opts})"
                   if args.kiln_overlay_opts else "")
                + f"; server CPU over the requests fio counted ({args.ramp} s ramp left out; "
                f"copy-on-write: the whole job)"
                + f"; servers alternating in each repeat; load average {load0:.1f} at the "
                f"start, {os.getloadavg()[0]:.1f} at the end.\n\n")
        publish(args.out, "nbd_bench", head + md, lambda png: chart(results, servers, png))
    finally:
        if not args.workdir:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
