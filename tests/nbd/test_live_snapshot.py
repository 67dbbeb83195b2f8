"""Live snapshot and live commit of a served export through kiln-nbd's control socket
(docs/kiln-nbd.md, "Live snapshot and commit"): fio verifying its own writes across repeated
snapshots and commits, a client that stays connected through every switch, SIGKILL at random
moments of a switch (the chain the state file names opens and holds every flushed write),
commit failures that leave the export serving, and remove-export releasing every file."""

import json
import os
import random
import signal
import subprocess
import threading
import time

import pytest

from kilntest.images import (QEMU_IO, MiB, assert_qemu_clean, create_qcow2, kiln_img,
                             qemu_check, qemu_img, qemu_io)
from kilntest.nbd import (CMD_FLAG_FUA, FIO, NBDCOPY, SANITIZED, Control, RawClient, run,
                          scaled, servers, unix_uri)  # noqa: F401  (fixture)

SIZE = scaled(64 * MiB, 32 * MiB) // MiB * MiB
EXPORT = "vm"


def start(servers, workdir, *extra):
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    state = os.path.join(workdir, "state.json")
    srv = servers.kiln("--state-file", state, *extra, sock=sock, control=ctl)
    return srv, sock, ctl, state


def make_base(workdir, name="base.qcow2", size=SIZE):
    base = create_qcow2(os.path.join(workdir, name), size)
    qemu_io(base, "write -P 0x11 0 1M", f"write -P 0x12 {size // 2} 1M")
    return base


def recorded_top(state):
    with open(state) as f:
        return {e["name"]: e for e in json.load(f)["exports"]}[EXPORT]["path"]


def chain_of(top):
    """The files of the chain under `top`, top first."""
    out = [top]
    info = json.loads(qemu_img("info", "-U", "--output=json", "--backing-chain", top).stdout)
    for i in info[1:]:
        out.append(i["filename"])
    return out


def wait_job(c, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["export"]: j for j in c("jobs")["jobs"]}
        j = jobs[EXPORT]
        if j["state"] in ("completed", "failed", "cancelled"):
            return j
        assert time.monotonic() < deadline, j
        time.sleep(0.02)


