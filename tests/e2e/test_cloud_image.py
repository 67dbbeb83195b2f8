"""A real cloud image, end to end: Kiln's Debian 12 cloud image (scripts/cloud-image/build.sh:
MBR, GRUB, cloud-init, sshd, growpart) boots from its own bootloader through kiln-spawn — the
disk a qcow2 overlay with extended L2 entries, served by kiln-nbd, no kernel or initrd from outside. cloud-init reads
the config drive (datasource ConfigDrive) and applies the hostname, the SSH key and the user
data, configures the NIC from network_data.json and grows the root filesystem to the flavor's
disk; the test logs in with `kiln-spawn ssh` (ssh inside the network's DHCP namespace) and the
key, and asks the guest.
A second guest, booted with `--config-drive false`, gets the same from the metadata service
(`kiln-spawn metadata-serve` behind kiln-net's proxy on 169.254.169.254 in the network's DHCP
namespace): cloud-init's OpenStack datasource. After boot, with the static configuration of
network_data.json, both guests reach 169.254.169.254 through their router, whose proxy answers
each with its own meta_data.json. Deleting the instances leaves nothing behind.

The image is built once per change of its inputs into KILN_IMAGE_CACHE (default
/var/cache/kiln/images); KILN_CLOUD_IMAGE names a ready image instead."""

import json
import os
import time

import pytest

from kiln_cloud import GUEST_METADATA_COMMAND, MetadataService, allow_ssh_and_ping
from kilntest.cloud import KILN_SPAWN, Cloud
from kilntest.guest import run

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GiB = 1 << 30
# Under TCG on a loaded 2-core machine, cloud-init finishes 1 to 5 minutes after power-on.
BOOT_TIMEOUT = 900


@pytest.fixture(scope="session")
def cloud_image():
    path = os.environ.get("KILN_CLOUD_IMAGE")
    if not path:
        out = run(["bash", os.path.join(TOP, "scripts", "cloud-image", "build.sh")],
                  timeout=1800).stdout
        path = out.strip().splitlines()[-1]
    assert os.path.isfile(path), path
    return path


@pytest.fixture
def cloud(workdir, procs):
    c = Cloud(workdir, procs)
    c.network()
    return c


def ssh(cloud, name, key, command, timeout=180):
    """`kiln-spawn ssh` with the key the instance was booted with, as the image's default user
    (no -l: the image's os_admin_user property). The timeout is generous: under TCG on a
    loaded machine, sudo alone can take a minute (it looks up the guest's hostname, and the
    network's DNS server, the router's address, answers nothing)."""
    return cloud.spawn("ssh", name, "-i", key, "-o", "BatchMode=yes",
                       "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "--", command,
                       check=False, timeout=timeout)


def check_guest(cloud, name, key, datasource):
    """What a user checks after logging in: hostname, datasource, user data, grown root,
    address, a ping of the router."""
    inst = cloud.spawn_json("show", name)
    hostname = name.lower().replace("_", "-")
    out = cloud.wait_console(name, "KILN-CLOUD: runcmd on", timeout=BOOT_TIMEOUT)
    # GRUB's menu entry, printed on the serial console before the kernel's first line.
    assert "Booting `Debian GNU/Linux 12 (Kiln cloud image)'" in out, out[:2000]
    assert f"KILN-CLOUD: runcmd on {hostname}" in out, out[-4000:]

    deadline = time.monotonic() + 180
    while True:
        p = ssh(cloud, name, key, "hostname")
        if p.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert p.returncode == 0, f"kiln-spawn ssh: {p.stderr}\n" + cloud.console(name)[-3000:]
    assert p.stdout.strip() == hostname

    p = ssh(cloud, name, key, "cloud-init status --wait >/dev/null; "
            "sudo cat /run/cloud-init/result.json")
    result = json.loads(p.stdout)["v1"]
    assert result["datasource"].startswith(datasource), result
    assert result["errors"] == [], result

    p = ssh(cloud, name, key, "cat /etc/kiln-user-data")
    assert p.stdout == "written by cloud-init from Kiln's user data\n", p.stderr

    # growpart and resize2fs grew the root from the image's 2 GiB to the flavor's 4 GiB.
    p = ssh(cloud, name, key, "df -B1 --output=size / | tail -1")
    assert int(p.stdout) > 3.5 * GiB, p.stdout + p.stderr

    # The NIC carries the port's address, and the router answers.
    ip = inst["ip_address"]
    p = ssh(cloud, name, key, "ip -4 -o addr show scope global; ping -c1 -W5 192.168.0.1")
    assert f"inet {ip}/24" in p.stdout, p.stdout
    assert p.returncode == 0, p.stdout + p.stderr
    return inst


