"""Three hosts on one machine (issue 15), each in its own network, mount and PID namespaces, on a
veth "fabric" bridge (10.99.0.0/24) with the PostgreSQL server the test starts there (TCP,
10.99.0.254) as the only shared state:

- storage-1 (10.99.0.10): kiln-nbd on TCP with TLS and client certificates checked, and its
  kiln-spawn agent, which makes, injects and exports every guest's disk (setting storage_host);
- compute-a (10.99.0.1) and compute-b (10.99.0.2): a libvirtd of their own
  (scripts/lib/kiln_sandbox.py), their own client certificate in their qemu.conf, kiln-net with
  their own vxlan_local_ip, and a kiln-spawn agent each.

Four test guests booted from compute-a: the scheduler spreads them over the two compute hosts;
each one's root disk is an export of storage-1 opened with its host's certificate (one of them
LUKS-encrypted there, with its key on storage-1 only); guests on one host ping guests on the
other over the tenant VXLAN network (DHCP from compute-a's dnsmasq). compute-a reads the
console log of a guest on compute-b, stops it and starts it again (through compute-b's agent;
the export, lost on storage-1, comes back). A compute host's agent killed mid-build leaves a
record its next start rolls back, storage host included. Deleting everything leaves nothing on
any host or in the database."""

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import time

import pytest

from kilntest.guest import KILN_NET, control_request, debugfs_cat, run, tool
from kiln_sandbox import LibvirtSandbox

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.join(HERE, "..", "..")
TLS_SETUP = os.path.join(TOP, "scripts", "kiln-tls-setup")
PG_SERVER = os.path.join(TOP, "tests", "common", "pg_server.sh")
KILN_SPAWN = os.environ.get("KILN_SPAWN", "kiln-spawn")
KILN_NBD = os.environ.get("KILN_NBD", "kiln-nbd")

DB_ADDR = "10.99.0.254"
DB_URL = f"postgresql://kiln@{DB_ADDR}:5432/postgres?connect_timeout=10"
STORAGE_ADDR = "10.99.0.10"
NBD_PORT = 10809
COMPUTE = {"compute-a": "10.99.0.1", "compute-b": "10.99.0.2"}
SANITIZER_NEEDLES = ("AddressSanitizer", "LeakSanitizer", "runtime error:")


class Namespaces:
    """New network, mount and PID namespaces whose PID 1 only waits (a host without libvirtd,
    or the fabric). Stopping kills that PID 1, which ends everything in the PID namespace."""

    SCRIPT = ("mount --make-rprivate / && mount -t tmpfs -o mode=0755 tmpfs /run && "
              "ip link set lo up && exec sleep infinity")

    def __init__(self, d):
        os.makedirs(d, exist_ok=True)
        self.out = open(os.path.join(d, "namespaces.out"), "ab")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--kill-child",
             "sh", "-c", self.SCRIPT], stdin=subprocess.DEVNULL, stdout=self.out,
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None, f"unshare exited with {self.proc.returncode}"
            try:
                pid = self.init_pid()
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().startswith(b"sleep"):
                        return
            except (OSError, IndexError):
                pass
            assert time.monotonic() < deadline, "the namespaces did not start"
            time.sleep(0.02)

    def init_pid(self):
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return int(f.read().split()[0])

    def cleanup(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.init_pid(), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.out.close()


class Inside:
    """A long-running process started inside a host's namespaces (nsenter forks into the PID
    namespace: `pid` is the process itself, the child of nsenter). Its stderr goes to a file;
    stdout is kept for its report."""

    def __init__(self, host, name, args, env=None):
        self.host, self.name = host, name
        self.log_path = os.path.join(host.dir, f"{name}.log")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(host.nsenter(*args), env=env or host.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.log)
        deadline = time.monotonic() + 10
        while True:
            try:
                with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
                    self.pid = int(f.read().split()[0])
                return
            except (OSError, IndexError):
                assert self.proc.poll() is None, f"{name}: nsenter exited"
                assert time.monotonic() < deadline, f"{name} did not start"
                time.sleep(0.01)

    def read_log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_for_log(self, needle, timeout=120):
        deadline = time.monotonic() + timeout
        while needle not in self.read_log():
            assert self.proc.poll() is None, f"{self.name} ended:\n{self.read_log()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.name}: no {needle!r} in its log"
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout=120):
        """Signals the process; returns (its exit status as nsenter saw it, stdout)."""
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        out, _ = self.proc.communicate(timeout=timeout)
        self.log.close()
        return self.proc.returncode, out.decode(errors="replace")

    def cleanup(self):
        if self.proc.poll() is None:
            self.stop(signal.SIGKILL, timeout=30)
        elif not self.log.closed:
            self.log.close()


