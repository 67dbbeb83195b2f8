"""kiln-nbd through the clients people use — nbdinfo, nbdcopy, qemu-img, qemu-io, fio — each
compared with what the same operations give through qemu-nbd serving a copy of the same image:
a qcow2 overlay with data over a qcow2 base with data, and a raw image. Afterwards the images
pass `qemu-img check`, read back identically, and the base is unchanged. Every test runs with
both servers in the same cache mode: writeback (the page cache), none and directsync (O_DIRECT,
bounce buffers for what is not aligned)."""

import json
import os
import re
import shutil

import pytest

from kilntest import content_digest
from kilntest.images import QEMU_IO, MiB, assert_qemu_clean, qemu_img, read_file
from kilntest.nbd import (FIO, IMAGE_SIZE, NBDCOPY, NBDINFO, build_image, free_tcp_port, run,
                          servers, tcp_uri, unix_uri)  # noqa: F401  (fixture)

EXPORT = "disk"


class Pair:
    """The same image set served by kiln-nbd (Unix socket and TCP) and by qemu-nbd."""

    def __init__(self, workdir, servers, image_sets, kind, cache="writeback"):
        self.kind = kind
        src, top, self.fmt, base = image_sets.get(kind)
        self.kiln_dir = os.path.join(workdir, "kiln")
        self.qemu_dir = os.path.join(workdir, "qemu")
        shutil.copytree(src, self.kiln_dir)
        shutil.copytree(src, self.qemu_dir)
        name = os.path.basename(top)
        self.kiln_img = os.path.join(self.kiln_dir, name)
        self.qemu_img = os.path.join(self.qemu_dir, name)
        self.bases = ([os.path.join(d, os.path.basename(base)) for d in (self.kiln_dir,
                                                                          self.qemu_dir)]
                      if base else [])
        self.base_sums = {b: content_digest(b) for b in self.bases}
        self.ksock = os.path.join(workdir, "kiln.sock")
        self.qsock = os.path.join(workdir, "qemu.sock")
        self.port = free_tcp_port()
        self.kiln = servers.kiln("-x", EXPORT, "-f", self.fmt, "-e", "8", "-t",
                                 f"--cache={cache}", self.kiln_img, sock=self.ksock,
                                 port=self.port)
        self.qemu = servers.qemu_nbd(self.qemu_img, self.qsock, self.fmt, name=EXPORT,
                                     cache=cache)
        self.k = unix_uri(self.ksock, EXPORT)
        self.kt = tcp_uri(self.port, EXPORT)
        self.q = unix_uri(self.qsock, EXPORT)

    def stop_and_check(self):
        """Stops both servers; the images check clean, hold the same bytes, bases unchanged."""
        self.kiln.assert_clean_stop()
        self.qemu.stop()
        if self.fmt == "qcow2":
            assert_qemu_clean(self.kiln_img)
            assert_qemu_clean(self.qemu_img)
        p = qemu_img("compare", "-f", self.fmt, "-F", self.fmt, self.kiln_img, self.qemu_img,
                     check=False)
        assert p.returncode == 0, f"kiln-nbd's image differs from qemu-nbd's: {p.stdout}{p.stderr}"
        for b, s in self.base_sums.items():
            assert content_digest(b) == s, f"{b} changed"


class ImageSets:
    """Each kind's image set built once per module (qemu-img and qemu-io runs); every Pair
    copies it twice, as it copied the set it built itself."""

    def __init__(self, d):
        self.d, self.built = d, {}

    def get(self, kind):
        if kind not in self.built:
            src = os.path.join(self.d, kind)
            self.built[kind] = (src, *build_image(kind, src))
        return self.built[kind]


@pytest.fixture(scope="module")
def image_sets(module_workdir):
    return ImageSets(module_workdir)


@pytest.fixture(params=[(kind, cache) for cache in ("writeback", "none", "directsync")
                        for kind in ("overlay", "raw")],
                ids=lambda p: "-".join(p))
def pair(request, workdir, servers, image_sets):
    return Pair(workdir, servers, image_sets, *request.param)


INFO_KEYS = ["export-name", "export-size", "is_read_only", "is_rotational", "can_flush",
             "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_cache",
             "can_df", "block_size_minimum", "block_size_maximum"]


def nbdinfo(*args):
    return run([NBDINFO, *args]).stdout


