"""kiln-spawn agent and builds on other hosts (issue 15): the machine plays two hosts sharing one
store, "local-1" (where the commands run, KILN_HOST) and "remote-1" (a kiln-spawn agent with
--host remote-1). A boot the scheduler sends to remote-1 is queued and built by its agent (the
boot waits, or returns at once with --no-wait); delete of it is queued for that agent too; an
agent killed mid-build leaves a record its next start rolls back; SIGTERM makes it roll back
the build it runs and stop. Real kiln-nbd, kiln-net without plumbing, libvirt's test driver
(each process its own: the agent's domains live in the agent)."""

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from kilntest.nbd import Process
from kilntest.spawn import (KILN_NBD, NbdServer, make_ext4_qcow2, make_qcow2, run,  # noqa: F401
                            tmp_path, world)

BOOT = ("--image", "img", "--flavor", "m1.tiny", "--net", "demo-net")


class Agent:
    """kiln-spawn agent --host remote-1, its stderr read line by line."""

    def __init__(self, world, *args, env=None):
        self.p = subprocess.Popen(world.spawn_cmd("agent", "--host", "remote-1",
                                                  "--poll-interval", "50", "--format", "json",
                                                  *args),
                                  env=env or world.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.lines = []

    def wait_for_line(self, needle):
        for line in self.p.stderr:
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"agent ended without {needle!r}: {''.join(self.lines)}")

    def stop(self, sig=signal.SIGTERM):
        """Signals the agent; returns (exit code, its report or None, the rest of stderr)."""
        if self.p.poll() is None:
            self.p.send_signal(sig)
        out, err = self.p.communicate(timeout=60)
        err = "".join(self.lines) + err
        # (Sanitized builds: UBSan only prints; ASan's reports end the process too.)
        for needle in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert needle not in err, err
        return self.p.returncode, (json.loads(out) if out.strip() else None), err


@pytest.fixture
def two_hosts(world, tmp_path):
    world.env["KILN_HOST"] = "local-1"
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M"))
    world.spawn("host-register", "--name", "remote-1", "--vcpus", "8", "--memory-mb", "16384",
                "--disk-gb", "200", "--libvirt-uri", world.libvirt_uri, "--nbd-endpoint",
                world.nbd.ctl)
    return world


def rows(world):
    return world.spawn_json("work-list")


