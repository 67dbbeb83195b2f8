"""kiln-fs inject into guests that try to redirect it: hard links to /etc/shadow where a user's
authorized_keys should be, symbolic links planted by a guest user, a directory with a second
name, an authorized_keys of 1 GiB, a directory of 100000 entries on the path. Every image is
built with mkfs.ext4 -d (debugfs for what the kernel refuses to make), injected through a qcow2
overlay, and checked with e2fsck -fn and the host kernel (read-only loop mount): /etc/shadow and
the other names keep their content, owner and mode, or the injection fails with one line and
the image is byte for byte unchanged."""

import os
import stat
import sys

from kilntest.fs import (MiB, assert_one_line_error, content_digest, e2fsck_clean, kiln_fs,
                         loop_mount, make_fs_image, make_guest_tree, make_overlay, run, to_raw)

KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKiln0000000000000000000000000000000000000007 ops@kiln\n"
OLD_KEY = b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQkilnOld alice@laptop\n"
HASH = "$6$kilnsalt$Yx3.abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ/.abcd"
SHADOW_LABEL = b"system_u:object_r:shadow_t:s0\0"


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def tree_path(tree, guest_path):
    return os.path.join(tree, guest_path.lstrip("/"))


def guest_tree(workdir):
    """The common guest tree, with /etc/shadow labelled as on an SELinux guest and alice's
    ~/.ssh made (0700, hers)."""
    tree = make_guest_tree(os.path.join(workdir, "tree"))
    os.setxattr(tree_path(tree, "/etc/shadow"), "security.selinux", SHADOW_LABEL)
    ssh = tree_path(tree, "/home/alice/.ssh")
    os.mkdir(ssh, 0o700)
    os.chown(ssh, 1000, 1000)
    return tree


def build(workdir, tree, size=96 * MiB):
    """ext4 image of `tree`, and a qcow2 overlay on it (what kiln-fs writes)."""
    base = make_fs_image(os.path.join(workdir, "base.raw"), size, "ext4", tree)
    return base, make_overlay(base, os.path.join(workdir, "vm.qcow2"))


def debugfs_w(image, *commands):
    for c in commands:
        p = run(["debugfs", "-w", "-R", c, image])
        err = p.stderr.decode(errors="replace")
        assert "debugfs" in err and err.count("\n") <= 1, f"debugfs {c!r}: {err}"


def kernel_view(workdir, image, paths, tag):
    """{path: (mode, uid, gid, nlink, content or None, xattrs)} as the host kernel sees the
    image (converted to raw; e2fsck -fn must be clean first). lstat: links are not followed."""
    raw = to_raw(image, os.path.join(workdir, f"{tag}.raw"))
    e2fsck_clean(raw)
    out = {}
    with loop_mount(raw, 0, os.path.getsize(raw), workdir, f"mnt-{tag}") as mnt:
        for p in paths:
            full = os.path.join(mnt, p.lstrip("/"))
            if not os.path.lexists(full):
                out[p] = None
                continue
            st = os.lstat(full)
            content = None
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as f:
                    content = f.read()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(full).encode()
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                k: os.getxattr(full, k) for k in sorted(os.listxattr(full))}
            out[p] = (oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, st.st_nlink, content,
                      xattrs)
    return out


def shadow_entry(view_before):
    """What /etc/shadow must still be: the same mode, owner, content and label."""
    mode, uid, gid, _nlink, content, xattrs = view_before["/etc/shadow"]
    assert (mode, uid, gid) == ("0o640", 0, 42) and content.startswith(b"root:*:")
    assert xattrs["security.selinux"] == SHADOW_LABEL
    return mode, uid, gid, content, xattrs


def without_nlink(entry):
    mode, uid, gid, _nlink, content, xattrs = entry
    return mode, uid, gid, content, xattrs


def refused(overlay, *args, needles=()):
    """The injection fails with one error line and leaves the image's bytes as they were."""
    before = content_digest(overlay)
    p = kiln_fs("inject", "--format", "qcow2", overlay, *args, check=False)
    line = assert_one_line_error(p, *needles)
    assert content_digest(overlay) == before, "a refused injection changed the image"
    return line


