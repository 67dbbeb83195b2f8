"""A guest whose root disk is reached over NBD on TCP with TLS (kiln-spawn's `disk_transport
tcp-tls`): kiln-nbd listens on 127.0.0.1 of the libvirt sandbox's network namespace with X.509
credentials made by scripts/kiln-tls-setup and checks client certificates; libvirt hands QEMU the
compute host's client certificate (qemu.conf's nbd_tls_x509_cert_dir). The test guest boots from
its overlay over that connection, writes a file and reads it back; the file is in the overlay
afterwards. Clients without the right certificate are refused by kiln-nbd: plain NBD, TLS with
no client certificate, a certificate from another CA, and a valid certificate of another host
(whose DN is not the export's TLS identity)."""

import json
import os
import re
import secrets
import shutil

import pytest

from kilntest.cloud import Cloud
from kilntest.guest import (KilnNbdControl, b64, debugfs_cat, fsck_clean, run, sha256_file,
                            tool)
from kiln_sandbox import LibvirtSandbox

HERE = os.path.dirname(os.path.abspath(__file__))
TLS_SETUP = os.path.join(HERE, "..", "..", "scripts", "kiln-tls-setup")
IDENTITY = "CN=compute-1,O=Kiln"


def tls_setup(*args):
    return run([TLS_SETUP, *args])


class Pki:
    """A CA; kiln-nbd's server credentials for 127.0.0.1; the compute host's client
    credentials; and the wrong ones: CA only, a client of another CA, another host's client."""

    def __init__(self, d):
        self.d = d
        p = lambda n: os.path.join(d, n)  # noqa: E731
        tls_setup("ca", p("ca"))
        tls_setup("server", p("ca"), p("server"), "--cn", "storage-1", "--ip", "127.0.0.1")
        self.server = p("server")
        tls_setup("client", p("ca"), p("client"), "--cn", "compute-1")
        self.client = p("client")
        tls_setup("client", p("ca"), p("other-host"), "--cn", "compute-2")
        self.other_host = p("other-host")
        os.makedirs(p("ca-only"))
        run(["cp", p("ca/ca-cert.pem"), p("ca-only/ca-cert.pem")])
        self.ca_only = p("ca-only")
        # Signed by a CA kiln-nbd does not know, but trusting the real CA: the refusal is
        # kiln-nbd's, not the client's verdict on the server.
        tls_setup("ca", p("rogue-ca"), "--cn", "Rogue CA")
        tls_setup("client", p("rogue-ca"), p("rogue"), "--cn", "compute-1")
        run(["cp", p("ca/ca-cert.pem"), p("rogue/ca-cert.pem")])
        self.rogue = p("rogue")


