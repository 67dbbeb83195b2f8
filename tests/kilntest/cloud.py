"""A small cloud for the end-to-end suites: a libvirtd of the test's own (scripts/lib/
kiln_sandbox.py), kiln-nbd with a control socket, and kiln-net and kiln-spawn run inside the
sandbox's network, mount and PID namespaces, with the checks that a deleted instance left
nothing behind."""

import json
import os
import re
import time

from kiln_sandbox import LibvirtSandbox
from kilntest.guest import KILN_NET, KilnNbdControl, run

KILN_SPAWN = os.environ.get("KILN_SPAWN", "kiln-spawn")
SHARED_SOCKET = os.environ.get("KILN_E2E_NBD_SHARED_SOCKET") == "1"


class Cloud:
    """The sandbox, kiln-nbd with a control socket, and helpers that run kiln-net and
    kiln-spawn inside the sandbox's network, mount and PID namespaces. Processes it starts
    are appended to `procs` (stopped by PID at teardown)."""

    def __init__(self, workdir, procs):
        self.workdir = workdir
        os.chmod(workdir, 0o755)  # dnsmasq rereads its host file as nobody
        self.env = {**os.environ, "KILN_STATE_DIR": os.path.join(workdir, "state"),
                    "KILN_RUN_DIR": os.path.join(workdir, "run")}
        for d in (self.env["KILN_STATE_DIR"], self.env["KILN_RUN_DIR"]):
            os.makedirs(d)
        self.nbd_sock = os.path.join(workdir, "nbd.sock")
        self.nbd_ctl = os.path.join(workdir, "nbd-control.sock")
        self.nbd = KilnNbdControl(self.nbd_sock, self.nbd_ctl, workdir)
        procs.append(self.nbd)
        self.nbd.start()
        self.lv = LibvirtSandbox(workdir)
        procs.append(self.lv)
        self.lv.start()

    def inside(self, *args, check=True, timeout=300):
        return run(["nsenter", f"--target={self.lv.init_pid()}", "--net", "--mount", "--pid",
                    "--", *args], env=self.env, check=check, timeout=timeout)

    def net(self, *args, **kw):
        return self.inside(KILN_NET, *args, **kw)

    def spawn_args(self, *args):
        socket = ["--nbd-socket", self.nbd_sock] if SHARED_SOCKET else []
        return [KILN_SPAWN, "--libvirt-uri", self.lv.uri, "--nbd-control", self.nbd_ctl,
                *socket, "--virt-type", "qemu", *args]

    def socket_of(self, inst):
        """The socket the instance's domain reaches its disk through."""
        return re.search(r"<host transport='unix' socket='([^']*)'/>",
                         inst["domain_xml"]).group(1)

    def spawn(self, *args, **kw):
        return self.inside(*self.spawn_args(*args), **kw)

    def spawn_json(self, *args):
        return json.loads(self.spawn("--format", "json", *args).stdout)

    def network(self):
        self.net("net-create", "demo-net", "--provider:network_type", "vxlan",
                 "--provider:segmentation_id", "1")
        self.net("subnet-create", "--name", "demo-subnet", "demo-net", "192.168.0.0/24",
                 "--gateway", "192.168.0.1", "--dns-nameserver", "192.168.0.1")
        self.net("router-create", "demo-router")
        self.net("router-interface-add", "demo-router", "demo-subnet")

    def console(self, name):
        return self.spawn("console-log", name, check=False).stdout.replace("\r", "")

    def wait_console(self, name, text, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.console(name)
            if text in out or "KILN-TEST: end failed" in out:
                return out
            time.sleep(0.3)
        raise AssertionError(f"{name}: no '{text}' on the console:\n{self.console(name)[-4000:]}")

    def assert_nothing_left(self):
        assert self.spawn_json("list") == []
        ports = json.loads(self.net("--format", "json", "port-list").stdout)
        assert [p for p in ports if p.get("device_owner", "").startswith("compute:")] == [], ports
        assert self.nbd.exports() == []
        assert self.lv.virsh("list", "--all", "--name").stdout.strip() == ""
        inst = os.path.join(self.env["KILN_STATE_DIR"], "spawn", "instances")
        assert not os.path.isdir(inst) or os.listdir(inst) == []
        stats = self.spawn_json("hypervisor-stats")
        used = {k: v for k, v in stats.items() if k.endswith("_used") or k == "running_vms"}
        assert len(used) == 4 and not any(used.values()), stats