class Host:
    """One host: its namespaces (with a libvirtd for a compute host), its own state and run
    directories, its name in KILN_HOST, and the shared database in KILN_DB_URL."""

    def __init__(self, name, workdir, procs, qemu_conf_extra=None):
        self.name = name
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        self.state = os.path.join(self.dir, "state")
        self.env = {**os.environ, "KILN_HOST": name, "KILN_STATE_DIR": self.state,
                    "KILN_RUN_DIR": os.path.join(self.dir, "run"), "KILN_DB_URL": DB_URL}
        if qemu_conf_extra is None:
            self.lv = None
            self.ns = Namespaces(self.dir)
            procs.append(self.ns)
        else:
            self.lv = LibvirtSandbox(self.dir, qemu_conf_extra=qemu_conf_extra)
            procs.append(self.lv)
            self.lv.start()
            self.ns = self.lv

    def nsenter(self, *args):
        return ["nsenter", f"--target={self.ns.init_pid()}", "--net", "--mount", "--pid", "--",
                *args]

    def run(self, *args, check=True, timeout=300, env=None):
        return run(self.nsenter(*args), env=env or self.env, check=check, timeout=timeout)

    def spawn_args(self, *args):
        uri = ["--libvirt-uri", self.lv.uri, "--virt-type", "qemu"] if self.lv else []
        return [KILN_SPAWN, *uri, *args]

    def spawn(self, *args, **kw):
        return self.run(*self.spawn_args(*args), **kw)

    def spawn_json(self, *args):
        return json.loads(self.spawn("--format", "json", *args).stdout)

    def net(self, *args, **kw):
        return self.run(KILN_NET, *args, **kw)

    def net_json(self, *args):
        return json.loads(self.net("--format", "json", *args).stdout)

    def agent(self, env=None):
        return Inside(self, "agent", self.spawn_args("agent", "--poll-interval", "50", "--format",
                                                     "json"), env=env)

    def instances(self):
        d = os.path.join(self.state, "spawn", "instances")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []


class KilnNbd:
    """storage-1's kiln-nbd: TCP on its fabric address with TLS required and client
    certificates checked, and its control socket where kiln-spawn looks by default."""

    def __init__(self, host, creds):
        os.makedirs(host.env["KILN_RUN_DIR"], exist_ok=True)
        self.ctl = os.path.join(host.env["KILN_RUN_DIR"], "nbd-control.sock")
        self.inside = Inside(host, "kiln-nbd", [
            KILN_NBD, "-k", os.path.join(host.dir, "nbd.sock"), "--control", self.ctl, "-p",
            str(NBD_PORT), "-b", STORAGE_ADDR, "--tls-creds", creds, "--tls-verify-peer"])
        deadline = time.monotonic() + 20
        while not os.path.exists(self.ctl):
            assert self.inside.proc.poll() is None, self.inside.read_log()
            assert time.monotonic() < deadline, "kiln-nbd did not start"
            time.sleep(0.02)

    def request(self, req):
        return control_request(self.ctl, req)

    def exports(self):
        return {e["name"]: e for e in self.request({"cmd": "list-exports"})["exports"]}

    def cleanup(self):
        self.inside.cleanup()


class Postgres:
    """The shared database: a PostgreSQL server (tests/common/pg_server.sh) in the fabric's
    network namespace, listening on DB_ADDR and trusting the fabric's hosts."""

    def __init__(self, d, fabric):
        self.d = d
        run(["nsenter", f"--net=/proc/{fabric.init_pid()}/ns/net", "--", "bash", PG_SERVER,
             "start", d, DB_ADDR, "10.99.0.0/24"], timeout=120)

    def query(self, sql):
        return run(["psql", "-At", f"postgresql:///postgres?host={self.d}&user=kiln", "-c", sql]
                   ).stdout

    def cleanup(self):
        run(["bash", PG_SERVER, "stop", self.d], check=False, timeout=60)


