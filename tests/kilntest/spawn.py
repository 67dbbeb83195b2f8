"""Helpers for kiln-spawn's CLI tests: a temporary world (state and run directories, a kiln-nbd
started by the test and stopped by PID, a tenant network made with kiln-net --no-plumb, an
image), and the commands run against libvirt's test:///default driver."""

import json
import os
import pathlib
import shutil
import signal
import tempfile

import pytest

from kilntest import SANITIZED, require_tools  # noqa: F401  (re-exported)
from kilntest import run as _run
from kilntest.nbd import Process, control

KILN_SPAWN = os.environ.get("KILN_SPAWN") or "kiln-spawn"
KILN_NET = os.environ.get("KILN_NET") or "kiln-net"
KILN_NBD = os.environ.get("KILN_NBD") or "kiln-nbd"
TIMEOUT = 120 if SANITIZED else 30
STEPS = ["claim", "port", "overlay", "config_drive", "inject", "export", "domain", "wait"]


def run(args, env=None, check=True, timeout=None, input=None):
    return _run(args, check=check, input=input, timeout=timeout or TIMEOUT * 4, env=env)


class NbdServer(Process):
    """kiln-nbd with a shared socket and a control socket, as kiln-spawn uses it."""

    def __init__(self, d, prefix=()):
        self.sock = os.path.join(d, "nbd.sock")
        self.ctl = os.path.join(d, "nbd-control.sock")
        # -e 0 as kiln-spawn needs it: kiln-nbd's client limit counts all exports together.
        cmd = [*prefix, KILN_NBD, "-e", "0", "-k", self.sock, "--control", self.ctl]
        super().__init__("kiln-nbd", cmd, os.path.join(d, "kiln-nbd.log"),
                         unix=[self.sock, self.ctl])
        self.start()

    def control(self, cmd, **kw):
        return control(self.ctl, cmd, **kw)

    def exports(self):
        r = self.control("list-exports")
        assert r["ok"], r
        return r["exports"]

    def stop(self):
        return super().stop(signal.SIGTERM)


def ips(port):
    return [f["ip_address"] for f in port["fixed_ips"]]


class World:
    """State and run directories of their own, kiln-nbd, a network, kiln-spawn's options.
    shared_socket: every domain reaches kiln-nbd through its one socket (--nbd-socket); else
    each instance gets its own socket under KILN_RUN_DIR/nbd (a kiln-nbd with per-export
    sockets is needed). prefix: what kiln-net and kiln-spawn run under (nsenter into a libvirt
    sandbox's namespaces, whose network they plumb); nbd_prefix: what kiln-nbd runs under (the
    sandbox's mount namespace, whose passwd has QEMU's user; it must exec, not fork)."""

    def __init__(self, d, libvirt_uri="test:///default", plumb=False, shared_socket=True,
                 prefix=(), nbd_prefix=()):
        self.dir = d
        self.prefix = list(prefix)
        self.libvirt_uri = libvirt_uri
        self.plumb = plumb
        self.shared_socket = shared_socket
        self.state = os.path.join(d, "state")
        self.run_dir = os.path.join(d, "run")
        os.makedirs(self.state)
        os.makedirs(self.run_dir)
        self.env = dict(os.environ, KILN_STATE_DIR=self.state, KILN_RUN_DIR=self.run_dir)
        self.env.pop("KILN_SPAWN_FAIL_AT", None)
        self.nbd = NbdServer(self.run_dir, nbd_prefix)
        self.net("net-create", "demo-net")
        self.net("subnet-create", "demo-net", "192.168.0.0/24", "--name", "demo-subnet",
                 "--gateway", "192.168.0.1", "--dns-nameserver", "8.8.8.8")
        self.set_baseline()

    def set_baseline(self):
        """The ports (and addresses) that exist before any instance: the network's own."""
        ports = self.all_ports()
        self.baseline_ports = sorted(p["id"] for p in ports)
        self.baseline_ips = sorted(a for p in ports for a in ips(p))

    @property
    def spawn_dir(self):
        return os.path.join(self.state, "spawn")

    def net(self, *args, check=True):
        plumb = [] if self.plumb else ["--no-plumb"]
        return run([*self.prefix, KILN_NET, *plumb, *args], env=self.env, check=check)

    def spawn_cmd(self, *args):
        plumb = [] if self.plumb else ["--no-plumb"]
        socket = ["--nbd-socket", self.nbd.sock] if self.shared_socket else []
        return [KILN_SPAWN, "--libvirt-uri", self.libvirt_uri, *plumb,
                "--nbd-control", self.nbd.ctl, *socket, "--virt-type", "qemu", *args]

    def spawn(self, *args, check=True, env=None):
        return run([*self.prefix, *self.spawn_cmd(*args)], env=env or self.env, check=check)

    def spawn_json(self, *args):
        return json.loads(self.spawn(*args, "--format", "json").stdout)

    def instance_ports(self, ports=None):
        if ports is None:
            ports = self.all_ports()
        return [p for p in ports if p.get("device_owner", "").startswith("compute:")]

    def all_ports(self):
        return json.loads(self.net("port-list", "--format", "json").stdout)

    def assert_nothing_left(self):
        """No instance resources anywhere: claims, ports, addresses, files, exports."""
        stats = self.spawn_json("hypervisor-stats")
        assert stats["vcpus_used"] == 0 and stats["memory_mb_used"] == 0, stats
        assert stats["disk_gb_used"] == 0 and stats["running_vms"] == 0, stats
        ports = self.all_ports()  # one port-list for both checks
        assert self.instance_ports(ports) == []
        assert sorted(p["id"] for p in ports) == self.baseline_ports, ports
        assert sorted(a for p in ports for a in ips(p)) == self.baseline_ips, ports
        inst_dir = os.path.join(self.spawn_dir, "instances")
        assert not os.path.isdir(inst_dir) or os.listdir(inst_dir) == []
        assert self.nbd.exports() == []
        # Lock files only for instance records that still exist (e.g. in error).
        locks = os.path.join(self.spawn_dir, "locks")
        ids = {i["id"] + ".lock" for i in self.spawn_json("list")}
        left = set(os.listdir(locks)) if os.path.isdir(locks) else set()
        assert left <= ids, (left, ids)

    def close(self):
        rc = self.nbd.stop()
        log = self.nbd.log()
        assert rc == 0, f"kiln-nbd exited with {rc}: {log}"
        for needle in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert needle not in log, log


@pytest.fixture
def world(tmp_path):
    w = World(str(tmp_path))
    try:
        yield w
    finally:
        w.close()


def make_ext4_qcow2(tmp_path, name, files):
    """A qcow2 image holding an ext4 file system (whole disk) with `files` {path: text}."""
    root = tmp_path / (name + "-root")
    for path, text in files.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    raw = str(tmp_path / (name + ".raw"))
    run(["mkfs.ext4", "-q", "-F", "-d", str(root), raw, "32M"])
    out = str(tmp_path / (name + ".qcow2"))
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, out])
    return out


def make_qcow2(path, size="64M", pattern=None):
    run(["qemu-img", "create", "-q", "-f", "qcow2", path, size])
    if pattern is not None:
        run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} 0 1M", path])
    return path


@pytest.fixture
def tmp_path():
    """A temporary directory removed when the test ends (pytest's own is kept for a while)."""
    d = tempfile.mkdtemp(prefix="kiln-spawn-test.")
    try:
        yield pathlib.Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
