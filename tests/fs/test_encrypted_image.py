"""kiln-fs on qcow2 LUKS images made by qemu-img: --object secret,id=ID,file=F with --image-opts
driver=qcow2,file.filename=IMG,encrypt.key-secret=ID for inject, ls/cat/stat, list and mount.
What kiln-fs writes is read back by QEMU with the key (qemu-img convert to raw, then e2fsck -fn
and debugfs on the plaintext); the file holds no plaintext of it; the LUKS header is untouched;
a wrong or missing key is one clear line that names no secret, and changes nothing."""

import os
import struct

import pytest

from kilntest.fs import (KILN_FS, MiB, assert_one_line_error, content_digest, e2fsck_clean, kiln_fs,
                         run)
from kilntest.fuse import check_exit, fuse_mount
from kilntest.images import QemuLuksImages

PASS = b"kiln fs luks passphrase 1"
# ms of PBKDF2 for the key slot, as kiln-spawn gives its own disks (spawn/src/disk_key.cpp). Every
# open of the image derives the key again, and under ASan Kiln's PBKDF2 is several times slower
# than the qemu-img that counted the iterations: with 50 ms, one kiln-fs open took 3 s of CPU.
ITER = "encrypt.iter-time=10"
EXT_ENCRYPTION = 0x0537BE77
MOTD = b"motd written through kiln-fs into an encrypted disk\n"
SSH_KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnEncryptedFsTest enc@kiln\n"


def write_secret(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    os.close(fd)
    return path


def obj(secret_file, sid="sec0"):
    return ["--object", f"secret,id={sid},file={secret_file}"]


def image_opts(img, sid="sec0"):
    return ["--image-opts", f"driver=qcow2,file.filename={img},encrypt.key-secret={sid}"]


def keyed(img, secret_file):
    """The arguments that name the encrypted image and its key, in place of IMAGE."""
    return obj(secret_file) + image_opts(img)


@pytest.fixture(scope="module", autouse=True)
def qemu_made(module_workdir):
    """The empty encrypted images qemu-img creates, made once per module (QemuLuksImages)."""
    _QEMU_MADE.append(QemuLuksImages(module_workdir))
    yield
    _QEMU_MADE.clear()


_QEMU_MADE = []


def make_encrypted_guest(workdir, secret):
    """An ext4 file system (whole disk) with a passwd, copied into a LUKS qcow2 that
    `qemu-img create` made."""
    root = os.path.join(workdir, "tree")
    os.makedirs(os.path.join(root, "etc"))
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(root, "etc/hostname"), "w") as f:
        f.write("template\n")
    raw = os.path.join(workdir, "fs.raw")
    run(["mkfs.ext4", "-q", "-F", "-d", root, raw, "32M"])
    img = os.path.join(workdir, "enc.qcow2")
    _QEMU_MADE[0].create(img, secret, "32M", f"encrypt.format=luks,encrypt.key-secret=sec0,{ITER}")
    run(["qemu-img", "convert", "-n", "-f", "raw", raw, *obj(secret), "--target-image-opts",
         f"driver=qcow2,file.filename={img},encrypt.key-secret=sec0"])
    os.unlink(raw)
    return img


def qemu_plaintext(img, secret, out):
    """The disk as QEMU decrypts it."""
    run(["qemu-img", "convert", *keyed(img, secret), "-O", "raw", out])
    return out


def debugfs_cat(raw, path):
    return run(["debugfs", "-R", f"cat {path}", raw]).stdout


def luks_header(img):
    """The bytes of the LUKS header area (the qcow2 encryption extension names it)."""
    with open(img, "rb") as f:
        head = f.read(65536)
        pos = struct.unpack(">I", head[100:104])[0]  # header_length
        while pos + 8 <= len(head):
            typ, length = struct.unpack(">II", head[pos:pos + 8])
            if typ == EXT_ENCRYPTION:
                offset, size = struct.unpack(">QQ", head[pos + 8:pos + 24])
                f.seek(offset)
                return f.read(size)
            if typ == 0:
                break
            pos += 8 + (length + 7) // 8 * 8
    raise AssertionError("no encryption extension")


def assert_qemu_check_clean(img, secret):
    p = run(["qemu-img", "check", *keyed(img, secret)], check=False)
    assert p.returncode == 0 and b"No errors were found" in p.stdout, p.stdout + p.stderr


