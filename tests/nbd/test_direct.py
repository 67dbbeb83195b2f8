"""kiln-nbd --cache=none and directsync: the image and its backing chain are really opened with
O_DIRECT (as /proc shows), unaligned and concurrent client writes (sub-sector writes into one
block, 512-byte writes at odd sectors) read back as written, and the qcow2 image checks clean.
The data-path suites (test_clients.py) run in these modes too.

Where the temporary directory's file system refuses O_DIRECT, kiln-nbd must fail with a clear
error: that case runs only there (it is skipped, and says so, on file systems that take
O_DIRECT)."""

import os
import re

import pytest

from kilntest.images import (QEMU_IO, MiB, assert_qemu_clean, assert_same_bytes, qemu_img,
                             read_file)
from kilntest.nbd import KILN_NBD, build_image, run, servers, unix_uri  # noqa: F401  (fixture)

O_DIRECT = 0o40000  # x86_64 and aarch64 agree on this one
EXPORT = "disk"


def fd_flags(pid, path):
    """The open flags of every descriptor of `pid` open on `path`."""
    real = os.path.realpath(path)
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != real:
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                m = re.search(r"^flags:\s*([0-7]+)", f.read(), re.M)
        except FileNotFoundError:
            continue
        out.append(int(m.group(1), 8))
    return out


def takes_o_direct(directory):
    probe = os.path.join(directory, "probe")
    with open(probe, "wb") as f:
        f.write(bytes(4096))
    try:
        os.close(os.open(probe, os.O_RDONLY | O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        os.unlink(probe)


@pytest.mark.parametrize("cache,direct", [("none", True), ("directsync", True),
                                          ("writeback", False), ("writethrough", False),
                                          ("unsafe", False), ("-n", True)])
def test_image_and_backing_opened_with_o_direct(workdir, servers, cache, direct):
    if not takes_o_direct(workdir):
        pytest.skip(f"the file system of {workdir} refuses O_DIRECT")
    top, fmt, base = build_image("overlay", os.path.join(workdir, "img"))
    opt = ["-n"] if cache == "-n" else [f"--cache={cache}"]
    k = servers.kiln("-f", fmt, "-t", *opt, top, sock=os.path.join(workdir, "k.sock"))
    for path in (top, base):
        flags = fd_flags(k.pid, path)
        assert flags, f"kiln-nbd has no descriptor open on {path}"
        assert all(bool(f & O_DIRECT) == direct for f in flags), (path, [oct(f) for f in flags])
    k.assert_clean_stop()


def qemu_io_nbd(uri, cmds):
    args = [QEMU_IO, "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    p = run(args + [uri])
    out = p.stdout + p.stderr
    assert "fail" not in out.lower() and "error" not in out.lower(), out
    return out


def unaligned_writes(base_off):
    """(offset, length, byte) of writes that share blocks: 512-byte writes at odd sectors then
    even ones into one 4 KiB block, sub-sector writes several to a sector, one across a block
    boundary; issued together (aio_write) so they are in flight at once."""
    w = []
    for i, s in enumerate([1, 3, 5, 7, 0, 2, 4, 6]):
        w.append((base_off + 4096 + s * 512, 512, 0x20 + i))
    for i in range(8):
        w.append((base_off + 8192 + i * 60 + 3, 50, 0x30 + i))
    w.append((base_off + 16384 - 100, 300, 0x40))
    w.append((base_off + 65536 + 7, 1000, 0x41))  # the next cluster, unallocated in an overlay
    w.append((base_off + 65536 + 2000, 33, 0x42))
    return w


@pytest.mark.parametrize("cache", ["none", "directsync"])
@pytest.mark.parametrize("kind", ["overlay", "raw"])
def test_unaligned_concurrent_writes(workdir, servers, kind, cache):
    top, fmt, _ = build_image(kind, os.path.join(workdir, "img"))
    ref = os.path.join(workdir, "ref.raw")
    qemu_img("convert", "-f", fmt, "-O", "raw", top, ref)
    model = bytearray(read_file(ref))
    sock = os.path.join(workdir, "k.sock")
    k = servers.kiln("-x", EXPORT, "-f", fmt, "-t", f"--cache={cache}", top, sock=sock)
    uri = unix_uri(sock, EXPORT)
    # Over base data (allocated in the overlay by the first, aligned write) and over a hole.
    for region in (512 * 1024, len(model) * 5 // 8 // MiB * MiB):
        writes = unaligned_writes(region)
        cmds = [f"write -P 0x10 {region} 65536"]
        cmds += [f"aio_write -P {b:#x} {o} {n}" for o, n, b in writes] + ["aio_flush"]
        model[region:region + 65536] = b"\x10" * 65536
        for o, n, b in writes:
            model[o:o + n] = bytes([b]) * n
        qemu_io_nbd(uri, cmds)
        # Read back through the server (a new connection) before it stops.
        qemu_io_nbd(uri, [f"read -P {b:#x} {o} {n}" for o, n, b in writes])
    k.assert_clean_stop()
    if fmt == "qcow2":
        assert_qemu_clean(top)
    out = os.path.join(workdir, "out.raw")
    qemu_img("convert", "-f", fmt, "-O", "raw", top, out)
    assert_same_bytes(read_file(out), bytes(model), f"{kind} image after unaligned writes")


def test_refused_o_direct_is_a_clear_error(workdir):
    """On a file system without O_DIRECT (tmpfs before Linux 6.6, some FUSE file systems)
    kiln-nbd refuses to start, naming the cache mode, as qemu-nbd does."""
    if takes_o_direct(workdir):
        pytest.skip(f"the file system of {workdir} takes O_DIRECT: nothing refuses it here")
    img = os.path.join(workdir, "d.raw")
    with open(img, "wb") as f:
        f.truncate(MiB)
    p = run([KILN_NBD, "-f", "raw", "--cache=none", "-k", os.path.join(workdir, "k.sock"), img],
            check=False)
    assert p.returncode != 0
    assert "O_DIRECT" in p.stderr and "--cache=none" in p.stderr, p.stderr
