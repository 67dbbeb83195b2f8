"""kiln-nbd's life cycle: SIGTERM with requests in flight (every acknowledged write is in the
image, which checks clean), the qemu-nbd command-line semantics (-t, -e, --fork, --pid-file),
--discard=unmap, SIGHUP reopening the log, and clear errors for bad command lines."""

import os
import select
import signal
import struct
import subprocess
import threading
import time

import pytest

from kilntest.images import MiB, assert_qemu_clean, create_qcow2, qemu_img, read_file
from kilntest.nbd import (CMD_TRIM, CMD_WRITE, KILN_NBD, NBDINFO, REP_ACK, REP_ERR_POLICY, TIMEOUT,
                          RawClient, assert_no_sanitizer_report, build_overlay, run, servers,
                          sha256, unix_uri)  # noqa: F401  (fixture)


def test_sigterm_with_requests_in_flight(workdir, servers):
    ov, base = build_overlay(os.path.join(workdir, "img"))
    base_sum = sha256(base)
    top = create_qcow2(os.path.join(workdir, "img", "top.qcow2"), backing=ov, backing_fmt="qcow2")
    sock = os.path.join(workdir, "nbd.sock")
    srv = servers.kiln("-e", "0", "-t", "-f", "qcow2", top, sock=sock)
    clients = [RawClient(sock).connect_export("") for _ in range(3)]
    writes = {}  # (client index, handle) -> (offset, data)
    acked = []
    errors = []

    def reader(i, c):
        try:
            while True:
                r = c.reply()
                acked.append((i, r.handle, r.error))
        except Exception as e:  # noqa: BLE001 - the server closing the connection ends it
            errors.append(repr(e))

    threads = [threading.Thread(target=reader, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    # Each write its own 4 KiB, the three clients sharing clusters (allocations race).
    for n in range(400):
        for i, c in enumerate(clients):
            off = (n * len(clients) + i) * 4096
            data = struct.pack(">HH", i, n) * 1024
            try:
                h = c.request(CMD_WRITE, off, len(data), 0, data)
            except Exception:  # noqa: BLE001 - closed under us: fine, not acknowledged
                break
            writes[(i, h)] = (off, data)
        if n == 100:
            srv.send_signal(signal.SIGTERM)  # with ~300 writes sent, most of them in flight
    for t in threads:
        t.join(TIMEOUT)
    rc = srv.wait()
    assert rc == 0, f"kiln-nbd exited with {rc}: {srv.log()}"
    assert_no_sanitizer_report(srv.log(), "kiln-nbd")
    for c in clients:
        c.close()
    ok = [(i, h) for i, h, e in acked if e == 0]
    assert len(ok) >= 3, f"nothing acknowledged before SIGTERM: {errors}"
    assert_qemu_clean(top)
    raw = os.path.join(workdir, "out.raw")
    qemu_img("convert", "-f", "qcow2", "-O", "raw", top, raw)
    image = read_file(raw)
    lost = [(key, writes[key][0]) for key in ok
            if image[writes[key][0]:writes[key][0] + 4096] != writes[key][1]]
    assert not lost, f"{len(lost)} of {len(ok)} acknowledged writes missing, e.g. {lost[:3]}"
    assert sha256(base) == base_sum


def test_not_persistent_exits_after_last_client(workdir, servers):
    img = os.path.join(workdir, "d.raw")
    open(img, "wb").truncate(MiB)
    sock = os.path.join(workdir, "nbd.sock")
    srv = servers.kiln("-f", "raw", img, sock=sock)  # like qemu-nbd: no -t, -e 1
    run([NBDINFO, unix_uri(sock)])
    assert srv.wait() == 0, srv.log()
    assert not os.path.exists(sock), "socket left behind"


def test_shared_limit(workdir, servers):
    img = os.path.join(workdir, "d.raw")
    open(img, "wb").truncate(MiB)
    sock = os.path.join(workdir, "nbd.sock")
    srv = servers.kiln("-t", "-e", "2", "-f", "raw", img, sock=sock)
    a = RawClient(sock).connect_export("")
    b = RawClient(sock).connect_export("")
    c = RawClient(sock)
    c.start()
    replies = c.go("")
    assert replies[-1][0] == REP_ERR_POLICY, replies  # a third client over -e 2
    a.disc()
    assert a.closed_by_server()
    deadline = time.monotonic() + TIMEOUT
    while (replies := c.go(""))[-1][0] != REP_ACK:
        assert time.monotonic() < deadline, replies
        time.sleep(0.05)
    assert c.pread(0, 512).data == bytes(512)
    for x in (a, b, c):
        x.close()
    srv.assert_clean_stop()


def start_forked(workdir, stdio):
    """kiln-nbd --fork: returns once the server listens (no waiting needed); the PID from
    --pid-file."""
    img = os.path.join(workdir, "d.raw")
    with open(img, "wb") as f:
        f.write(b"\x42" * MiB)
    sock = os.path.join(workdir, "nbd.sock")
    pidfile = os.path.join(workdir, "kiln.pid")
    log = os.path.join(workdir, "kiln.log")
    p = subprocess.run([KILN_NBD, "--fork", "--pid-file", pidfile, "--log", log, "-t", "-k",
                        sock, "-f", "raw", img], stdout=stdio, stderr=stdio, timeout=TIMEOUT)
    assert p.returncode == 0
    return int(open(pidfile).read()), sock, pidfile, log


def stop_forked(pid, pidfile):
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + TIMEOUT
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        assert time.monotonic() < deadline, "daemon did not stop"
        time.sleep(0.02)
    while os.path.exists(pidfile) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(pidfile), "pid file left behind"


def test_fork_and_pid_file(workdir):
    with open(os.path.join(workdir, "stdio"), "wb") as stdio:
        pid, sock, pidfile, log = start_forked(workdir, stdio)
    try:
        out = run([NBDINFO, "--json", unix_uri(sock)]).stdout
        assert '"export-size": 1048576' in out
    finally:
        stop_forked(pid, pidfile)
    assert "listening" in open(log).read()
    assert_no_sanitizer_report(open(log).read(), "kiln-nbd")


def test_fork_releases_callers_stdio(workdir):
    pid = None
    pidfile = os.path.join(workdir, "kiln.pid")
    try:
        r, w = os.pipe()
        with os.fdopen(w, "wb") as wf:
            pid, _, pidfile, _ = start_forked(workdir, wf)
        try:
            ready, _, _ = select.select([r], [], [], 5)
            assert ready and os.read(r, 4096) == b"", \
                "the daemon still holds the caller's stdout/stderr"
        finally:
            os.close(r)
    finally:
        if pid is None and os.path.exists(pidfile):
            pid = int(open(pidfile).read())
        if pid:
            stop_forked(pid, pidfile)


def test_discard_unmap(workdir, servers):
    """--discard=unmap: TRIM frees clusters (they read back as the backing's data); without
    it TRIM is accepted and ignored, like qemu-nbd's default."""
    for mode in ("unmap", "ignore"):
        d = os.path.join(workdir, mode)
        ov, _ = build_overlay(d)
        sock = os.path.join(d, "nbd.sock")
        srv = servers.kiln("-t", f"--discard={mode}", "-f", "qcow2", ov, sock=sock)
        with RawClient(sock) as c:
            c.connect_export("")
            assert c.simple(CMD_TRIM, 512 * 1024, MiB) == 0  # the overlay's own 0x33 data
            data = c.pread(MiB, 4096).data
        srv.assert_clean_stop()
        assert_qemu_clean(ov)
        if mode == "unmap":
            # Discarded qcow2 v3 clusters read as zeros, not as the backing's bytes.
            assert data == bytes(4096), data[:8]
        else:
            assert data == b"\x33" * 4096


def test_sighup_reopens_log(workdir, servers):
    img = os.path.join(workdir, "d.raw")
    open(img, "wb").truncate(MiB)
    sock = os.path.join(workdir, "nbd.sock")
    log = os.path.join(workdir, "server.log")
    srv = servers.kiln("-t", "--log", log, "-f", "raw", img, sock=sock)
    os.rename(log, log + ".1")
    srv.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(log):
        assert time.monotonic() < deadline and srv.alive(), "log not reopened"
        time.sleep(0.02)
    run([NBDINFO, unix_uri(sock)])
    srv.assert_clean_stop()
    assert "listening" in open(log + ".1").read()
    assert "log reopened" in open(log).read()


@pytest.mark.parametrize("args, words", [
    (["/nonexistent/disk.qcow2"], "nonexistent"),
    (["--export", "x"], "NAME=FILE"),
    (["--export", "x=IMG,bogus"], "bogus"),
    (["--cache=sometimes", "IMG"], "Invalid cache mode 'sometimes'"),
    (["-n", "--cache=writeback", "IMG"], "-n (--nocache) is --cache=none"),
    (["--discard=sometimes", "IMG"], "discard"),
    (["-p", "99999", "IMG"], "port"),
    (["-f", "vmdk", "IMG"], "vmdk"),
    (["IMG", "IMG"], "too many"),
    ([], "nothing to serve"),
    # Numbers are whole, in range, and nothing else (qemu-nbd's "Invalid ..." errors).
    (["--shared=abc", "IMG"], "Invalid shared 'abc'"),
    (["-e", "-1", "IMG"], "Invalid shared '-1'"),
    (["-e", "2x", "IMG"], "Invalid shared '2x'"),
    (["-e", "", "IMG"], "Invalid shared ''"),
    (["-p", "80x", "IMG"], "Invalid port '80x'"),
    (["-p", "0", "IMG"], "Invalid port '0'"),
    (["-p", "65536", "IMG"], "Invalid port '65536'"),
    (["-p", " 80", "IMG"], "Invalid port ' 80'"),
    (["--threads=abc", "IMG"], "Invalid threads 'abc'"),
    (["--threads=0", "IMG"], "Invalid threads '0'"),
    (["--threads=4x", "IMG"], "Invalid threads '4x'"),
    (["--threads=99999999999999999999999", "IMG"], "Invalid threads"),
    (["--handshake-timeout=soon", "IMG"], "Invalid handshake-timeout 'soon'"),
    (["--handshake-timeout=-5", "IMG"], "Invalid handshake-timeout '-5'"),
    (["--max-memory=lots", "IMG"], "Invalid max-memory 'lots'"),
    (["--max-memory=1M", "IMG"], "Invalid max-memory '1M'"),
    (["--socket-group=no-such-group-kiln", "IMG"], "unknown group"),
    (["--allow-dir=/nonexistent/dir", "IMG"], "not a directory"),
    (["--export", "x=IMG,owner=nobody"], "owner= needs socket="),
    (["--export", "x=IMG,socket=/tmp/kiln-x.sock,owner=no-such-user-kiln"], "unknown user"),
])
def test_bad_command_lines(workdir, args, words):
    img = os.path.join(workdir, "d.raw")
    open(img, "wb").truncate(MiB)
    sock = os.path.join(workdir, "nbd.sock")
    args = [a.replace("IMG", img) for a in args]
    p = run([KILN_NBD, "-k", sock, *args], check=False, timeout=TIMEOUT)
    assert p.returncode == 1, (p.returncode, p.stderr)
    assert "kiln-nbd: " in p.stderr and words in p.stderr, p.stderr
    assert_no_sanitizer_report(p.stderr, "kiln-nbd")