def fabric_link(fabric, host, addr):
    """A veth from the fabric's bridge into the host's network namespace, with addr/24."""
    leg = "leg-" + host.name[-1]
    in_fabric = ["nsenter", f"--net=/proc/{fabric.init_pid()}/ns/net", "--"]
    run([*in_fabric, "ip", "link", "add", leg, "type", "veth", "peer", "name", "fabric0", "netns",
         str(host.ns.init_pid())])
    run([*in_fabric, "ip", "link", "set", leg, "master", "fabric", "up"])
    host.run("ip", "addr", "add", f"{addr}/24", "dev", "fabric0")
    host.run("ip", "link", "set", "fabric0", "up")


def tls_setup(*args):
    return run([TLS_SETUP, *args])


def guest_cmdline(script):
    """The test guest: DHCP on eth0, then the shell script (base64 on the command line), then
    it stays up (answering pings) until deleted."""
    code = base64.b64encode(script.encode()).decode()
    return ("console=ttyS0 quiet panic=-1 kiln.test=dhcp,script kiln.script=" + code +
            " kiln.end=hang")


def wait_console(host, name, text, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        out = host.spawn("console-log", name, check=False).stdout.replace("\r", "")
        if text in out or "KILN-TEST: end failed" in out:
            return out
        assert time.monotonic() < deadline, f"{name}: no {text!r} on the console:\n{out[-4000:]}"
        time.sleep(0.5)


@pytest.fixture
def cloud(workdir, procs, guest):
    os.chmod(workdir, 0o755)  # dnsmasq rereads its host file as nobody
    pki = os.path.join(workdir, "pki")
    tls_setup("ca", f"{pki}/ca")
    tls_setup("server", f"{pki}/ca", f"{pki}/storage-1", "--cn", "storage-1", "--ip",
              STORAGE_ADDR)
    for name in COMPUTE:
        tls_setup("client", f"{pki}/ca", f"{pki}/{name}", "--cn", name)

    fabric = Namespaces(os.path.join(workdir, "fabric"))
    procs.append(fabric)
    in_fabric = ["nsenter", f"--net=/proc/{fabric.init_pid()}/ns/net", "--"]
    run([*in_fabric, "ip", "link", "add", "fabric", "type", "bridge"])
    run([*in_fabric, "ip", "addr", "add", f"{DB_ADDR}/24", "dev", "fabric"])
    run([*in_fabric, "ip", "link", "set", "fabric", "up"])
    pg = Postgres(os.path.join(workdir, "pg"), fabric)
    procs.append(pg)

    storage = Host("storage-1", workdir, procs)
    fabric_link(fabric, storage, STORAGE_ADDR)
    hosts = {}
    for name, addr in COMPUTE.items():
        h = Host(name, workdir, procs,
                 qemu_conf_extra=f'nbd_tls_x509_cert_dir = "{pki}/{name}"\n')
        fabric_link(fabric, h, addr)
        hosts[name] = h
    a, b = hosts["compute-a"], hosts["compute-b"]

    # The shared database: the storage host is registered but takes no guests; each compute
    # host registers itself (same capacity: the spread weigher alternates) and says how it
    # reaches disks; the storage host says where its kiln-nbd listens.
    storage.spawn("host-register", "--disable", "--reason", "storage only")
    storage.spawn("config-set", "nbd_tcp_address", f"{STORAGE_ADDR}:{NBD_PORT}")
    for h in hosts.values():
        h.spawn("host-register", "--vcpus", "4", "--memory-mb", "4096", "--disk-gb", "20")
        h.spawn("config-set", "disk_transport", "tcp-tls")
        h.spawn("config-set", "nbd_tls_x509_cert_dir", f"{pki}/{h.name}")
        h.net("--no-plumb", "config-set", "vxlan_local_ip", COMPUTE[h.name])
    a.spawn("config-set", "storage_host", "storage-1")

    image = os.path.join(workdir, "guest.qcow2")
    run([tool("qemu-img"), "convert", "-f", "raw", "-O", "qcow2", guest["rootfs.raw"], image])
    a.spawn("image-create", "guest", image)
    storage.spawn("image-cache", "guest", image)

    # The tenant network: VXLAN, DHCP on compute-a (its DHCP port bound there), no router.
    a.net("--no-plumb", "net-create", "tenant", "--provider:network_type", "vxlan",
          "--provider:segmentation_id", "42")
    a.net("--no-plumb", "subnet-create", "tenant", "10.42.0.0/24", "--name", "tenant-subnet",
          "--no-gateway")
    [dhcp] = [p["id"] for p in a.net_json("port-list") if p["device_owner"] == "network:dhcp"]
    a.net("--no-plumb", "port-update", dhcp, "--binding:host_id", "compute-a")
    for h in (a, b, a):  # a again: b was no agent yet at a's first apply
        h.net("apply")

    nbd = KilnNbd(storage, f"{pki}/storage-1")
    procs.append(nbd)
    agents = {"storage-1": storage.agent()}
    agents.update({n: h.agent() for n, h in hosts.items()})
    procs.extend(agents.values())
    yield {"procs": procs, "storage": storage, "a": a, "b": b, "hosts": hosts, "nbd": nbd, "pg": pg,
           "agents": agents, "pki": pki, "image": image, "dhcp_port": dhcp}


def boot(host, name, cmdline, guest, *extra):
    return host.spawn_json("boot", name, "--image", "guest", "--flavor", "m1.tiny", "--net",
                           "tenant", "--kernel", guest["vmlinuz"], "--initrd",
                           guest["initrd.img"], "--cmdline", cmdline, *extra)


def stop_agent(agent, sig=signal.SIGTERM):
    rc, out = agent.stop(sig)
    log = agent.read_log()
    for needle in SANITIZER_NEEDLES:
        assert needle not in log, log
    return rc, (json.loads(out) if out.strip() else None), log


def test_four_guests_on_two_compute_hosts_disks_on_a_storage_host(cloud, guest, workdir):
    storage, a, b, nbd, pg = cloud["storage"], cloud["a"], cloud["b"], cloud["nbd"], cloud["pg"]
    hosts = cloud["hosts"]

    # Two guests that only answer pings, then two that ping both: whatever the order, each
    # compute host has a guest that pings one on the other host.
    marker = f"made on compute {secrets.token_hex(8)}\n"
    targets = [boot(a, f"vm{i}", guest_cmdline(
        f"printf '{marker}' > $ROOT/kiln/marker; sync; echo KILN-TEST: marker written\n"), guest)
        for i in (1, 2)]
    ips = [t["ip_address"] for t in targets]
    ping = "".join(f"if ping -c 3 -W 3 {ip} >/dev/null 2>&1; then echo KILN-TEST: ping {ip} ok; "
                   f"else echo KILN-TEST: FAIL ping {ip}; fi\n" for ip in ips)
    # vm4's disk is encrypted: its key stays on storage-1, whose kiln-nbd decrypts it.
    pingers = [boot(a, "vm3", guest_cmdline(ping), guest),
               boot(a, "vm4", guest_cmdline(ping), guest, "--encrypted")]
    assert [vm["encrypted"] for vm in targets + pingers] == [False, False, False, True]
    vms = targets + pingers
    for vm in vms:
        assert vm["status"] == "active", vm
    # The scheduler spread them: two on each compute host, none on the storage host.
    placed = {vm["name"]: vm["host"] for vm in vms}
    assert sorted(placed.values()) == ["compute-a", "compute-a", "compute-b", "compute-b"], placed
    assert placed["vm1"] != placed["vm2"] and placed["vm3"] != placed["vm4"], placed
    stats = {h["hypervisor_hostname"]: h for h in a.spawn_json("hypervisor-stats")["hosts"]}
    assert stats["compute-a"]["running_vms"] == stats["compute-b"]["running_vms"] == 2, stats
    assert stats["storage-1"]["running_vms"] == 0, stats

    # Every disk is an export of storage-1 for the certificate of the guest's host, its overlay
    # in storage-1's directory; the compute hosts keep only the config drive and the records.
    exports = nbd.exports()
    assert sorted(exports) == sorted(f"kiln-{vm['id']}" for vm in vms), exports
    for vm in vms:
        host = hosts[vm["host"]]
        assert exports[f"kiln-{vm['id']}"]["tls-identity"] == f"CN={vm['host']},O=Kiln", exports
        assert vm["id"] in host.instances() and vm["id"] in storage.instances()
        sdir = os.path.join(storage.state, "spawn", "instances", vm["id"])
        assert os.path.exists(os.path.join(sdir, "disk.key")) == vm["encrypted"]
        local = set(os.listdir(os.path.join(host.state, "spawn", "instances", vm["id"])))
        assert "disk" not in local and "disk.config" in local, local
        xml = host.lv.virsh("dumpxml", f"kiln-{vm['id']}").stdout
        src = re.search(r"<source protocol='nbd'[^>]*>.*?</source>", xml, re.S).group(0)
        assert "tls='yes'" in src and f"<host name='{STORAGE_ADDR}' port='{NBD_PORT}'/>" in src, src
    for name, host in hosts.items():
        running = host.lv.virsh("list", "--name").stdout.split()
        assert sorted(running) == sorted(f"kiln-{vm['id']}" for vm in vms
                                         if vm["host"] == name), (name, running)

    # The guests: root disk over NBD+TLS, an address from compute-a's dnsmasq, and pings across
    # the hosts over VXLAN.
    consoles = {vm["name"]: wait_console(hosts[vm["host"]], vm["name"], "KILN-TEST: end ")
                for vm in vms}
    every = "\n".join(f"--- {n} on {placed[n]} ---\n{out[-2000:]}" for n, out in consoles.items())
    for vm in vms:
        out = consoles[vm["name"]]
        assert "KILN-TEST: end ok" in out, every
        assert "KILN-TEST: root mounted /dev/vda" in out, every
        assert f"KILN-TEST: dhcp ip={vm['ip_address']} " in out, every
    for vm in pingers:
        for ip in ips:
            assert f"KILN-TEST: ping {ip} ok" in consoles[vm["name"]], every
    log = nbd.inside.read_log()
    for name in hosts:
        assert re.search(r"TLS on \(.*client certificate 'CN=" + name + ",O=Kiln'", log), log
    # What a guest wrote is in its overlay on storage-1.
    for vm in targets:
        disk = os.path.join(storage.state, "spawn", "instances", vm["id"], "disk")
        raw = os.path.join(workdir, "readback.raw")
        run([tool("qemu-img"), "convert", "-U", "-f", "qcow2", "-O", "raw", disk, raw])
        assert debugfs_cat(raw, "/kiln/marker") == marker
        os.unlink(raw)

    # From compute-a, for a guest on compute-b: its console log, stop and start, run there by
    # compute-b's agent. start exports the disk again on storage-1, whose kiln-nbd lost it.
    vm = next(vm for vm in targets if vm["host"] == "compute-b")
    there = b.spawn("console-log", vm["name"]).stdout
    assert "KILN-TEST: end ok" in there
    assert a.spawn("console-log", vm["name"]).stdout == there
    a.spawn("--wait-timeout", "2", "stop", vm["name"])  # the test guest ignores ACPI
    assert a.spawn_json("show", vm["name"])["status"] == "stopped"
    assert b.lv.virsh("domstate", f"kiln-{vm['id']}").stdout.strip() == "shut off"
    assert nbd.request({"cmd": "remove-export", "name": f"kiln-{vm['id']}"})["ok"]
    a.spawn("start", vm["name"])
    assert a.spawn_json("show", vm["name"])["status"] == "active"
    assert b.lv.virsh("domstate", f"kiln-{vm['id']}").stdout.strip() == "running"
    assert nbd.exports()[f"kiln-{vm['id']}"]["tls-identity"] == "CN=compute-b,O=Kiln"
    # The guest came back on the export added again (a second NBD session for it; libvirt
    # started the console log afresh).
    served = f"serving export 'kiln-{vm['id']}'"
    out = wait_console(b, vm["name"], "KILN-TEST: end ")
    assert "KILN-TEST: end ok" in out and f"KILN-TEST: dhcp ip={vm['ip_address']} " in out, out
    assert nbd.inside.read_log().count(served) == 2, nbd.inside.read_log()[-3000:]
    # A live snapshot of it, asked on compute-a: compute-b's agent queues it for storage-1's,
    # whose kiln-nbd freezes and commits the export the guest runs on; the image is storage-1's.
    snap = a.spawn_json("snapshot", vm["name"], "vm-snap")
    simage = os.path.join(storage.state, "spawn", "images", snap["id"])
    raw = os.path.join(workdir, "snapshot.raw")
    run([tool("qemu-img"), "convert", "-f", "qcow2", "-O", "raw", simage, raw])
    assert debugfs_cat(raw, "/kiln/marker") == marker
    os.unlink(raw)
    assert nbd.exports()[f"kiln-{vm['id']}"]["path"].endswith(f"/{vm['id']}/disk")
    assert b.lv.virsh("domstate", f"kiln-{vm['id']}").stdout.strip() == "running"
    storage.spawn("image-delete", "vm-snap")  # where its file is
    assert [w for w in a.spawn_json("work-list")
            if w["kind"] in ("stop", "start", "console-log", "snapshot", "disk-snapshot")] == []

    # A compute host's agent killed in the middle of a build: its next start rolls the build
    # back, the disk on storage-1 included.
    rc, report, log = stop_agent(cloud["agents"]["compute-b"])
    assert rc == 0 and report["rows_failed"] == 0, (report, log)
    paused = b.agent(env=dict(b.env, KILN_SPAWN_PAUSE_AT="export"))
    cloud["agents"]["compute-b"] = paused
    cloud["procs"].append(paused)
    vm5 = a.spawn_json("boot", "vm5", "--image", "guest", "--flavor", "m1.tiny", "--net",
                       "tenant", "--host", "compute-b", "--no-wait", "--kernel", guest["vmlinuz"],
                       "--initrd", guest["initrd.img"], "--cmdline", "console=ttyS0")
    paused.wait_for_log("paused after step export")
    rc, _, _ = stop_agent(paused, signal.SIGKILL)
    assert rc != 0
    show = a.spawn_json("show", "vm5")
    assert show["status"] == "building" and show["steps"][-1] == "export", show
    assert f"kiln-{vm5['id']}" in nbd.exports() and vm5["id"] in storage.instances()
    restarted = b.agent()
    cloud["agents"]["compute-b"] = restarted
    cloud["procs"].append(restarted)
    deadline = time.monotonic() + 60
    while a.spawn_json("show", "vm5")["status"] != "error":
        assert time.monotonic() < deadline, a.spawn_json("show", "vm5")
        time.sleep(0.2)
    show = a.spawn_json("show", "vm5")
    assert "build interrupted after step export" in show["fault"], show
    assert f"kiln-{vm5['id']}" not in nbd.exports()
    assert vm5["id"] not in storage.instances() and vm5["id"] not in b.instances()

    # Delete everything from compute-a (compute-b's through its agent).
    a.spawn("delete", "vm1", "vm2", "vm3", "vm4", "vm5")
    assert a.spawn_json("list") == [] and b.spawn_json("list") == []
    assert nbd.exports() == {}
    for h in (storage, a, b):
        assert h.instances() == [], (h.name, h.instances())
    for h in (a, b):
        assert h.lv.virsh("list", "--all", "--name").stdout.strip() == "", h.name
    ports = a.net_json("port-list")
    assert [p for p in ports if p["device_owner"].startswith("compute:")] == [], ports
    # The net-sync rows the deletes queued (compute-b's ports gone, for compute-a's DHCP and
    # security groups) are not waited for by delete: the agents finish them.
    deadline = time.monotonic() + 60
    while pg.query("SELECT count(*) FROM kiln_spawn.work_queue").strip() != "0":
        assert time.monotonic() < deadline, pg.query("SELECT * FROM kiln_spawn.work_queue")
        time.sleep(0.1)
    # No device of an instance's port is left (compute-a keeps its DHCP port's).
    dhcp_dev = "tap" + cloud["dhcp_port"][:11]
    for h in (a, b):
        taps = [line.split(":")[1].strip().split("@")[0]
                for line in h.run("ip", "-o", "link").stdout.splitlines() if ": tap" in line]
        assert taps == ([dhcp_dev] if h is a else []), (h.name, taps)
    # Nothing in the database: no instance, claim, work row, metadata record or compute port.
    tables = pg.query("SELECT table_schema || '.' || table_name FROM information_schema.tables "
                      "WHERE table_schema LIKE 'kiln%' ORDER BY 1").split()
    assert tables, "no Kiln tables in the shared database"
    leftovers = {}
    for t in tables:
        if re.search(r"\.(instances|claims|events|work_queue|metadata\w*|snapshots)$", t):
            n = int(pg.query(f"SELECT count(*) FROM {t}"))
            if n:
                leftovers[t] = n
    assert leftovers == {}, leftovers
    assert pg.query("SELECT device_owner FROM kiln_net.ports").split() == ["network:dhcp"]

    for name, agent in cloud["agents"].items():
        rc, report, log = stop_agent(agent)
        assert rc == 0, (name, log[-3000:])
        assert report["rows_failed"] == 0, (name, report)