# ---------------------------------------------------------------------------------------------
# Hard links

def test_authorized_keys_hard_linked_to_shadow(workdir):
    """alice made ~/.ssh/authorized_keys a second name of /etc/shadow (fs.protected_hardlinks=0
    lets her). Injecting her key must neither write nor chown /etc/shadow, nor copy its
    hashes into a file she owns: refused. Removing the name first works, and /etc/shadow
    comes out as it was."""
    tree = guest_tree(workdir)
    os.link(tree_path(tree, "/etc/shadow"), tree_path(tree, "/home/alice/.ssh/authorized_keys"))
    base, overlay = build(workdir, tree)
    paths = ["/etc/shadow", "/home/alice/.ssh/authorized_keys"]
    before = kernel_view(workdir, base, paths, "before")
    assert before["/etc/shadow"][3] == 2  # the kernel sees one inode with two names
    want_shadow = shadow_entry(before)
    key = write(os.path.join(workdir, "k.pub"), KEY)

    for follow in ([], ["--follow-symlinks"]):
        refused(overlay, *follow, "--ssh-key", "alice:" + key,
                needles=("authorized_keys", "hard links", "uid 0", "--delete"))

    kiln_fs("inject", "--format", "qcow2", overlay, "--delete", "/home/alice/.ssh/authorized_keys",
            "--ssh-key", "alice:" + key)
    after = kernel_view(workdir, overlay, paths, "after")
    assert without_nlink(after["/etc/shadow"]) == want_shadow
    assert after["/etc/shadow"][3] == 1
    assert after["/home/alice/.ssh/authorized_keys"] == ("0o600", 1000, 1000, 1, KEY, {})


def test_authorized_keys_hard_linked_by_its_owner(workdir):
    """A hard link that alice made between two files of hers: her keys are kept, the key is
    added to a new inode for authorized_keys, and her other name keeps the old content."""
    tree = guest_tree(workdir)
    keys = write(tree_path(tree, "/home/alice/.ssh/authorized_keys"), OLD_KEY)
    os.chown(keys, 1000, 1000)
    os.chmod(keys, 0o644)
    os.link(keys, tree_path(tree, "/home/alice/keys.bak"))
    base, overlay = build(workdir, tree)
    key = write(os.path.join(workdir, "k.pub"), KEY)
    kiln_fs("inject", "--format", "qcow2", overlay, "--ssh-key", "alice:" + key)
    after = kernel_view(workdir, overlay,
                        ["/home/alice/.ssh/authorized_keys", "/home/alice/keys.bak"], "after")
    assert after["/home/alice/.ssh/authorized_keys"] == ("0o600", 1000, 1000, 1, OLD_KEY + KEY,
                                                        {})
    assert after["/home/alice/keys.bak"] == ("0o644", 1000, 1000, 1, OLD_KEY, {})


