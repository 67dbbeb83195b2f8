"""kiln-nbd against clients that break the rules, driven by a raw-socket NBD client: bad and
truncated handshakes, oversized options and names, unknown options and commands, requests past
the end or over the maximum block size, writes to a read-only export, a client stalled in the
middle of a request, hundreds of connections. After each, the server is still up and serves
the right bytes, and the connection stays usable wherever the protocol allows."""

import os
import random
import shutil
import socket
import struct
import threading

import pytest

from kilntest.images import MiB, read_file, scaled
from kilntest.nbd import (CMD_BLOCK_STATUS, CMD_CACHE, CMD_FLAG_DF, CMD_FLAG_FUA, CMD_FLAG_NO_HOLE,
                          CMD_READ, CMD_TRIM, CMD_WRITE, CMD_WRITE_ZEROES, EINVAL,
                          ENOSPC, EOVERFLOW, EPERM, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT,
                          INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_EXPORT, INFO_NAME, OPT_ABORT,
                          OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST, OPT_LIST_META_CONTEXT,
                          OPT_STARTTLS, REP_ACK, REP_ERR_INVALID, REP_ERR_TOO_BIG, REP_ERR_UNKNOWN,
                          REP_ERR_POLICY, REP_ERR_UNSUP, REP_INFO, REP_META_CONTEXT, REP_SERVER,
                          REQUEST_MAGIC, REPLY_BLOCK_STATUS, REPLY_OFFSET_HOLE, TF_CACHE,
                          TF_FAST_ZERO, TF_FLUSH, TF_FUA, TF_HAS_FLAGS, TF_MULTI_CONN, TF_READ_ONLY,
                          TF_ROTATIONAL, TF_TRIM, TF_WRITE_ZEROES, RawClient,
                          connect_retrying, control, servers)  # noqa: F401  (fixture)

SIZE = 8 * MiB
MAX_BLOCK = 32 * MiB


