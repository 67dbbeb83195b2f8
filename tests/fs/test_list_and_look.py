"""kiln-fs list against sfdisk/sgdisk/blkid (the partition table and the filesystems as
util-linux sees them), and kiln-fs ls/cat/stat against the kernel's view of the same tree."""

import json
import os
import stat

import pytest

from kilntest.fs import kiln_fs, loop_mount, make_disk, make_guest_tree, make_overlay, run


def blkid(path, offset):
    p = run(["blkid", "-p", "-o", "export", "-O", str(offset), path], check=False)
    out = {}
    for line in p.stdout.decode().splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out


def sfdisk_table(path):
    return json.loads(run(["sfdisk", "--json", path]).stdout)["partitiontable"]


def sgdisk_info(path, number):
    """Partition `number` as sgdisk -i prints it."""
    out = run(["sgdisk", "-i", str(number), path]).stdout.decode()
    info = {}
    for line in out.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            info[k.strip()] = v.strip()
    return info


def test_list_gpt_matches_sgdisk(workdir):
    tree = make_guest_tree(os.path.join(workdir, "tree"))
    base, number, offset, length = make_disk(workdir, "sgdisk", "ext4", tree)
    got = json.loads(kiln_fs("list", "--json", base).stdout)
    assert got["scheme"] == "gpt"
    assert [p["number"] for p in got["partitions"]] == [1, 2, 5]
    for p in got["partitions"]:
        i = sgdisk_info(base, p["number"])
        assert p["offset"] == int(i["First sector"].split()[0]) * 512
        assert p["length"] == (int(i["Last sector"].split()[0]) -
                               int(i["First sector"].split()[0]) + 1) * 512
        assert p["type"] == i["Partition GUID code"].split()[0].lower()
        assert p["part_uuid"] == i["Partition unique GUID"].lower()
        assert p["name"] == i["Partition name"].strip("'")
    root = got["partitions"][2]
    assert (root["offset"], root["length"], root["filesystem"]) == (offset, length, "ext4")
    # sgdisk's own verification agrees that the table is sound.
    assert "No problems found" in run(["sgdisk", "-v", base]).stdout.decode()


@pytest.mark.parametrize("layout,variant", [("whole", "ext4"), ("mbr", "ext3"), ("gpt", "ext2")])
def test_list_matches_util_linux(workdir, layout, variant):
    tree = make_guest_tree(os.path.join(workdir, "tree"))
    base, number, offset, length = make_disk(workdir, layout, variant, tree)
    if layout != "whole":
        # A second filesystem and a swap area elsewhere on the disk, to be found too.
        t = sfdisk_table(base)
        parts = {int(p["node"][len(base):]): p for p in t["partitions"]}
        other = 1 if layout == "gpt" else 7
        fat = 2 if layout == "gpt" else 1
        start = parts[fat]["start"] * 512
        fat_img = os.path.join(workdir, "fat.img")
        with open(fat_img, "wb") as f:
            f.truncate(parts[fat]["size"] * 512)
        run(["mkfs.vfat", "-n", "ESP", fat_img])
        with open(fat_img, "rb") as s, open(base, "r+b") as d:
            d.seek(start)
            d.write(s.read())
        swap_img = os.path.join(workdir, "swap.img")
        with open(swap_img, "wb") as f:
            f.truncate(parts[other]["size"] * 512)
        run(["mkswap", "-L", "swappy", swap_img])
        with open(swap_img, "rb") as s, open(base, "r+b") as d:
            d.seek(parts[other]["start"] * 512)
            d.write(s.read())
    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    got = json.loads(kiln_fs("list", "--json", "--format", "qcow2", overlay).stdout)
    assert got["size"] == os.path.getsize(base)
    if layout == "whole":
        assert got["scheme"] == "none"
        (p,) = got["partitions"]
        b = blkid(base, 0)
        assert (p["filesystem"], p["label"], p["uuid"]) == (b["TYPE"], b["LABEL"], b["UUID"])
        assert p["fs_size"] == length
        return
    t = sfdisk_table(base)
    assert got["scheme"] == {"dos": "mbr", "gpt": "gpt"}[t["label"]]
    want_parts = []
    for sp in t["partitions"]:
        num = int(sp["node"][len(base):])
        if t["label"] == "dos" and sp["type"] == "5":
            continue  # the extended container is not a data partition
        want_parts.append((num, sp["start"] * 512, sp["size"] * 512))
    assert [(p["number"], p["offset"], p["length"]) for p in got["partitions"]] == want_parts
    for p in got["partitions"]:
        b = blkid(base, p["offset"])
        if not b.get("TYPE"):
            assert p["filesystem"] == "", p
            continue
        assert p["filesystem"] == b["TYPE"], (p, b)
        assert p["label"] == b.get("LABEL", ""), (p, b)
        assert p["uuid"] == b.get("UUID", ""), (p, b)
    if t["label"] == "gpt":
        assert got["disk_id"] == t["id"].lower()
        for p, sp in zip(got["partitions"], t["partitions"]):
            assert p["type"] == sp["type"].lower()
            assert p["name"] == sp.get("name", "")
            assert p["part_uuid"] == sp["uuid"].lower()
    root = [p for p in got["partitions"] if p["number"] == number][0]
    assert root["filesystem"] == variant and root["label"] == "guestroot"