def test_rewrites_of_hard_linked_files_get_a_new_inode(workdir):
    """--hostname, --password and --file on files that have a second name elsewhere: the name
    written gets a new inode with the new content and the old mode, owner and extended
    attributes (or those given); the other name keeps the old inode, untouched."""
    tree = guest_tree(workdir)
    os.link(tree_path(tree, "/etc/shadow"), tree_path(tree, "/home/alice/shadow"))
    os.link(tree_path(tree, "/etc/hostname"), tree_path(tree, "/home/alice/hostname"))
    os.link(tree_path(tree, "/etc/hosts"), tree_path(tree, "/srv/hosts"))
    os.link(tree_path(tree, "/etc/motd"), tree_path(tree, "/home/alice/motd"))
    base, overlay = build(workdir, tree)
    paths = ["/etc/shadow", "/home/alice/shadow", "/etc/hostname", "/home/alice/hostname",
             "/etc/hosts", "/srv/hosts", "/etc/motd", "/home/alice/motd", "/usr/bin/tool",
             "/usr/bin/tool-hardlink"]
    before = kernel_view(workdir, base, paths, "before")
    for p in paths:
        assert before[p][3] == 2, (p, before[p])
    motd = write(os.path.join(workdir, "motd"), b"hello\n")
    tool = write(os.path.join(workdir, "tool"), b"#!/bin/sh\n")
    kiln_fs("inject", "--format", "qcow2", overlay, "--hostname", "vm-07", "--password", "root:" + HASH,
            "--file", "/etc/motd=" + motd, "--file", "/usr/bin/tool=" + tool + ":0755:0:0")
    after = kernel_view(workdir, overlay, paths, "after")

    def same_but(p, content):
        mode, uid, gid, _n, _c, xattrs = before[p]
        return (mode, uid, gid, 1, content, xattrs)

    shadow = before["/etc/shadow"][4].replace(b"root:*:", b"root:" + HASH.encode() + b":")
    assert after["/etc/shadow"] == same_but("/etc/shadow", shadow)
    assert after["/etc/hostname"] == same_but("/etc/hostname", b"vm-07\n")
    assert b"127.0.1.1\tvm-07\n" in after["/etc/hosts"][4]
    assert after["/etc/hosts"] == same_but("/etc/hosts", after["/etc/hosts"][4])
    assert after["/etc/hosts"][5]["security.selinux"] == b"system_u:object_r:net_conf_t:s0\0"
    assert after["/etc/motd"] == same_but("/etc/motd", b"hello\n")
    assert after["/usr/bin/tool"] == ("0o755", 0, 0, 1, b"#!/bin/sh\n", {})
    # The other names: the old inodes, content, owner, mode and labels as before.
    for other in ["/home/alice/shadow", "/home/alice/hostname", "/srv/hosts", "/home/alice/motd",
                  "/usr/bin/tool-hardlink"]:
        assert after[other] == (*before[other][:3], 1, *before[other][4:]), other


# ---------------------------------------------------------------------------------------------
# Symbolic links

def test_links_planted_by_a_user_are_never_followed(workdir):
    """Links alice owns (she can make them in her home and in world-writable places) are
    refused with and without --follow-symlinks: ~/.ssh -> /root/.ssh, authorized_keys ->
    /etc/shadow, a home that is a link to /root, a directory in the path that is a link to
    /etc. /etc/shadow and /root/.ssh stay as they were."""
    tree = guest_tree(workdir)
    root_ssh = tree_path(tree, "/root/.ssh")
    os.mkdir(root_ssh, 0o700)
    write(os.path.join(root_ssh, "authorized_keys"), OLD_KEY)
    os.chmod(os.path.join(root_ssh, "authorized_keys"), 0o600)
    # bob's home is alice's link to /root; alice's .ssh will be a link to /root/.ssh.
    os.symlink("/root", tree_path(tree, "/home/bob"))
    os.lchown(tree_path(tree, "/home/bob"), 1000, 1000)
    os.rmdir(tree_path(tree, "/home/alice/.ssh"))
    os.symlink("/root/.ssh", tree_path(tree, "/home/alice/.ssh"))
    os.lchown(tree_path(tree, "/home/alice/.ssh"), 1000, 1000)
    os.symlink("/etc", tree_path(tree, "/srv/alice-etc"))
    os.lchown(tree_path(tree, "/srv/alice-etc"), 1000, 1000)
    base, overlay = build(workdir, tree)
    stat_link = run(["debugfs", "-R", "stat /home/alice/.ssh", base]).stdout.decode()
    assert "User:  1000" in stat_link, stat_link  # mkfs -d kept the link's owner
    key = write(os.path.join(workdir, "k.pub"), KEY)
    data = write(os.path.join(workdir, "data"), b"x\n")
    paths = ["/etc/shadow", "/root/.ssh", "/root/.ssh/authorized_keys", "/etc/x"]
    before = kernel_view(workdir, base, paths, "before")

    for follow in ([], ["--follow-symlinks"]):
        refused(overlay, *follow, "--ssh-key", "alice:" + key,
                needles=("/home/alice/.ssh -> /root/.ssh", "never written through a link"))
        refused(overlay, *follow, "--ssh-key", "bob:" + key, needles=("/home/bob -> /root",))
        refused(overlay, *follow, "--file", "/srv/alice-etc/x=" + data,
                needles=("/srv/alice-etc -> /etc",))
    line = refused(overlay, "--follow-symlinks", "--ssh-key", "bob:" + key)
    assert "belongs to uid 1000" in line, line

    # The same with authorized_keys itself as the link.
    os.unlink(tree_path(tree, "/home/alice/.ssh"))
    ssh = tree_path(tree, "/home/alice/.ssh")
    os.mkdir(ssh, 0o700)
    os.chown(ssh, 1000, 1000)
    os.symlink("/etc/shadow", os.path.join(ssh, "authorized_keys"))
    os.lchown(os.path.join(ssh, "authorized_keys"), 1000, 1000)
    os.unlink(base)
    os.unlink(overlay)
    base, overlay = build(workdir, tree)
    for follow in ([], ["--follow-symlinks"]):
        refused(overlay, *follow, "--ssh-key", "alice:" + key,
                needles=("authorized_keys -> /etc/shadow", "never written through a link"))
    after = kernel_view(workdir, overlay, paths, "after")
    assert after == before


