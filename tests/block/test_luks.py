"""qcow2 LUKS encryption against QEMU 7.2: images encrypted by qemu-img/qemu-io read identically
through kiln-io, kiln-img and kiln-nbd with the right key, and the other way round; a wrong or
missing key is a clear error that leaves the file alone; hostile LUKS headers are refused."""

import os
import shutil
import struct

import pytest

from kilntest import run as run_with
from kilntest.images import (KILN_IMG, KILN_IO, MiB, QEMU_IO, QemuLuksImages, assert_one_line_error,
                             kiln_img, qemu_img, read_file, run, scaled)
from kilntest.nbd import (NBDCOPY, control, servers, sha256,  # noqa: F401  (fixture)
                          unix_uri)
from kilntest.nbd import run as nbd_run

PASS = b"correct horse battery staple"
# ms of PBKDF2 for the key slot, as kiln-spawn gives its own disks (spawn/src/disk_key.cpp). Every
# open of the image derives the key again (with 50 ms and OpenSSL's PBKDF2, which ASan slowed 30
# times, one kiln-fs open took 3 s of CPU; Kiln's PBKDF2 is now Nettle's, as qemu-img's).
ITER = "encrypt.iter-time=10"
SIZE = 16 * MiB
EXT_ENCRYPTION = 0x0537BE77