def test_ls_cat_stat_match_kernel(workdir):
    tree = make_guest_tree(os.path.join(workdir, "tree"))
    base, number, offset, length = make_disk(workdir, "mbr", "ext4", tree)
    with loop_mount(base, offset, length, workdir) as mnt:
        for d in ["/", "/etc", "/srv/many", "/home/alice"]:
            names = kiln_fs("ls", base, d).stdout.decode().splitlines()
            want = sorted(n for n in os.listdir(mnt + d))
            assert names == want, d
        for f in ["/etc/passwd", "/usr/bin/tool", "/var/lib/big.bin"]:
            with open(mnt + f, "rb") as fh:
                assert kiln_fs("cat", base, f, "--partition", str(number)).stdout == fh.read(), f
        # An absolute link resolves inside the guest (through the mount it would reach the
        # host's /etc/hosts).
        with open(mnt + "/etc/hosts", "rb") as fh:
            assert kiln_fs("cat", base, "/etc/hosts.link").stdout == fh.read()
        # Relative links resolve inside the guest: /srv/etc-rel -> ../etc
        assert kiln_fs("cat", base, "/srv/etc-rel/hostname").stdout == b"debian\n"
        for f in ["/usr/bin/tool", "/etc/hosts", "/srv/slow-link", "/home/alice"]:
            st = os.lstat(mnt + f)
            out = kiln_fs("stat", base, f).stdout.decode()
            assert f"Access: ({stat.S_IMODE(st.st_mode):04o}/" in out, out
            assert f"Uid: {st.st_uid}\n" in out and f"Gid: {st.st_gid}\n" in out, out
            assert f"Inode: {st.st_ino}\n" in out, out
            if stat.S_ISLNK(st.st_mode):
                assert f"Link: {os.readlink(mnt + f)}\n" in out
            else:
                for k in os.listxattr(mnt + f):
                    v = os.getxattr(mnt + f, k).rstrip(b"\0").decode()
                    assert f'xattr: {k}="{v}"' in out, out
        ls_l = kiln_fs("ls", "-l", base, "/usr/bin").stdout.decode().splitlines()
        assert len(ls_l) == 2, ls_l
        for line, name in zip(ls_l, ["tool", "tool-hardlink"]):
            # mode, 2 links (hard-linked), root, size, name
            assert line.split()[:5] == ["-rwsr-xr-x", "2", "0", "0", "16384"], line
            assert line.endswith(" " + name), line


def test_look_errors(workdir):
    tree = make_guest_tree(os.path.join(workdir, "tree"))
    base, _, _, _ = make_disk(workdir, "whole", "ext4", tree)
    from kilntest.fs import assert_one_line_error
    assert_one_line_error(kiln_fs("cat", base, "/nope", check=False), "no such file")
    assert_one_line_error(kiln_fs("cat", base, "/etc", check=False), "not a regular file")
    assert_one_line_error(kiln_fs("ls", base, "/etc/passwd/x", check=False), "not a directory")
    assert_one_line_error(kiln_fs("frobnicate", base, check=False), "unknown command")