def test_root_owned_links_are_followed_inside_the_guest(workdir):
    """--follow-symlinks still follows what root made (/home -> var/home on OSTree guests):
    the key lands in the real home, owned by the user."""
    tree = guest_tree(workdir)
    os.makedirs(tree_path(tree, "/var/home"))
    os.rename(tree_path(tree, "/home/alice"), tree_path(tree, "/var/home/alice"))
    os.rmdir(tree_path(tree, "/home"))
    os.symlink("var/home", tree_path(tree, "/home"))
    base, overlay = build(workdir, tree)
    key = write(os.path.join(workdir, "k.pub"), KEY)
    refused(overlay, "--ssh-key", "alice:" + key, needles=("/home -> var/home",
                                                          "--follow-symlinks"))
    kiln_fs("inject", "--format", "qcow2", overlay, "--follow-symlinks", "--ssh-key", "alice:" + key)
    after = kernel_view(workdir, overlay, ["/var/home/alice/.ssh/authorized_keys", "/home"],
                        "after")
    assert after["/var/home/alice/.ssh/authorized_keys"] == ("0o600", 1000, 1000, 1, KEY, {})
    assert after["/home"][4] == b"var/home"


def test_symlink_with_two_names_is_not_followed(workdir):
    """A link root made, hard-linked by alice to where injection writes (the link inode stays
    root's): not followed."""
    tree = guest_tree(workdir)
    os.symlink("/root", tree_path(tree, "/etc/root-link"))
    base, overlay = build(workdir, tree)
    os.unlink(overlay)
    debugfs_w(base, "rmdir /home/alice/.ssh", "link /etc/root-link /home/alice/.ssh",
              "sif /etc/root-link links_count 2")
    e2fsck_clean(base)
    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    key = write(os.path.join(workdir, "k.pub"), KEY)
    refused(overlay, "--follow-symlinks", "--file", "/home/alice/.ssh/authorized_keys=" + key,
            needles=("/home/alice/.ssh -> /root", "2 names"))


# ---------------------------------------------------------------------------------------------
# A directory with two names (only a crafted image has one)

