"""kiln-spawn's files on the host and its numbers: tenant data 0600 in 0700 directories
whatever the umask, the files QEMU opens given to the user it runs as, a directory in QEMU's
way refused with a clear error; numeric options and settings of kiln-spawn and kiln-net parsed
whole and range-checked, a bad value stored nowhere. Against libvirt's test driver, the
kiln-nbd of the World (shared socket) and kiln-net --no-plumb."""

import json
import os
import stat
import subprocess

from kilntest.spawn import make_qcow2


def spawn_umask0(world, *args, check=True):
    """kiln-spawn with umask 0: whatever is not set explicitly would come out 0666/0777."""
    p = subprocess.run([str(a) for a in world.spawn_cmd(*args)], capture_output=True, text=True,
                       env=world.env, preexec_fn=lambda: os.umask(0), timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def mode_owner(path):
    st = os.lstat(path)
    return oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid


def one_line_error(p, *needles, code=1):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def boot_args(tmp_path):
    ud = tmp_path / "user-data"
    ud.write_bytes(b"#cloud-config\npassword: secret\n")
    return ["--image", "guest", "--flavor", "m1.tiny", "--net", "demo-net", "--user-data", ud,
            "--format", "json"]


def test_tenant_data_is_private_whatever_the_umask(world, tmp_path):
    base = make_qcow2(str(tmp_path / "base.qcow2"), "16M", pattern="0x5a")
    spawn_umask0(world, "image-create", "guest", base)
    inst = json.loads(spawn_umask0(world, "boot", "vm1", *boot_args(tmp_path)).stdout)
    state = world.spawn_dir
    img = json.loads(spawn_umask0(world, "image-show", "guest", "--format", "json").stdout)
    d = inst["instance_dir"]
    want = {
        state: "0o711",  # QEMU's way to instances/<uuid>/: through, not listing
        f"{state}/spawn.db": "0o600",
        f"{state}/images": "0o700",
        f"{state}/images/{img['id']}": "0o600",
        f"{state}/_base": "0o700",
        f"{state}/_base/{img['kiln_digest']}": "0o400",
        f"{state}/_base/{img['kiln_digest']}.lock": "0o600",
        f"{state}/locks": "0o700",
        f"{state}/locks/{inst['id']}.lock": "0o600",
        f"{state}/instances": "0o711",
        d: "0o711",
        f"{d}/disk": "0o600",  # the overlay: kiln-nbd's (root), never QEMU's
        f"{d}/disk.config": "0o600",  # user data and keys
        f"{d}/console.log": "0o600",
    }
    for suffix in ("-wal", "-shm"):
        if os.path.exists(f"{state}/spawn.db{suffix}"):
            want[f"{state}/spawn.db{suffix}"] = "0o600"
    got = {p: mode_owner(p)[0] if os.path.lexists(p) else "missing" for p in want}
    assert got == want
    # QEMU runs as root here (test:///default, run by root): root keeps everything.
    assert {mode_owner(p)[1] for p in want} == {os.geteuid()}
    spawn_umask0(world, "delete", "vm1")
    world.assert_nothing_left()


def test_files_qemu_opens_are_given_to_its_user(world, tmp_path):
    """--qemu-user nobody:nogroup (on a Debian host libvirt-qemu, from qemu.conf): the config
    drive and the console log are nobody's 0600, the rest stays root's; a directory that
    nobody cannot pass, or a socket it cannot connect to, is refused before the domain is
    defined, and rolled back."""
    assert os.geteuid() == 0, "giving files to another user needs root"
    base = make_qcow2(str(tmp_path / "base.qcow2"), "16M")
    world.spawn("image-create", "guest", base)
    os.chmod(world.dir, 0o700)  # mkdtemp's mode: QEMU as nobody cannot get in
    p = world.spawn("--qemu-user", "nobody:nogroup", "boot", "blocked", *boot_args(tmp_path),
                    check=False)
    one_line_error(p, "QEMU runs as nobody:nogroup and cannot reach the config drive",
                   f"{world.dir} is 0700", "chmod o+x")
    assert world.spawn_json("show", "blocked")["status"] == "error"
    world.spawn("delete", "blocked")
    world.assert_nothing_left()

    os.chmod(world.dir, 0o711)
    # kiln-nbd's shared socket (--nbd-socket, as this World uses) is root's 0600: QEMU as
    # nobody could not connect to it.
    p = world.spawn("--qemu-user", "nobody:nogroup", "boot", "nosock", *boot_args(tmp_path),
                    check=False)
    one_line_error(p, f"cannot use kiln-nbd's socket {world.nbd.sock}", "is 0600")
    world.spawn("delete", "nosock")
    os.chmod(world.nbd.sock, 0o666)
    inst = json.loads(world.spawn("--qemu-user", "nobody:nogroup", "boot", "vm1",
                                  *boot_args(tmp_path)).stdout)
    d = inst["instance_dir"]
    assert mode_owner(f"{d}/disk.config") == ("0o600", 65534, 65534)
    assert mode_owner(f"{d}/console.log") == ("0o600", 65534, 65534)
    assert mode_owner(f"{d}/disk") == ("0o600", 0, 0)
    assert mode_owner(d) == ("0o711", 0, 0)
    # The setting does the same as the option, and is checked before it is stored.
    r = world.spawn("config-set", "qemu_user", "no-such-user-kiln", check=False)
    one_line_error(r, "no user 'no-such-user-kiln'")
    assert world.spawn_json("config-show")["qemu_user"] == "(libvirt's)"
    world.spawn("config-set", "qemu_user", "nobody")
    inst2 = json.loads(world.spawn("boot", "vm2", *boot_args(tmp_path)).stdout)
    assert mode_owner(f"{inst2['instance_dir']}/disk.config") == ("0o600", 65534, 65534)
    world.spawn("delete", "vm1", "vm2")
    world.assert_nothing_left()


def test_kiln_spawn_numbers_are_strict(world):
    before = world.spawn_json("config-show")
    bad_flavors = [
        (["--vcpus", "2x"], "Invalid --vcpus '2x' (expected a whole number from 1 to 1024)"),
        (["--vcpus", " 2"], "Invalid --vcpus ' 2'"),
        (["--vcpus", "+2"], "Invalid --vcpus '+2'"),
        (["--vcpus", "0"], "Invalid --vcpus '0'"),
        (["--vcpus", "1025"], "Invalid --vcpus '1025'"),
        (["--ram", "abc"], "Invalid --ram 'abc'"),
        (["--ram", "-1"], "Invalid --ram '-1'"),
        (["--ram", "0"], "Invalid --ram '0' (expected a whole number from 1 to 1073741824)"),
        (["--disk", "abc"], "Invalid --disk 'abc'"),
        (["--disk", "1.5"], "Invalid --disk '1.5'"),
        (["--disk", "1e3"], "Invalid --disk '1e3'"),
        (["--disk", "99999999999999999999"], "Invalid --disk '99999999999999999999'"),
    ]
    for args, needle in bad_flavors:
        full = {"--vcpus": "1", "--ram": "512", "--disk": "1"}
        full[args[0]] = args[1]
        flat = [x for kv in full.items() for x in kv]
        one_line_error(world.spawn("flavor-create", "f", *flat, check=False), needle)
    assert "f" not in {f["name"] for f in world.spawn_json("flavor-list")}

    for value in ["0", "5s", "86401"]:
        needle = f"Invalid --wait-timeout '{value}' (expected a whole number from 1 to 86400)"
        one_line_error(world.spawn("--wait-timeout", value, "list", check=False), needle)

    bad_settings = [
        ("host_vcpus", "+5"), ("host_vcpus", " 5"), ("host_vcpus", "1e3"),
        ("host_memory_mb", "0x10"), ("reserved_host_memory_mb", "-1"),
        ("host_disk_gb", "99999999999999"), ("cpu_allocation_ratio", "1e3"),
        ("ram_allocation_ratio", "inf"), ("disk_allocation_ratio", "0"),
        ("cpu_allocation_ratio", "1.5x"), ("cpu_allocation_ratio", "lots"),
    ]
    for key, value in bad_settings:
        one_line_error(world.spawn("config-set", key, value, check=False),
                       f"setting {key} must be", f"'{value}'")
    # The disk transport's settings (docs/kiln-spawn.md, "Disks over NBD+TLS").
    bad_transport = [
        ("disk_transport", "tcp", "plain NBD over TCP has no authentication"),
        ("disk_transport", "rdma", "disk_transport must be unix or tcp-tls, not 'rdma'"),
        ("nbd_tcp_address", "0.0.0.0:10809", "'0.0.0.0' is not an IP address or host name"),
        ("nbd_tcp_address", "127.0.0.1", "has no port"),
        ("nbd_tcp_address", "127.0.0.1:65536", "not a whole number from 1 to 65535"),
        ("nbd_tcp_address", "::1:10809", "an IPv6 address goes in brackets"),
        ("nbd_tcp_address", "a'b:80", "is not an IP address or host name"),
        ("nbd_tls_x509_cert_dir", "pki", "must be an absolute path"),
    ]
    for key, value, needle in bad_transport:
        one_line_error(world.spawn("config-set", key, value, check=False), needle)
    # Nothing of it was stored: the settings and the capacity are as before.
    assert world.spawn_json("config-show") == before
    world.spawn_json("hypervisor-stats")

    for spec, needle in [("2x", "invalid uid '2x'"), ("root:", "USER or USER:GROUP"),
                         ("4294967295", "invalid uid")]:
        one_line_error(world.spawn("--qemu-user", spec, "list", check=False), needle)
    one_line_error(world.spawn("--nbd-socket-dir", world.run_dir, "list", check=False),
                   "give --nbd-socket (one shared socket) or --nbd-socket-dir, not both")


def test_kiln_net_numbers_are_strict(world):
    cases = [
        (["net-create", "n1", "--provider:segmentation-id", "2x"],
         "Invalid --provider:segmentation-id '2x' (expected a whole number from 1 to 4294967295)"),
        (["net-create", "n1", "--provider:segmentation-id", "0"],
         "Invalid --provider:segmentation-id '0'"),
        (["net-create", "n1", "--provider:segmentation-id", "4294967296"], "'4294967296' (expected"),
        (["net-create", "n1", "--provider:segmentation-id", "-5"], "'-5' (expected"),
        (["net-create", "n1", "--provider:segmentation-id", " 7"], "' 7' (expected"),
        (["subnet-create", "demo-net", "10.9.0.0/24", "--ip-version", "4x"],
         "Invalid --ip-version '4x' (expected a whole number from 4 to 6)"),
        (["subnet-create", "demo-net", "10.9.0.0/24", "--ip-version", "5"],
         "5 is not an IP version"),
        (["subnet-create", "demo-net", "10.9.0.0/24", "--ip-version", "99999999999"],
         "Invalid --ip-version '99999999999'"),
        (["security-group-rule-create", "default", "--protocol", "tcp", "--port-range-min",
          "80x"], "Invalid --port-range-min '80x' (expected a whole number from 0 to 65535)"),
        (["security-group-rule-create", "default", "--protocol", "tcp", "--port-range-min",
          "22", "--port-range-max", "70000"], "Invalid --port-range-max '70000'"),
        (["security-group-rule-create", "default", "--protocol", "tcp", "--port-range-min",
          "+22"], "Invalid --port-range-min '+22'"),
    ]
    world.net("security-group-create", "default", check=False)
    before = (world.net("net-list", "--format", "json").stdout,
              world.net("subnet-list", "--format", "json").stdout)
    for args, needle in cases:
        p = world.net(*args, check=False)
        assert p.returncode != 0 and needle in p.stderr, (args, p.returncode, p.stderr)
        assert len([line for line in p.stderr.splitlines() if line.strip()]) == 1, p.stderr
    assert (world.net("net-list", "--format", "json").stdout,
            world.net("subnet-list", "--format", "json").stdout) == before
    # The largest ids are accepted (GRE keys take 32 bits; VXLAN's 24 are the service's).
    world.net("net-create", "g1", "--provider:network-type", "gre",
              "--provider:segmentation-id", "4294967295")
    p = world.net("net-create", "v1", "--provider:network-type", "vxlan",
                  "--provider:segmentation-id", "16777216", check=False)
    assert p.returncode != 0 and "between 1 and 16777215" in p.stderr, p.stderr