def wait_status(world, name, statuses, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        show = world.spawn_json("show", name)
        if show["status"] in statuses:
            return show
        assert time.monotonic() < deadline, show
        time.sleep(0.1)


def test_boot_and_delete_on_another_host_through_its_agent(two_hosts):
    world = two_hosts
    agent = Agent(world)
    try:
        vm = world.spawn_json("boot", "vm1", *BOOT, "--host", "remote-1")
        assert vm["status"] == "active" and vm["host"] == "remote-1", vm
        assert vm["steps"] == ["claim", "port", "overlay", "config_drive", "inject", "export",
                               "domain", "wait"], vm
        # The agent's directory and export, not this kiln-spawn's.
        assert vm["instance_dir"].endswith("/instances/" + vm["id"])
        assert [e["name"] for e in world.nbd.exports()] == ["kiln-" + vm["id"]]
        show = world.spawn_json("show", "vm1")
        assert show["power_state"] == "unknown: on host remote-1", show
        assert any("build taken by the agent of host remote-1" in e["message"]
                   for e in show["events"]), show["events"]
        [row] = rows(world)
        assert (row["host"], row["kind"], row["state"]) == ("remote-1", "build", "done"), row
        # The scheduler's own choice: spread puts the next one on the emptier host.
        hv = {h["hypervisor_hostname"]: h for h in world.spawn_json("hypervisor-stats")["hosts"]}
        assert hv["remote-1"]["vcpus_used"] == 1 and hv["local-1"]["vcpus_used"] == 0
        local = world.spawn_json("boot", "vm2", *BOOT, "--host", "local-1")
        assert local["host"] == "local-1" and local["status"] == "active"
        # Stop and start of an instance on another host go to its agent (rows it runs, removed
        # once waited for); a state that does not allow them is refused here.
        world.spawn("stop", "vm1")
        assert world.spawn_json("show", "vm1")["status"] == "stopped"
        r = world.spawn("stop", "vm1", check=False)
        assert r.returncode != 0 and "is stopped, not active" in r.stderr, r.stderr
        world.spawn("start", "vm1")
        assert world.spawn_json("show", "vm1")["status"] == "active"
        events = [e["message"] for e in world.spawn_json("show", "vm1")["events"]]
        assert events[-2:] == ["stopped", "started"], events
        assert world.spawn("console-log", "vm1").returncode == 0  # the test driver writes none
        assert [w["kind"] for w in rows(world)] == ["build"], rows(world)
        # --no-wait: back at once, scheduled; the agent then builds it.
        vm3 = world.spawn_json("boot", "vm3", *BOOT, "--host", "remote-1", "--no-wait")
        assert vm3["status"] == "building" and vm3["task_state"] == "scheduling", vm3
        assert wait_status(world, "vm3", ("active", "error"))["status"] == "active"
        # delete of instances on remote-1 is queued for its agent and waited for.
        world.spawn("delete", "vm1", "vm3", "vm2")
        assert world.spawn_json("list") == []
        assert rows(world) == []
        world.assert_nothing_left()
    finally:
        rc, report, err = agent.stop()
    assert rc == 0, err
    # vm1 and vm3 built and deleted; vm1 stopped, started and its console log read.
    assert report["rows_done"] == 7 and report["rows_failed"] == 0, report


def test_queued_build_no_agent_took_is_cancelled_by_delete(two_hosts):
    world = two_hosts
    r = world.spawn("--wait-timeout", "1", "boot", "vm", *BOOT, "--host", "remote-1",
                    check=False)
    assert r.returncode == 1, r
    assert "is still building (scheduling) on host remote-1 after 1 s (is kiln-spawn agent " \
           "running there?)" in r.stderr, r.stderr
    show = world.spawn_json("show", "vm")
    assert show["host"] == "remote-1" and show["steps"] == ["claim"], show
    # Nothing reads its console log there: the request is taken back after the timeout.
    r = world.spawn("--wait-timeout", "1", "console-log", "vm", check=False)
    assert r.returncode == 1, r
    assert "console-log on host remote-1: not done after 1 s (is kiln-spawn agent running " \
           "there?); the request is withdrawn" in r.stderr, r.stderr
    assert [(w["kind"], w["state"]) for w in rows(world)] == [("build", "queued")]
    # This host's cleanup leaves another host's instance alone.
    assert world.spawn_json("cleanup")["builds_rolled_back"] == []
    # Nothing exists on remote-1 yet: the delete takes the row back here, with the claim.
    world.spawn("delete", "vm")
    assert world.spawn_json("list") == [] and rows(world) == []
    world.assert_nothing_left()
    # An agent started now finds nothing to do.
    rc, report, err = Agent(world, "--once").stop(sig=0)
    assert rc == 0 and report["rows_done"] == report["rows_failed"] == 0, (report, err)


def test_agent_killed_mid_build_is_rolled_back_by_its_next_start(two_hosts):
    world = two_hosts
    agent = Agent(world, env=dict(world.env, KILN_SPAWN_PAUSE_AT="export"))
    world.spawn("boot", "vm", *BOOT, "--host", "remote-1", "--no-wait")
    agent.wait_for_line("paused after step export")
    rc, _, _ = agent.stop(signal.SIGKILL)
    assert rc == -signal.SIGKILL
    show = world.spawn_json("show", "vm")
    assert show["status"] == "building" and show["steps"][-1] == "export", show
    assert len(world.nbd.exports()) == 1
    [row] = rows(world)
    assert row["state"] == "running", row
    # The next start: the dead agent's row failed, its build rolled back (export, overlay,
    # port undone; the claim kept with the record in error, as a local build's is).
    rc, report, err = Agent(world, "--once").stop(sig=0)
    assert rc == 0, err
    assert report["dead_rows_failed"] == [row["id"]], report
    assert report["builds_rolled_back"] == ["vm"], report
    show = world.spawn_json("show", "vm")
    assert show["status"] == "error" and show["steps"] == [], show
    assert "build interrupted after step export" in show["fault"], show
    assert world.nbd.exports() == [] and world.instance_ports() == []
    [row] = rows(world)
    assert row["state"] == "failed" and "agent running it stopped" in row["error"], row
    agent = Agent(world)
    try:
        world.spawn("delete", "vm")
    finally:
        rc, report, err = agent.stop()
    assert rc == 0 and report["rows_done"] == 1, (report, err)
    assert rows(world) == []
    world.assert_nothing_left()


def test_sigterm_rolls_back_the_build_the_agent_runs_and_stops_it(two_hosts):
    world = two_hosts
    agent = Agent(world, env=dict(world.env, KILN_SPAWN_PAUSE_AT="overlay"))
    boot = subprocess.Popen(world.spawn_cmd("boot", "vm", *BOOT, "--host", "remote-1"),
                            env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    agent.wait_for_line("paused after step overlay")
    rc, report, err = agent.stop(signal.SIGTERM)
    assert rc == 0, err
    assert report["rows_failed"] == 1 and report["rows_done"] == 0, report
    # The waiting boot reports the agent's failure.
    out, err = boot.communicate(timeout=60)
    assert boot.returncode == 1, (out, err)
    assert "failed to build on host remote-1: interrupted before step config_drive" in err, err
    show = world.spawn_json("show", "vm")
    assert show["status"] == "error" and show["steps"] == [], show
    [row] = rows(world)
    assert row["state"] == "failed" and "interrupted" in row["error"], row
    agent = Agent(world)
    try:
        world.spawn("delete", "vm")
    finally:
        agent.stop()
    assert rows(world) == []
    world.assert_nothing_left()


def test_hostile_build_rows_fail_cleanly(two_hosts):
    """Whoever can write the shared database can write a build row: the agent checks the
    payload again (JSON, types, hex, the boot's bounds) and fails the build with nothing left
    but the record in error."""
    world = two_hosts
    bad = {
        "notjson": "{",
        "array": "[]",
        "name-type": '{"name": 5}',
        "relative": '{"files": [{"path": "etc/x", "data": "41"}]}',
        "odd-hex": '{"has_user_data": true, "user_data": "414"}',
        "not-hex": '{"key_data": "zz"}',
        "big-user-data": '{"has_user_data": true, "user_data": "%s"}' % ("41" * 65536),
        "many-files": '{"files": [%s]}' % ",".join(['{"path": "/a", "data": ""}'] * 65),
        "inject-no-passwd": '{"inject": "yes"}',
    }
    for name in bad:
        world.spawn("boot", name, *BOOT, "--host", "remote-1", "--no-wait")
    db = sqlite3.connect(world.spawn_dir + "/spawn.db")
    with db:
        for name, payload in bad.items():
            iid = world.spawn_json("show", name)["id"]
            db.execute("UPDATE work_queue SET payload = ? WHERE instance_id = ?", (payload, iid))
    db.close()
    rc, report, err = Agent(world, "--once").stop(sig=0)
    assert rc == 0, err
    assert report["rows_failed"] == len(bad) and report["rows_done"] == 0, report
    for name in bad:
        show = world.spawn_json("show", name)
        assert show["status"] == "error" and show["steps"] == [], show
        assert "build row" in show["fault"], show["fault"]
    assert world.instance_ports() == [] and world.nbd.exports() == []
    assert world.spawn_json("hypervisor-stats")["vcpus_used"] == 0
    agent = Agent(world)
    try:
        world.spawn("delete", *bad)
    finally:
        agent.stop()
    assert rows(world) == []
    world.assert_nothing_left()


TLS_SETUP = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "kiln-tls-setup")


class TlsNbdServer(NbdServer):
    """The storage host's kiln-nbd: with X.509 credentials and client certificates checked (a
    TLS identity needs them), on Unix sockets only (no guest connects in this test)."""

    def __init__(self, d, creds):
        self.sock = os.path.join(d, "nbd.sock")
        self.ctl = os.path.join(d, "nbd-control.sock")
        cmd = [KILN_NBD, "-e", "0", "-k", self.sock, "--control", self.ctl, "--tls-creds",
               creds, "--tls-verify-peer"]
        Process.__init__(self, "kiln-nbd", cmd, os.path.join(d, "kiln-nbd.log"),
                         unix=[self.sock, self.ctl])
        self.start()


def test_disks_made_and_exported_on_a_storage_host(two_hosts, tmp_path):
    """Setting storage_host: the compute host's agent (remote-1) builds the instance, but its
    overlay is made (on storage-1's own base), injected into and exported (with the compute
    host's client DN as the export's tls-identity) by storage-1's agent, with its own state
    directory and kiln-nbd; the domain points at the NBD+TLS address. delete, and a build that
    fails after the export, leave nothing on the storage host."""
    world = two_hosts
    pki = tmp_path / "pki"
    run_tls = lambda *a: run(["bash", TLS_SETUP, *a])  # noqa: E731
    run_tls("ca", str(pki / "ca"))
    run_tls("server", str(pki / "ca"), str(pki / "server"), "--cn", "storage-1", "--ip",
            "192.0.2.7")
    run_tls("client", str(pki / "ca"), str(pki / "client"), "--cn", "remote-1")
    identity = "CN=remote-1,O=Kiln"  # kiln-tls-setup client --cn remote-1 (default O)
    # Each host's own settings (a shared database keeps them per host): the compute host's
    # transport and client credentials, the storage host's kiln-nbd address.
    remote_env = dict(world.env, KILN_HOST="remote-1")
    world.spawn("config-set", "disk_transport", "tcp-tls", env=remote_env)
    world.spawn("config-set", "nbd_tls_x509_cert_dir", str(pki / "client"), env=remote_env)
    assert "not found" in world.spawn("config-set", "storage_host", "storage-1",
                                      check=False).stderr
    world.spawn("host-register", "--name", "storage-1")
    world.spawn("host-set", "storage-1", "--disable", "--reason", "storage only")
    world.spawn("config-set", "storage_host", "storage-1")
    # The storage host's kiln-nbd address is that host's own setting.
    world.spawn("config-set", "nbd_tcp_address", "192.0.2.7:10809",
                env=dict(world.env, KILN_HOST="storage-1"))
    sdir = tmp_path / "storage"
    (sdir / "run").mkdir(parents=True)
    snbd = TlsNbdServer(str(sdir / "run"), str(pki / "server"))
    senv = dict(world.env, KILN_STATE_DIR=str(sdir / "state"))
    # Its own state directory and kiln-nbd; the one store (SQLite: the same file).
    scmd = [a if a != world.nbd.ctl else snbd.ctl for a in world.spawn_cmd()]
    scmd += ["--db", world.spawn_dir + "/spawn.db", "--net-db", world.state + "/netplumb.db"]
    run([*scmd, "image-cache", "img", str(tmp_path / "b.qcow2")], env=senv)

    def storage_agent(**env):
        return subprocess.Popen([*scmd, "agent", "--host", "storage-1", "--poll-interval", "50",
                                 "--format", "json"], env=dict(senv, **env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    storage = storage_agent()
    agent = Agent(world)
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln test@kiln\n")
    try:
        vm = world.spawn_json("boot", "vm", *BOOT, "--host", "remote-1", "--key-file", str(key))
        assert vm["status"] == "active" and vm["host"] == "remote-1", vm
        sdisk = sdir / "state" / "spawn" / "instances" / vm["id"] / "disk"
        info = json.loads(run(["qemu-img", "info", "-U", "--output=json", str(sdisk)]).stdout)
        assert info["format"] == "qcow2" and info["virtual-size"] == 1 << 30, info
        assert info["full-backing-filename"].startswith(str(sdir / "state" / "spawn")), info
        # No overlay on the compute host: its directory has the config drive and the record.
        local = set(os.listdir(vm["instance_dir"]))
        assert "disk" not in local and {"disk.config", "disk.storage_host"} <= local, local
        [e] = snbd.exports()
        assert e["name"] == "kiln-" + vm["id"] and e["tls-identity"] == identity, e
        assert world.nbd.exports() == []
        xml = world.spawn_json("show", "vm")["domain_xml"]
        assert "protocol='nbd'" in xml and "tls='yes'" in xml and "192.0.2.7" in xml, xml
        kinds = [(w["host"], w["kind"], w["state"]) for w in rows(world)]
        assert kinds == [("remote-1", "build", "done"), ("storage-1", "disk-create", "done"),
                         ("storage-1", "disk-export", "done")], kinds
        world.spawn("delete", "vm")
        assert snbd.exports() == [] and not sdisk.parent.exists()
        # --inject happens on the storage host, into its overlay.
        img = make_ext4_qcow2(tmp_path, "guest", {"/etc/passwd": "root:x:0:0::/root:/bin/sh\n"})
        world.spawn("image-create", "guest", img)
        run([*scmd, "image-cache", "guest", img], env=senv)
        motd = tmp_path / "motd"
        motd.write_text("made on storage-1\n")
        inj = world.spawn_json("boot", "inj", "--image", "guest", "--flavor", "m1.tiny", "--net",
                               "demo-net", "--host", "remote-1", "--key-file", str(key),
                               "--file", f"/etc/motd={motd}", "--inject")
        assert inj["status"] == "active", inj
        raw = str(tmp_path / "inj.raw")
        run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
             str(sdir / "state" / "spawn" / "instances" / inj["id"] / "disk"), raw])
        cat = lambda path: run(["debugfs", "-R", f"cat {path}", raw]).stdout  # noqa: E731
        assert cat("/etc/motd") == "made on storage-1\n"
        assert cat("/etc/hostname").strip() == "inj"
        assert cat("/root/.ssh/authorized_keys").strip() == key.read_text().strip()

        # snapshot, asked on local-1, of an instance on remote-1 whose disk is storage-1's: a
        # snapshot row for remote-1's agent, which queues a disk-snapshot row for storage-1's.
        # The freeze and the commit are storage-1's kiln-nbd's; the image file goes into
        # storage-1's image store, where disks booted from it are made.
        sdisk = sdir / "state" / "spawn" / "instances" / inj["id"]
        simages = sdir / "state" / "spawn" / "images"
        snap = world.spawn_json("snapshot", "inj", "inj-snap")
        assert snap["instance_uuid"] == inj["id"] and snap["image_type"] == "snapshot", snap
        sfile = simages / snap["id"]
        assert sfile.exists() and not os.path.exists(world.spawn_dir + "/images/" + snap["id"])
        assert "No errors were found" in run(["qemu-img", "check", str(sfile)]).stdout
        run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(sfile), raw])
        assert cat("/etc/motd") == "made on storage-1\n"
        assert cat("/etc/hostname").strip() == "inj"
        [e] = snbd.exports()
        assert e["path"] == str(sdisk / "disk"), e  # the temporary layer committed back
        assert not (sdisk / "snapshot.json").exists()
        assert [f for f in os.listdir(simages) if f.startswith(".tmp-")] == []
        # Both rows are removed once done.
        assert not [w for w in rows(world) if "snapshot" in w["kind"]], rows(world)
        show = world.spawn_json("show", "inj")
        assert show["task_state"] == "" and show["status"] == "active", show
        messages = [e["message"] for e in show["events"]]
        assert "storage host storage-1: snapshot inj-snap: step merge" in messages, messages
        assert any(m.startswith("snapshot image inj-snap") and "storage host storage-1" in m
                   for m in messages), messages
        # A boot from it is made on storage-1, on its own copy of the image.
        again = world.spawn_json("boot", "again", "--image", "inj-snap", "--flavor", "m1.tiny",
                                 "--net", "demo-net", "--host", "remote-1")
        again_disk = sdir / "state" / "spawn" / "instances" / again["id"] / "disk"
        run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(again_disk), raw])
        assert cat("/etc/motd") == "made on storage-1\n"
        world.spawn("delete", "again")
        world.spawn("image-delete", "inj-snap")

        # Both agents killed half-way, storage-1's after its convert, remote-1's as it waits
        # for it: storage-1's next start fails its row and rolls the snapshot back; the caller
        # fails once remote-1's next start fails its own row, and the task state goes.
        storage.send_signal(signal.SIGTERM)
        storage.communicate(timeout=60)
        storage = storage_agent(KILN_SPAWN_SNAPSHOT_STOP_AT="convert")
        caller = subprocess.Popen(world.spawn_cmd("snapshot", "inj", "doomed"), env=world.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (sdisk / "snapshot.json").exists() or \
                open(f"/proc/{storage.pid}/stat").read().split(") ")[1][0] != "T":
            assert time.monotonic() < deadline and caller.poll() is None, caller.communicate()
            time.sleep(0.05)
        layer = json.loads((sdisk / "snapshot.json").read_text())["layer"]
        [e] = snbd.exports()
        assert e["path"] == layer and os.path.exists(layer), (e, layer)
        [doomed_id] = [f[5:] for f in os.listdir(simages) if f.startswith(".tmp-")]
        storage.kill()
        storage.communicate(timeout=60)
        agent.stop(signal.SIGKILL)
        storage = storage_agent()
        deadline = time.monotonic() + 60
        while (sdisk / "snapshot.json").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        [e] = snbd.exports()
        assert e["path"] == str(sdisk / "disk") and not os.path.exists(layer), e
        assert [f for f in os.listdir(simages) if doomed_id in f] == []
        assert "doomed" not in [i["name"] for i in world.spawn_json("image-list")]
        assert caller.poll() is None  # its row is running: the caller waits for remote-1
        assert world.spawn_json("show", "inj")["task_state"] == "image_snapshot"
        agent = Agent(world)
        _, err = caller.communicate(timeout=60)
        assert caller.returncode == 1 and "stopped before it ended" in err, err
        # (The agent fails its rows, then runs cleanup.)
        show = wait_status(world, "inj", ["active"])
        deadline = time.monotonic() + 60
        while show["task_state"]:
            assert time.monotonic() < deadline, show
            time.sleep(0.05)
            show = world.spawn_json("show", "inj")
        messages = [e["message"] for e in show["events"]]
        assert "storage host storage-1: rolling back the interrupted snapshot doomed" in messages
        assert any("stopped waiting for the storage host" in m for m in messages), messages
        world.spawn("delete", "inj")
        assert snbd.exports() == []
        # --encrypted: the key is made and kept on storage-1 beside a LUKS overlay, injected
        # into with it, and given to its kiln-nbd; the compute host only records that it is.
        enc = world.spawn_json("boot", "enc", "--image", "guest", "--flavor", "m1.tiny", "--net",
                               "demo-net", "--host", "remote-1", "--key-file", str(key),
                               "--file", f"/etc/motd={motd}", "--inject", "--encrypted")
        assert enc["status"] == "active" and enc["encrypted"] is True, enc
        assert world.spawn_json("show", "enc")["encrypted"] is True
        sdir_enc = sdir / "state" / "spawn" / "instances" / enc["id"]
        key_file = sdir_enc / "disk.key"
        assert os.stat(key_file).st_mode & 0o777 == 0o600
        assert not os.path.exists(os.path.join(enc["instance_dir"], "disk.key"))
        info = json.loads(run(["qemu-img", "info", "-U", "--output=json",
                               str(sdir_enc / "disk")]).stdout)
        assert info["encrypted"] is True and \
            info["format-specific"]["data"]["encrypt"]["format"] == "luks", info
        raw = str(tmp_path / "enc.raw")
        run(["qemu-img", "convert", "-U", "--object", f"secret,id=k0,file={key_file}",
             "--image-opts", f"driver=qcow2,file.filename={sdir_enc / 'disk'},"
             "encrypt.key-secret=k0", "-O", "raw", raw])
        assert cat("/etc/motd") == "made on storage-1\n"  # cat reads raw: the decrypted copy
        assert cat("/etc/hostname").strip() == "enc"
        assert motd.read_text().encode() not in (sdir_enc / "disk").read_bytes()
        [e] = snbd.exports()
        assert e["name"] == "kiln-" + enc["id"] and e["tls-identity"] == identity, e
        world.spawn("delete", "enc")
        assert snbd.exports() == [] and not sdir_enc.exists()
        # A build that fails after its export: the storage host's work undone too.
        fenv = dict(world.env, KILN_SPAWN_FAIL_AT="domain")
        rc, _, _ = agent.stop()
        agent = Agent(world, env=fenv)
        r = world.spawn("boot", "bad", *BOOT, "--host", "remote-1", check=False)
        assert r.returncode == 1 and "fault injected at step domain" in r.stderr, r.stderr
        assert snbd.exports() == []
        assert os.listdir(sdir / "state" / "spawn" / "instances") == []
        world.spawn("delete", "bad")
        assert rows(world) == []
        world.assert_nothing_left()
    finally:
        agent.stop()
        storage.send_signal(signal.SIGTERM)
        _, err = storage.communicate(timeout=60)
        snbd.stop()
    assert storage.returncode == 0, err
    for needle in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        assert needle not in err, err