def test_fio_verify_across_snapshots_and_commits(workdir, servers):
    base = make_base(workdir)
    srv, sock, ctl, state = start(servers, workdir)
    c = Control(ctl)
    assert c("add-export", name=EXPORT, path=base, format="qcow2") == {"ok": True}
    uri = unix_uri(sock, EXPORT)
    region = SIZE // 2
    # Two writers at depth 8 over disjoint halves of the first half of the disk, each writing
    # its region several times over (every pass verified by crc32c headers fio reads back).
    fio = subprocess.Popen(
        [FIO, "--ioengine=nbd", f"--uri={uri}", "--output-format=json", "--rw=randwrite",
         "--bs=4k", "--iodepth=8", f"--size={region // 2}", "--numjobs=1", "--verify=crc32c",
         "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", f"--loops={scaled(4, 2)}",
         "--name=a", "--offset=0", "--name=b", f"--offset={region // 2}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    layers, ops = [base], 0
    try:
        while fio.poll() is None or ops < 4:
            if len(layers) < 3:
                path = os.path.join(workdir, f"s{ops}.qcow2")
                r = c("snapshot", name=EXPORT, path=path)
                assert r == {"ok": True}, r
                layers.append(path)
            else:
                # Commit the top into the one under it: the export goes back down one layer.
                assert c("commit", name=EXPORT) == {"ok": True}
                j = wait_job(c)
                assert j["state"] == "completed" and j["done"] >= j["total"], j
                layers.pop()
            ops += 1
            assert c("list-exports")["exports"][0]["path"] == layers[-1]
            assert recorded_top(state) == layers[-1]
            time.sleep(0.05)
        out, err = fio.communicate(timeout=600)
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait()
    assert fio.returncode == 0, err
    result = json.loads(out[out.index("{"):])
    for job in result["jobs"]:
        assert job["error"] == 0, job
        assert job["read"]["io_bytes"] >= region // 2, ("fio did not verify", job)
    assert ops >= 4
    # What the clients see now, and what the chain holds once the server has stopped.
    seen = os.path.join(workdir, "seen.raw")
    run([NBDCOPY, uri, seen])
    top = layers[-1]
    c.close()
    srv.assert_clean_stop()
    for f in os.listdir(workdir):
        if f.endswith(".qcow2"):
            assert_qemu_clean(os.path.join(workdir, f))
    qemu_img("compare", "-f", "qcow2", "-F", "raw", top, seen)
    # Outside fio's region the first contents are still there.
    qemu_io(top, f"read -P 0x12 {SIZE // 2} 1M")


def test_commit_under_hot_writes(workdir, servers):
    """fio rewrites one small region at depth 32 while snapshots are committed back again and
    again: the commit's copy of that region and the clients' writes mirrored to the base
    collide all the time, and the base must still end up with the last write of every block."""
    base = make_base(workdir)
    srv, sock, ctl, state = start(servers, workdir)
    c = Control(ctl)
    assert c("add-export", name=EXPORT, path=base, format="qcow2") == {"ok": True}
    uri = unix_uri(sock, EXPORT)
    hot = 2 * MiB
    fio = subprocess.Popen(
        [FIO, "--name=hot", "--ioengine=nbd", f"--uri={uri}", "--output-format=json",
         "--rw=randwrite", "--bs=4k", "--iodepth=32", f"--offset={4 * MiB}", f"--size={hot}",
         "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
         f"--loops={scaled(60, 20)}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    commits = 0
    try:
        while fio.poll() is None:
            path = os.path.join(workdir, f"h{commits}.qcow2")
            assert c("snapshot", name=EXPORT, path=path) == {"ok": True}
            time.sleep(0.02)
            assert c("commit", name=EXPORT) == {"ok": True}
            assert wait_job(c)["state"] == "completed"
            commits += 1
        out, err = fio.communicate(timeout=600)
    finally:
        if fio.poll() is None:
            fio.kill()
            fio.wait()
    assert fio.returncode == 0, err
    job = json.loads(out[out.index("{"):])["jobs"][0]
    assert job["error"] == 0 and job["read"]["io_bytes"] >= hot, job
    assert commits >= 2
    seen = os.path.join(workdir, "seen.raw")
    run([NBDCOPY, uri, seen])
    c.close()
    srv.assert_clean_stop()
    assert_qemu_clean(base)
    qemu_img("compare", "-f", "qcow2", "-F", "raw", base, seen)


def test_connected_client_keeps_working(workdir, servers):
    base = make_base(workdir)
    srv, sock, ctl, state = start(servers, workdir)
    c = Control(ctl)
    assert c("add-export", name=EXPORT, path=base, format="qcow2") == {"ok": True}
    client = RawClient(sock).connect_export(EXPORT)
    assert client.pwrite(4096, b"\x21" * 4096) == 0
    before = c("stats", name=EXPORT)["stats"][EXPORT]
    overlay = os.path.join(workdir, "ov.qcow2")
    assert c("snapshot", name=EXPORT, path=overlay) == {"ok": True}
    # The same connection reads what it wrote before the switch and writes on top of it.
    r = client.pread(4096, 4096)
    assert r.error == 0 and r.data == b"\x21" * 4096
    assert client.pread(0, 4096).data == b"\x11" * 4096
    assert client.pwrite(8192, b"\x22" * 4096) == 0
    assert client.flush() == 0
    # The old top is read-only now and its write lock gone: qemu-img opens it without -U.
    assert_qemu_clean(base)
    info = json.loads(qemu_img("info", "-U", "--output=json", overlay).stdout)
    assert info["full-backing-filename"] == base and info["backing-filename-format"] == "qcow2"
    assert c("commit", name=EXPORT, base=base) == {"ok": True}
    j = wait_job(c)
    assert j["state"] == "completed" and j["top"] == overlay and j["base"] == base, j
    assert c("list-exports")["exports"][0]["path"] == base
    for off, byte in ((0, 0x11), (4096, 0x21), (8192, 0x22)):
        r = client.pread(off, 4096)
        assert r.error == 0 and r.data == bytes([byte]) * 4096, off
    assert client.pwrite(12288, b"\x23" * 4096) == 0 and client.flush() == 0
    after = c("stats", name=EXPORT)["stats"][EXPORT]
    # One connection all along: nobody reconnected, nothing failed.
    assert after["total-connections"] == before["total-connections"] == 1
    assert after["connections"] == 1 and after["errors"] == 0
    client.close()
    c.close()
    srv.assert_clean_stop()
    assert_qemu_clean(base)
    assert_qemu_clean(overlay)  # left as a file, consistent
    qemu_io(base, "read -P 0x21 4096 4096", "read -P 0x22 8192 4096", "read -P 0x23 12288 4096")


def held_files(pid):
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return out


def test_remove_export_after_snapshot_releases_everything(workdir, servers):
    base = make_base(workdir)
    srv, sock, ctl, state = start(servers, workdir)
    c = Control(ctl)
    assert c("add-export", name=EXPORT, path=base, format="qcow2") == {"ok": True}
    s1, s2 = os.path.join(workdir, "s1.qcow2"), os.path.join(workdir, "s2.qcow2")
    assert c("snapshot", name=EXPORT, path=s1) == {"ok": True}
    assert c("snapshot", name=EXPORT, path=s2) == {"ok": True}
    assert {base, s1, s2} <= held_files(srv.pid)
    assert c("remove-export", name=EXPORT) == {"ok": True}
    assert not ({base, s1, s2} & held_files(srv.pid))
    for f in (base, s1, s2):
        assert_qemu_clean(f)  # no -U: every lock is gone
    # qemu-io may write the top now; kiln-nbd takes the chain again afterwards.
    qemu_io(s2, "write -P 0x55 0 4096")
    assert c("add-export", name=EXPORT, path=s2, format="qcow2") == {"ok": True}
    c.close()
    srv.assert_clean_stop()


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_new_layer_takes_the_mode_of_the_image_it_covers(workdir, servers, mode):
    """The layer that takes the guest's writes from now on is no more open than the image it
    covers (it was created by kiln-nbd's umask: 0644 here)."""
    base = make_base(workdir)
    os.chmod(base, mode)
    srv, sock, ctl, state = start(servers, workdir)
    c = Control(ctl)
    assert c("add-export", name=EXPORT, path=base, format="qcow2") == {"ok": True}
    s1 = os.path.join(workdir, "s1.qcow2")
    assert c("snapshot", name=EXPORT, path=s1) == {"ok": True}
    assert os.stat(s1).st_mode & 0o777 == mode
    c.close()
    srv.assert_clean_stop()


def test_raw_export(workdir, servers):
    """A raw image under a live overlay, and committed back into: the raw file is reopened
    for writing in place and ends up with every write."""
    raw = os.path.join(workdir, "disk.raw")
    with open(raw, "wb") as f:
        f.truncate(SIZE)
    qemu_io(raw, "write -P 0x61 0 1M", fmt="raw")
    srv, sock, ctl, state = start(servers, workdir)
    c = Control(ctl)
    assert c("add-export", name=EXPORT, path=raw, format="raw") == {"ok": True}
    client = RawClient(sock).connect_export(EXPORT)
    ov = os.path.join(workdir, "ov.qcow2")
    assert c("snapshot", name=EXPORT, path=ov) == {"ok": True}
    info = json.loads(qemu_img("info", "-U", "--output=json", ov).stdout)
    assert info["full-backing-filename"] == raw and info["backing-filename-format"] == "raw"
    assert client.pwrite(4096, b"\x62" * 8192) == 0 and client.flush() == 0
    assert c("commit", name=EXPORT) == {"ok": True}
    assert wait_job(c)["state"] == "completed"
    assert recorded_top(state) == raw
    assert client.pwrite(1 << 20, b"\x63" * 4096) == 0 and client.flush() == 0
    client.close()
    c.close()
    srv.assert_clean_stop()
    qemu_io(raw, "read -P 0x61 0 4096", "read -P 0x62 4096 8192", "read -P 0x61 12288 4096",
            f"read -P 0x63 {1 << 20} 4096", fmt="raw")


def test_cancel_remove_and_stop_during_commit(workdir, servers):
    """A commit cancelled, or stopped by remove-export or SIGTERM, at once after it started:
    whether it finished first or not, every image checks clean, the files are released, and
    the chain the state file names reads what was written."""
    for how in ("cancel", "remove", "stop"):
        d = os.path.join(workdir, how)
        os.mkdir(d)
        base = make_base(d)
        srv, sock, ctl, state = start(servers, d)
        c = Control(ctl)
        assert c("add-export", name=EXPORT, path=base, format="qcow2") == {"ok": True}
        ov = os.path.join(d, "ov.qcow2")
        assert c("snapshot", name=EXPORT, path=ov) == {"ok": True}
        n = scaled(24, 8)
        run([QEMU_IO, "-f", "raw", "-c", f"write -P 0x71 {MiB} {n}M", unix_uri(sock, EXPORT)])
        assert c("commit", name=EXPORT) == {"ok": True}
        if how == "cancel":
            r = c("cancel-job", name=EXPORT)
            j = wait_job(c)
            assert (r["ok"] and j["state"] in ("cancelled", "completed")) or \
                (not r["ok"] and j["state"] == "completed"), (r, j)
            expected_top = ov if j["state"] == "cancelled" else base
            assert c("list-exports")["exports"][0]["path"] == expected_top
            assert recorded_top(state) == expected_top
            r = c("commit", name=EXPORT)  # a second commit finishes the job
            if expected_top == ov:
                assert r == {"ok": True} and wait_job(c)["state"] == "completed"
            c.close()
            srv.assert_clean_stop()
        elif how == "remove":
            assert c("remove-export", name=EXPORT) == {"ok": True}
            assert not ({base, ov} & held_files(srv.pid))
            c.close()
            srv.assert_clean_stop()
        else:
            c.close()
            srv.assert_clean_stop()
        assert_qemu_clean(base)
        assert_qemu_clean(ov)
        top = base if how == "cancel" else ov  # the overlay still reads the whole disk
        qemu_io(top, "read -P 0x11 0 1M", f"read -P 0x71 {MiB} {n}M",
                f"read -P 0x12 {SIZE // 2} 1M")


def test_errors(workdir, servers):
    base = make_base(workdir)
    raw = os.path.join(workdir, "disk.raw")
    with open(raw, "wb") as f:
        f.truncate(SIZE)
    srv, sock, ctl, state = start(servers, workdir)
    c = Control(ctl)
    assert c("add-export", name=EXPORT, path=base, format="qcow2") == {"ok": True}
    assert c("add-export", name="ro", path=raw, **{"read-only": True}) == {"ok": True}
    existing = os.path.join(workdir, "exists.qcow2")
    open(existing, "w").close()
    for req, what, reason in [
            (dict(cmd="snapshot", name="nope", path=os.path.join(workdir, "x")), "nope",
             "not-found"),
            (dict(cmd="snapshot", name=EXPORT, path="rel.qcow2"), "absolute", "invalid-argument"),
            (dict(cmd="snapshot", name=EXPORT, path=existing), "exists", "exists"),
            (dict(cmd="snapshot", name=EXPORT, path=os.path.join(workdir, "no/dir/x.qcow2")), "",
             "not-found"),
            (dict(cmd="snapshot", name=EXPORT, path=os.path.join(workdir, "y"), format="raw"),
             "qcow2", "invalid-argument"),
            (dict(cmd="snapshot", name=EXPORT, path=os.path.join(workdir, "y"),
                  options={"cluster_size": 1000}), "cluster size", "invalid-argument"),
            (dict(cmd="snapshot", name="ro", path=os.path.join(workdir, "y")), "read-only",
             "invalid-argument"),
            (dict(cmd="commit", name=EXPORT), "no backing", "invalid-argument"),
            (dict(cmd="commit", name="nope"), "nope", "not-found"),
            (dict(cmd="cancel-job", name=EXPORT), "no running job", "not-found")]:
        r = c.raw(json.dumps(req) + "\n")
        assert r["ok"] is False and what in r["error"] and r["reason"] == reason, (req, r)
    assert not os.path.exists(os.path.join(workdir, "y"))
    assert open(existing).read() == ""
    s1 = os.path.join(workdir, "s1.qcow2")
    assert c("snapshot", name=EXPORT, path=s1, options={"cluster_size": 16384}) == {"ok": True}
    assert json.loads(qemu_img("info", "-U", "--output=json", s1).stdout)["cluster-size"] == 16384
    r = c("commit", name=EXPORT, base=existing)
    assert r["ok"] is False and r["reason"] == "unsupported" and base in r["error"], r
    c.close()
    srv.assert_clean_stop()


def test_commit_base_locked_by_another_process(workdir, servers):
    """The base cannot be made writable (qemu-io holds it read-only, refusing writers): the
    commit fails with the lock's error and the export serves on, on its chain."""
    base = make_base(workdir)
    srv, sock, ctl, state = start(servers, workdir)
    c = Control(ctl)
    assert c("add-export", name=EXPORT, path=base, format="qcow2") == {"ok": True}
    ov = os.path.join(workdir, "ov.qcow2")
    assert c("snapshot", name=EXPORT, path=ov) == {"ok": True}
    client = RawClient(sock).connect_export(EXPORT)
    assert client.pwrite(0, b"\x31" * 4096) == 0
    holder = subprocess.Popen([QEMU_IO, "-r", "-f", "qcow2", base], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while base not in held_files(holder.pid):  # until qemu-io has opened (and locked) it
            assert time.monotonic() < deadline, "qemu-io did not open the base"
            time.sleep(0.05)
        r = c("commit", name=EXPORT)
        assert r["ok"] is False and r["reason"] == "busy" and "lock" in r["error"], r
    finally:
        holder.stdin.close()
        holder.wait(timeout=20)
    assert c("list-exports")["exports"][0]["path"] == ov
    r = client.pread(0, 8192)
    assert r.error == 0 and r.data == b"\x31" * 4096 + b"\x11" * 4096
    assert client.pwrite(4096, b"\x32" * 4096) == 0 and client.flush() == 0
    # And once the other process is gone, the commit goes through.
    assert c("commit", name=EXPORT) == {"ok": True}
    assert wait_job(c)["state"] == "completed"
    client.close()
    c.close()
    srv.assert_clean_stop()
    qemu_io(base, "read -P 0x31 0 4096", "read -P 0x32 4096 4096")
    assert_qemu_clean(base)


def test_commit_enospc_keeps_serving(workdir, servers):
    """The base lies on a small tmpfs: the commit runs out of space, fails with that error,
    and the export serves on from its overlay, base and overlay intact."""
    small = os.path.join(workdir, "small")
    os.mkdir(small)
    run(["mount", "-t", "tmpfs", "-o", "size=4m", "kiln-test", small])
    try:
        base = make_base(small)
        srv, sock, ctl, state = start(servers, workdir)
        c = Control(ctl)
        assert c("add-export", name=EXPORT, path=base, format="qcow2") == {"ok": True}
        ov = os.path.join(workdir, "ov.qcow2")
        assert c("snapshot", name=EXPORT, path=ov) == {"ok": True}
        data = os.path.join(workdir, "data.raw")
        with open(data, "wb") as f:
            f.write(random.Random(7).randbytes(8 * MiB))
        client = RawClient(sock).connect_export(EXPORT)
        blob = open(data, "rb").read()
        for off in range(0, len(blob), MiB):
            assert client.pwrite(MiB + off, blob[off:off + MiB]) == 0
        assert client.flush() == 0
        assert c("commit", name=EXPORT) == {"ok": True}
        j = wait_job(c)
        assert j["state"] == "failed" and "No space left on device" in j["error"], j
        assert c("list-exports")["exports"][0]["path"] == ov
        assert recorded_top(state) == ov
        for off in range(0, len(blob), MiB):
            r = client.pread(MiB + off, MiB)
            assert r.error == 0 and r.data == blob[off:off + MiB], off
        assert client.pwrite(0, b"\x44" * 4096) == 0 and client.flush() == 0
        client.close()
        c.close()
        srv.assert_clean_stop()
        rc, data_, err = qemu_check(ov)
        assert rc == 0, (data_, err)
        rc, data_, err = qemu_check(base)
        assert rc in (0, 3) and data_.get("corruptions", 0) == 0, (data_, err)  # leaks at most
        qemu_io(ov, "read -P 0x44 0 4096", "read -P 0x11 4096 4096")
    finally:
        run(["umount", small], check=False)


class Writer(threading.Thread):
    """Writes numbered 4 KiB blocks with FUA, one after the other, remembering which were
    acknowledged; stops at the first error (the server was killed)."""

    def __init__(self, sock, seed):
        super().__init__(daemon=True)
        self.sock, self.seed = sock, seed
        self.acked = {}  # offset -> bytes, acknowledged with FUA
        self.inflight = None  # (offset, bytes) sent and not acknowledged when the server died
        self.stop = threading.Event()

    def run(self):
        rng = random.Random(self.seed)
        try:
            client = RawClient(self.sock).connect_export(EXPORT)
            while not self.stop.is_set():
                # Between make_base()'s data: what was there before reads as zeros.
                off = rng.randrange(MiB // 4096, SIZE // 2 // 4096) * 4096
                data = rng.randbytes(4096)
                self.inflight = (off, data)
                if client.pwrite(off, data, CMD_FLAG_FUA) != 0:
                    return
                self.inflight = None
                self.acked[off] = data
        except Exception:  # noqa: BLE001  (killed server: the connection ends)
            return


def test_sigkill_during_switch(workdir, servers):
    base = make_base(workdir)
    state = os.path.join(workdir, "state.json")
    rng = random.Random(1)
    expected = {}  # offset -> what it may read: the last acknowledged write, or the one in flight
    n = 0
    first = True
    for rnd in range(scaled(12, 6)):
        srv, sock, ctl, _ = start(servers, workdir)
        c = Control(ctl)
        if first:
            assert c("add-export", name=EXPORT, path=base, format="qcow2") == {"ok": True}
            first = False
        w = Writer(sock, rnd)
        w.start()
        time.sleep(0.05)
        top = recorded_top(state)
        depth = len(chain_of(top))
        # A snapshot while the chain is short, a commit once it has grown.
        if depth < 3:
            n += 1
            line = json.dumps({"cmd": "snapshot", "name": EXPORT,
                               "path": os.path.join(workdir, f"s{n}.qcow2")})
        else:
            line = json.dumps({"cmd": "commit", "name": EXPORT})
        c.sock.sendall(line.encode() + b"\n")
        time.sleep(rng.uniform(0, 0.03 if not SANITIZED else 0.1))
        srv.send_signal(signal.SIGKILL)
        srv.wait(timeout=30)
        w.stop.set()
        w.join(timeout=30)
        c.close()
        for off, data in w.acked.items():
            expected[off] = {data}
        if w.inflight:  # it may or may not have landed
            off, data = w.inflight
            expected[off] = expected.get(off, {bytes(4096)}) | {data}
        # The chain the state file names opens, checks clean or with leaks only, and holds
        # every write acknowledged with FUA before the kill.
        top = recorded_top(state)
        for f in chain_of(top):
            rc, data, err = qemu_check(f)
            assert rc in (0, 3) and data and data.get("corruptions", 0) == 0, (rnd, f, data, err)
            p = kiln_img("check", f, check=False)
            assert p.returncode in (0, 3), (rnd, f, p.stdout, p.stderr)
        dump = os.path.join(workdir, "dump.raw")
        qemu_img("convert", "-U", "-f", "qcow2", "-O", "raw", top, dump)
        with open(dump, "rb") as f:
            for off, allowed in expected.items():
                f.seek(off)
                assert f.read(4096) in allowed, (rnd, off, top)
        os.unlink(dump)
        # The next round's server restarts from the state file.
    srv, sock, ctl, _ = start(servers, workdir)
    c = Control(ctl)
    e = c("list-exports")["exports"][0]
    assert e["state"] == "ready" and e["path"] == recorded_top(state), e
    c.close()
    srv.assert_clean_stop()
