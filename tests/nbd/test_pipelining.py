"""kiln-nbd parses every request one receive brings and sends many replies in one sendmsg
(docs/kiln-nbd.md, "Performance"). These tests drive that path with a raw-socket client:
many requests in one write(), write payloads that straddle the server's 128 KiB receive
buffer, a bad request at the end of a batch, a client that closes in the middle of a batch,
and a client that pipelines thousands of small reads without reading the replies (the
connection's reply byte budget still holds)."""

import os
import socket
import struct
import threading
import time

import pytest

from kilntest.images import MiB, SANITIZED
from kilntest.nbd import (CMD_READ, CMD_WRITE, EINVAL, REQUEST_MAGIC, TIMEOUT, RawClient,  # noqa: F401  (fixture)
                          control, proc_status_kib, servers)

SIZE = 16 * MiB
BUFFER = 128 * 1024  # the server's receive buffer (nbdserver/nbd/src/socket.h)


def block(i):
    """The pattern of 4 KiB block `i` of the image."""
    return struct.pack(">Q", i) * 512


@pytest.fixture
def srv(workdir, servers):
    img = os.path.join(workdir, "disk.raw")
    with open(img, "wb") as f:
        for i in range(SIZE // 4096):
            f.write(block(i))
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    p = servers.kiln("-e", "0", "-t", "-f", "raw", img, sock=sock, control=ctl)

    class S:
        pass
    s = S()
    s.proc, s.sock, s.ctl, s.img = p, sock, ctl, img
    yield s
    if p.alive():
        p.assert_clean_stop()


def header(cmd, handle, offset, length, flags=0, magic=REQUEST_MAGIC):
    return struct.pack(">IHHQQI", magic, flags, cmd, handle, offset, length)


def batch(c, n_requests=64):
    """One byte string with `n_requests` requests: 4 KiB reads of the first 8 MiB, and writes
    into the second 8 MiB whose payloads have odd sizes, so that request boundaries fall at
    every position of the server's receive buffer and several payloads straddle its end.
    Returns the bytes and {handle: (cmd, offset, length, payload)}."""
    out, expect = bytearray(), {}
    for i in range(n_requests):
        c.handle += 1
        h = c.handle
        if i % 3 == 1:
            length = 4096 + 1000 * i  # up to 67 KiB: 64 requests carry ~1.4 MiB
            off = 8 * MiB + i * 128 * 1024
            payload = bytes([(i * 7 + k) % 251 for k in range(251)]) * (length // 251 + 1)
            payload = payload[:length]
            out += header(CMD_WRITE, h, off, length) + payload
            expect[h] = (CMD_WRITE, off, length, payload)
        else:
            blk = (i * 37) % (8 * MiB // 4096)
            out += header(CMD_READ, h, blk * 4096, 4096)
            expect[h] = (CMD_READ, blk * 4096, 4096, block(blk))
        c.pending[h] = (expect[h][0], expect[h][1], expect[h][2])
    return bytes(out), expect


UNKNOWN_CMD = 99


def write_payloads(data, expect):
    """(start, end) in the stream of every write payload."""
    pos, out = 0, []
    for h in sorted(expect):
        cmd, _, length, _ = expect[h]
        if cmd == UNKNOWN_CMD:
            continue
        pos += 28
        if cmd == CMD_WRITE:
            out.append((pos, pos + length))
            pos += length
    assert pos == len(data)
    return out


def straddling(data, expect):
    """How many write payloads cross a multiple of the receive buffer size in the stream."""
    return sum(1 for a, b in write_payloads(data, expect) if a // BUFFER != (b - 1) // BUFFER)


def check_replies(c, expect):
    """Every request answered exactly once, with its own handle, and reads with their bytes."""
    seen = set()
    for _ in range(len(expect)):
        r = c.reply()
        assert r.handle in expect and r.handle not in seen, f"unexpected handle {r.handle}"
        seen.add(r.handle)
        cmd, _, _, payload = expect[r.handle]
        want = EINVAL if cmd == UNKNOWN_CMD else 0
        assert r.error == want, f"request {r.handle}: error {r.error}, expected {want}"
        if cmd == CMD_READ:
            assert r.data == payload, f"read {r.handle} returned the wrong bytes"
    assert seen == set(expect)


def check_writes_landed(s, expect):
    with RawClient(s.sock) as c:
        c.connect_export("")
        for cmd, off, length, payload in expect.values():
            if cmd == CMD_WRITE:
                assert c.pread(off, length).data == payload, f"write at {off} did not land"


@pytest.mark.parametrize("structured", [False, True], ids=["simple", "structured"])
def test_64_requests_in_one_write(srv, structured):
    """64 reads and writes in one write() (write payloads straddling the receive buffer),
    then a request with an unknown command and one with a bad magic: every request before
    the bad magic is answered with its own handle and bytes, then the server closes."""
    with RawClient(srv.sock) as c:
        c.connect_export("", structured=structured)
        data, expect = batch(c)
        assert straddling(data, expect) >= 3
        c.handle += 1
        data += header(UNKNOWN_CMD, c.handle, 0, 0)  # EINVAL, the connection stays
        c.pending[c.handle] = (UNKNOWN_CMD, 0, 0)
        expect[c.handle] = (UNKNOWN_CMD, 0, 0, None)
        bad = header(CMD_READ, 12345, 0, 4096, magic=0x12345678)
        c.sock.sendall(data + bad)
        check_replies(c, expect)
        assert c.closed_by_server(), "the server kept the connection after a bad magic"
    check_writes_landed(srv, expect)
    assert srv.proc.alive()


def test_requests_split_at_every_byte(srv):
    """The same batch sent in pieces of 1 to 97 bytes: a header or a payload split anywhere
    is put together again."""
    with RawClient(srv.sock) as c:
        c.connect_export("", structured=True)
        data, expect = batch(c, 24)
        pos, step = 0, 1
        while pos < len(data):
            c.sock.sendall(data[pos:pos + step])
            pos += step
            step = step % 97 + 1
            if pos < 4096:
                time.sleep(0.001)  # let the first pieces arrive one by one
        check_replies(c, expect)
    check_writes_landed(srv, expect)


@pytest.mark.parametrize("where", ["in-header", "in-payload", "after-batch"])
def test_disconnect_in_the_middle_of_a_batch(srv, where):
    """A client sends part of a batch and closes without reading a reply (cut inside a
    header, inside a write payload, or after whole requests): the server drops the
    connection, stays up, and serves the next client."""
    with RawClient(srv.sock) as c:
        c.connect_export("", structured=True)
        data, expect = batch(c)
        if where == "in-header":
            cut = len(data) // 2
            while True:  # a position 10 bytes into some header
                cut -= 1
                if data[cut:cut + 4] == struct.pack(">I", REQUEST_MAGIC):
                    cut += 10
                    break
        elif where == "in-payload":
            start, end = write_payloads(data, expect)[-1]
            cut = (start + end) // 2
        else:
            cut = len(data)
        c.sock.sendall(data[:cut])
    stats = lambda: control(srv.ctl, "stats", name="")["stats"][""]  # noqa: E731
    deadline = time.monotonic() + TIMEOUT
    while stats()["connections"] != 0:
        assert time.monotonic() < deadline, "the connection was never dropped"
        time.sleep(0.02)
    assert srv.proc.alive()
    with RawClient(srv.sock) as c:
        c.connect_export("")
        assert c.pread(4096 * 5, 4096).data == block(5)


# The connection budget docs/kiln-nbd.md states (64 MiB), plus what else may grow: allocator
# slack and, under ASan, its quarantine of freed buffers.
SLACK = (96 if SANITIZED else 32) * MiB


def test_deep_queue_of_small_reads_never_read(srv):
    """A client pipelines 24000 reads of 4 KiB (94 MiB of replies, each charged 4.5 KiB) and
    reads nothing: the server stops taking requests at its 64 MiB connection budget and its
    memory stays bounded. When the client then reads, every reply arrives, with its bytes."""
    n = 24000
    base = proc_status_kib(srv.proc.pid, "VmRSS") * 1024
    c = RawClient(srv.sock)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.connect_export("")
    expect, out = {}, bytearray()
    for i in range(n):
        c.handle += 1
        blk = i % (SIZE // 4096)
        out += header(CMD_READ, c.handle, blk * 4096, 4096)
        expect[c.handle] = (CMD_READ, blk * 4096, 4096, block(blk))
        c.pending[c.handle] = (CMD_READ, blk * 4096, 4096)
    c.sock.setblocking(False)
    sent = 0
    deadline = time.monotonic() + TIMEOUT
    last = (-1, time.monotonic())
    while sent < len(out):
        try:
            sent += c.sock.send(out[sent:sent + 65536])
            last = (sent, time.monotonic())
        except BlockingIOError:
            if time.monotonic() - last[1] > 1.0:
                break  # the server has stopped reading
            assert time.monotonic() < deadline
            time.sleep(0.01)
    taken = control(srv.ctl, "stats", name="")["stats"][""]["requests"]
    # 64 MiB at 4.5 KiB per request is 14563 requests; what sits in the socket buffers
    # was never read by the server.
    assert sent < len(out), "the server read every request without a reply being read"
    assert taken <= 64 * MiB // (4096 + 512) + 1, f"{taken} requests taken"
    grown = proc_status_kib(srv.proc.pid, "VmHWM") * 1024 - base
    assert grown < 64 * MiB + SLACK, f"server grew by {grown // MiB} MiB"
    # Now read everything: the server takes the rest as the replies drain.
    c.sock.setblocking(True)
    c.sock.settimeout(TIMEOUT)
    sender = threading.Thread(target=lambda: c.sock.sendall(out[sent:]))
    sender.start()
    check_replies(c, expect)
    sender.join()
    c.close()
    assert srv.proc.alive()


def bursts_of_reads(c, bursts, per_burst):
    """`bursts` times: `per_burst` 4 KiB reads in one write, then every reply, checked."""
    for b in range(bursts):
        expect, out = {}, bytearray()
        for i in range(per_burst):
            c.handle += 1
            blk = (b * per_burst + i) * 13 % (SIZE // 4096)
            out += header(CMD_READ, c.handle, blk * 4096, 4096)
            expect[c.handle] = (CMD_READ, blk * 4096, 4096, block(blk))
            c.pending[c.handle] = (CMD_READ, blk * 4096, 4096)
        c.sock.sendall(out)
        check_replies(c, expect)


def receive_waits(ctl):
    return control(ctl, "stats", name="")["stats"][""]["receive-waits"]


def test_receives_wait_only_for_a_client_that_pipelines(srv, servers, workdir):
    """The receive pacer (nbdserver/nbd/src/pacer.h): a client that sends one request at a
    time never has its next receive delayed; one that sends many at once soon has (and gets
    every reply right); with --batch-wait=0, nobody does."""
    with RawClient(srv.sock) as c:
        c.connect_export("")
        for i in range(2000):
            blk = i * 7 % (SIZE // 4096)
            assert c.pread(blk * 4096, 4096).data == block(blk)
    assert receive_waits(srv.ctl) == 0, "a client with one request in flight was made to wait"
    with RawClient(srv.sock) as c:
        c.connect_export("")
        bursts_of_reads(c, 300, 16)
    assert receive_waits(srv.ctl) > 0, "a pipelining client's receives were never paced"

    srv.proc.assert_clean_stop()  # (the image's lock)
    sock, ctl = os.path.join(workdir, "nowait.sock"), os.path.join(workdir, "nowait-ctl.sock")
    p = servers.kiln("--batch-wait=0", "-t", "-f", "raw", srv.img, sock=sock, control=ctl)
    with RawClient(sock) as c:
        c.connect_export("")
        bursts_of_reads(c, 300, 16)
    assert receive_waits(ctl) == 0
    p.assert_clean_stop()
