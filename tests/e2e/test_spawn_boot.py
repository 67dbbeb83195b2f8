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

from kilntest.cloud import SHARED_SOCKET, Cloud
from kilntest.guest import run, sha256_file


class GuestCloud(Cloud):
    """The cloud with the busybox test guest, booted with its kernel and initrd."""

    def __init__(self, workdir, guest, procs):
        super().__init__(workdir, procs)
        self.guest = guest

    def image(self):
        path = os.path.join(self.workdir, "guest.qcow2")
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", self.guest["rootfs.raw"], path])
        self.spawn("image-create", "guest", path)
        return path

    def boot_args(self, name, cmdline, *extra):
        return ["boot", name, "--image", "guest", "--flavor", "m1.tiny", "--net", "demo-net",
                "--kernel", self.guest["vmlinuz"], "--initrd", self.guest["initrd.img"],
                "--cmdline", "console=ttyS0 quiet panic=-1 " + cmdline, *extra]


@pytest.fixture
def cloud(guest, workdir, procs):
    c = GuestCloud(workdir, guest, procs)
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
