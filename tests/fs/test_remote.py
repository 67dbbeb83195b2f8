"""The same injection through an NBD export (kiln-nbd on a Unix socket and on loopback TCP)
gives the same guest tree as a local injection, and leaves the base untouched."""

import os

from kilntest.fs import (assert_one_line_error, content_digest, diff_snapshots, e2fsck_clean,
                         extract, kiln_fs, loop_mount, make_disk, make_guest_tree, make_overlay,
                         snapshot, to_raw)
from kilntest.nbd import free_tcp_port, servers  # noqa: F401  (fixture)
from test_inject import expected_after, inject_args


def tree_of(workdir, image, offset, length, tag):
    raw = to_raw(image, os.path.join(workdir, f"{tag}.raw"))
    e2fsck_clean(extract(raw, offset, length, os.path.join(workdir, f"{tag}.fs")))
    with loop_mount(raw, offset, length, workdir, f"mnt-{tag}") as mnt:
        return snapshot(mnt)


def test_remote_injection_matches_local(workdir, servers):
    tree = make_guest_tree(os.path.join(workdir, "tree"))
    base, number, offset, length = make_disk(workdir, "gpt", "ext4", tree)
    base_hash = content_digest(base)
    with loop_mount(base, offset, length, workdir, "mnt-base") as mnt:
        before = snapshot(mnt)
    local = make_overlay(base, os.path.join(workdir, "local.qcow2"))
    via_unix = make_overlay(base, os.path.join(workdir, "unix.qcow2"))
    via_tcp = make_overlay(base, os.path.join(workdir, "tcp.qcow2"))
    args = inject_args(workdir)

    kiln_fs("inject", "--format", "qcow2", local, *args)

    sock = os.path.join(workdir, "nbd.sock")
    srv = servers.kiln("-x", "vm1", "-f", "qcow2", "-t", via_unix, sock=sock)
    kiln_fs("inject", f"nbd+unix:///vm1?socket={sock}", *args, "--partition", str(number))
    srv.assert_clean_stop()

    port = free_tcp_port()
    srv = servers.kiln("-f", "qcow2", "-t", via_tcp, port=port)
    kiln_fs("inject", f"nbd://127.0.0.1:{port}/", *args)
    srv.assert_clean_stop()

    want = expected_after(before)
    got_local = tree_of(workdir, local, offset, length, "local")
    assert got_local == want, diff_snapshots(got_local, want)
    for tag, image in [("unix", via_unix), ("tcp", via_tcp)]:
        got = tree_of(workdir, image, offset, length, tag)
        assert got == got_local, f"{tag}:\n" + diff_snapshots(got, got_local)
    assert content_digest(base) == base_hash


def test_remote_read_only_export(workdir, servers):
    tree = make_guest_tree(os.path.join(workdir, "tree"))
    base, number, offset, length = make_disk(workdir, "mbr", "ext4", tree)
    overlay = make_overlay(base, os.path.join(workdir, "vm.qcow2"))
    before = content_digest(overlay)
    sock = os.path.join(workdir, "nbd.sock")
    srv = servers.kiln("-r", "-f", "qcow2", "-t", overlay, sock=sock)
    uri = f"nbd+unix:///?socket={sock}"
    # Reading works; writing is refused up front with a clear error.
    assert kiln_fs("cat", uri, "/etc/hostname").stdout == b"debian\n"
    listing = kiln_fs("list", uri).stdout.decode()
    assert "ext4" in listing and "guestroot" in listing, listing
    p = kiln_fs("inject", uri, "--hostname", "x", check=False)
    assert_one_line_error(p, "read-only")
    srv.assert_clean_stop()
    assert content_digest(overlay) == before


def test_remote_unreachable(workdir):
    p = kiln_fs("ls", f"nbd+unix:///?socket={workdir}/missing.sock", "/", check=False)
    assert_one_line_error(p, "cannot connect")
