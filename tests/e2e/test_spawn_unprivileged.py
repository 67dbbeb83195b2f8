"""End to end with QEMU as an unprivileged user: a libvirtd of the test's own (the sandbox of
scripts/lib/kiln_sandbox.py, QEMU driver, TCG) running QEMU as libvirt-qemu, kiln-nbd,
netplumb with its plumbing (bridge, tap, dnsmasq, router namespace) inside the sandbox's
network namespace, and the test guest (docs/test-guest.md) booted by kiln-spawn from its
NBD-backed overlay, reached through the instance's own socket. What QEMU opens is its user's;
the guest reads its config drive, gets its port's address by DHCP and pings its gateway; stop
and start work; after delete nothing is left and the base is unchanged.

KILN_E2E_NBD_SHARED_SOCKET=1 boots through kiln-nbd's one shared socket instead (for a kiln-nbd
without per-export sockets)."""

import base64
import json
import os
import pathlib
import re
import stat
import time

import pytest

from kiln_sandbox import LibvirtSandbox
from kilntest import require_tools, sha256
from kilntest.spawn import World, run

SHARED_SOCKET = os.environ.get("KILN_E2E_NBD_SHARED_SOCKET") == "1"


@pytest.fixture
def sandbox(workdir, procs):
    lv = LibvirtSandbox(workdir, qemu_user="libvirt-qemu")
    procs.append(lv)
    return lv.start()


def inside(lv, *args, check=True):
    """A command in the sandbox's network, mount and PID namespaces."""
    return run(["nsenter", f"--target={lv.init_pid()}", "--net", "--mount", "--pid", "--",
                *args], check=check)


def wait_console(w, name, needle, timeout):
    deadline = time.monotonic() + timeout
    while True:
        log = w.spawn("console-log", name).stdout
        if needle in log:
            return log
        assert time.monotonic() < deadline, f"no {needle!r} on the console:\n{log}"
        time.sleep(0.2)


def block(log, name):
    m = re.search(rf"KILN-TEST: BEGIN configdrive {re.escape(name)}\r?\n(.*?)\r?\nKILN-TEST: END",
                  log, re.S)
    assert m, f"no {name} on the console:\n{log}"
    return m.group(1).strip()


def network_state(w, lv):
    """What the plumbing looks like, for a failure message."""
    out = ["", "--- plumbing ---", links(lv), inside(lv, "ip", "-o", "addr", check=False).stdout]
    dhcp = os.path.join(w.run_dir, "dhcp")
    for root, _, files in os.walk(dhcp):
        for f in files:
            try:
                with open(os.path.join(root, f), errors="replace") as fh:
                    out.append(f"--- {os.path.join(root, f)}\n{fh.read()[-4000:]}")
            except OSError:
                pass
    out.append(inside(lv, "nft", "list", "ruleset", check=False).stdout[-6000:])
    return "\n".join(out)


def links(lv):
    return inside(lv, "ip", "-o", "link", "show").stdout