@pytest.fixture
def srv(workdir, servers):
    """A raw image with a pattern in every 4 KiB block, served read-write as "" and
    read-only (a copy) as "ro", with a control socket for the statistics."""
    img = os.path.join(workdir, "disk.raw")
    data = bytearray()
    for i in range(SIZE // 4096):
        data += struct.pack(">Q", i) * 512
    with open(img, "wb") as f:
        f.write(data)
    ro = os.path.join(workdir, "ro.raw")
    shutil.copyfile(img, ro)
    sock = os.path.join(workdir, "nbd.sock")
    ctl = os.path.join(workdir, "ctl.sock")
    p = servers.kiln("-e", "0", "-t", "-f", "raw", "-D", "test disk", img,
                     "--export", f"ro={ro},format=raw,ro", sock=sock, control=ctl)

    class S:
        pass
    s = S()
    s.proc, s.sock, s.ctl, s.img, s.data = p, sock, ctl, img, data
    s.client = lambda **kw: RawClient(sock, **kw)
    yield s
    if p.alive():
        p.assert_clean_stop()


def assert_serves(s, offsets=(0, 4096 * 777, SIZE - 4096)):
    """The server is alive and a fresh connection reads the expected bytes."""
    assert s.proc.alive(), s.proc.log()
    with s.client() as c:
        c.connect_export("", structured=True)
        for off in offsets:
            r = c.pread(off, 4096)
            assert r.error == 0 and r.data == bytes(s.data[off:off + 4096]), (off, r)


# ---------------------------------------------------------------------------------------------
# Handshake

def test_handshake_flags_and_info(srv):
    with srv.client() as c:
        flags = c.start()
        assert flags == FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES
        replies = c.go("", infos=(INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE), opt=OPT_INFO)
        assert replies[-1][0] == REP_ACK
        infos = {struct.unpack(">H", d[:2])[0]: d[2:] for t, d in replies if t == REP_INFO}
        assert struct.unpack(">Q", infos[INFO_EXPORT][:8])[0] == SIZE
        assert infos[INFO_NAME] == b""
        assert infos[INFO_DESCRIPTION] == b"test disk"
        minimum, preferred, maximum = struct.unpack(">III", infos[INFO_BLOCK_SIZE])
        assert minimum == 1 and minimum <= preferred <= maximum and maximum == MAX_BLOCK
        # INFO leaves the negotiation open: GO after it.
        assert c.go("")[-1][0] == REP_ACK
        want = TF_HAS_FLAGS | TF_FLUSH | TF_FUA | TF_TRIM | TF_WRITE_ZEROES | TF_MULTI_CONN
        assert c.tflags & want == want, hex(c.tflags)
        assert not c.tflags & (TF_READ_ONLY | TF_ROTATIONAL), hex(c.tflags)
        r = c.pread(4096, 4096)
        assert r.error == 0 and r.data == bytes(srv.data[4096:8192])


def test_list_exports(srv):
    with srv.client() as c:
        c.start()
        replies = c.option(OPT_LIST)
        assert replies[-1][0] == REP_ACK
        names = sorted(d[4:4 + struct.unpack(">I", d[:4])[0]] for t, d in replies if t == REP_SERVER)
        assert names == [b"", b"ro"]
        # LIST with data is malformed: an error, and the connection goes on.
        assert c.option(OPT_LIST, b"xx")[-1][0] == REP_ERR_INVALID
        assert c.go("ro")[-1][0] == REP_ACK


@pytest.mark.parametrize("bad", ["garbage", "bad-client-flags", "bad-option-magic"])
def test_garbage_handshake(srv, bad):
    rng = random.Random(bad)
    with srv.client() as c:
        if bad == "garbage":
            c.send(bytes(rng.randrange(256) for _ in range(5000)))
        elif bad == "bad-client-flags":
            c.greeting()
            c.send(struct.pack(">I", 0xFFFF0000 | FLAG_FIXED_NEWSTYLE))
        else:
            c.start()
            c.send(struct.pack(">QII", 0x1234567812345678, OPT_GO, 0) + b"junk" * 10)
        assert c.closed_by_server(), "server kept a connection that broke the handshake"
    assert_serves(srv)


@pytest.mark.parametrize("cut", [0, 10, 18, 20, 30, 40, 50])
def test_truncated_handshake(srv, cut):
    """The client's part of a GO exchange cut after `cut` bytes, then the client hangs up."""
    whole = struct.pack(">I", FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) + struct.pack(
        ">QII", IHAVEOPT, OPT_GO, 30) + RawClient.info_data("", (INFO_NAME,) * 12)
    with srv.client() as c:
        c.greeting()
        c.send(whole[:cut])
    assert_serves(srv)


def test_oversized_option(srv):
    """An option over 64 KiB is refused with NBD_REP_ERR_TOO_BIG without ending the
    negotiation; a huge one (which the server will not read) ends the connection."""
    with srv.client() as c:
        c.start()
        c.send_option(OPT_INFO, RawClient.info_data("") + b"\0" * (70 * 1024))
        opt, rtype, _ = c.option_reply()
        assert (opt, rtype) == (OPT_INFO, REP_ERR_TOO_BIG), hex(rtype)
        assert c.go("")[-1][0] == REP_ACK
        assert c.pread(0, 4096).data == bytes(srv.data[:4096])
    with srv.client() as c:
        c.start()
        c.send_option(OPT_GO, b"", length=0x7FFFFFFF)
        assert c.closed_by_server()
    assert_serves(srv)


def test_oversized_export_name(srv):
    long_name = "n" * 5000
    with srv.client() as c:
        c.start()
        for opt in (OPT_INFO, OPT_GO):
            replies = c.option(opt, RawClient.info_data(long_name))
            assert replies[-1][0] in (REP_ERR_INVALID, REP_ERR_UNKNOWN, REP_ERR_TOO_BIG), replies
        replies = c.option(OPT_LIST_META_CONTEXT, RawClient.meta_data(long_name, []))
        assert replies[-1][0] & 0x80000000, replies
        assert c.go("")[-1][0] == REP_ACK
        assert c.pread(0, 512).data == bytes(srv.data[:512])
    # Old-style selection has no way to answer an error: the server hangs up.
    with srv.client() as c:
        c.start()
        c.send_option(OPT_EXPORT_NAME, long_name.encode())
        assert c.closed_by_server()
    # The control API refuses such names too.
    r = control(srv.ctl, "add-export", name=long_name, path=srv.img)
    assert r["ok"] is False and r["error"], r
    assert_serves(srv)


def test_unknown_options(srv):
    with srv.client() as c:
        c.start()
        for opt in (0, 4, 42, 0x7FFFFFFF, 0xFFFFFFFF):
            replies = c.option(opt, b"some data")
            assert replies == [(REP_ERR_UNSUP, replies[0][1])], (opt, replies)
        # TLS is not enabled: STARTTLS is refused by policy (as qemu-nbd and nbdkit refuse
        # it), not a hang-up.
        assert c.option(OPT_STARTTLS)[-1][0] == REP_ERR_POLICY
        assert c.go("nope")[-1][0] == REP_ERR_UNKNOWN
        assert c.go("")[-1][0] == REP_ACK
        assert c.pread(8192, 4096).data == bytes(srv.data[8192:12288])


def test_abort(srv):
    with srv.client() as c:
        c.start()
        assert c.option(OPT_ABORT) == [(REP_ACK, b"")]
        assert c.closed_by_server()
    assert_serves(srv)


@pytest.mark.parametrize("no_zeroes", [True, False], ids=["no-zeroes", "zeroes"])
def test_export_name_old_style(srv, no_zeroes):
    with srv.client() as c:
        c.start(no_zeroes=no_zeroes)
        size, flags = c.export_name("ro")  # checks the 124 zero bytes when not NO_ZEROES
        assert size == SIZE and flags & TF_READ_ONLY
        assert c.pread(SIZE - 4096, 4096).data == bytes(srv.data[-4096:])
        assert c.pwrite(0, b"x" * 512) == EPERM
    with srv.client() as c:
        c.start(no_zeroes=no_zeroes)
        c.export_name("")
        assert c.pwrite(4096 * 3, b"\x5a" * 4096) == 0
        r = c.pread(4096 * 3, 4096)
        assert r.error == 0 and r.data == b"\x5a" * 4096
        srv.data[4096 * 3:4096 * 4] = b"\x5a" * 4096
    with srv.client() as c:
        c.start(no_zeroes=no_zeroes)
        c.send_option(OPT_EXPORT_NAME, b"no-such-export")
        assert c.closed_by_server()
    assert_serves(srv, offsets=(0, 4096 * 3))


def test_meta_contexts(srv):
    with srv.client() as c:
        c.start()
        # Meta contexts need structured replies first.
        assert c.option(OPT_LIST_META_CONTEXT, RawClient.meta_data("", []))[-1][0] == REP_ERR_INVALID
        c.structured_reply()
        listed = c.option(OPT_LIST_META_CONTEXT, RawClient.meta_data("", []))
        names = sorted(d[4:].decode() for t, d in listed if t == REP_META_CONTEXT)
        assert names == ["base:allocation", "qemu:allocation-depth"]
        ids = c.set_meta_context("", ["base:allocation", "nonsense:thing"])
        assert list(ids) == ["base:allocation"]
        assert c.go("")[-1][0] == REP_ACK
        h = c.request(CMD_BLOCK_STATUS, 0, SIZE)
        r = c.reply()
        assert r.handle == h and r.error == 0
        (rtype, body), = r.chunks
        assert rtype == REPLY_BLOCK_STATUS and struct.unpack(">I", body[:4])[0] == ids["base:allocation"]
        total = sum(struct.unpack(">I", body[i:i + 4])[0] for i in range(4, len(body), 8))
        assert 0 < total <= SIZE


# ---------------------------------------------------------------------------------------------
# Transmission

def test_unknown_commands(srv):
    for structured in (False, True):
        with srv.client() as c:
            c.connect_export("", structured=structured)
            for cmd in (8, 9, 42, 0xFFFF):
                assert c.simple(cmd, 0, 4096) == EINVAL, cmd
            assert c.pread(0, 4096).data == bytes(srv.data[:4096])


def test_block_status_without_structured_replies(srv):
    """BLOCK_STATUS needs structured replies; without them the answer must still be a simple
    reply (EINVAL), which the client can parse."""
    with srv.client() as c:
        c.connect_export("")
        h = c.request(CMD_BLOCK_STATUS, 0, 4096)
        r = c.reply()  # raises if the server sends a structured chunk
        assert r.handle == h and r.error == EINVAL
        assert c.pread(0, 4096).data == bytes(srv.data[:4096])


@pytest.mark.parametrize("structured", [False, True], ids=["simple", "structured"])
def test_requests_past_the_end(srv, structured):
    with srv.client() as c:
        c.connect_export("", structured=structured, meta=["base:allocation"] if structured else None)
        assert c.pread(SIZE, 1).error == EINVAL
        assert c.pread(SIZE - 100, 200).error == EINVAL
        assert c.pread(2**64 - 512, 1024).error == EINVAL
        assert c.pwrite(SIZE, b"a" * 512) == ENOSPC
        assert c.pwrite(SIZE - 100, b"a" * 200) == ENOSPC  # payload skipped, stream in sync
        assert c.simple(CMD_WRITE_ZEROES, SIZE - 512, 1024) == ENOSPC
        assert c.simple(CMD_TRIM, SIZE, 4096) == ENOSPC
        assert c.simple(CMD_CACHE, SIZE, 4096) == EINVAL
        if structured:
            assert c.simple(CMD_BLOCK_STATUS, SIZE, 4096) == EINVAL
        # Nothing changed at the end; the connection is in sync.
        r = c.pread(SIZE - 4096, 4096)
        assert r.error == 0 and r.data == bytes(srv.data[-4096:])
    stats = control(srv.ctl, "stats", name="")["stats"][""]
    assert stats["errors"] >= 8, stats


def test_oversized_requests(srv):
    """A write over the 32 MiB maximum is refused (EINVAL) and its payload skipped: the
    connection carries on in sync and nothing was written."""
    with srv.client() as c:
        c.connect_export("", structured=True)
        big = b"\xee" * (MAX_BLOCK + 4096)
        assert c.pwrite(0, big) == EINVAL
        assert c.pread(0, SIZE // 2).data == bytes(srv.data[:SIZE // 2])
        r = c.pread(0, MAX_BLOCK + 4096)
        assert r.error == EINVAL, r
        r = c.pread(0, MAX_BLOCK + 4096, flags=CMD_FLAG_DF)
        assert r.error in (EINVAL, EOVERFLOW), r
        # Exactly the maximum is fine (past the end here, so ENOSPC — it was read and judged).
        assert c.pwrite(0, b"\x01" * MAX_BLOCK) == ENOSPC
        assert c.pwrite(4096, b"\x02" * 4096) == 0
        srv.data[4096:8192] = b"\x02" * 4096
        assert c.pread(0, 3 * 4096).data == bytes(srv.data[:3 * 4096])
    assert read_file(srv.img)[:SIZE // 2] == bytes(srv.data[:SIZE // 2])


def test_read_only_export(srv):
    with srv.client() as c:
        c.connect_export("ro", structured=True)
        assert c.tflags & TF_READ_ONLY
        assert not c.tflags & (TF_TRIM | TF_WRITE_ZEROES | TF_FAST_ZERO), hex(c.tflags)
        assert c.pwrite(0, b"w" * 4096) == EPERM
        assert c.pwrite(0, b"w" * 4096, flags=CMD_FLAG_FUA) == EPERM
        assert c.simple(CMD_TRIM, 0, 4096) == EPERM
        assert c.simple(CMD_WRITE_ZEROES, 0, 4096, CMD_FLAG_NO_HOLE) == EPERM
        assert c.flush() == 0
        assert c.pread(0, 8192).data == bytes(srv.data[:8192])
    assert read_file(os.path.join(os.path.dirname(srv.img), "ro.raw")) == bytes(srv.data)


def test_commands(srv):
    """Every command once, with the bytes read back after each."""
    with srv.client() as c:
        c.connect_export("", structured=True)
        assert c.tflags & TF_CACHE
        assert c.pwrite(MiB, b"\x07" * 8192, flags=CMD_FLAG_FUA) == 0
        assert c.simple(CMD_WRITE_ZEROES, MiB + 4096, 4096, CMD_FLAG_NO_HOLE) == 0
        assert c.simple(CMD_WRITE_ZEROES, 2 * MiB, MiB) == 0
        assert c.simple(CMD_CACHE, 0, MiB) == 0
        assert c.flush() == 0
        srv.data[MiB:MiB + 8192] = b"\x07" * 4096 + bytes(4096)
        srv.data[2 * MiB:3 * MiB] = bytes(MiB)
        r = c.pread(MiB, 2 * MiB)
        assert r.error == 0 and r.data == bytes(srv.data[MiB:3 * MiB])
        # A large read of a zeroed range may come back as holes; the bytes are the same.
        r = c.pread(2 * MiB, MiB)
        assert r.data == bytes(MiB)
        assert any(t == REPLY_OFFSET_HOLE for t, _ in r.chunks) or len(r.chunks) == 1
        r = c.pread(2 * MiB, MiB, flags=CMD_FLAG_DF)
        assert len(r.chunks) == 1 and r.data == bytes(MiB)
        assert c.simple(CMD_TRIM, 3 * MiB, MiB) == 0  # --discard not given: ignored, allowed
    assert_serves(srv, offsets=(MiB, MiB + 4096, 2 * MiB + 4096))


def test_disconnect_finishes_requests(srv):
    """NBD_CMD_DISC after a burst of writes: every write is answered, then the server hangs up,
    and the writes are in the image."""
    with srv.client() as c:
        c.connect_export("")
        handles = [c.request(CMD_WRITE, 4096 * i, 4096, 0, bytes([i]) * 4096) for i in range(64)]
        c.disc()
        got = sorted(c.reply().handle for _ in handles)
        assert got == handles
        assert c.closed_by_server()
    for i in range(64):
        srv.data[4096 * i:4096 * (i + 1)] = bytes([i]) * 4096
    assert_serves(srv, offsets=[4096 * i for i in range(0, 64, 7)])


def test_stalled_client_does_not_block_others(srv):
    """One client sends half a request header, another half a write payload, and they stall;
    other clients are served meanwhile; then the stalled ones finish and are answered."""
    a = srv.client()
    a.connect_export("")
    b = srv.client()
    b.connect_export("", structured=True)
    hdr = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_READ, 77, 4096 * 9, 4096)
    a.send(hdr[:13])
    b.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 88, 4096 * 10, 8192)
           + b"\x66" * 5000)
    try:
        for i in range(3):
            with srv.client(timeout=10) as c:
                c.connect_export("", structured=True)
                for off in (0, 4096 * 9, 4096 * 11, SIZE - 4096):
                    assert c.pread(off, 4096).data == bytes(srv.data[off:off + 4096])
                assert c.pwrite(4096 * 20 + i, b"\x31" * 100) == 0
                srv.data[4096 * 20 + i:4096 * 20 + i + 100] = b"\x31" * 100
        a.pending[77] = (CMD_READ, 4096 * 9, 4096)
        a.send(hdr[13:])
        r = a.reply()
        assert r.handle == 77 and r.error == 0 and r.data == bytes(srv.data[4096 * 9:4096 * 10])
        b.pending[88] = (CMD_WRITE, 4096 * 10, 8192)
        b.send(b"\x66" * (8192 - 5000))
        r = b.reply()
        assert r.handle == 88 and r.error == 0
        srv.data[4096 * 10:4096 * 12] = b"\x66" * 8192
    finally:
        a.close()
        b.close()
    assert_serves(srv, offsets=(4096 * 10, 4096 * 11, 4096 * 20))