def test_nbdinfo(pair):
    k = json.loads(nbdinfo("--json", pair.k))
    q = json.loads(nbdinfo("--json", pair.q))
    assert k["protocol"] == q["protocol"] == "newstyle-fixed" and k["structured"] is True
    (ke,), (qe,) = k["exports"], q["exports"]
    assert {x: ke.get(x) for x in INFO_KEYS} == {x: qe.get(x) for x in INFO_KEYS}
    assert ke["export-size"] == IMAGE_SIZE
    assert {"base:allocation", "qemu:allocation-depth"} <= set(ke["contexts"])
    listed = nbdinfo("--list", "--json", unix_uri(pair.ksock))
    assert [e["export-name"] for e in json.loads(listed)["exports"]] == [EXPORT]
    assert f'export="{EXPORT}"' in nbdinfo("--list", unix_uri(pair.ksock))
    # Over TCP too.
    assert json.loads(nbdinfo("--json", pair.kt))["exports"][0]["export-size"] == IMAGE_SIZE
    for ctx in ("base:allocation", "qemu:allocation-depth"):
        km = nbdinfo(f"--map={ctx}", pair.k)
        qm = nbdinfo(f"--map={ctx}", pair.q)
        assert km == qm, f"--map={ctx}\nkiln-nbd:\n{km}\nqemu-nbd:\n{qm}"
        assert km.strip(), ctx
    if pair.kind == "overlay":
        assert "backing depth 2" in km and "local" in km, km


def test_nbdcopy_out(pair, workdir):
    kout, qout = os.path.join(workdir, "k.raw"), os.path.join(workdir, "q.raw")
    run([NBDCOPY, "--connections=4", pair.k, kout])
    run([NBDCOPY, "--connections=4", pair.q, qout])
    ref = os.path.join(workdir, "ref.raw")
    # -U: kiln-nbd holds the image's write lock while it serves it, as qemu-nbd does.
    qemu_img("convert", "-U", "-f", pair.fmt, "-O", "raw", pair.kiln_img, ref)
    assert read_file(kout) == read_file(qout) == read_file(ref)
    pair.stop_and_check()


