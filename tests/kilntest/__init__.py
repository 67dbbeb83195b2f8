"""Kiln's Python test helpers, one package for every suite under tests/ (see docs/layout.md).

This module holds what every suite needs: the scale and sanitizer switches CTest sets, running
a command, hashing a file, and reading the kernel's socket tables to know when a server is
ready (a probe connection would count as a client). The modules next to it are per subject:
images (qcow2 images and QEMU's tools), nbd (servers and a raw NBD client), hostile (hostile
NBD clients), fs and fuse (guest filesystems, mounts), spawn (kiln-spawn's world), guest (the
test guest, kiln-nbd and QEMU for the e2e suites). The libvirt sandbox lives in
scripts/lib/kiln_sandbox.py, because the demo uses it too.
"""

import errno
import hashlib
import os
import shutil
import socket
import subprocess

# Under sanitizers everything is several times slower: tests scale their sizes by this.
SCALE = float(os.environ.get("KILN_TEST_SCALE", "1"))
SANITIZED = os.environ.get("KILN_SANITIZED", "0") == "1"

KiB = 1024
MiB = 1024 * KiB


def scaled(n, minimum=1):
    return max(minimum, int(n * SCALE))


def sampled_matrix(cases, ids, every=2):
    """A matrix for pytest.mark.parametrize: every case in the release tier; under the
    sanitizers every `every`-th case, the others skipped with that reason (they run the same
    code on other inputs; the release tier runs them all)."""
    import pytest
    skip = pytest.mark.skipif(SANITIZED, reason=f"release tier only (1 case in {every} runs "
                                                "under the sanitizers)")
    return [pytest.param(*(c if isinstance(c, tuple) else (c,)), id=i,
                         marks=() if n % every == 0 else skip)
            for n, (c, i) in enumerate(zip(cases, ids))]


def run(args, check=True, input=None, timeout=600, text=True, **kw):
    """Runs a command and returns the CompletedProcess (stdout and stderr captured, as text
    unless text=False); with check, a non-zero exit raises AssertionError with both outputs."""
    p = subprocess.run([str(a) for a in args], capture_output=True, text=text, input=input,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        out, err = p.stdout, p.stderr
        if not text:
            out, err = out.decode(errors="replace"), err.decode(errors="replace")
        raise AssertionError(f"command failed ({p.returncode}): {' '.join(map(str, args))}\n"
                             f"stdout: {out}\nstderr: {err}")
    return p


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_digest(path, block=64 * KiB):
    """A digest of a file's bytes for "is it unchanged" checks: equal digests mean equal
    bytes, whatever the file's layout, and the file's holes are not read. SHA-256 of the size,
    then per 64 KiB block b"Z" for a block of zeros, b"D" and its bytes for any other. Disk
    images are mostly holes: sha256() of every byte of fs.bad_input's 96 MiB images took 12 s
    of the suite's 17 s of CPU. (Not a SHA-256 of the file: use sha256() to compare with one.)"""
    h = hashlib.sha256()
    zero = bytes(block)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        h.update(size.to_bytes(8, "little"))
        off = data_start = data_end = 0
        while off < size:
            n = min(block, size - off)
            if off >= data_end:  # where the next data is, and where it ends
                try:
                    data_start = os.lseek(fd, off, os.SEEK_DATA)
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                    data_start = size  # only a hole is left
                data_end = os.lseek(fd, data_start, os.SEEK_HOLE) if data_start < size else size
            if off + n <= data_start:
                h.update(b"Z")  # the whole block is in a hole
            else:
                buf = os.pread(fd, n, off)
                assert len(buf) == n, f"{path}: short read at {off}"
                h.update(b"Z" if buf == zero[:n] else b"D" + buf)
            off += n
    finally:
        os.close(fd)
    return h.hexdigest()


def require_tools(*tools):
    """A required tool that is missing fails the test (it is not skipped)."""
    missing = [t for t in tools if not shutil.which(t) and
               not shutil.which(t, path="/usr/sbin:/sbin")]
    assert not missing, f"missing tools: {missing}"


def unix_listening(path):
    """True once some socket listens on `path` (/proc/net/unix flag __SO_ACCEPTCON)."""
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 8 and parts[7] == path and int(parts[3], 16) & 0x10000:
                return True
    return False


def tcp_listening(port):
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state = parts[1], parts[3]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            pass
    return False


def free_tcp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