def test_client_vanishes_mid_request(srv):
    for cut in (5, 28 + 1000):
        c = srv.client()
        c.connect_export("")
        msg = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_WRITE, 1, 0, 65536) + b"\xab" * 65536
        c.send(msg[:cut])
        c.close()
    assert_serves(srv)
    assert read_file(srv.img)[:65536] == bytes(srv.data[:65536])


def test_hundreds_of_connections(srv):
    """Connections that complete the handshake, abandon it, or serve a request, many of them
    at once: afterwards the server is up, serves the right bytes, and counts no connection."""
    n = scaled(300, 100)
    before = control(srv.ctl, "stats", name="")["stats"][""]["total-connections"]
    errors = []
    served = [0]
    lock = threading.Lock()

    def worker(k):
        rng = random.Random(k)
        try:
            for i in range(n // 4):
                kind = rng.randrange(4)
                with srv.client() as c:
                    if kind == 0:
                        continue  # connect and close
                    if kind == 1:
                        c.start()
                        continue  # abandon the handshake
                    c.connect_export("", structured=kind == 3)
                    with lock:
                        served[0] += 1
                    if kind == 3:
                        off = rng.randrange(SIZE // 4096) * 4096
                        r = c.pread(off, 4096)
                        if r.data != bytes(srv.data[off:off + 4096]):
                            errors.append(f"wrong data at {off}")
                        c.disc()
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    # Meanwhile, many connections held open at once.
    held = []
    try:
        for _ in range(scaled(200, 50)):
            held.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
            held[-1].settimeout(20)
            connect_retrying(held[-1], srv.sock)
    finally:
        for s in held:
            s.close()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert_serves(srv)
    # Every connection that reached an export is accounted for, and all are gone.
    import time
    deadline = time.monotonic() + 20
    while True:
        stats = control(srv.ctl, "stats", name="")["stats"][""]
        if stats["connections"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert stats["connections"] == 0, stats
    assert stats["total-connections"] - before == served[0] + 1, (stats, served)