class TlsCloud(Cloud):
    """Cloud's layout (tests/kilntest/cloud.py), with the sandbox started first (its qemu.conf
    names the client credentials) and kiln-nbd in the sandbox's network namespace, listening on
    its 127.0.0.1 with TLS required and client certificates checked."""

    def __init__(self, workdir, procs, guest, pki):
        self.workdir, self.guest, self.pki = workdir, guest, pki
        os.chmod(workdir, 0o755)  # dnsmasq rereads its host file as nobody
        self.env = {**os.environ, "KILN_STATE_DIR": os.path.join(workdir, "state"),
                    "KILN_RUN_DIR": os.path.join(workdir, "run")}
        for d in (self.env["KILN_STATE_DIR"], self.env["KILN_RUN_DIR"]):
            os.makedirs(d)
        self.lv = LibvirtSandbox(workdir,
                                 qemu_conf_extra=f'nbd_tls_x509_cert_dir = "{pki.client}"\n')
        procs.append(self.lv)
        self.lv.start()
        self.netns = self.lv.netns()
        # The namespace is the test's own: a port free there is free for the whole test.
        self.port = int(self.in_netns("python3", "-c", "import socket; s = socket.socket(); "
                                      "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
                        .stdout)
        self.nbd_sock = os.path.join(workdir, "nbd.sock")
        self.nbd_ctl = os.path.join(workdir, "nbd-control.sock")
        self.nbd = KilnNbdControl(
            self.nbd_sock, self.nbd_ctl, workdir,
            extra_args=["-p", str(self.port), "-b", "127.0.0.1", "--tls-creds", pki.server,
                        "--tls-verify-peer"],
            prefix=["nsenter", f"--net={self.netns}"])
        procs.append(self.nbd)
        self.nbd.start()

    def in_netns(self, *args, check=True):
        return run(["nsenter", f"--net={self.netns}", "--", *args], check=check, timeout=60)

    def nbdinfo(self, export, certs=None, *extra):
        scheme = "nbds" if certs else "nbd"
        query = f"?tls-certificates={certs}" if certs else ""
        return self.in_netns("nbdinfo", *extra, f"{scheme}://127.0.0.1:{self.port}/{export}{query}",
                             check=False)

    def boot_args(self, name, cmdline):
        return ["boot", name, "--image", "guest", "--flavor", "m1.tiny", "--net", "demo-net",
                "--kernel", self.guest["vmlinuz"], "--initrd", self.guest["initrd.img"],
                "--cmdline", "console=ttyS0 quiet panic=-1 " + cmdline]


def qemu_cmdline(uuid):
    """The command line of the QEMU running the domain (its process is visible from here)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if args and "qemu-system" in args[0] and any(uuid in a for a in args):
            return args
    raise AssertionError(f"no QEMU process for {uuid}")


@pytest.fixture
def pki(workdir):
    missing = [t for t in ("certtool", "nbdinfo", "nsenter") if shutil.which(t) is None]
    assert not missing, f"required tools missing: {', '.join(missing)}"
    return Pki(os.path.join(workdir, "pki"))


def test_guest_disk_over_nbd_tls_and_clients_without_the_certificate_refused(
        guest, workdir, procs, pki):
    cloud = TlsCloud(workdir, procs, guest, pki)
    cloud.network()
    image = os.path.join(workdir, "guest.qcow2")
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", guest["rootfs.raw"], image])
    cloud.spawn("image-create", "guest", image)

    # Plain TCP is refused as a guest disk transport; then TCP with TLS is set up.
    p = cloud.spawn("config-set", "disk_transport", "tcp", check=False)
    assert p.returncode != 0 and "no authentication" in p.stderr, p.stderr
    cloud.spawn("config-set", "disk_transport", "tcp-tls")
    cloud.spawn("config-set", "nbd_tcp_address", f"127.0.0.1:{cloud.port}")
    cloud.spawn("config-set", "nbd_tls_x509_cert_dir", pki.client)
    shown = cloud.spawn_json("config-show")
    assert shown["disk_transport"] == "tcp-tls", shown
    assert shown["nbd_tcp_address"] == f"127.0.0.1:{cloud.port}", shown

    content = f"written over NBD+TLS {secrets.token_hex(16)}\n"
    path = "/kiln/tls-marker"
    cloud.spawn(*cloud.boot_args(
        "tls-vm", f"kiln.test=info,write,cat kiln.path={path} kiln.data64={b64(content)} "
                  "kiln.end=hang"))
    inst = cloud.spawn_json("show", "tls-vm")
    assert inst["status"] == "active", inst
    export = inst["export"]
    assert export == f"kiln-{inst['id']}", inst

    # The domain's disk: TCP to kiln-nbd with TLS, no Unix socket (what kiln-spawn wrote and
    # what libvirt runs).
    for xml in (inst["domain_xml"], cloud.lv.virsh("dumpxml", f"kiln-{inst['id']}").stdout):
        src = re.search(r"<source protocol='nbd'[^>]*>.*?</source>", xml, re.S).group(0)
        assert "tls='yes'" in src, src
        assert f"<host name='127.0.0.1' port='{cloud.port}'/>" in src, src
        assert "socket=" not in src, src
    # What libvirt made of it: a tls-creds-x509 client object on qemu.conf's directory.
    objects = [a for a in qemu_cmdline(inst["id"]) if a.startswith("{") and "tls-creds-x509" in a]
    assert len(objects) == 1, qemu_cmdline(inst["id"])
    creds = json.loads(objects[0])
    assert creds["dir"] == pki.client and creds["endpoint"] == "client", creds
    assert creds.get("verify-peer", True) is True, creds
    exports = {e["name"]: e for e in cloud.nbd.exports()}
    assert exports[export]["tls-identity"] == IDENTITY, exports
    record = os.path.join(cloud.env["KILN_STATE_DIR"], "spawn", "instances", inst["id"],
                          "disk.transport.json")
    with open(record) as f:
        assert json.load(f)["tls_identity"] == IDENTITY
    assert not os.path.exists(os.path.join(cloud.env["KILN_RUN_DIR"], "nbd",
                                           inst["id"] + ".sock"))

    out = cloud.wait_console("tls-vm", "KILN-TEST: end ")
    assert "KILN-TEST: end ok" in out, out[-4000:]
    assert "KILN-TEST: root mounted /dev/vda" in out
    assert f"KILN-TEST: BEGIN cat {path}\n{content}KILN-TEST: END cat {path}" in out, out[-3000:]
    # QEMU came in with TLS, as the compute host's certificate.
    log = cloud.nbd.read_log()
    assert re.search(r"TLS on \(.*client certificate '" + re.escape(IDENTITY) + "'", log), log

    # The file is in the overlay (the guest synced and unmounted; kiln-nbd still serves it, so
    # the image is read without taking its lock).
    disk = os.path.join(cloud.env["KILN_STATE_DIR"], "spawn", "instances", inst["id"], "disk")
    raw = os.path.join(workdir, "readback.raw")
    run([tool("qemu-img"), "convert", "-U", "-f", "qcow2", "-O", "raw", disk, raw])
    assert debugfs_cat(raw, path) == content
    fsck_clean(raw)
    os.unlink(raw)

    # Clients kiln-nbd must refuse.
    refusals_before = log.count("TLS handshake failed")
    plain = cloud.nbdinfo(export)
    assert plain.returncode != 0, plain.stdout
    no_cert = cloud.nbdinfo(export, pki.ca_only)
    assert no_cert.returncode != 0, no_cert.stdout
    rogue = cloud.nbdinfo(export, pki.rogue)
    assert rogue.returncode != 0, rogue.stdout
    # Both fail in kiln-nbd's TLS handshake (GnuTLS does not even offer the rogue certificate:
    # kiln-nbd's request names the CA it accepts), and no export is served to either.
    log = cloud.nbd.read_log()
    assert log.count("TLS handshake failed") >= refusals_before + 2, log[-3000:]
    assert log.count("serving export") == 1, log[-3000:]  # QEMU's connection only
    # Another host's valid certificate: TLS succeeds, but the export does not exist for it.
    other = cloud.nbdinfo(export, pki.other_host)
    assert other.returncode != 0, other.stdout
    listed = cloud.nbdinfo("", pki.other_host, "--list", "--json")
    assert export not in listed.stdout, listed.stdout
    # The compute host's certificate opens it: the flavor's 1 GiB disk.
    good = cloud.nbdinfo(export, pki.client, "--size")
    assert good.returncode == 0, good.stderr
    assert int(good.stdout) == 1 << 30

    # stop and start: start adds the export again (here kiln-nbd lost it) for the same identity,
    # from the instance's record, and the guest is back on its disk over TLS.
    cloud.spawn("--wait-timeout", "2", "stop", "tls-vm")  # the test guest ignores ACPI
    assert cloud.nbd.request({"cmd": "remove-export", "name": export})["ok"]
    cloud.spawn("start", "tls-vm")
    assert cloud.spawn_json("show", "tls-vm")["status"] == "active"
    exports = {e["name"]: e for e in cloud.nbd.exports()}
    assert exports[export]["tls-identity"] == IDENTITY, exports

    base = os.path.join(cloud.env["KILN_STATE_DIR"], "spawn", "_base")
    bases = [os.path.join(base, n) for n in os.listdir(base) if not n.endswith(".lock")]
    image_sha = sha256_file(image)
    cloud.spawn("delete", "tls-vm")
    cloud.assert_nothing_left()
    assert not os.path.exists(record)
    assert [sha256_file(b) for b in bases] == [image_sha], "the cached base changed"
