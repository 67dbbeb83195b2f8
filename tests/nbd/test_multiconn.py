"""Multi-conn: kiln-nbd advertises NBD_FLAG_CAN_MULTI_CONN, so a flush on one connection must
cover writes completed on every connection to the export. Two connections write (many
requests in flight, allocating the same clusters of a fresh qcow2 overlay), a third flushes, a
fourth reads everything back; then the server is stopped — cleanly, or killed right after the
flush — and the image holds every write."""

import os
import random
import signal

import pytest

from kilntest.images import assert_qemu_clean, create_qcow2, qemu_check, qemu_img, read_file
from kilntest.nbd import RawClient, build_overlay, servers, sha256  # noqa: F401  (fixture)


@pytest.mark.parametrize("stop", ["sigterm", "sigkill-after-flush"])
def test_flush_on_another_connection(workdir, servers, stop):
    ov, base = build_overlay(os.path.join(workdir, "img"))
    base_sum = sha256(base)
    # A fresh overlay over the data overlay: every first write to a cluster allocates.
    top = create_qcow2(os.path.join(workdir, "img", "top.qcow2"), backing=ov, backing_fmt="qcow2")
    ref = os.path.join(workdir, "ref.raw")
    qemu_img("convert", "-f", "qcow2", "-O", "raw", top, ref)
    expected = bytearray(read_file(ref))
    size = len(expected)
    sock = os.path.join(workdir, "nbd.sock")
    srv = servers.kiln("-e", "0", "-t", "-f", "qcow2", top, sock=sock)

    writers = [RawClient(sock).connect_export(""), RawClient(sock).connect_export("")]
    flusher = RawClient(sock).connect_export("")
    reader = RawClient(sock).connect_export("", structured=True)
    assert writers[0].tflags & 0x100, "multi-conn not advertised"

    rng = random.Random(stop)
    cluster = 65536
    handles = [[], []]
    # Writes of 4 KiB..96 KiB in 64 clusters spread over the disk, the two writers taking
    # alternate 4 KiB slots of the same clusters, all sent before any reply is read.
    # No two writes overlap: NBD does not order requests in flight, even on one connection.
    picked = rng.sample(range(size // cluster - 2), 72)
    clusters, spans = picked[:64], [c for c in picked[64:]]
    spans = [c for c in spans if not {c, c + 1, c + 2} & set(clusters)]
    spans = [c for i, c in enumerate(spans) if all(abs(c - d) > 2 for d in spans[:i])]
    for n, c in enumerate(clusters):
        for slot in range(0, cluster, 4096):
            w = (slot // 4096) % 2
            if rng.random() < 0.3:
                continue
            off = c * cluster + slot
            data = bytes([(n + slot // 4096) % 251 + 1]) * 4096
            handles[w].append(writers[w].request(1, off, len(data), 0, data))
            expected[off:off + len(data)] = data
        if n % 8 == 0 and spans:  # and some larger writes across cluster boundaries
            off = spans.pop() * cluster + 12345
            data = os.urandom(98304)
            handles[n % 2].append(writers[n % 2].request(1, off, len(data), 0, data))
            expected[off:off + len(data)] = data
    for w in (0, 1):
        replies = [writers[w].reply() for _ in handles[w]]
        assert sorted(r.handle for r in replies) == sorted(handles[w])
        assert all(r.error == 0 for r in replies), [r for r in replies if r.error][:3]
    # Every write is acknowledged; one flush on another connection makes them all durable.
    assert flusher.flush() == 0
    r = reader.pread(0, size // 2)
    assert r.error == 0
    r2 = reader.pread(size // 2, size - size // 2)
    assert r2.error == 0
    assert r.data + r2.data == bytes(expected), "a third connection reads other data"

    if stop == "sigterm":
        srv.assert_clean_stop()
        assert_qemu_clean(top)
    else:
        assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
        rc, data, err = qemu_check(top)
        assert data and data.get("corruptions", 0) == 0, (rc, data, err)  # leaks allowed
    for c in writers + [flusher, reader]:
        c.close()
    out = os.path.join(workdir, "out.raw")
    with open(out, "wb") as f:
        f.write(expected)
    p = qemu_img("compare", "-f", "qcow2", "-F", "raw", top, out, check=False)
    assert p.returncode == 0, f"flushed data lost: {p.stdout}{p.stderr}"
    assert sha256(base) == base_sum
