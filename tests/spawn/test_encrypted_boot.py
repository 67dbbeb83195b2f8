"""kiln-spawn boot --encrypted against libvirt's test:///default driver and a kiln-nbd started
here: the overlay is a LUKS qcow2 over the plain cached base (qcow2 or raw), unlocked by a key of
the instance's own in <instance_dir>/disk.key (0600, 32 random bytes as base64); injection and
the resize open it with that key, kiln-nbd serves it decrypted, QEMU reads it with the key,
the file holds none of the injected plaintext, and delete leaves nothing."""

import base64
import json
import os
import stat

from kilntest.spawn import make_ext4_qcow2, require_tools, run

SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnEncryptedSpawnTest enc@kiln"
MOTD = "motd injected into an encrypted instance disk\n"


def keyed(disk, key_file):
    """qemu-img's arguments for the encrypted overlay and its key file."""
    return ["--object", f"secret,id=k0,file={key_file}", "--image-opts",
            f"driver=qcow2,file.filename={disk},encrypt.key-secret=k0"]


def qemu_io(*args):
    p = run(["qemu-io", *args])
    assert "failed" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p


def qemu_info(disk):
    return json.loads(run(["qemu-img", "info", "-U", "--output=json", disk]).stdout)


def assert_key_file(path):
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.geteuid() and st.st_nlink == 1
    text = open(path, "rb").read()
    assert len(text) == 44 and not text.endswith(b"\n"), text
    raw = base64.b64decode(text, validate=True)
    assert len(raw) == 32 and len(set(raw)) > 8  # random, not a constant
    return text


def test_boot_encrypted_inject_export_and_delete(world, tmp_path):
    require_tools("qemu-img", "qemu-io", "debugfs", "e2fsck")
    img = make_ext4_qcow2(tmp_path, "guest", {"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
                                               "/etc/hostname": "template\n"})
    world.spawn("image-create", "guest", img)
    key = tmp_path / "k.pub"
    key.write_text(SSH_KEY + "\n")
    motd = tmp_path / "motd"
    motd.write_text(MOTD)
    inst = json.loads(world.spawn("boot", "enc1", "--image", "guest", "--flavor", "m1.tiny",
                                  "--net", "demo-net", "--key-file", key, "--file",
                                  f"/etc/motd={motd}", "--inject", "--encrypted",
                                  "--format", "json").stdout)
    assert inst["status"] == "active" and inst["encrypted"] is True
    assert world.spawn_json("show", "enc1")["encrypted"] is True
    disk = os.path.join(inst["instance_dir"], "disk")
    key_file = os.path.join(inst["instance_dir"], "disk.key")
    secret = assert_key_file(key_file)

    # A LUKS qcow2 over the plain cached base, grown to the flavor's 1 GiB with the key.
    info = qemu_info(disk)
    assert info["encrypted"] is True
    assert info["format-specific"]["data"]["encrypt"]["format"] == "luks"
    assert info["virtual-size"] == 1 << 30
    assert info["backing-filename-format"] == "qcow2"
    assert "encrypted" not in qemu_info(info["backing-filename"])

    # QEMU decrypts it with the key file: the injected files are there, the file system clean.
    plain = str(tmp_path / "plain.raw")
    run(["qemu-img", "convert", "-U", *keyed(disk, key_file), "-O", "raw", plain])
    run(["e2fsck", "-fn", plain])
    cat = lambda p: run(["debugfs", "-R", f"cat {p}", plain]).stdout  # noqa: E731
    assert cat("/root/.ssh/authorized_keys").strip() == SSH_KEY
    assert cat("/etc/motd") == MOTD
    assert cat("/etc/hostname").strip() == "enc1"
    # ... and without it, QEMU cannot open it.
    p = run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", disk,
             str(tmp_path / "nokey.raw")], check=False)
    assert p.returncode != 0 and "encrypt.key-secret" in p.stderr, p.stderr
    # The overlay file holds no plaintext of what was injected, nor the key.
    data = open(disk, "rb").read()
    for needle in (SSH_KEY.encode(), MOTD.strip().encode(), secret):
        assert needle not in data, needle
    assert SSH_KEY.encode() in open(plain, "rb").read()

    # kiln-nbd serves it decrypted (it read the key file itself): the ext4 magic at 1080.
    uri = f"nbd+unix:///{inst['export']}?socket={world.nbd.sock}"
    qemu_io("-f", "raw", "-c", "read -P 0x53 1080 1", "-c", "read -P 0xef 1081 1", uri)
    exports = world.nbd.exports()
    assert [e["name"] for e in exports] == [inst["export"]]

    # An instance booted without --encrypted: a plain overlay, no key, "encrypted": false.
    plain_inst = json.loads(world.spawn("boot", "plain1", "--image", "guest", "--flavor",
                                        "m1.tiny", "--net", "demo-net", "--format",
                                        "json").stdout)
    assert plain_inst["encrypted"] is False
    assert not os.path.exists(os.path.join(plain_inst["instance_dir"], "disk.key"))
    assert "encrypted" not in qemu_info(os.path.join(plain_inst["instance_dir"], "disk"))

    world.spawn("delete", "enc1", "plain1")
    assert not os.path.exists(key_file) and not os.path.exists(inst["instance_dir"])
    world.assert_nothing_left()


def test_boot_encrypted_on_a_raw_image(world, tmp_path):
    """A raw image whose size is not a whole number of sectors: the encrypted overlay covers
    it (rounded up to 512 bytes, zeros past the base), and each instance gets its own key."""
    require_tools("qemu-img", "qemu-io")
    raw = tmp_path / "r.raw"
    size = (1 << 20) + 100
    raw.write_bytes(b"\x5a" * size)
    world.spawn("image-create", "r", raw, "--disk-format", "raw")
    keys = []
    for name in ("rawenc1", "rawenc2"):
        inst = json.loads(world.spawn("boot", name, "--image", "r", "--flavor", "m1.tiny",
                                      "--net", "demo-net", "--encrypted",
                                      "--format", "json").stdout)
        assert inst["status"] == "active" and inst["encrypted"] is True
        disk = os.path.join(inst["instance_dir"], "disk")
        info = qemu_info(disk)
        assert info["encrypted"] is True and info["backing-filename-format"] == "raw"
        assert info["virtual-size"] == 1 << 30
        keys.append(assert_key_file(os.path.join(inst["instance_dir"], "disk.key")))
        uri = f"nbd+unix:///{inst['export']}?socket={world.nbd.sock}"
        qemu_io("-f", "raw", "-c", f"read -P 0x5a 0 {size}", "-c", f"read -P 0 {size} 4096",
                "-c", "write -P 0x77 4096 8192", uri)
        # What the guest wrote through kiln-nbd is encrypted in the overlay.
        k = str(tmp_path / f"{name}.key")
        with open(k, "wb") as f:
            f.write(keys[-1])
        qemu_io("-r", "-U", *keyed(disk, k), "-c", "read -P 0x77 4096 8192",
                "-c", "read -P 0x5a 0 4096")
        assert b"\x77" * 8192 not in open(disk, "rb").read()
    assert keys[0] != keys[1]
    world.spawn("delete", "rawenc1", "rawenc2")
    world.assert_nothing_left()
