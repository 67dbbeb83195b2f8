#!/usr/bin/python3
"""Injection into a guest image: `kiln-fs inject` against the kernel path (qemu-storage-daemon
FUSE export of the overlay + loop mount + write + unmount) and against libguestfs'
`virt-customize` (an appliance VM; TCG here). The same work each time, on a fresh qcow2 overlay
over an ext4 base (1 GiB unless --base-size says otherwise): an SSH key for root, the hostname
(/etc/hostname and /etc/hosts), and three small files. Prints a Markdown table of medians (whole
processes, wall clock) and what each path left in the overlay.

    sudo bench/fs_bench.py [--runs 30] [--build build/release] [--skip-virt-customize] [--kvm]
                           [--base-size GIB] [--kiln-fs-before OLD_KILN_FS] [--only-kiln]

With --kiln-fs-before, a second kiln-fs binary runs the same job, alternating with the first
run by run (the machine's drift then hits both alike).

Needs root (loop devices and mounts for the kernel path). Everything lives in a temporary
directory that is removed at the end; mounts, loop devices and daemons are undone also after
a failure or Ctrl-C. Numbers are only as quiet as the machine."""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
GiB = 1 << 30
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBench bench@kiln\n"


def sh(*args, check=True, **kw):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({p.returncode}): {p.stderr.strip()}")
    return p


def find_binary(build, rel, name):
    for d in ([build] if build else []) + ["build/release", "build", "build-fs"]:
        p = os.path.join(HERE, "..", d, rel, name)
        if os.path.exists(p):
            return os.path.abspath(p)
    return shutil.which(name)


def make_guest_tree(root):
    """Enough of a Debian root for libguestfs' inspection (virt-customize needs to recognise
    an operating system) and for the injections."""
    files = {
        "etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                          'VERSION_ID="12"\nID=debian\n',
        "etc/debian_version": "12.5\n",
        "etc/fstab": "LABEL=rootfs / ext4 errors=remount-ro 0 1\n",
        "etc/hostname": "debian\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\ndebian:x:1000:1000::/home/debian:/bin/bash\n",
        "etc/shadow": "root:*:19000:0:99999:7:::\ndebian:!:19000:0:99999:7:::\n",
        "etc/group": "root:x:0:\ndebian:x:1000:\n",
    }
    for d in ["etc", "bin", "sbin", "usr/bin", "usr/sbin", "usr/lib", "var/lib", "tmp", "root",
              "home/debian", "boot", "dev", "proc", "sys", "run"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "root"), 0o700)
    for path, text in files.items():
        with open(os.path.join(root, path), "w") as f:
            f.write(text)
    os.chmod(os.path.join(root, "etc/shadow"), 0o640)


class Median:
    def __init__(self, name, note=""):
        self.name, self.note, self.samples = name, note, []

    def add(self, seconds):
        self.samples.append(seconds)

    def row(self, reference):
        if not self.samples:
            return f"| {self.name} | — | — | — | — | {self.note} |"
        m = statistics.median(self.samples)
        ratio = f"{m / reference:,.0f}x" if reference and m > reference * 1.5 else (
            f"{m / reference:.1f}x" if reference else "—")
        return (f"| {self.name} | {m * 1e3:,.1f} ms | {min(self.samples) * 1e3:,.1f} ms | "
                f"{len(self.samples)} | {ratio} | {self.note} |")


def fresh_overlay(d, base, name="vm.qcow2"):
    path = os.path.join(d, name)
    if os.path.exists(path):
        os.unlink(path)
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", path)
    return path


def verify(kiln_fs, overlay, inputs, what):
    """The job really happened: the overlay holds the hostname, the key and the files."""
    def cat(path):
        return sh(kiln_fs, "cat", "--format", "qcow2", overlay, path).stdout
    problems = []
    if cat("/etc/hostname").strip() != "vm-01.example.org":
        problems.append("hostname")
    if KEY.strip() not in cat("/root/.ssh/authorized_keys"):
        problems.append("ssh key")
    for i, f in enumerate(inputs["files"]):
        with open(f) as fh:
            if cat(f"/etc/kiln/file{i}") != fh.read():
                problems.append(f"file{i}")
    if problems:
        raise RuntimeError(f"{what}: the overlay lacks {', '.join(problems)}")


def overlay_kib(overlay):
    """Data the overlay holds itself (what the job copied or wrote), in KiB."""
    out = sh("qemu-img", "map", "--output=json", overlay).stdout
    return sum(e["length"] for e in json.loads(out) if e["data"] and e["depth"] == 0) >> 10


