"""Helpers for kiln-fs's integration tests: guest images built with mkfs -d from a tree on
the host (ext2/3/4, whole disk, MBR with logical partitions, GPT), the host kernel as the
oracle (read-only loop mounts, always undone), tree snapshots to compare, and kiln-fs itself."""

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import time

from kilntest import SANITIZED, MiB, content_digest, sha256  # noqa: F401  (re-exported)
from kilntest import run as _run

KILN_FS = os.environ.get("KILN_FS") or shutil.which("kiln-fs") or "kiln-fs"
KILN_NBD = os.environ.get("KILN_NBD") or shutil.which("kiln-nbd") or "kiln-nbd"

# Filesystem variants: name -> mkfs arguments.
FS_VARIANTS = {
    "ext2": ["mkfs.ext2", "-b", "4096"],
    "ext3": ["mkfs.ext3", "-b", "4096"],
    "ext4": ["mkfs.ext4", "-b", "4096"],  # metadata_csum, 64bit, extents, flex_bg
    "ext4-nocsum": ["mkfs.ext4", "-b", "4096", "-O", "^metadata_csum,^64bit"],
    "ext4-1k": ["mkfs.ext4", "-b", "1024"],
    "ext4-noextents": ["mkfs.ext4", "-b", "4096", "-O", "^extent,^64bit"],  # block maps
    "ext4-inline": ["mkfs.ext4", "-b", "4096", "-O", "inline_data"],
}


def run(args, check=True, input=None, timeout=600):
    """A command whose output stays bytes (file contents go through it)."""
    return _run(args, check=check, input=input, timeout=timeout, text=False)


def kiln_fs(*args, check=True):
    return run([KILN_FS, *args], check=check)


def assert_one_line_error(p, *needles):
    """A failure: non-zero exit (no signal), one line on stderr starting with 'kiln-fs: ',
    containing every needle (case-insensitive)."""
    err = p.stderr.decode(errors="replace")
    assert p.returncode > 0, f"exit status {p.returncode}: {err}"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("kiln-fs: "), lines[0]
    for n in needles:
        assert n.lower() in lines[0].lower(), f"{n!r} not in {lines[0]!r}"
    assert "Sanitizer" not in err and "runtime error" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------
# A guest tree on the host, with the things injection must preserve or meet: modes, owners,
# symlinks, extended attributes (an SELinux label among them).

def make_guest_tree(root):
    def w(path, data, mode=0o644, uid=0, gid=0):
        full = os.path.join(root, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
            f.write(data)
        os.chown(full, uid, gid)  # before chmod: chown clears set-user-ID
        os.chmod(full, mode)
        return full

    for d in ["etc", "root", "home", "home/alice", "var/lib", "srv", "usr/bin"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    os.chmod(os.path.join(root, "root"), 0o700)
    os.chown(os.path.join(root, "home/alice"), 1000, 1000)
    w("/etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n"
      b"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
      b"alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash\n"
      b"bob:x:1001:1002:Bob:/home/bob:/bin/sh\n")
    w("/etc/shadow", b"root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"
      b"alice:!:19000:0:99999:7:::\nbob:!:19000:0:99999:7:::\n", mode=0o640, gid=42)
    hosts = w("/etc/hosts", b"127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n::1\tlocalhost ip6-localhost\n")
    os.setxattr(hosts, "security.selinux", b"system_u:object_r:net_conf_t:s0\0")
    os.setxattr(hosts, "user.origin", b"image-build")
    w("/etc/hostname", b"debian\n")
    w("/etc/motd", b"welcome\n" * 100)
    tool = w("/usr/bin/tool", bytes(range(256)) * 64, mode=0o4755)
    os.link(tool, os.path.join(root, "usr/bin/tool-hardlink"))
    w("/var/lib/big.bin", os.urandom(3 * MiB + 123), mode=0o600, uid=1000, gid=1000)
    w("/home/alice/notes.txt", b"alice's notes\n", mode=0o600, uid=1000, gid=1000)
    os.symlink("/etc/hosts", os.path.join(root, "etc/hosts.link"))
    os.symlink("../etc", os.path.join(root, "srv/etc-rel"))
    os.symlink("/nonexistent/target", os.path.join(root, "srv/dangling"))
    os.symlink("x" * 200, os.path.join(root, "srv/slow-link"))  # not a fast symlink
    os.makedirs(os.path.join(root, "srv/many"))
    for i in range(300):  # a directory of several blocks
        with open(os.path.join(root, f"srv/many/file-{i:04d}-{'n' * 40}"), "w") as f:
            f.write(str(i))
    return root


def make_fs_image(path, size, variant, tree, label="guestroot"):
    with open(path, "wb") as f:
        f.truncate(size)
    run([*FS_VARIANTS[variant], "-q", "-F", "-L", label, "-d", tree, path])
    return path


def copy_into(disk, offset, src):
    with open(src, "rb") as s, open(disk, "r+b") as d:
        d.seek(offset)
        for chunk in iter(lambda: s.read(1 << 20), b""):
            d.write(chunk)


def partition_offsets(disk):
    """{number: (offset, size)} from sfdisk's own view of the table (the oracle)."""
    t = json.loads(run(["sfdisk", "--json", disk]).stdout)["partitiontable"]
    ss = t.get("sectorsize", 512)
    out = {}
    for p in t["partitions"]:
        num = int(re.search(r"(\d+)$", p["node"]).group(1))
        out[num] = (p["start"] * ss, p["size"] * ss)
    return out


def make_disk(workdir, layout, variant, tree, fs_size=96 * MiB):
    """A raw disk with the guest filesystem on it. Returns (path, partition number or None,
    offset, length). Layouts: whole, mbr (root on logical partition 6, sfdisk), gpt (root on
    3, sfdisk), sgdisk (GPT by sgdisk, root on 5 after a gap)."""
    fs = make_fs_image(os.path.join(workdir, "fs.img"), fs_size, variant, tree)
    disk = os.path.join(workdir, "base.raw")
    if layout == "whole":
        os.rename(fs, disk)
        return disk, None, 0, fs_size
    total = fs_size + 64 * MiB
    with open(disk, "wb") as f:
        f.truncate(total)
    mb = fs_size // MiB
    if layout == "mbr":
        # 1: primary vfat-ish id, 2: extended holding logicals 5 (swap id), 6 (root), 7.
        script = (f"label: dos\n"
                  f"start=2048, size=16MiB, type=c\n"
                  f"type=5\n"
                  f"size=8MiB, type=82\n"
                  f"size={mb}MiB, type=83\n"
                  f"size=8MiB, type=83\n")
        number = 6
    elif layout == "gpt":
        script = (f"label: gpt\n"
                  f"start=2048, size=8MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios\n"
                  f"size=16MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n"
                  f"size={mb}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n")
        number = 3
    elif layout == "sgdisk":
        # GPT made by gdisk's scripted sibling, with a gap before the root partition.
        script = None
        run(["sgdisk", "-o", "-n", "1:2048:+4M", "-t", "1:EF02", "-c", "1:bios",
             "-n", "2:0:+16M", "-t", "2:EF00", "-c", "2:EFI system",
             "-n", f"5:+1M:+{mb}M", "-t", "5:8300", "-c", "5:rootfs", disk])
        number = 5
    else:
        raise ValueError(layout)
    if script is not None:
        run(["sfdisk", "-q", disk], input=script.encode())
    offset, length = partition_offsets(disk)[number]
    assert length == fs_size, (length, fs_size)
    copy_into(disk, offset, fs)
    os.unlink(fs)
    return disk, number, offset, length


def make_overlay(base, path, fmt="raw"):
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(base), "-F", fmt, path])
    return path