def test_directory_with_a_second_name(workdir):
    """/home/alice/.ssh made a second entry of /root/.ssh with debugfs: injecting alice's key
    (or a file there) would put it into root's authorized_keys and chown root's .ssh to her.
    Refused, image unchanged."""
    tree = guest_tree(workdir)
    root_ssh = tree_path(tree, "/root/.ssh")
    os.mkdir(root_ssh, 0o700)
    write(os.path.join(root_ssh, "authorized_keys"), OLD_KEY)
    base, overlay = build(workdir, tree)
    os.unlink(overlay)
    debugfs_w(base, "rmdir /home/alice/.ssh", "link /root/.ssh /home/alice/.ssh")
    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    key = write(os.path.join(workdir, "k.pub"), KEY)
    for args in (["--ssh-key", "alice:" + key],
                 ["--file", "/home/alice/.ssh/authorized_keys=" + key],
                 ["--mkdir", "/home/alice/.ssh:0700:1000:1000"],
                 ["--delete", "/home/alice/.ssh"],
                 ["--delete", "/home/alice"]):
        refused(overlay, *args, needles=("/home/alice/.ssh", "second name of a directory"))
    assert kiln_fs("cat", "--format", "qcow2", overlay, "/root/.ssh/authorized_keys").stdout == OLD_KEY


# ---------------------------------------------------------------------------------------------
# Sizes

def test_authorized_keys_of_one_gib_is_refused(workdir):
    """A sparse authorized_keys of 1 GiB: the injection reads at most 16 MiB of it and fails
    with the size, quickly and without using a GiB of memory."""
    tree = guest_tree(workdir)
    keys = tree_path(tree, "/home/alice/.ssh/authorized_keys")
    with open(keys, "wb") as f:
        f.truncate(1 << 30)
    os.chown(keys, 1000, 1000)
    base, overlay = build(workdir, tree)
    key = write(os.path.join(workdir, "k.pub"), KEY)
    refused(overlay, "--ssh-key", "alice:" + key,
            needles=("authorized_keys", "too large", "1073741824 bytes", "limit 16777216"))


# Made by the kernel in a mount namespace of its own: a test running beside this one that
# unshares the mount namespace meanwhile (`ip netns exec` does) would keep a copy of a mount
# made in ours, and with it the filesystem, journal unflushed, after our umount returns. The
# private namespace, and the mount, end with the child.
POPULATE = """
import os, subprocess, sys
image, mnt, directory, count = sys.argv[1:]
subprocess.run(["mount", "-o", "loop", image, mnt], check=True)
try:
    for i in range(int(count)):
        path = os.path.join(mnt, directory, f"u{i:06d}")
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
finally:
    subprocess.run(["umount", mnt], check=True)
"""


def populate_through_the_kernel(image, workdir, directory, count):
    """Creates `count` empty files u000000... in `directory` of the ext4 `image`."""
    mnt = os.path.join(workdir, "mnt-rw")
    os.makedirs(mnt, exist_ok=True)
    run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", POPULATE,
         image, mnt, directory, count])


def test_directory_of_100000_entries_on_the_path(workdir):
    """/home holds 100000 names besides alice's (made by the kernel: mkfs -d and debugfs add
    names one linear scan at a time). libext2fs's lookups scan the directory from the start,
    hash index or not: the injection reads each block a bounded number of times and works,
    correct and e2fsck-clean."""
    tree = guest_tree(workdir)
    base = os.path.join(workdir, "base.raw")
    with open(base, "wb") as f:
        f.truncate(160 * MiB)
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-N", "120000", "-d", tree, base])
    populate_through_the_kernel(base, workdir, "home", 100000)
    e2fsck_clean(base)
    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    key = write(os.path.join(workdir, "k.pub"), KEY)
    note = write(os.path.join(workdir, "note"), b"note\n")
    kiln_fs("inject", "--format", "qcow2", overlay, "--ssh-key", "alice:" + key, "--file", "/home/zz-note=" + note,
            "--delete", "/home/u050000")
    after = kernel_view(workdir, overlay, ["/home/alice/.ssh/authorized_keys", "/home/zz-note",
                                           "/home/u050000", "/home/u099999"], "after")
    assert after["/home/alice/.ssh/authorized_keys"] == ("0o600", 1000, 1000, 1, KEY, {})
    assert after["/home/zz-note"] == ("0o644", 0, 0, 1, b"note\n", {})
    assert after["/home/u050000"] is None and after["/home/u099999"][4] == b""
