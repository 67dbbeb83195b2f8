"""The test guest boots through libvirt's QEMU driver (a libvirtd of the test's own, in
namespaces of its own) with its root disk a `<disk type='network'>` on a kiln-nbd export of a
qcow2 overlay: it writes a file and powers off; the overlay checks clean and holds the file,
the base is unchanged. With a kiln-net port (a tap plumbed by kiln-net in the sandbox's
network namespace) the guest gets the port's IP from kiln-net's dnsmasq and pings its router.
This is the domain shape kiln-spawn writes."""

import hashlib
import json
import os
import secrets
import time
from xml.sax.saxutils import escape

from kilntest.guest import (KILN_IMG, KILN_NET, KilnNbd, b64, debugfs_cat, fsck_clean, image_to_raw,
                            make_base_and_overlay, qemu_img_check, run, sha256_file)
from kiln_sandbox import LibvirtSandbox


def domain_xml(name, guest, sock, export, console, cmdline, nic=""):
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(guest['vmlinuz'])}</kernel>
    <initrd>{escape(guest['initrd.img'])}</initrd>
    <cmdline>{escape(cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      <source protocol='nbd' name='{export}'>
        <host transport='unix' socket='{escape(sock)}'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'>
      <source path='{escape(console)}'/>
      <target port='0'/>
    </serial>
    {nic}
    <memballoon model='none'/>
  </devices>
</domain>
"""


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").replace("\r", "")
    except OSError:
        return ""


def test_guest_boots_through_libvirt_from_kiln_nbd(guest, workdir, procs):
    base, overlay = make_base_and_overlay(guest["rootfs.raw"], workdir)
    base_sha = sha256_file(base)
    sock = os.path.join(workdir, "nbd.sock")
    nbd = KilnNbd(overlay, sock, workdir)
    procs.append(nbd)
    nbd.start()
    lv = LibvirtSandbox(workdir)
    procs.append(lv)
    lv.start()

    content = f"booted by libvirt {secrets.token_hex(16)}\n"
    path = "/kiln/libvirt-marker"
    console = os.path.join(workdir, "console.log")
    cmdline = ("console=ttyS0 quiet panic=-1 kiln.test=info,write,cat "
               f"kiln.path={path} kiln.data64={b64(content)}")
    xml = os.path.join(workdir, "domain.xml")
    with open(xml, "w") as f:
        f.write(domain_xml("kiln-e2e-libvirt", guest, sock, "root", console, cmdline))
    started = time.monotonic()
    lv.virsh("create", xml)  # transient: it disappears when the guest powers off
    running_after = time.monotonic() - started

    deadline = time.monotonic() + 120
    while lv.virsh("domstate", "kiln-e2e-libvirt", check=False).returncode == 0:
        assert time.monotonic() < deadline, f"guest still running\n{read(console)[-4000:]}"
        time.sleep(0.2)
    text = read(console)
    print(f"virsh create returned after {running_after * 1000:.0f} ms")
    assert "KILN-TEST: end ok" in text, text[-4000:] + lv.diagnostics()
    assert "KILN-TEST: root mounted /dev/vda" in text
    digest = hashlib.sha256(content.encode()).hexdigest()
    assert f"KILN-TEST: wrote {path} {digest}" in text
    assert f"KILN-TEST: BEGIN cat {path}\n{content}KILN-TEST: END cat {path}" in text

    lv.stop()
    assert nbd.stop() == 0, nbd.read_log()
    rc, out = qemu_img_check(overlay)
    assert rc == 0 and "No errors were found" in out, out
    run([KILN_IMG, "check", overlay])
    raw = image_to_raw(overlay, workdir)
    fsck_clean(raw)
    assert debugfs_cat(raw, path) == content
    assert sha256_file(base) == base_sha, "the base image changed"


def test_guest_on_a_kiln_net_port_gets_its_ip(guest, workdir, procs):
    base, overlay = make_base_and_overlay(guest["rootfs.raw"], workdir)
    sock = os.path.join(workdir, "nbd.sock")
    nbd = KilnNbd(overlay, sock, workdir)
    procs.append(nbd)
    nbd.start()
    lv = LibvirtSandbox(workdir)
    procs.append(lv)
    lv.start()

    # kiln-net runs in the sandbox's network, mount and PID namespaces: its bridge, taps,
    # namespaces and dnsmasq live and die with the sandbox.
    env = {**os.environ, "KILN_STATE_DIR": os.path.join(workdir, "net-state"),
           "KILN_RUN_DIR": os.path.join(workdir, "net-run")}
    for d in (env["KILN_STATE_DIR"], env["KILN_RUN_DIR"]):
        os.makedirs(d)
    os.chmod(workdir, 0o755)  # dnsmasq rereads its host file as nobody

    def net(*args):
        p = run(["nsenter", f"--target={lv.init_pid()}", "--net", "--mount", "--pid", "--",
                 KILN_NET, "--tenant-id", "demo", *args], env=env)
        return p.stdout

    net("net-create", "demo-net", "--provider:network_type", "vxlan",
        "--provider:segmentation_id", "1")
    net("subnet-create", "--name", "demo-subnet", "demo-net", "192.168.0.0/24",
        "--gateway", "192.168.0.1")
    net("router-create", "demo-router")
    net("router-interface-add", "demo-router", "demo-subnet")
    port = json.loads(net("--format", "json", "port-create", "demo-net", "--name", "vm1"))
    ip = port["fixed_ips"][0]["ip_address"]
    tap = "tap" + port["id"][:11]
    nic = (f"<interface type='ethernet'><mac address='{port['mac_address']}'/>"
           f"<target dev='{tap}' managed='no'/><model type='virtio'/></interface>")

    console = os.path.join(workdir, "console.log")
    xml = os.path.join(workdir, "domain.xml")
    with open(xml, "w") as f:
        f.write(domain_xml("kiln-e2e-net", guest, sock, "root", console,
                           "console=ttyS0 quiet panic=-1 kiln.test=dhcp", nic))
    lv.virsh("create", xml)
    assert tap in lv.virsh("domiflist", "kiln-e2e-net").stdout
    deadline = time.monotonic() + 120
    while lv.virsh("domstate", "kiln-e2e-net", check=False).returncode == 0:
        assert time.monotonic() < deadline, f"guest still running\n{read(console)[-4000:]}"
        time.sleep(0.2)
    text = read(console)
    assert f"KILN-TEST: dhcp ip={ip} mask=255.255.255.0 router=192.168.0.1" in text, \
        text[-4000:]
    assert "KILN-TEST: ping 192.168.0.1 ok" in text, text[-4000:]
    assert "KILN-TEST: end ok" in text, text[-4000:]