def to_raw(image, out):
    run(["qemu-img", "convert", "-O", "raw", image, out])
    return out


# ---------------------------------------------------------------------------------------------
# The kernel as the oracle.

@contextlib.contextmanager
def loop_mount(raw, offset, length, workdir, name="mnt"):
    """Mounts the filesystem at [offset, offset+length) of `raw` read-only through a loop
    device; unmounts and detaches on the way out, also after a failure."""
    mnt = os.path.join(workdir, name)
    os.makedirs(mnt, exist_ok=True)
    dev = run(["losetup", "--find", "--show", "--read-only", "--offset", offset,
               "--sizelimit", length, raw]).stdout.decode().strip()
    mounted = False
    try:
        run(["mount", "-o", "ro", dev, mnt])
        mounted = True
        yield mnt
    finally:
        if mounted:
            unmount(mnt)
        run(["losetup", "-d", dev], check=False)


def unmount(mnt, attempts=50):
    """Unmounts `mnt`, retrying for a while if the kernel says it is busy, and raises if it
    stays mounted rather than let the test go on reading a filesystem still in use."""
    for _ in range(attempts):
        p = run(["umount", mnt], check=False)
        if p.returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"umount {mnt} kept failing: {p.stderr.decode(errors='replace')}")


def extract(raw, offset, length, out):
    with open(raw, "rb") as s, open(out, "wb") as d:
        s.seek(offset)
        left = length
        while left:
            chunk = s.read(min(left, 1 << 20))
            assert chunk, "short read"
            d.write(chunk)
            left -= len(chunk)
    return out


def e2fsck_clean(fs_file):
    p = run(["e2fsck", "-fn", fs_file], check=False)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode == 0, f"e2fsck -fn found problems ({p.returncode}):\n{out}"


def snapshot(root):
    """{path: entry} for every file under root: type, mode, uid, gid, content digest or link
    target, and extended attributes. Times are left out (they differ between runs)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = "/" + os.path.relpath(full, root)
            st = os.lstat(full)
            e = {"mode": oct(stat.S_IMODE(st.st_mode)), "uid": st.st_uid, "gid": st.st_gid}
            if stat.S_ISLNK(st.st_mode):
                e["type"] = "link"
                e["target"] = os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                e["type"] = "dir"
            else:
                e["type"] = "file"
                with open(full, "rb") as f:
                    e["sha256"] = hashlib.sha256(f.read()).hexdigest()
                e["nlink"] = st.st_nlink
            if not stat.S_ISLNK(st.st_mode):
                e["xattrs"] = {k: os.getxattr(full, k, follow_symlinks=False)
                               for k in sorted(os.listxattr(full, follow_symlinks=False))}
            out[rel] = e
    return out


def file_entry(data, mode, uid=0, gid=0, xattrs=None):
    return {"mode": oct(mode), "uid": uid, "gid": gid, "type": "file",
            "sha256": hashlib.sha256(data).hexdigest(), "nlink": 1, "xattrs": xattrs or {}}


def dir_entry(mode, uid=0, gid=0):
    return {"mode": oct(mode), "uid": uid, "gid": gid, "type": "dir", "xattrs": {}}


def diff_snapshots(got, want):
    lines = []
    for k in sorted(set(got) | set(want)):
        if got.get(k) != want.get(k):
            lines.append(f"{k}:\n    got  {got.get(k)}\n    want {want.get(k)}")
    return "\n".join(lines)