def bench_kiln(d, base, binaries, runs, inputs):
    """One Median per (name, kiln-fs binary), the binaries alternating run by run."""
    rows = [Median(name, "") for name, _ in binaries]
    sizes = [[] for _ in binaries]
    for i in range(runs + 2):
        order = list(range(len(binaries)))
        if i % 2:
            order.reverse()
        for k in order:
            # The overlay's format is given: a probed image that names a backing file is refused.
            ov = fresh_overlay(d, base)
            args = [binaries[k][1], "inject", "--format", "qcow2", ov, "--ssh-key",
                    f"root:{inputs['key']}", "--hostname", "vm-01.example.org"]
            for j, f in enumerate(inputs["files"]):
                args += ["--file", f"/etc/kiln/file{j}={f}:0644"]
            sh("sync")
            t0 = time.perf_counter()
            sh(*args)
            rows[k].add(time.perf_counter() - t0)
            sizes[k].append(overlay_kib(ov))
            if i == runs + 1:  # the last overlay of each binary holds what was asked
                verify(binaries[k][1], ov, inputs, rows[k].name)
    for k, m in enumerate(rows):
        m.samples = m.samples[2:]  # warm-up
        m.note = (f"whole process: open qcow2 + ext4, inject, flush, close; overlay "
                  f"{statistics.median(sizes[k]):,.0f} KiB")
    return rows