def test_guest_boots_reads_config_drive_and_gets_its_address(guest, sandbox, workdir):
    g, lv = guest, sandbox
    tmp_path = pathlib.Path(workdir)
    # dnsmasq drops root for "nobody", which must reach its host files under KILN_RUN_DIR.
    os.chmod(tmp_path, 0o755)
    # kiln-net and kiln-spawn in the sandbox's namespaces (they plumb its network); kiln-nbd in
    # its mount namespace only, where the user libvirt-qemu that sockets are given to exists.
    enter = ["nsenter", f"--target={lv.init_pid()}"]
    w = World(str(tmp_path), libvirt_uri=lv.uri, plumb=True, shared_socket=SHARED_SOCKET,
              prefix=[*enter, "--net", "--mount", "--pid", "--"],
              nbd_prefix=[*enter, "--mount", "--"])
    virsh = lv.virsh
    quid, qgid = lv.qemu_ids()
    if SHARED_SOCKET:
        # One socket for every guest: it must let QEMU's user connect (the admin's job then).
        os.chmod(w.nbd.sock, 0o666)
    try:
        w.net("router-create", "r1")
        w.net("router-interface-add", "r1", "demo-subnet")
        w.set_baseline()
        # The test guest has no /etc/passwd; root's key needs one (root's home is /root).
        raw = str(tmp_path / "root.raw")
        run(["cp", "--sparse=always", g["rootfs.raw"], raw])
        passwd = tmp_path / "passwd"
        passwd.write_text("root:x:0:0:root:/root:/bin/sh\n")
        run(["debugfs", "-w", "-R", f"write {passwd} /etc/passwd", raw])
        root = str(tmp_path / "root.qcow2")
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, root])
        img = json.loads(w.spawn("image-create", "guest", root, "--format", "json").stdout)

        key = tmp_path / "e2e.pub"
        key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnE2eKey kiln@e2e\n")
        ud = tmp_path / "user-data"
        ud.write_text("#cloud-config\nfinal_message: kiln e2e\n")
        inj = tmp_path / "injected"
        inj.write_text("injected through the config drive\n")
        script = ("for d in /dev/sr0 /dev/sr1; do mkdir -p /media/c && "
                  "mount -t iso9660 -o ro $d /media/c 2>/dev/null && break; done; "
                  "cat /media/c/openstack/content/0000; umount /media/c; "
                  "echo \"disk hostname: $(cat $ROOT/etc/hostname)\"; "
                  "echo \"disk file: $(cat $ROOT/etc/kiln-injected)\"; "
                  "echo \"disk key: $(cat $ROOT/root/.ssh/authorized_keys)\"\n")
        cmdline = ("console=ttyS0 quiet panic=-1 kiln.test=info,configdrive,script,dhcp "
                   "kiln.end=hang kiln.script=" + base64.b64encode(script.encode()).decode())

        t0 = time.monotonic()
        inst = json.loads(w.spawn(
            "--wait-timeout", "60", "boot", "e2e-vm", "--image", "guest", "--flavor", "m1.tiny",
            "--net", "demo-net", "--key-file", key, "--user-data", ud,
            "--file", f"/etc/kiln-injected={inj}", "--kernel", g["vmlinuz"],
            "--initrd", g["initrd.img"], "--cmdline", cmdline, "--format", "json",
            "--inject").stdout)
        boot_s = time.monotonic() - t0
        assert inst["status"] == "active", inst
        print(f"boot -> running: {boot_s:.2f} s")
        base = os.path.join(w.spawn_dir, "_base", img["kiln_digest"])
        base_sum = sha256(base)
        assert base_sum == sha256(root)

        assert w.spawn_json("show", "e2e-vm")["power_state"] == "running"
        dom = inst["domain"]
        assert virsh("domstate", dom).stdout.strip() == "running"
        xml = virsh("dumpxml", dom).stdout
        assert f"name='{inst['export']}'" in xml and "protocol='nbd'" in xml
        assert inst["tap"] in links(lv)
        assert [e["connections"] for e in w.nbd.exports()] == [1]
        # QEMU runs as the user of qemu.conf (libvirt-qemu), not as root. Its pid file and
        # /proc are the sandbox's.
        qemu_pid = int(inside(lv, "cat", f"/run/libvirt/qemu/{dom}.pid").stdout.strip())
        status = inside(lv, "cat", f"/proc/{qemu_pid}/status").stdout
        uids = re.search(r"^Uid:\s+(\d+)", status, re.M).group(1)
        assert int(uids) == quid, (uids, quid)
        # What QEMU opens is its user's, 0600; the overlay stays root's.
        d = inst["instance_dir"]
        owners = {p: (oct(stat.S_IMODE(os.stat(p).st_mode)), os.stat(p).st_uid)
                  for p in (f"{d}/disk.config", f"{d}/console.log", f"{d}/disk")}
        assert owners == {f"{d}/disk.config": ("0o600", quid), f"{d}/console.log": ("0o600", quid),
                          f"{d}/disk": ("0o600", 0)}, owners
        sock = os.path.join(w.run_dir, "nbd", inst["id"] + ".sock")
        if SHARED_SOCKET:
            assert f"socket='{w.nbd.sock}'" in xml, xml
        else:
            # The instance's own socket: QEMU's user's, closed to others, and it reaches this
            # export only.
            assert f"socket='{sock}'" in xml and w.nbd.sock not in xml, xml
            st = os.stat(sock)
            assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
            assert (st.st_uid, st.st_gid) == (quid, qgid)
            require_tools("nbdinfo")
            listed = json.loads(run(["nbdinfo", "--json", "--list",
                                     f"nbd+unix:///?socket={sock}"]).stdout)
            assert [e["export-name"] for e in listed["exports"]] == [inst["export"]], listed

        log = wait_console(w, "e2e-vm", "KILN-TEST: end", 180)
        assert "KILN-TEST: end ok" in log, log + network_state(w, lv)
        assert "KILN-TEST: info KILN_GUEST=1" in log
        md = json.loads(block(log, "meta_data.json"))
        assert md["uuid"] == inst["id"]
        assert md["hostname"] == "e2e-vm"
        assert md["public_keys"] == {"e2e": key.read_text().strip()}
        assert md["files"] == [{"path": "/etc/kiln-injected", "content_path": "/content/0000"}]
        assert block(log, "user_data") == ud.read_text().strip()
        nd = json.loads(block(log, "network_data.json"))
        assert nd["links"][0]["ethernet_mac_address"] == inst["mac_address"]
        assert nd["networks"][0]["ip_address"] == inst["ip_address"]
        assert "injected through the config drive" in log
        # Written into the guest's root file system before boot, read by the guest.
        assert "disk hostname: e2e-vm" in log, log
        assert "disk file: injected through the config drive" in log, log
        assert f"disk key: {key.read_text().strip()}" in log, log
        assert f"KILN-TEST: dhcp ip={inst['ip_address']} mask=255.255.255.0 " \
               f"router=192.168.0.1" in log, log
        assert "KILN-TEST: ping 192.168.0.1 ok" in log

        # The guest ignores ACPI (its init hangs): stop powers it off after the timeout.
        w.spawn("--wait-timeout", "3", "stop", "e2e-vm")
        assert virsh("domstate", dom).stdout.strip() == "shut off"
        show = w.spawn_json("show", "e2e-vm")
        assert show["status"] == "stopped" and show["power_state"] == "shut off", show
        w.spawn("start", "e2e-vm")
        assert virsh("domstate", dom).stdout.strip() == "running"

        w.spawn("delete", "e2e-vm")
        assert virsh("list", "--all", "--name").stdout.strip() == ""
        assert not os.path.exists(sock)
        assert inst["tap"] not in links(lv)
        w.assert_nothing_left()
        assert sha256(base) == base_sum
        assert sha256(os.path.join(w.spawn_dir, "images", img["id"])) == base_sum
    finally:
        # netplumb's namespaces are mounted under KILN_RUN_DIR/netns: take them down first.
        w.net("teardown", check=False)
        w.close()
