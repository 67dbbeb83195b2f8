"""kiln-fs's numeric arguments are parsed whole and range-checked: a mistyped mode, uid, gid or
partition number is a usage error (exit 2, one line naming it) that leaves the image as it was,
never part of a file name or a partly read number."""

import os

import pytest

from kilntest.fs import (MiB, assert_one_line_error, content_digest, kiln_fs, make_fs_image,
                         make_guest_tree, make_overlay)


@pytest.fixture
def image(workdir):
    tree = make_guest_tree(os.path.join(workdir, "tree"))
    base = make_fs_image(os.path.join(workdir, "base.raw"), 64 * MiB, "ext4", tree)
    return make_overlay(base, os.path.join(workdir, "vm.qcow2"))


def usage_error(image, *args, needles=()):
    before = content_digest(image)
    p = kiln_fs(*args, check=False)
    line = assert_one_line_error(p, *needles)
    assert p.returncode == 2, (p.returncode, line)
    assert content_digest(image) == before
    return line


@pytest.mark.parametrize("spec,needle", [
    ("/srv/new:0799", "invalid mode '0799'"),      # 9 is not octal
    ("/srv/new:17777", "invalid mode '17777'"),    # beyond 07777
    ("/srv/new:0755x", "invalid mode '0755x'"),
    ("/srv/new:0755:1000x:0", "invalid uid '1000x'"),
    ("/srv/new:0755:0:4294967295", "invalid gid '4294967295'"),  # (gid_t)-1
    ("/srv/new:0755:99999999999:0", "invalid uid '99999999999'"),
    ("/srv/new:0755:1000", "MODE or MODE:UID:GID"),
])
def test_mkdir_spec(workdir, image, spec, needle):
    usage_error(image, "inject", image, "--mkdir", spec, needles=(needle,))


@pytest.mark.parametrize("suffix,needle", [
    (":0799", "invalid mode '0799'"),
    (":0644:0:-1", "invalid gid '-1'"),
    (":0644:+5:0", "invalid uid '+5'"),
    (":0644:1e3:0", "invalid uid '1e3'"),
])
def test_file_spec(workdir, image, suffix, needle):
    host = os.path.join(workdir, "motd")
    with open(host, "wb") as f:
        f.write(b"hi\n")
    usage_error(image, "inject", image, "--file", f"/etc/motd={host}{suffix}",
                needles=("--file", needle))


@pytest.mark.parametrize("number", ["1x", " 1", "+1", "0", "8193", "", "0x1", "99999999999"])
def test_partition(workdir, image, number):
    usage_error(image, "ls", image, "/", "--partition", number,
                needles=(f"invalid partition number '{number}'",))


def test_good_numbers_still_work(workdir, image):
    host = os.path.join(workdir, "motd")
    with open(host, "wb") as f:
        f.write(b"hi\n")
    kiln_fs("inject", "--format", "qcow2", image, "--mkdir", "/srv/a:2750:1000:4294967294",
            "--file", f"/etc/motd={host}:0600", "--mkdir", "/srv/b:c")  # "c": part of the name
    out = kiln_fs("stat", "--format", "qcow2", image, "/srv/a").stdout.decode()
    assert "2750" in out and "4294967294" in out, out
    assert "0600" in kiln_fs("stat", "--format", "qcow2", image, "/etc/motd").stdout.decode()
    assert "b:c" in kiln_fs("ls", "--format", "qcow2", image, "/srv").stdout.decode()