def wait_for_mount(path, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open("/proc/self/mountinfo") as f:
            if any(line.split()[4] == path for line in f):
                return
        time.sleep(0.0005)
    raise RuntimeError(f"{path} not mounted after {timeout}s")


def kernel_once(d, base, inputs):
    """qemu-storage-daemon exports the overlay as a file through FUSE; a loop device on it;
    the host kernel mounts ext4 and writes; everything is taken down again. Returns seconds."""
    ov = fresh_overlay(d, base)
    export = os.path.join(d, "export")
    mnt = os.path.join(d, "mnt")
    open(export, "w").close()
    os.makedirs(mnt, exist_ok=True)
    sh("sync")
    t0 = time.perf_counter()
    qsd = subprocess.Popen(["qemu-storage-daemon",
                            "--blockdev", f"driver=file,node-name=file,filename={ov}",
                            "--blockdev", "driver=qcow2,node-name=disk,file=file",
                            "--export", f"type=fuse,id=exp,node-name=disk,mountpoint={export},"
                                        "writable=on"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    loop = None
    mounted = False
    try:
        wait_for_mount(export)
        loop = sh("losetup", "--find", "--show", export).stdout.strip()
        sh("mount", "-t", "ext4", loop, mnt)
        mounted = True
        ssh = os.path.join(mnt, "root/.ssh")
        os.makedirs(ssh, exist_ok=True)
        os.chmod(ssh, 0o700)
        with open(os.path.join(ssh, "authorized_keys"), "a") as f:
            f.write(KEY)
        os.chmod(os.path.join(ssh, "authorized_keys"), 0o600)
        with open(os.path.join(mnt, "etc/hostname"), "w") as f:
            f.write("vm-01.example.org\n")
        with open(os.path.join(mnt, "etc/hosts"), "w") as f:
            f.write("127.0.0.1\tlocalhost\n127.0.1.1\tvm-01.example.org vm-01\n")
        os.makedirs(os.path.join(mnt, "etc/kiln"), exist_ok=True)
        for i, src in enumerate(inputs["files"]):
            shutil.copyfile(src, os.path.join(mnt, f"etc/kiln/file{i}"))
        sh("umount", mnt)
        mounted = False
        sh("losetup", "-d", loop)
        loop = None
        qsd.send_signal(signal.SIGTERM)
        qsd.wait(timeout=30)
        elapsed = time.perf_counter() - t0
    finally:
        if mounted:
            sh("umount", mnt, check=False)
        if loop:
            sh("losetup", "-d", loop, check=False)
        if qsd.poll() is None:
            qsd.kill()
            qsd.wait()
    if qsd.returncode not in (0, -signal.SIGTERM):
        raise RuntimeError(f"qemu-storage-daemon exited with {qsd.returncode}: "
                           f"{qsd.stderr.read().decode(errors='replace')}")
    return elapsed


def bench_kernel(d, base, kiln_fs, runs, inputs):
    m = Median("kernel: qemu-storage-daemon FUSE export + loop mount",
               "start qsd, losetup, mount, write, umount, losetup -d, stop qsd")
    for i in range(runs + 2):
        t = kernel_once(d, base, inputs)
        if i >= 2:
            m.add(t)
    verify(kiln_fs, os.path.join(d, "vm.qcow2"), inputs, m.name)
    return m


def bench_virt_customize(d, base, kiln_fs, inputs, kvm):
    m = Median("virt-customize --hostname --ssh-inject (+ --upload x3)", "")
    vc = shutil.which("virt-customize")
    if not vc:
        m.note = "skipped: virt-customize not installed (libguestfs-tools)"
        return m
    ov = fresh_overlay(d, base)
    args = [vc, "--format", "qcow2", "-a", ov, "--no-network", "--hostname", "vm-01.example.org",
            "--ssh-inject", f"root:file:{inputs['key']}", "--mkdir", "/etc/kiln"]
    for i, f in enumerate(inputs["files"]):
        args += ["--upload", f"{f}:/etc/kiln/file{i}"]
    env = dict(os.environ, LIBGUESTFS_BACKEND="direct", HOME=d)
    if not kvm:
        # Nested KVM in a VM can hang the appliance at boot: TCG unless asked otherwise.
        env["LIBGUESTFS_BACKEND_SETTINGS"] = "force_tcg"
    t0 = time.perf_counter()
    # Its own process group: on a timeout the appliance's qemu goes down with it.
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        m.note = "failed: no result within 900 s"
        return m
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    if p.returncode != 0:
        lines = (err + out).splitlines()
        err = [line for line in lines if "error:" in line] or [l for l in lines if l.strip()]
        m.note = "failed: " + (err[0].strip()[:200] if err else f"exit {p.returncode}")
        return m
    m.add(time.perf_counter() - t0)
    verify(kiln_fs, ov, inputs, m.name)
    m.note = "one run; libguestfs appliance VM under " + ("KVM if it works" if kvm else "TCG")
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--build", default=None, help="build directory (default: build/release)")
    ap.add_argument("--skip-virt-customize", action="store_true")
    ap.add_argument("--kvm", action="store_true",
                    help="let libguestfs use KVM (default: force TCG, as nested KVM may hang)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--base-size", type=int, default=1, metavar="GIB",
                    help="size of the ext4 base in GiB (default 1; sparse)")
    ap.add_argument("--kiln-fs-before", metavar="KILN_FS",
                    help="a second kiln-fs binary, measured alternately with the first")
    ap.add_argument("--only-kiln", action="store_true",
                    help="kiln-fs only: no kernel path, no virt-customize")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("fs_bench.py: needs root (loop devices and mounts for the kernel path)")
    kiln_fs = find_binary(a.build, "fusefs", "kiln-fs")
    if not kiln_fs:
        sys.exit("fs_bench.py: kiln-fs not found: build it (cmake --build build/release --target kiln-fs)")
    d = tempfile.mkdtemp(prefix="kiln-fs-bench-")
    try:
        tree = os.path.join(d, "tree")
        make_guest_tree(tree)
        base = os.path.join(d, "base.raw")
        with open(base, "wb") as f:
            f.truncate(a.base_size * GiB)
        sh("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", tree, base)
        key = os.path.join(d, "id.pub")
        with open(key, "w") as f:
            f.write(KEY)
        files = []
        for i in range(3):
            p = os.path.join(d, f"small{i}")
            with open(p, "w") as f:
                f.write(f"small file {i}\n" * (10 + 40 * i))
            files.append(p)
        inputs = {"key": key, "files": files}

        binaries = [("kiln-fs inject", kiln_fs)]
        if a.kiln_fs_before:
            binaries.append(("kiln-fs inject (before)", a.kiln_fs_before))
        rows = bench_kiln(d, base, binaries, a.runs, inputs)
        if a.only_kiln:
            pass
        elif a.skip_virt_customize:
            rows.append(bench_kernel(d, base, kiln_fs, a.runs, inputs))
            rows.append(Median("virt-customize --hostname --ssh-inject (+ --upload x3)",
                               "skipped (--skip-virt-customize)"))
        else:
            rows.append(bench_kernel(d, base, kiln_fs, a.runs, inputs))
            rows.append(bench_virt_customize(d, base, kiln_fs, inputs, a.kvm))
        ref = statistics.median(rows[0].samples)
        cpu = ""
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
        print(f"\nInjection of an SSH key, a hostname and three small files into a fresh qcow2 "
              f"overlay on a {a.base_size} GiB ext4 base ({os.cpu_count()} CPUs, {cpu}, kernel "
              f"{os.uname().release}).\n")
        print("| path | median | min | runs | vs kiln-fs | notes |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(r.row(ref))
    finally:
        if a.keep:
            print(f"kept {d}")
        else:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