@pytest.fixture
def secret(workdir):
    path = os.path.join(workdir, "key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, PASS)
    os.close(fd)
    return path


def obj(secret_file, sid="sec0"):
    return ["--object", f"secret,id={sid},file={secret_file}"]


def opts(img, secret_file):
    return obj(secret_file) + ["--image-opts",
                               f"driver=qcow2,file.filename={img},encrypt.key-secret=sec0"]


@pytest.fixture(scope="module", autouse=True)
def qemu_made(module_workdir):
    """qemu_create's images, made once per module (see QemuLuksImages)."""
    _QEMU_MADE.append(QemuLuksImages(module_workdir))
    yield
    _QEMU_MADE.clear()


_QEMU_MADE = []


def qemu_create(img, secret_file, size=SIZE, extra=()):
    """An empty encrypted image made by qemu-img create (a copy of one made for the module)."""
    _QEMU_MADE[0].create(img, secret_file, size,
                         f"encrypt.format=luks,encrypt.key-secret=sec0,{ITER}", extra)


def kiln_create(img, secret_file, size=SIZE, extra=()):
    kiln_img("create", "-q", "-f", "qcow2", *obj(secret_file), "-o",
             f"encrypt.format=luks,encrypt.key-secret=sec0,{ITER}", *extra, img, str(size))


def qemu_io_enc(img, secret_file, *cmds, check=True):
    args = [QEMU_IO, *opts(img, secret_file)]
    for c in cmds:
        args += ["-c", c]
    p = run(args, check=check)
    if check:
        assert "failed" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p


def kiln_io_enc(img, secret_file, *cmds, check=True):
    args = [KILN_IO, *opts(img, secret_file)]
    for c in cmds:
        args += ["-c", c]
    return run(args, check=check)


def qemu_raw(img, secret_file, out):
    qemu_img("convert", *opts(img, secret_file), "-O", "raw", out)
    return read_file(out)


def kiln_raw(img, secret_file, out):
    kiln_io_enc(img, secret_file, f"dump {out}")
    return read_file(out)


def assert_qemu_check_clean(img, secret_file):
    p = qemu_img("check", *opts(img, secret_file), check=False)
    assert p.returncode == 0 and "No errors were found" in p.stdout, p.stdout + p.stderr


# Writes at awkward places: unaligned heads and tails, across clusters, a partial cluster
# that needs copy-on-write from zeros, zeroing and discarding.
WRITES = ["write -P 0x11 0 64k", "write -P 0x22 1000 3000", "write -P 0x33 130000 200000",
          "write -P 0x44 5M 4096", "write -z 5M 512", "write -P 0x55 8M 1M",
          "write -P 0x66 12345 1", "discard 8M 512k"]


def test_qemu_written_read_by_kiln(workdir, secret):
    img = os.path.join(workdir, "q.qcow2")
    qemu_create(img, secret)
    qemu_io_enc(img, secret, *WRITES)
    kiln = kiln_raw(img, secret, os.path.join(workdir, "k.raw"))
    assert kiln == qemu_raw(img, secret, os.path.join(workdir, "q.raw"))
    assert kiln[1000:4000] == b"\x22" * 3000 and kiln[12345] == 0x66
    p = kiln_io_enc(img, secret, "read -P 0x55 8704k 512k", "read -P 0 8M 512k",
                    "read -P 0x33 130000 200000")
    assert "read 524288/524288 bytes at offset 8912896" in p.stdout


def test_kiln_written_read_by_qemu(workdir, secret):
    img = os.path.join(workdir, "k.qcow2")
    kiln_create(img, secret)
    kiln_io_enc(img, secret, *[w.replace("write -z", "zero") for w in WRITES])
    assert_qemu_check_clean(img, secret)
    qemu = qemu_raw(img, secret, os.path.join(workdir, "q.raw"))
    assert qemu == kiln_raw(img, secret, os.path.join(workdir, "k.raw"))
    assert qemu[:1000] == b"\x11" * 1000 and qemu[1000:4000] == b"\x22" * 3000
    assert qemu[5 * MiB:5 * MiB + 512] == bytes(512)
    assert qemu[5 * MiB + 512:5 * MiB + 4096] == b"\x44" * 3584
    qemu_io_enc(img, secret, "read -P 0x55 8704k 512k", "read -P 0x33 130000 200000")
    # map: as qemu-img, no host offsets for encrypted data (and the human form refuses).
    assert (kiln_img("map", "--output=json", *opts(img, secret)).stdout ==
            qemu_img("map", "--output=json", *opts(img, secret)).stdout)
    p = kiln_img("map", *opts(img, secret), check=False)
    assert p.returncode == 1 and "encrypted or compressed clusters" in p.stderr
    # The data is encrypted on disk: the pattern is nowhere in the file.
    assert b"\x55" * 4096 not in read_file(img)


def test_info_matches_qemu(workdir, secret):
    for name, create in (("q", qemu_create), ("k", kiln_create)):
        img = os.path.join(workdir, f"{name}.qcow2")
        create(img, secret, extra=("-o", "encrypt.cipher-alg=aes-128,encrypt.hash-alg=sha1"))
        ours = kiln_img("info", "--output=json", img).stdout
        theirs = qemu_img("info", "--output=json", img).stdout
        assert ours == theirs
        assert '"cipher-alg": "aes-128"' in ours and '"hash-alg": "sha1"' in ours
        human = kiln_img("info", img).stdout
        assert human == qemu_img("info", img).stdout
        assert "encrypted: yes" in human


def test_libcrypto_is_loaded_only_for_encrypted_images(workdir, secret):
    """OpenSSL's libcrypto is loaded when an image needs it (dlopen on first use), not at the
    start of every process: the dynamic loader's own trace (LD_DEBUG=files) says which."""
    plain = os.path.join(workdir, "plain.qcow2")
    kiln_img("create", "-q", "-f", "qcow2", plain, "1M")
    enc = os.path.join(workdir, "enc.qcow2")
    kiln_create(enc, secret, size=MiB)

    def loads_libcrypto(*args):
        p = run_with([KILN_IMG, *args], env=dict(os.environ, LD_DEBUG="files"))
        return "file=libcrypto.so" in p.stderr

    assert not loads_libcrypto("info", plain)
    assert not loads_libcrypto("check", plain)
    assert loads_libcrypto("check", *opts(enc, secret))


def test_wrong_or_missing_key_is_a_clear_error_and_changes_nothing(workdir, secret):
    img = os.path.join(workdir, "q.qcow2")
    qemu_create(img, secret)
    qemu_io_enc(img, secret, "write -P 0x77 0 1M")
    before = sha256(img)
    wrong = os.path.join(workdir, "wrong")
    with open(wrong, "wb") as f:
        f.write(PASS + b"x")
    p = run([KILN_IO, *opts(img, wrong), "-c", "write 0 4k"], check=False)
    assert_one_line_error(p, "kiln-io")
    assert "Invalid password, cannot unlock any keyslot" in p.stderr
    assert PASS.decode() not in p.stderr
    p = run([KILN_IO, img, "-c", "read 0 4k"], check=False)
    assert_one_line_error(p, "kiln-io")
    assert "Parameter 'encrypt.key-secret' is required for cipher" in p.stderr
    p = run([KILN_IO, *obj(secret), "--image-opts",
             f"driver=qcow2,file.filename={img},encrypt.key-secret=nosuch", "-c", "read 0 1"],
            check=False)
    assert_one_line_error(p, "kiln-io")
    assert "No secret with id 'nosuch'" in p.stderr
    p = kiln_img("check", *opts(img, wrong), check=False)
    assert p.returncode != 0 and "Invalid password" in p.stderr
    assert sha256(img) == before
    qemu_io_enc(img, secret, "read -P 0x77 0 1M")


def test_kiln_nbd_serves_encrypted_image_both_ways(workdir, secret, servers):
    img = os.path.join(workdir, "q.qcow2")
    qemu_create(img, secret)
    qemu_io_enc(img, secret, *WRITES)
    want = qemu_raw(img, secret, os.path.join(workdir, "want.raw"))
    sock = os.path.join(workdir, "nbd.sock")
    srv = servers.kiln("-t", *opts(img, secret), sock=sock)
    out = os.path.join(workdir, "nbd.raw")
    nbd_run([NBDCOPY, unix_uri(sock), out])
    assert read_file(out) == want
    # Writes through kiln-nbd (unaligned ones too), then QEMU reads them.
    p = run([QEMU_IO, "-f", "raw", "-c", "write -P 0x99 3M 100000", "-c", "write -P 0x9a 777 5",
             unix_uri(sock)])
    assert "failed" not in p.stdout + p.stderr
    srv.assert_clean_stop()
    assert_qemu_check_clean(img, secret)
    qemu_io_enc(img, secret, "read -P 0x99 3M 100000", "read -P 0x9a 777 5",
                "read -P 0x22 1000 3000")


def test_kiln_nbd_wrong_key_fails_to_start(workdir, secret, servers):
    img = os.path.join(workdir, "q.qcow2")
    qemu_create(img, secret)
    wrong = os.path.join(workdir, "wrong")
    with open(wrong, "wb") as f:
        f.write(b"nope")
    before = sha256(img)
    with pytest.raises(AssertionError, match="Invalid password, cannot unlock any keyslot"):
        servers.kiln(*opts(img, wrong), sock=os.path.join(workdir, "nbd.sock"))
    assert sha256(img) == before


def test_control_api_key_secret_file(workdir, secret, servers):
    img = os.path.join(workdir, "k.qcow2")
    kiln_create(img, secret)
    kiln_io_enc(img, secret, "write -P 0x5e 0 1M")
    ctl = os.path.join(workdir, "ctl.sock")
    sock = os.path.join(workdir, "nbd.sock")
    servers.kiln("-e", "0", sock=sock, control=ctl)
    loose = os.path.join(workdir, "loose")
    with open(loose, "wb") as f:
        f.write(PASS)
    os.chmod(loose, 0o644)
    r = control(ctl, "add-export", name="d", path=img, format="qcow2", **{"key-secret-file": loose})
    assert not r["ok"] and r["reason"] == "permission" and "mode 0600" in r["error"], r
    r = control(ctl, "add-export", name="d", path=img, format="qcow2")
    assert not r["ok"] and "encrypt.key-secret" in r["error"], r
    r = control(ctl, "add-export", name="d", path=img, format="qcow2",
                **{"key-secret-file": secret})
    assert r["ok"], r
    listed = control(ctl, "list-exports")
    assert PASS.decode() not in str(listed)
    out = os.path.join(workdir, "out.raw")
    nbd_run([NBDCOPY, unix_uri(sock, "d"), out])
    data = read_file(out)
    assert data[:MiB] == b"\x5e" * MiB and data[MiB:] == bytes(SIZE - MiB)
    # A live snapshot would put the guest's next writes in an unencrypted layer: refused, and
    # nothing is created.
    overlay = os.path.join(workdir, "live-top.qcow2")
    r = control(ctl, "snapshot", name="d", path=overlay)
    assert not r["ok"] and r["reason"] == "unsupported" and "encrypted" in r["error"], r
    assert not os.path.exists(overlay)


def test_control_api_key_secret_file_inside_allowed_dirs(workdir, secret, servers):
    """With --allow-dir the key file must lie inside too (directly or through a symlink),
    like the image: a control client cannot make kiln-nbd read any private file of root's."""
    inside = os.path.join(workdir, "images")
    os.mkdir(inside)
    img = os.path.join(inside, "k.qcow2")
    kiln_create(img, secret)
    key_in = os.path.join(inside, "disk.key")
    shutil.copyfile(secret, key_in)
    os.chmod(key_in, 0o600)
    link = os.path.join(inside, "link.key")
    os.symlink(secret, link)  # `secret` lies in workdir, outside `inside`
    ctl = os.path.join(workdir, "ctl.sock")
    servers.kiln("-e", "0", "--allow-dir", inside, sock=os.path.join(workdir, "nbd.sock"),
                 control=ctl)
    for key in (secret, link):
        r = control(ctl, "add-export", name="d", path=img, format="qcow2",
                    **{"key-secret-file": key})
        assert not r["ok"] and r["reason"] == "permission", r
        assert "outside the allowed directories (--allow-dir)" in r["error"], r
    r = control(ctl, "add-export", name="d", path=img, format="qcow2",
                **{"key-secret-file": key_in})
    assert r["ok"], r


def test_encrypted_overlay_on_plain_base_and_plain_on_encrypted(workdir, secret):
    base = os.path.join(workdir, "base.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", base, str(SIZE))
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0xb0 0 2M", base])
    top = os.path.join(workdir, "top.qcow2")
    kiln_create(top, secret, extra=("-b", base, "-F", "qcow2"))
    kiln_io_enc(top, secret, "write -P 0xc1 1M 4096", "write -P 0xc2 100 10")
    assert_qemu_check_clean(top, secret)
    qemu_io_enc(top, secret, "read -P 0xb0 0 100", "read -P 0xc2 100 10", "read -P 0xb0 110 1048466",
                "read -P 0xc1 1M 4096", "read -P 0xb0 1052672 1044480", "read -P 0 2M 1M")
    # The other way: a plain overlay over an encrypted base (the key opens the base).
    ebase = os.path.join(workdir, "ebase.qcow2")
    qemu_create(ebase, secret)
    qemu_io_enc(ebase, secret, "write -P 0xd0 0 2M")
    plain = os.path.join(workdir, "plain.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", ebase, "-F", "qcow2", plain, str(SIZE))
    kiln_io_enc(plain, secret, "write -P 0xd1 64k 64k", "read -P 0xd0 0 64k",
                "read -P 0xd1 64k 64k", "read -P 0xd0 128k 1M")
    p = run([KILN_IO, plain, "-f", "qcow2", "-c", "read 0 1"], check=False)
    assert_one_line_error(p, "kiln-io")
    assert "encrypt.key-secret" in p.stderr


def test_legacy_aes_refused(workdir, secret):
    img = os.path.join(workdir, "aes.qcow2")
    p = kiln_img("create", "-f", "qcow2", *obj(secret), "-o",
                 "encrypt.format=aes,encrypt.key-secret=sec0", img, "1M", check=False)
    assert_one_line_error(p, "kiln-img")
    assert "AES-CBC encrypted qcow2 images is no longer supported" in p.stderr
    assert not os.path.exists(img)
    qemu_img("create", "-q", "-f", "qcow2", *obj(secret), "-o",
             "encrypt.format=aes,encrypt.key-secret=sec0", img, "1M")
    p = run([KILN_IO, *opts(img, secret), "-c", "write 0 512"], check=False)
    assert_one_line_error(p, "kiln-io")
    assert "AES-CBC encrypted qcow2 images is no longer supported" in p.stderr


def luks_area(img):
    """Offset and length of the LUKS header area (the qcow2 encryption extension)."""
    data = read_file(img)[:65536]
    pos = struct.unpack(">I", data[100:104])[0]  # header_length
    while pos + 8 <= len(data):
        typ, length = struct.unpack(">II", data[pos:pos + 8])
        if typ == EXT_ENCRYPTION:
            return struct.unpack(">QQ", data[pos + 8:pos + 24]), pos + 8
        if typ == 0:
            break
        pos += 8 + (length + 7) // 8 * 8
    raise AssertionError("no encryption extension")


def patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


SLOT0 = 208
HOSTILE = {
    # field offset in the LUKS header, bytes, what the error names
    "slot_iterations": (SLOT0 + 4, struct.pack(">I", 0xFFFFFFFF), "iteration count"),
    "digest_iterations": (164, struct.pack(">I", 0xFFFFFFF0), "iteration count"),
    "key_bytes_huge": (108, struct.pack(">I", 1 << 20), "key size"),
    "key_bytes_192": (108, struct.pack(">I", 48), "aes-192"),
    "stripes": (SLOT0 + 44, struct.pack(">I", 1 << 30), "stripes"),
    "slot_offset_outside": (SLOT0 + 40, struct.pack(">I", 0x7FFFFFFF), "outside"),
    "slot_offset_in_header": (SLOT0 + 40, struct.pack(">I", 0), "overlaps the header"),
    "unknown_cipher": (8, b"twofish\0", "cipher 'twofish'"),
    "unknown_hash": (72, b"md5\0\0\0\0", "hash 'md5'"),
    "bad_magic": (0, b"LUKX", "magic"),
    "version2": (6, struct.pack(">H", 2), "LUKS version 2"),
    "slot_state": (SLOT0, struct.pack(">I", 0x12345678), "invalid state"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_luks_header(workdir, secret, case):
    img = os.path.join(workdir, "h.qcow2")
    kiln_create(img, secret, size=MiB)
    (area, _), _ = luks_area(img)
    field, data, needle = HOSTILE[case]
    patch(img, area + field, data)
    before = sha256(img)
    # A bound on the work, not a timing assertion: an unbounded PBKDF2 would hit it.
    p = run([KILN_IO, *opts(img, secret), "-c", "read 0 512"], check=False, timeout=120)
    assert_one_line_error(p, "kiln-io")
    assert needle in p.stderr, p.stderr
    p = kiln_img("info", img, check=False)
    assert p.returncode == 1 and needle in p.stderr, p.stderr
    assert sha256(img) == before


@pytest.mark.parametrize("case,value,needle", [
    ("offset_past_end", (1 << 40, 4096), "past the end"),
    ("offset_unaligned", (65536 + 512, 4096), "not cluster aligned"),
    ("length_huge", (None, 1 << 40), "length"),
    ("overlaps_l1", ("l1", None), "overlaps"),
])
def test_hostile_encryption_extension(workdir, secret, case, value, needle):
    img = os.path.join(workdir, "h.qcow2")
    kiln_create(img, secret, size=MiB)
    (area, length), ext = luks_area(img)
    off, ln = value
    if off == "l1":
        off = struct.unpack(">Q", read_file(img)[40:48])[0]
    patch(img, ext, struct.pack(">QQ", area if off is None else off, length if ln is None else ln))
    p = run([KILN_IO, *opts(img, secret), "-c", "read 0 512"], check=False, timeout=120)
    assert_one_line_error(p, "kiln-io")
    assert needle in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------
# kiln-img convert with encrypted sources and targets (--object, --image-opts, -o encrypt.*)

def qemu_compare_keys(a, key_a, b, key_b):
    """qemu-img compare of two images, each opened with its own key (None: plain)."""
    objs, specs = [], []
    for n, (img, key) in enumerate(((a, key_a), (b, key_b))):
        spec = f"driver=qcow2,file.filename={img}"
        if key:
            objs += ["--object", f"secret,id=k{n},file={key}"]
            spec += f",encrypt.key-secret=k{n}"
        specs.append(spec)
    return qemu_img("compare", *objs, "--image-opts", *specs, check=False)


def encrypted_source(workdir, secret):
    img = os.path.join(workdir, "enc.qcow2")
    qemu_create(img, secret)
    qemu_io_enc(img, secret, *WRITES)
    return img


def test_convert_encrypted_to_plain(workdir, secret):
    src = encrypted_source(workdir, secret)
    for fmt in ("qcow2", "raw"):
        out = os.path.join(workdir, f"plain.{fmt}")
        p = kiln_img("convert", *opts(src, secret), "-O", fmt, out)
        assert p.stdout == ""
        if fmt == "raw":
            assert read_file(out) == qemu_raw(src, secret, os.path.join(workdir, "want.raw"))
            continue
        p = qemu_compare_keys(src, secret, out, None)
        assert p.returncode == 0 and p.stdout == "Images are identical.\n", p.stdout + p.stderr
        check = qemu_img("check", out, check=False)
        assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout
        assert "encrypted" not in qemu_img("info", out).stdout


def test_convert_plain_to_encrypted(workdir, secret):
    src = os.path.join(workdir, "plain.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", src, str(SIZE))
    run([QEMU_IO, "-f", "qcow2", *[a for w in WRITES for a in ("-c", w)], src])
    out = os.path.join(workdir, "enc.qcow2")
    kiln_img("convert", *obj(secret), "-O", "qcow2", "-o",
             f"encrypt.format=luks,encrypt.key-secret=sec0,{ITER}", src, out)
    assert "encrypted: yes" in qemu_img("info", out).stdout
    assert_qemu_check_clean(out, secret)
    p = qemu_compare_keys(src, None, out, secret)
    assert p.returncode == 0 and p.stdout == "Images are identical.\n", p.stdout + p.stderr
    assert b"\x55" * 4096 not in read_file(out)  # the data is encrypted on disk
    # The same target from a raw source, and read back by kiln-io with the key.
    raw = os.path.join(workdir, "src.raw")
    qemu_img("convert", "-f", "qcow2", "-O", "raw", src, raw)
    out2 = os.path.join(workdir, "enc2.qcow2")
    kiln_img("convert", *obj(secret), "-f", "raw", "-O", "qcow2", "-o",
             f"encrypt.format=luks,encrypt.key-secret=sec0,{ITER}", raw, out2)
    assert kiln_raw(out2, secret, os.path.join(workdir, "back.raw")) == read_file(raw)


def test_convert_encrypted_to_encrypted_with_another_key(workdir, secret):
    src = encrypted_source(workdir, secret)
    other = os.path.join(workdir, "other-key")
    with open(other, "wb") as f:
        f.write(b"another passphrase")
    out = os.path.join(workdir, "re.qcow2")
    kiln_img("convert", *obj(secret), "--object", f"secret,id=sec1,file={other}",
             "--image-opts", f"driver=qcow2,file.filename={src},encrypt.key-secret=sec0",
             "-O", "qcow2", "-o", f"encrypt.format=luks,encrypt.key-secret=sec1,{ITER}", out)
    p = qemu_compare_keys(src, secret, out, other)
    assert p.returncode == 0 and p.stdout == "Images are identical.\n", p.stdout + p.stderr
    assert_qemu_check_clean(out, other)
    # The old key does not open the new image: QEMU's error, nothing changed.
    before = sha256(out)
    p = qemu_compare_keys(src, secret, out, secret)
    assert p.returncode != 0 and "Invalid password, cannot unlock any keyslot" in p.stderr
    p = kiln_img("convert", *opts(out, secret), "-O", "raw", os.path.join(workdir, "x.raw"),
                 check=False)
    assert_one_line_error(p, "kiln-img")
    assert "Invalid password, cannot unlock any keyslot" in p.stderr
    assert PASS.decode() not in p.stderr
    assert not os.path.exists(os.path.join(workdir, "x.raw"))
    assert sha256(out) == before
    # -n with --target-image-opts: into the existing encrypted image, with its key.
    kiln_img("convert", "-n", *obj(secret), "--object", f"secret,id=sec1,file={other}",
             "--image-opts", f"driver=qcow2,file.filename={src},encrypt.key-secret=sec0",
             "--target-image-opts", f"driver=qcow2,file.filename={out},encrypt.key-secret=sec1")
    p = qemu_compare_keys(src, secret, out, other)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("case", ["compress", "no-key", "missing-secret", "target-opts-no-n"])
def test_convert_encryption_errors_like_qemu(workdir, secret, case):
    src = os.path.join(workdir, "plain.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", src, str(MiB))
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x42 0 64k", src])
    args = {
        "compress": [*obj(secret), "-c", "-O", "qcow2", "-o",
                     f"encrypt.format=luks,encrypt.key-secret=sec0,{ITER}", src],
        "no-key": ["-O", "qcow2", "-o", f"encrypt.format=luks,{ITER}", src],
        "missing-secret": ["-O", "qcow2", "-o", f"encrypt.format=luks,encrypt.key-secret=nope,"
                           f"{ITER}", src],
        "target-opts-no-n": ["--target-image-opts", src],
    }[case]
    dst = {who: os.path.join(workdir, f"{who}.qcow2") for who in ("kiln", "qemu")}
    ours = kiln_img("convert", *args, dst["kiln"], check=False)
    theirs = qemu_img("convert", *args, dst["qemu"], check=False)
    assert_one_line_error(ours, "kiln-img")
    assert ours.returncode == theirs.returncode == 1, (ours.stderr, theirs.stderr)
    assert (ours.stderr.replace("kiln-img: ", "").replace(dst["kiln"], "DST") ==
            theirs.stderr.replace("qemu-img: ", "").replace(dst["qemu"], "DST")), \
        (ours.stderr, theirs.stderr)


# ---------------------------------------------------------------------------------------------
# Read-modify-write of partial sectors against whole-sector writes of the same sector

def test_partial_sector_write_racing_whole_sector_write_loses_neither(workdir, secret):
    """An unaligned write to an encrypted image reads the sector, patches it and writes it
    back. A whole-sector write of the same sector running at the same time must not be undone
    by that write-back: each sector ends up as one of the two orders allows."""
    img = os.path.join(workdir, "k.qcow2")
    kiln_create(img, secret, size=8 * MiB)
    kiln_io_enc(img, secret, "write -P 0x01 0 4M")  # half allocated: in-place writes too
    sectors = 8 * MiB // 512
    pairs = scaled(400, minimum=50)
    offsets = [(i * 7919 % sectors) * 512 for i in range(pairs)]  # distinct sectors
    script = os.path.join(workdir, "ops")
    with open(script, "w") as f:
        for off in offsets:
            f.write(f"write -P 0xaa {off} 512\nwrite -P 0xbb {off + 100} 10\n")
    run([KILN_IO, *opts(img, secret), "--parallel", "16", "--script", script])
    assert_qemu_check_clean(img, secret)
    data = qemu_raw(img, secret, os.path.join(workdir, "out.raw"))
    lost = []
    for off in offsets:
        s = data[off:off + 512]
        whole = s[:100] == b"\xaa" * 100 and s[110:] == b"\xaa" * 402
        if not whole or s[100:110] not in (b"\xaa" * 10, b"\xbb" * 10):
            lost.append(off)
    assert not lost, f"{len(lost)} of {pairs} sectors lost a write, first at {lost[0]}"
