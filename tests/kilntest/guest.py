"""Helpers for Kiln's end-to-end tests: the test guest, kiln-nbd and QEMU as owned processes
(started, waited for on their socket, stopped by PID), and reading files back out of images."""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

from kilntest import run as _run
from kilntest import sha256 as sha256_file  # noqa: F401  (re-exported)

HERE = os.path.dirname(os.path.abspath(__file__))
GUEST_BUILDER = os.environ.get("KILN_GUEST_BUILDER",
                               os.path.join(HERE, "..", "guest", "build.sh"))
KILN_NBD = os.environ.get("KILN_NBD", "kiln-nbd")
KILN_IMG = os.environ.get("KILN_IMG", "kiln-img")
KILN_NET = os.environ.get("KILN_NET", "kiln-net")

REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "debugfs", "e2fsck")


def require_tools():
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None and
               shutil.which(t, path="/usr/sbin:/sbin") is None]
    for t in (KILN_NBD, KILN_IMG, GUEST_BUILDER):
        if not (os.path.isfile(t) and os.access(t, os.X_OK)) and shutil.which(t) is None:
            missing.append(t)
    assert not missing, f"required tools missing: {', '.join(missing)}"


def tool(name):
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin") or name


def run(args, check=True, timeout=120, **kw):
    return _run(args, check=check, timeout=timeout, **kw)


def build_guest(outdir):
    """Runs the guest builder (idempotent; fast when up to date); returns the file paths."""
    run([GUEST_BUILDER, outdir], timeout=900)
    paths = {n: os.path.join(outdir, n) for n in ("vmlinuz", "initrd.img", "rootfs.raw")}
    for p in paths.values():
        assert os.path.isfile(p), p
    return paths


def b64(text):
    return base64.b64encode(text.encode()).decode()


def make_base_and_overlay(rootfs_raw, workdir):
    """A qcow2 base converted from the guest's raw root disk and a kiln-img overlay on it."""
    base = os.path.join(workdir, "base.qcow2")
    overlay = os.path.join(workdir, "overlay.qcow2")
    run([tool("qemu-img"), "convert", "-f", "raw", "-O", "qcow2", rootfs_raw, base])
    run([KILN_IMG, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay])
    return base, overlay


def _wait_pid(proc, timeout):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def read_text(path):
    """A log file's text so far ("" if it cannot be read)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


class KilnNbd:
    """kiln-nbd serving one qcow2 file on a Unix socket; stopped by its PID."""

    def __init__(self, image, sock, workdir, name="root", tag="nbd"):
        self.image, self.sock, self.name = image, sock, name
        self.pid_file = os.path.join(workdir, f"{tag}.pid")
        self.log_path = os.path.join(workdir, f"{tag}.log")
        self.proc = None

    def start(self, timeout=20):
        if os.path.exists(self.pid_file):
            os.unlink(self.pid_file)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [KILN_NBD, "-t", "-e", "0", "-k", self.sock, "-x", self.name, "-f", "qcow2",
             "--pid-file", self.pid_file, self.image],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"kiln-nbd exited with {self.proc.returncode}:\n"
                                     + self.read_log())
            if os.path.exists(self.pid_file) and self._answers():
                with open(self.pid_file) as f:
                    pid = int(f.read().strip() or 0)
                assert pid == self.proc.pid, f"pid file says {pid}, process is {self.proc.pid}"
                return self
            time.sleep(0.02)
        raise AssertionError("kiln-nbd did not start listening:\n" + self.read_log())

    def _answers(self):
        # Ready means: a client connecting on the socket gets the NBD greeting.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                s.connect(self.sock)
                return s.recv(8) == b"NBDMAGIC"
        except OSError:
            return False

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL: a crash, as far as the client can tell."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.log.close()

    def stop(self, timeout=20):
        """SIGTERM, the clean stop; returns the exit status."""
        os.kill(self.proc.pid, signal.SIGTERM)
        rc = _wait_pid(self.proc, timeout)
        if rc is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.log.close()
            raise AssertionError("kiln-nbd did not stop on SIGTERM:\n" + self.read_log())
        self.log.close()
        return rc

    def cleanup(self):
        if self.running():
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc is not None and not self.log.closed:
            self.log.close()

    def read_log(self):
        return read_text(self.log_path)


def control_request(path, req):
    """One request on kiln-nbd's control socket `path`: its JSON reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall((json.dumps(req) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return json.loads(data)


