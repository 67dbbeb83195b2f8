"""kiln-spawn end to end, with the real components: a libvirtd of the test's own (QEMU driver,
TCG) in namespaces of its own, kiln-nbd serving the overlays, kiln-net plumbing the network in
the sandbox's network namespace. The test guest boots from its NBD-backed overlay, reads its
config drive (hostname, SSH key, user data), shows a file injected into its disk, leases its
port's IP by DHCP and pings its router; `delete` leaves nothing behind and the base image is
unchanged. Ten boots in parallel all succeed. Each guest reaches its disk through its own
kiln-nbd socket (KILN_E2E_NBD_SHARED_SOCKET=1: through kiln-nbd's one shared socket, for a
kiln-nbd without per-export sockets)."""

import concurrent.futures
import json
import os
import re
import stat
import statistics
import subprocess
import time

import pytest

from kilntest.guest import KILN_NET, KilnNbdControl, run, sha256_file
from kiln_sandbox import LibvirtSandbox

KILN_SPAWN = os.environ.get("KILN_SPAWN", "kiln-spawn")
SHARED_SOCKET = os.environ.get("KILN_E2E_NBD_SHARED_SOCKET") == "1"


class Cloud:
    """The sandbox, kiln-nbd with a control socket, and helpers that run kiln-net and
    kiln-spawn inside the sandbox's network, mount and PID namespaces."""

    def __init__(self, workdir, guest, procs):
        self.workdir, self.guest = workdir, guest
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

    def image(self):
        path = os.path.join(self.workdir, "guest.qcow2")
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", self.guest["rootfs.raw"], path])
        self.spawn("image-create", "guest", path)
        return path

    def boot_args(self, name, cmdline, *extra):
        return ["boot", name, "--image", "guest", "--flavor", "m1.tiny", "--net", "demo-net",
                "--kernel", self.guest["vmlinuz"], "--initrd", self.guest["initrd.img"],
                "--cmdline", "console=ttyS0 quiet panic=-1 " + cmdline, *extra]

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


@pytest.fixture
def cloud(guest, workdir, procs):
    c = Cloud(workdir, guest, procs)
    c.network()
    return c


def test_boot_reads_config_drive_injects_and_gets_its_ip(cloud, workdir):
    image = cloud.image()
    image_sha = sha256_file(image)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnE2eTestKeyOnly kiln@e2e"
    key_file = os.path.join(workdir, "key.pub")
    with open(key_file, "w") as f:
        f.write(key + "\n")
    user_data = "#!/bin/sh\necho user data seen by the guest\n"
    ud_file = os.path.join(workdir, "user-data")
    with open(ud_file, "w") as f:
        f.write(user_data)
    injected = "a file injected by kiln-spawn\n"
    src = os.path.join(workdir, "motd")
    with open(src, "w") as f:
        f.write(injected)

    started = time.monotonic()
    cloud.spawn(*cloud.boot_args(
        "Web_1", "kiln.test=configdrive,cat,dhcp kiln.path=/etc/kiln-motd",
        "--key-file", key_file, "--user-data", ud_file, "--file", f"/etc/kiln-motd={src}",
        "--inject"))
    boot_seconds = time.monotonic() - started
    inst = cloud.spawn_json("show", "Web_1")
    assert inst["status"] == "active", inst
    print(f"boot to active: {boot_seconds * 1000:.0f} ms")
    sock = cloud.socket_of(inst)
    if SHARED_SOCKET:
        assert sock == cloud.nbd_sock
    else:
        assert sock == os.path.join(cloud.env["KILN_RUN_DIR"], "nbd", inst["id"] + ".sock")
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == 0  # the sandbox runs QEMU as root

    out = cloud.wait_console("Web_1", "KILN-TEST: end ok")
    assert "KILN-TEST: end ok" in out, out[-4000:]
    meta = json.loads(re.search(r"BEGIN configdrive meta_data.json\n(.*?)\nKILN-TEST: END", out,
                                re.S).group(1))
    assert meta["hostname"] == "web-1" and meta["name"] == "Web_1", meta
    assert meta["uuid"] == inst["id"]
    assert key in meta["public_keys"].values(), meta
    assert f"BEGIN configdrive user_data\n{user_data}" in out
    assert f"KILN-TEST: BEGIN cat /etc/kiln-motd\n{injected}KILN-TEST: END cat" in out
    assert f"KILN-TEST: dhcp ip={inst['ip_address']} mask=255.255.255.0 router=192.168.0.1" \
        in out, out[-2000:]
    assert "KILN-TEST: ping 192.168.0.1 ok" in out

    bases = os.path.join(cloud.env["KILN_STATE_DIR"], "spawn", "_base")
    base_files = [os.path.join(bases, n) for n in os.listdir(bases) if not n.endswith(".lock")]
    assert len(base_files) == 1
    cloud.spawn("delete", "Web_1")
    cloud.assert_nothing_left()
    assert not os.path.exists(sock) or SHARED_SOCKET
    assert sha256_file(base_files[0]) == image_sha, "the cached base changed"


def test_ten_boots_in_parallel(cloud):
    cloud.image()
    names = [f"vm{i}" for i in range(10)]

    def boot(name):
        t = time.monotonic()
        p = subprocess.run(["nsenter", f"--target={cloud.lv.init_pid()}", "--net", "--mount",
                            "--pid", "--", *cloud.spawn_args(
                                "--format", "json", *cloud.boot_args(name, "kiln.end=hang"))],
                           env=cloud.env, capture_output=True, text=True, timeout=300)
        return name, p, time.monotonic() - t

    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(boot, names))
    for name, p, _ in results:
        assert p.returncode == 0, f"{name}: {p.stderr}"
    times = sorted(t for _, _, t in results)
    print(f"ten parallel boots to active: p50 {statistics.median(times) * 1000:.0f} ms, "
          f"max {times[-1] * 1000:.0f} ms")
    listed = cloud.spawn_json("list")
    assert sorted(i["name"] for i in listed) == names
    assert all(i["status"] == "active" for i in listed), listed
    ips = [json.loads(p.stdout)["ip_address"] for _, p, _ in results]
    macs = [json.loads(p.stdout)["mac_address"] for _, p, _ in results]
    assert len(set(ips)) == 10 and len(set(macs)) == 10, (ips, macs)
    running = cloud.lv.virsh("list", "--name").stdout.split()
    assert len(running) == 10, running
    sockets = {cloud.socket_of(cloud.spawn_json("show", n)) for n in names}
    assert len(sockets) == (1 if SHARED_SOCKET else 10), sockets
    cloud.spawn("delete", *names)
    cloud.assert_nothing_left()