def test_qemu_img(pair, workdir):
    for uri in (pair.k, pair.kt):
        info = json.loads(qemu_img("info", "--output=json", uri).stdout)
        assert info["virtual-size"] == IMAGE_SIZE and info["format"] == "raw", info
    qinfo = json.loads(qemu_img("info", "--output=json", pair.q).stdout)
    assert qinfo["virtual-size"] == IMAGE_SIZE
    # compare: the export against its own file, against qemu-nbd's export, and across URIs.
    qemu_img("compare", "-U", "-f", "raw", "-F", pair.fmt, pair.k, pair.qemu_img)
    qemu_img("compare", "-f", "raw", "-F", "raw", pair.kt, pair.q)
    # convert out of both URIs, to qcow2: the same content as the image itself.
    for i, uri in enumerate((pair.k, pair.kt)):
        out = os.path.join(workdir, f"out{i}.qcow2")
        qemu_img("convert", "-f", "raw", "-O", "qcow2", uri, out)
        qemu_img("compare", "-U", "-f", "qcow2", "-F", pair.fmt, out, pair.qemu_img)
    # A difference is seen: compare must be able to fail.
    other = os.path.join(workdir, "other.raw")
    qemu_img("convert", "-U", "-f", pair.fmt, "-O", "raw", pair.qemu_img, other)
    with open(other, "r+b") as f:
        f.seek(IMAGE_SIZE // 2 + 4096)
        f.write(b"\x01")
    assert qemu_img("compare", "-f", "raw", "-F", "raw", pair.k, other, check=False).returncode == 1
    # convert into the export over TCP (qemu-img convert -n) and into qemu-nbd's the same way.
    src = os.path.join(workdir, "src.raw")
    with open(src, "wb") as f:
        f.write(os.urandom(MiB) + bytes(MiB) + b"\x5c" * MiB)
    qemu_img("convert", "-n", "-f", "raw", "-O", "raw", src, pair.kt)
    qemu_img("convert", "-n", "-f", "raw", "-O", "raw", src, pair.q)
    qemu_img("compare", "-f", "raw", "-F", "raw", pair.k, pair.q)
    pair.stop_and_check()


def qemu_io_script(size):
    mid = size // 2
    return [
        "write -P 0x61 0 4096",
        "write -P 0x62 1000 3000",                     # unaligned, inside one cluster
        f"write -P 0x63 {mid - 7000} 140000",          # across clusters and base data
        f"aio_write -P 0x64 {3 * MiB} 65536", f"aio_write -P 0x65 {3 * MiB + 65536} 65536",
        "aio_flush",
        f"writev -P 0x66 {5 * MiB} 4096 512 65536",
        f"write -z {mid + 100000} 200000",
        f"write -z -u {size // 4} 131072",             # zero over base data
        f"discard {size // 8} 65536",
        f"write -P 0x67 -f {size - 8192} 8192",          # FUA
        "flush",
        "read -P 0x61 0 1000", "read -P 0x62 1000 3000",
        f"read -P 0x63 {mid - 7000} 107000",
        f"read -P 0x64 {3 * MiB} 65536", f"read -P 0x65 {3 * MiB + 65536} 65536",
        f"readv -P 0x66 {5 * MiB} 4096 512 65536",
        f"read -P 0 {mid + 100000} 200000", f"read -P 0 {size // 4} 131072",
        f"read -P 0x67 {size - 8192} 8192",
        f"read -v {size // 2 - 7100} 128",
        "map",
    ]


def qemu_io_nbd(uri, cmds):
    args = [QEMU_IO, "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    p = run(args + [uri])
    out = p.stdout + p.stderr
    assert "fail" not in out.lower() and "error" not in out.lower(), out
    # Timing lines differ from run to run.
    return [line for line in out.splitlines() if not re.search(r"ops; |ops/sec", line)]


def test_qemu_io(pair):
    cmds = qemu_io_script(IMAGE_SIZE)
    kout = qemu_io_nbd(pair.k, cmds)
    qout = qemu_io_nbd(pair.q, cmds)
    # aio_write completions may arrive in either order: replies are out of order by design.
    assert sorted(kout) == sorted(qout), "\n".join(kout + ["--- qemu-nbd:"] + qout)
    assert sum(line.startswith("read ") for line in kout) >= 9, kout
    # Reads of what was written, over a fresh connection through TCP.
    qemu_io_nbd(pair.kt, [c for c in cmds if c.startswith("read")])
    pair.stop_and_check()


def fio(uri, *args):
    p = run([FIO, "--name=t", "--ioengine=nbd", f"--uri={uri}", "--output-format=json",
             *args])
    result = json.loads(p.stdout[p.stdout.index("{"):])
    job = result["jobs"][0]
    assert job["error"] == 0, job
    return job


def test_fio_verify(pair):
    region = ["--size=8M", f"--offset={IMAGE_SIZE // 2 - 4 * MiB}"]
    common = ["--randrepeat=1", "--randseed=1234", "--verify=pattern",
              "--verify_pattern=0x4b494c4e%o", "--do_verify=1", "--verify_fatal=1",
              "--verify_state_save=0"]
    for uri in (pair.k, pair.q):
        # Random 4 KiB writes at depth 16 (allocating in the overlay), then verified.
        job = fio(uri, "--rw=randwrite", "--bs=4k", "--iodepth=16", *region, *common)
        assert job["write"]["io_bytes"] == 8 * MiB
        assert job["read"]["io_bytes"] == 8 * MiB, "fio did not verify"
        # Larger unaligned-to-cluster sequential writes with FUA-less flushes every 8 writes.
        job = fio(uri, "--rw=write", "--bs=96k", "--iodepth=4", "--fsync=8",
                  "--size=6M", f"--offset={MiB}", *common)
        assert job["read"]["io_bytes"] > 0
    # What fio wrote reads back through the other tools too.
    qemu_img("compare", "-f", "raw", "-F", "raw", pair.k, pair.q)
    pair.stop_and_check()


def test_nbdcopy_in(pair, workdir):
    """nbdcopy into the exports with 4 connections: data, zeros and holes."""
    src = os.path.join(workdir, "in.raw")
    with open(src, "wb") as f:
        for i in range(IMAGE_SIZE // (2 * MiB)):
            f.write(os.urandom(MiB) if i % 3 == 0 else bytes(MiB))
            f.write(bytes([i + 1]) * MiB if i % 2 else bytes(MiB))
        f.truncate(IMAGE_SIZE // 2)
    run([NBDCOPY, "--connections=4", src, pair.k])
    run([NBDCOPY, "--connections=4", src, pair.q])
    qemu_img("compare", "-f", "raw", "-F", "raw", pair.k, pair.q)
    kout = os.path.join(workdir, "k.raw")
    run([NBDCOPY, "--connections=4", pair.k, kout])
    assert read_file(kout)[:IMAGE_SIZE // 2] == read_file(src)
    pair.stop_and_check()


@pytest.mark.parametrize("shared", [None, "1", "2"])
def test_multi_conn_follows_client_limit(workdir, servers, shared):
    """Multi-conn is advertised only when more than one client may connect, as qemu-nbd does:
    with one client allowed (no -e, or -e 1) a client that trusted the flag would open more
    connections and be refused. Plain `nbdcopy` (which opens 4 connections when it may) works
    with default flags either way, and `kiln-nbd -t IMG` needs no -e for it."""
    img = os.path.join(workdir, "d.raw")
    with open(img, "wb") as f:
        f.write(os.urandom(MiB) + bytes(2 * MiB) + b"\x5a" * MiB)
    qimg = os.path.join(workdir, "q.raw")
    shutil.copy(img, qimg)
    ksock, qsock = os.path.join(workdir, "k.sock"), os.path.join(workdir, "q.sock")
    args = ["-t", img] if shared is None else ["-t", "-e", shared, img]
    kiln = servers.kiln(*args, sock=ksock)
    qemu = servers.qemu_nbd(qimg, qsock, "raw", shared=shared or "1")
    k = json.loads(nbdinfo("--json", unix_uri(ksock)))["exports"][0]
    q = json.loads(nbdinfo("--json", unix_uri(qsock)))["exports"][0]
    assert k["can_multi_conn"] is (shared == "2"), k
    assert k["can_multi_conn"] == q["can_multi_conn"], (k, q)
    out = os.path.join(workdir, "out.raw")
    run([NBDCOPY, unix_uri(ksock), out])
    assert read_file(out) == read_file(img)
    kiln.assert_clean_stop()
    qemu.stop()