class KilnNbdControl:
    """kiln-nbd with no export of its own, a Unix socket and a control socket (what kiln-spawn
    adds its exports through); stopped by its PID."""

    def __init__(self, sock, control, workdir, tag="nbd", extra_args=(), prefix=()):
        # extra_args: more kiln-nbd options (TCP, TLS); prefix: what runs it (e.g. nsenter into
        # a network namespace: nsenter execs kiln-nbd, so its PID is still ours to stop).
        self.sock, self.control = sock, control
        self.extra_args, self.prefix = list(extra_args), list(prefix)
        self.log_path = os.path.join(workdir, f"{tag}.log")
        self.proc = None

    def start(self, timeout=20):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([*self.prefix, KILN_NBD, "-k", self.sock, "--control",
                                      self.control, *self.extra_args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"kiln-nbd exited with {self.proc.returncode}")
            if os.path.exists(self.control):
                try:
                    self.request({"cmd": "list-exports"})
                    return self
                except OSError:
                    pass
            time.sleep(0.02)
        raise AssertionError("kiln-nbd did not start")

    def request(self, req):
        return control_request(self.control, req)

    def exports(self):
        return self.request({"cmd": "list-exports"})["exports"]

    def read_log(self):
        return read_text(self.log_path)

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc is not None and not self.log.closed:
            self.log.close()


class Qemu:
    """A TCG guest with direct kernel boot, no network, serial console to a file."""

    def __init__(self, guest, workdir, disk_args, kiln_args, tag="qemu"):
        self.console = os.path.join(workdir, f"{tag}-console.log")
        self.stderr_path = os.path.join(workdir, f"{tag}.stderr")
        append = "console=ttyS0 quiet panic=-1 " + " ".join(
            f"kiln.{k}={v}" for k, v in kiln_args.items())
        self.args = [tool("qemu-system-x86_64"), "-accel", "tcg", "-nographic", "-m", "256",
                     "-nic", "none", "-no-reboot", "-monitor", "none",
                     "-serial", f"file:{self.console}",
                     "-kernel", guest["vmlinuz"], "-initrd", guest["initrd.img"],
                     "-append", append, *disk_args]
        self.proc = None

    def start(self):
        self.err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        return self

    def console_text(self):
        try:
            with open(self.console, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def markers(self):
        return [m.group(1).rstrip("\r") for m in
                re.finditer(r"KILN-TEST: (.*)", self.console_text())]

    def wait_marker(self, pattern, timeout):
        """Waits until a console marker matches; returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.markers():
                found = rx.fullmatch(m)
                if found:
                    return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no console marker /{pattern}/ (qemu "
                             f"{'exited ' + str(self.proc.returncode) if self.proc.poll() is not None else 'running'})"
                             f"\n{self.diagnostics()}")

    def wait_exit(self, timeout):
        rc = _wait_pid(self.proc, timeout)
        if rc is None:
            self.cleanup()
            raise AssertionError(f"guest did not power off in {timeout}s\n{self.diagnostics()}")
        self.err.close()
        return rc

    def diagnostics(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                err = f.read()
        except OSError:
            err = ""
        return f"--- console ---\n{self.console_text()[-4000:]}\n--- qemu stderr ---\n{err}"

    def cleanup(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc is not None and not self.err.closed:
            self.err.close()


def image_to_raw(image, workdir, name="readback.raw"):
    raw = os.path.join(workdir, name)
    run([tool("qemu-img"), "convert", "-f", "qcow2", "-O", "raw", image, raw])
    return raw


def fsck_clean(raw):
    p = run([tool("e2fsck"), "-fn", raw], check=False)
    assert p.returncode == 0, f"e2fsck -fn found problems ({p.returncode}):\n{p.stdout}{p.stderr}"


def debugfs_cat(raw, path):
    p = run([tool("debugfs"), "-R", f"cat {path}", raw])
    return p.stdout


def debugfs_rdump(raw, path, dest):
    os.makedirs(dest, exist_ok=True)
    run([tool("debugfs"), "-R", f"rdump {path} {dest}", raw])
    return os.path.join(dest, os.path.basename(path))


def qemu_img_check(image):
    """Returns (returncode, output): 0 clean, 3 leaks only, 2 corruption, 1 error."""
    p = run([tool("qemu-img"), "check", "-f", "qcow2", image], check=False)
    return p.returncode, p.stdout + p.stderr