def test_cloud_image_boots_with_config_drive_and_metadata_service(cloud, cloud_image, workdir,
                                                                  procs):
    image_size = json.loads(run(["qemu-img", "info", "--output=json", cloud_image]).stdout)
    assert image_size["virtual-size"] == 2 * GiB
    cloud.spawn("image-create", "debian-12", cloud_image, "--property", "os_admin_user=debian")
    cloud.spawn("flavor-create", "c1.cloud", "--vcpus", "1", "--ram", "1024", "--disk", "4")

    # The metadata service, and kiln-net's proxies to it in the network's DHCP namespace and
    # the router's namespace.
    sock = os.path.join(workdir, "metadata.sock")
    enter = ["nsenter", f"--target={cloud.lv.init_pid()}", "--net", "--mount", "--"]
    procs.append(MetadataService(enter, KILN_SPAWN, sock, cloud.env))
    cloud.net("config-set", "metadata_socket", sock)
    cloud.net("apply")

    key = os.path.join(workdir, "id_ed25519")
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kiln@e2e", "-f", key])
    user_data = os.path.join(workdir, "user-data")
    with open(user_data, "w") as f:
        f.write("#cloud-config\n"
                "write_files:\n"
                "  - path: /etc/kiln-user-data\n"
                "    content: \"written by cloud-init from Kiln's user data\\n\"\n"
                "runcmd:\n"
                "  - [ sh, -c, 'echo \"KILN-CLOUD: runcmd on $(hostname)\" > /dev/ttyS0' ]\n")

    # Cloud_1 reads the config drive; Cloud_2 has none and asks the metadata service. Both
    # boot at once.
    common = ["--image", "debian-12", "--flavor", "c1.cloud", "--net", "demo-net",
              "--key-file", key + ".pub", "--user-data", user_data]
    cloud.spawn("boot", "Cloud_1", *common)
    cloud.spawn("boot", "Cloud_2", *common, "--config-drive", "false")
    for name, drive in (("Cloud_1", True), ("Cloud_2", False)):
        inst = cloud.spawn_json("show", name)
        assert inst["status"] == "active", inst
        assert "<kernel>" not in inst["domain_xml"], "the guest must boot from its own disk"
        assert ("device='cdrom'" in inst["domain_xml"]) == drive, inst["domain_xml"]

    # As in Neutron, the default security group lets nothing in from outside the group.
    allow_ssh_and_ping(cloud.net)

    check_guest(cloud, "Cloud_1", key, "DataSourceConfigDrive")
    check_guest(cloud, "Cloud_2", key, "DataSourceOpenStack")
    # cloud-init's instance data came from the metadata service, for this instance.
    p = ssh(cloud, "Cloud_2", key, "sudo cloud-init query v1.instance_id")
    assert p.stdout.strip() == cloud.spawn_json("show", "Cloud_2")["id"], p.stdout + p.stderr
    # Now configured statically from network_data.json (no route to 169.254.169.254 but the
    # default one), each guest asks its router's proxy and gets its own data.
    for name in ("Cloud_1", "Cloud_2"):
        inst = cloud.spawn_json("show", name)
        p = ssh(cloud, name, key,
                "ip route get 169.254.169.254 | head -1; " + GUEST_METADATA_COMMAND)
        assert p.returncode == 0, p.stdout + p.stderr
        route, answer = p.stdout.split("\n", 1)
        assert "via 192.168.0.1 " in route, route
        md = json.loads(answer)
        assert (md["uuid"], md["hostname"]) == (inst["id"], name.lower().replace("_", "-")), md

    cloud.spawn("delete", "Cloud_1", "Cloud_2")
    cloud.assert_nothing_left()
