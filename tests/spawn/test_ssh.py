"""kiln-spawn ssh: which namespace and which ssh command line, without a guest. A stand-in
`ssh` first on PATH prints its arguments and the network namespace it runs in; the network's
DHCP namespace is a real one, made by the test inside a private mount namespace (the
namespace file is a bind mount, gone with that mount namespace)."""

import os
import shlex

from kilntest.spawn import make_qcow2, run

FAKE_SSH = """#!/bin/sh
for a in "$@"; do printf '%s\\n' "$a"; done > "$KILN_TEST_SSH_OUT"
readlink /proc/self/ns/net >> "$KILN_TEST_SSH_OUT"
"""


def booted(world, tmp_path):
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M"))
    world.spawn("boot", "Web_1", "--image", "img", "--flavor", "m1.tiny", "--net", "demo-net")
    return world.spawn_json("show", "Web_1")


def test_ssh_errors(world, tmp_path):
    r = world.spawn("ssh", "nosuch", check=False)
    assert r.returncode == 3 and "instance 'nosuch' not found" in r.stderr, r.stderr
    booted(world, tmp_path)
    # --no-plumb: no namespace on the host has a leg on the network.
    r = world.spawn("ssh", "Web_1", check=False)
    assert r.returncode == 3 and "no namespace on this host reaches network" in r.stderr, r.stderr
    world.spawn("delete", "Web_1")


def ssh_with_fake(world, tmp_path, inst, *args):
    """Runs kiln-spawn ssh ARGS with a stand-in ssh on PATH, inside a mount namespace of its
    own where the network's DHCP namespace exists; returns the lines the stand-in wrote: its
    arguments, then the network namespace it ran in."""
    bindir = tmp_path / "bin"
    if not bindir.exists():
        bindir.mkdir()
        (bindir / "ssh").write_text(FAKE_SSH)
        (bindir / "ssh").chmod(0o755)
    out = tmp_path / "ssh.out"
    ns = os.path.join(world.run_dir, "netns", "qdhcp-" + inst["network_id"])
    cmd = world.spawn_cmd("ssh", *args)
    script = (f"mkdir -p {shlex.quote(os.path.dirname(ns))} && touch {shlex.quote(ns)} && "
              f"unshare --net={shlex.quote(ns)} true && {shlex.join(map(str, cmd))}")
    env = dict(world.env, PATH=f"{bindir}:{os.environ['PATH']}", KILN_TEST_SSH_OUT=str(out))
    run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env)
    return out.read_text().splitlines()


def test_ssh_runs_ssh_inside_the_networks_dhcp_namespace(world, tmp_path):
    inst = booted(world, tmp_path)
    *args, netns = ssh_with_fake(world, tmp_path, inst, "Web_1", "-l", "debian", "-i", "/keys/id",
                                 "-o", "BatchMode=yes", "--", "uname", "-a")
    assert args == ["-o", f"UserKnownHostsFile={inst['instance_dir']}/known_hosts",
                    "-o", "StrictHostKeyChecking=accept-new", "-l", "debian",
                    "-o", "BatchMode=yes", "-i", "/keys/id", "--", inst["ip_address"],
                    "uname", "-a"]
    assert netns != os.readlink("/proc/self/ns/net"), "ssh ran in the caller's namespace"
    world.spawn("delete", "Web_1")


def test_ssh_logs_in_as_the_images_os_admin_user(world, tmp_path):
    """Without -l, the image's os_admin_user property (Glance's) is the login; -l wins."""
    world.spawn("image-create", "debian", make_qcow2(str(tmp_path / "d.qcow2"), "16M"),
                "--property", "os_admin_user=debian")
    world.spawn("boot", "Deb_1", "--image", "debian", "--flavor", "m1.tiny", "--net", "demo-net")
    booted(world, tmp_path)  # Web_1, from an image without the property
    inst = world.spawn_json("show", "Deb_1")

    def login(*args):
        a = ssh_with_fake(world, tmp_path, inst, *args, "--", "true")
        return a[a.index("-l") + 1]

    assert login("Deb_1") == "debian"
    assert login("Deb_1", "-l", "admin") == "admin"
    assert login("Web_1") == "root"
    world.spawn("delete", "Deb_1", "Web_1")