def test_inject_and_look_into_encrypted_image(workdir):
    secret = write_secret(os.path.join(workdir, "key"), PASS)
    img = make_encrypted_guest(workdir, secret)
    header = luks_header(img)
    motd = os.path.join(workdir, "motd")
    with open(motd, "wb") as f:
        f.write(MOTD)
    pub = os.path.join(workdir, "id.pub")
    with open(pub, "wb") as f:
        f.write(SSH_KEY)

    kiln_fs("inject", *keyed(img, secret), "--ssh-key", f"root:{pub}",
            "--file", f"/etc/motd={motd}:0640", "--hostname", "enc-guest")

    # kiln-fs reads it back with the key.
    assert kiln_fs("cat", *keyed(img, secret), "/etc/motd").stdout == MOTD
    assert kiln_fs("cat", *keyed(img, secret), "/etc/hostname").stdout == b"enc-guest\n"
    listing = kiln_fs("ls", *keyed(img, secret), "/root/.ssh", "-l").stdout.decode()
    assert "authorized_keys" in listing and "-rw-------" in listing, listing
    assert b"Access: (0640/-rw-r-----)" in kiln_fs("stat", *keyed(img, secret), "/etc/motd").stdout
    assert b"ext4" in kiln_fs("list", *keyed(img, secret)).stdout

    # QEMU decrypts what kiln-fs wrote: a clean file system holding the files.
    assert_qemu_check_clean(img, secret)
    plain = qemu_plaintext(img, secret, os.path.join(workdir, "plain.raw"))
    e2fsck_clean(plain)
    assert debugfs_cat(plain, "/etc/motd") == MOTD
    assert debugfs_cat(plain, "/root/.ssh/authorized_keys") == SSH_KEY
    assert debugfs_cat(plain, "/etc/hostname") == b"enc-guest\n"
    # On disk it is encrypted: the plaintext is nowhere in the file, which the new data went to.
    data = open(img, "rb").read()
    for needle in (MOTD.strip(), SSH_KEY.strip(), b"root:x:0:0:root"):
        assert needle not in data, needle
        assert needle in open(plain, "rb").read(), needle
    assert luks_header(img) == header


def test_mount_encrypted_image(workdir):
    secret = write_secret(os.path.join(workdir, "key"), PASS)
    img = make_encrypted_guest(workdir, secret)
    header = luks_header(img)

    class Encrypted:
        def mount_command(self, mountpoint, *opts):
            return [KILN_FS, "mount", *keyed(img, secret), mountpoint, *opts]

    mnt = os.path.join(workdir, "mnt")
    blob = os.urandom(3 * MiB + 123)
    with fuse_mount(Encrypted(), mnt) as proc:
        with open(os.path.join(mnt, "etc/passwd"), "rb") as f:
            assert f.read().startswith(b"root:x:0:0:")
        os.makedirs(os.path.join(mnt, "srv/data"))
        with open(os.path.join(mnt, "srv/data/blob"), "wb") as f:
            f.write(blob)
        with open(os.path.join(mnt, "etc/motd"), "wb") as f:
            f.write(MOTD)
    check_exit(proc)

    assert_qemu_check_clean(img, secret)
    plain = qemu_plaintext(img, secret, os.path.join(workdir, "plain.raw"))
    e2fsck_clean(plain)
    assert debugfs_cat(plain, "/srv/data/blob") == blob
    assert debugfs_cat(plain, "/etc/motd") == MOTD
    assert kiln_fs("cat", *keyed(img, secret), "/srv/data/blob").stdout == blob
    data = open(img, "rb").read()
    assert MOTD.strip() not in data and blob[:4096] not in data
    assert luks_header(img) == header


def test_wrong_or_missing_key_is_a_clear_error_and_changes_nothing(workdir):
    secret = write_secret(os.path.join(workdir, "key"), PASS)
    wrong = write_secret(os.path.join(workdir, "wrong"), PASS + b"x")
    img = make_encrypted_guest(workdir, secret)
    before = content_digest(img)
    motd = os.path.join(workdir, "motd")
    with open(motd, "wb") as f:
        f.write(MOTD)

    def refused(*args, needle):
        p = kiln_fs(*args, check=False)
        line = assert_one_line_error(p, needle)
        assert PASS.decode() not in line
        assert content_digest(img) == before

    # The same words as kiln-io (and QEMU).
    refused("inject", *keyed(img, wrong), "--file", f"/etc/motd={motd}",
            needle="Invalid password, cannot unlock any keyslot")
    refused("cat", *keyed(img, wrong), "/etc/passwd",
            needle="Invalid password, cannot unlock any keyslot")
    refused("list", *keyed(img, wrong), needle="Invalid password, cannot unlock any keyslot")
    refused("mount", *keyed(img, wrong), os.path.join(workdir, "mnt"), "-f",
            needle="Invalid password, cannot unlock any keyslot")
    refused("inject", "--format", "qcow2", img, "--hostname", "x",
            needle="Parameter 'encrypt.key-secret' is required for cipher")
    refused("ls", img, "/", needle="Parameter 'encrypt.key-secret' is required for cipher")
    refused("cat", *obj(secret), *image_opts(img, "nosuch"), "/etc/passwd",
            needle="No secret with id 'nosuch'")
    refused("cat", *keyed(img, secret), "--format", "qcow2", "/etc/passwd",
            needle="--image-opts and --format are mutually exclusive")
    refused("cat", "--object", f"secret,id=sec0,file={workdir}/absent", *image_opts(img),
            "/etc/passwd", needle="Unable to read secret file")
    # kiln-nbd decrypts what it serves: a key with an NBD URI is refused before connecting.
    refused("ls", *obj(secret), "--image-opts",
            f"driver=raw,file.filename=nbd+unix:///x?socket={workdir}/no.sock,"
            "encrypt.key-secret=sec0", "/", needle="served decrypted")
    # And with the right key, the image is as it was.
    assert kiln_fs("cat", *keyed(img, secret), "/etc/hostname").stdout == b"template\n"
