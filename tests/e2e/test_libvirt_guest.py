"""The test guest boots through libvirt's QEMU driver (a libvirtd of the test's own, in
namespaces of its own) with its root disk a `<disk type='network'>` on a kiln-nbd export of a
qcow2 overlay: it writes a file and powers off; the overlay checks clean and holds the file,
the base is unchanged. This is the domain shape kiln-spawn writes."""

import hashlib
import os
import secrets
import time
from xml.sax.saxutils import escape

from kiln_e2e import (KILN_IMG, KilnNbd, b64, debugfs_cat, fsck_clean, image_to_raw,
                      make_base_and_overlay, qemu_img_check, run, sha256_file)
from libvirt_sandbox import LibvirtSandbox


def domain_xml(name, guest, sock, export, console, cmdline):
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
