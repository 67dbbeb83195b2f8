"""kiln-nbd against clients that misbehave on purpose: a client that never reads its replies
(the server's memory stays bounded and other clients are still served), a client that never
finishes its handshake (dropped after --handshake-timeout), a client stalled in the middle of
its handshake while its export is removed (nothing is used after it is freed: run under ASan),
and more connections than file descriptors (the accept loop waits instead of spinning)."""

import fcntl
import os
import resource
import socket
import struct
import termios
import time

import pytest

from kilntest.images import MiB, SANITIZED
from kilntest.nbd import (CMD_READ, INFO_DESCRIPTION, INFO_NAME, OPT_GO, OPT_INFO, OPT_LIST,  # noqa: F401  (fixture)
                          REP_ACK, REP_ERR_UNKNOWN, REP_INFO, REP_SERVER, TIMEOUT, Closed, Control,
                          RawClient, control, cpu_seconds, proc_status_kib, servers)


def make_image(path, size):
    """A sparse raw image with a pattern in its first MiBs (bytes a reader can check)."""
    with open(path, "wb") as f:
        for i in range(4):
            f.write(bytes([0x40 + i]) * MiB)
        f.truncate(size)
    return path


def wait_until(what, condition, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def wait_stable(read, settle=0.5):
    """Polls read() until it returns the same value for `settle` seconds; returns it."""
    last, since = read(), time.monotonic()
    deadline = since + TIMEOUT
    while time.monotonic() - since < settle:
        assert time.monotonic() < deadline, "value never settled"
        time.sleep(0.05)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


def unread_bytes(sock):
    """Bytes waiting in a socket's receive queue (SIOCINQ)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def stuck_reader(sock_path, count, length):
    """A client that sends `count` reads of `length` bytes and never reads a reply."""
    c = RawClient(sock_path)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.connect_export("")
    for i in range(count):
        c.request(CMD_READ, (i % 4) * length, length)
    return c


def requests_seen(ctl):
    return control(ctl, "stats", name="")["stats"][""]["requests"]


# The bound docs/kiln-nbd.md states for one connection (64 MiB of requests and replies), plus
# what else may grow meanwhile: the good client's buffers, allocator slack and, under ASan,
# its quarantine of freed buffers and shadow memory.
SLACK = (96 if SANITIZED else 32) * MiB


@pytest.mark.parametrize("variant", ["default", "total"])
def test_client_that_never_reads(workdir, servers, variant):
    """default: one client sends 24 reads of 32 MiB and reads nothing; the server holds at
    most its 64 MiB connection budget of them. total: --max-memory 64M, and two such clients
    fill it; a third, well-behaved client is still served, through the request every idle
    connection is guaranteed."""
    img = make_image(os.path.join(workdir, "d.raw"), 256 * MiB)
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    extra = ["--max-memory", "64M"] if variant == "total" else []
    srv = servers.kiln("-t", "-e", "0", "-f", "raw", *extra, img, sock=sock, control=ctl)
    good = RawClient(sock).connect_export("")
    assert good.pread(0, 4096).data == b"\x40" * 4096
    base = proc_status_kib(srv.pid, "VmRSS") * 1024

    if variant == "default":
        limit = 64 * MiB
        stuck = [stuck_reader(sock, 24, 32 * MiB)]
    else:
        # Two reads of (32 MiB - 64 KiB) fill the 64 MiB total but for 127 KiB: the second
        # stuck client gets nothing, and the good client's 1 MiB reads do not fit either.
        limit = 64 * MiB
        stuck = [stuck_reader(sock, 8, 32 * MiB - 65536) for _ in range(2)]
    # Let the server take everything it will take from the stuck clients.
    wait_stable(lambda: requests_seen(ctl))

    # Meanwhile the good client's reads (1 MiB: as large as the guaranteed request) complete,
    # with the right bytes.
    for i in range(32):
        r = good.pread((i % 4) * MiB, MiB)
        assert r.error == 0 and r.data == bytes([0x40 + i % 4]) * MiB
    grown = proc_status_kib(srv.pid, "VmHWM") * 1024 - base
    assert grown < limit + SLACK, f"server grew by {grown // MiB} MiB (bound {limit // MiB} MiB)"
    assert srv.alive()
    good.close()
    if variant == "default":
        # SIGTERM with the stuck client still connected: the replies it never takes are given
        # up after the drain timeout, and the server exits cleanly.
        srv.assert_clean_stop()
        assert "replies not taken" in srv.log()
        for c in stuck:
            c.close()
    else:
        for c in stuck:
            c.close()
        srv.assert_clean_stop()


def test_handshake_timeout(workdir, servers):
    img = make_image(os.path.join(workdir, "d.raw"), 8 * MiB)
    sock = os.path.join(workdir, "nbd.sock")
    srv = servers.kiln("-t", "-e", "0", "--handshake-timeout", "1", "-f", "raw", img, sock=sock)
    silent = RawClient(sock)          # connects, and never says a word
    half = RawClient(sock)            # reads the greeting, sends its flags, then nothing
    half.start()
    served = RawClient(sock).connect_export("")  # finishes in time, then idles
    assert silent.closed_by_server(), "a client that never negotiated is still connected"
    assert half.closed_by_server(), "a client that stopped mid-handshake is still connected"
    # The limit is on the handshake only: the idle client in transmission is still served.
    assert served.pread(0, 4096).data == b"\x40" * 4096
    assert srv.log().count("handshake not finished") == 2, srv.log()
    for c in (silent, half, served):
        c.close()
    srv.assert_clean_stop()


def stall_and_remove(c, sock, names, requests):
    """Sends every option of `requests` without reading a reply, until the server is stuck
    writing; removes the exports `names` then; reads on. Every option must get a well-formed
    answer (GO: unknown, its export being gone)."""
    client = RawClient(sock)
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # Room for every option the server has not read yet: the client sends them all first.
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * MiB)
    client.start()
    for opt, data in requests:
        client.send_option(opt, data)
    # The server has written all it can and waits for the client.
    wait_until("replies", lambda: unread_bytes(client.sock) > 0)
    wait_stable(lambda: unread_bytes(client.sock), settle=0.3)
    for n in names:
        assert c("remove-export", name=n) == {"ok": True}
    unknown = 0
    for opt, _ in requests:
        while True:
            try:
                ropt, rtype, data = client.option_reply()
            except Closed:
                raise AssertionError("the server hung up on a client that was only slow")
            assert ropt == opt
            if rtype == REP_ACK or rtype & 0x80000000:
                break
            assert rtype in (REP_INFO, REP_SERVER), hex(rtype)
        unknown += rtype == REP_ERR_UNKNOWN
        if opt == OPT_GO:
            assert rtype == REP_ERR_UNKNOWN, hex(rtype)
    client.close()
    return unknown


@pytest.mark.parametrize("option", ["info", "list"])
def test_remove_export_during_stalled_handshake(workdir, servers, option):
    """A client sends options whose replies overflow the socket buffers and reads nothing, so
    the server is suspended in the middle of replying about an export; the export is removed
    then. Removal must not wait for the client, and the server must not touch the freed
    export when the client reads on (ASan reports it if it does)."""
    img = make_image(os.path.join(workdir, "d.raw"), 8 * MiB)
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    srv = servers.kiln("-e", "0", "--handshake-timeout", "0", sock=sock, control=ctl)
    c = Control(ctl)

    def add(name, description):
        r = c("add-export", name=name, path=img, format="raw", description=description,
              **{"read-only": True})
        assert r == {"ok": True}, r

    if option == "list":
        # 1.6 MB of LIST replies (descriptions are protocol strings, at most 4096 bytes).
        names = [f"e{i:03d}" for i in range(400)]
        for n in names:
            add(n, "d" * 4096)
        stall_and_remove(c, sock, names, [(OPT_LIST, b"")])
        # (That LIST was cut short by nothing: it lists what existed when it was asked.)
    else:
        # Which write blocks depends on how the replies add up in the socket buffer: rounds
        # with other name lengths and other INFO requests block it at other points of its
        # replies about the export.
        mixes = [(INFO_NAME, INFO_DESCRIPTION), (INFO_NAME,), (INFO_DESCRIPTION,), ()]
        for i, length in enumerate((3994, 3500, 2900, 2300, 1700, 1100)):
            name = f"r{i}-" + "n" * (length - 3)
            add(name, "a description")
            requests = [(OPT_INFO, RawClient.info_data(name, mixes[k % 4])) for k in range(120)]
            requests.append((OPT_GO, RawClient.info_data(name, (INFO_NAME,))))
            # (The removal came while the server was still answering INFOs, not after.)
            assert stall_and_remove(c, sock, [name], requests) > 1
    assert c("list-exports") == {"ok": True, "exports": []}
    c.close()
    srv.assert_clean_stop()


def test_accept_backs_off_when_out_of_descriptors(workdir, servers):
    """With RLIMIT_NOFILE low, clients beyond it wait in the listen backlog: the accept loop
    retries every 100 ms instead of spinning, and serves again once descriptors come back."""
    img = make_image(os.path.join(workdir, "d.raw"), 8 * MiB)
    sock = os.path.join(workdir, "nbd.sock")

    def low_nofile():
        resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))

    srv = servers.kiln("-t", "-e", "0", "--threads", "1", "--handshake-timeout", "0", "-f", "raw",
                       img, sock=sock, preexec=low_nofile)
    # One client through every path first: UBSan's vptr check opens a pipe the first time it
    # meets a type at a call site, and would report a false error while descriptors are out.
    with RawClient(sock) as c:
        c.connect_export("")
        assert c.pread(0, 4096).data == b"\x40" * 4096
        c.disc()
        assert c.closed_by_server()
    extra = []
    for _ in range(40):  # more than the server has descriptors for
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        extra.append(s)
    wait_until("kiln-nbd to run out of descriptors", lambda: "Too many open files" in srv.log())
    before = cpu_seconds(srv.pid)
    time.sleep(2)  # a window to measure CPU over, not a wait for an event
    used = cpu_seconds(srv.pid) - before
    assert used < 0.5, f"kiln-nbd used {used:.2f} s of CPU in 2 s while out of descriptors"
    assert srv.alive()
    for s in extra:
        s.close()
    # Descriptors come back as the server notices the closed clients; a new client is served.
    c = RawClient(sock).connect_export("")
    assert c.pread(MiB, 4096).data == b"\x41" * 4096
    c.close()
    srv.assert_clean_stop()
