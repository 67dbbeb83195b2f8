"""kiln-spawn through its command line, against libvirt's test:///default driver (which keeps
domains per process: the domains themselves are checked in spawn_pipeline_tests), a kiln-nbd
started here, and a netplumb network without plumbing. Checked with kiln-net's listings,
kiln-nbd's list-exports, qemu-img/qemu-io through the NBD export, and xorriso/isoinfo on the
config drive."""

import concurrent.futures
import hashlib
import json
import os
import subprocess
import xml.etree.ElementTree as ET

from kilntest.spawn import STEPS, TIMEOUT, make_ext4_qcow2, make_qcow2, require_tools, run


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def extract_iso(iso, dest):
    run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", dest])
    return dest


def test_boot_config_drive_export_and_delete(world, tmp_path):
    require_tools("xorriso", "isoinfo", "qemu-img", "qemu-io")
    base = make_qcow2(str(tmp_path / "base.qcow2"), "64M", pattern="0x5a")
    base_sum = sha256(base)
    img = json.loads(world.spawn("image-create", "guest", base, "--disk-format", "qcow2",
                                 "--format", "json").stdout)
    assert img["disk_format"] == "qcow2" and img["virtual_size"] == 64 << 20
    assert len(img["kiln_digest"]) == 32
    assert [i["name"] for i in world.spawn_json("image-list")] == ["guest"]

    key = tmp_path / "mykey.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnTestKey test@kiln\n")
    ud = tmp_path / "user-data"
    ud.write_bytes(b"#cloud-config\nruncmd:\n - echo hi\n")
    f1 = tmp_path / "motd"
    f1.write_text("welcome to kiln\n")
    f2 = tmp_path / "blob"
    f2.write_bytes(bytes(range(256)))

    inst = json.loads(world.spawn("boot", "Web_1", "--image", "guest", "--flavor", "m1.small",
                                  "--net", "demo-net", "--key-file", key, "--user-data", ud,
                                  "--file", f"/etc/motd={f1}", "--file", f"/opt/blob={f2}",
                                  "--security-group", "default", "--format", "json").stdout)
    assert inst["status"] == "active" and inst["task_state"] == ""
    assert inst["steps"] == STEPS
    show = world.spawn_json("show", "Web_1")
    # libvirt's test driver keeps domains per process: this process has none.
    assert show["power_state"] == "no domain"
    transitions = []
    for e in show["events"]:
        t = (e["status"], e["task_state"])
        if not transitions or transitions[-1] != t:
            transitions.append(t)
    assert transitions == [("building", "scheduling"), ("building", "networking"),
                           ("building", "block_device_mapping"), ("building", "spawning"),
                           ("active", "")]

    # The port as netplumb has it.
    port = json.loads(world.net("port-show", inst["port_id"], "--format", "json").stdout)
    assert port["device_id"] == inst["id"]
    assert port["mac_address"] == inst["mac_address"]
    assert port["fixed_ips"][0]["ip_address"] == inst["ip_address"]

    # The domain XML kiln-spawn defined.
    dom = ET.fromstring(show["domain_xml"])
    disk = dom.find("devices/disk[@device='disk']")
    assert disk.get("type") == "network"
    assert disk.find("source").get("protocol") == "nbd"
    assert disk.find("source").get("name") == inst["export"]
    assert disk.find("source/host").get("socket") == world.nbd.sock
    cd = dom.find("devices/disk[@device='cdrom']")
    iso = os.path.join(inst["instance_dir"], "disk.config")
    assert cd.find("source").get("file") == iso
    nic = dom.find("devices/interface")
    assert nic.get("type") == "ethernet"
    assert nic.find("mac").get("address") == inst["mac_address"]
    assert nic.find("target").get("dev") == inst["tap"]
    assert dom.find("memory").text == "2048" and dom.find("memory").get("unit") == "MiB"
    assert dom.find("vcpu").text == "1"
    assert dom.get("type") == "qemu"

    # The overlay: qcow2 on the cached base with an explicit format, grown to the flavor.
    info = json.loads(run(["qemu-img", "info", "-U", "--output=json",
                           os.path.join(inst["instance_dir"], "disk")]).stdout)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 20 << 30
    assert info["backing-filename"] == os.path.join(world.spawn_dir, "_base", img["kiln_digest"])
    assert info["backing-filename-format"] == "qcow2"
    # Subclusters by default: a first small write copies 4 KiB from the base, not a cluster.
    assert info["cluster-size"] == 128 << 10
    assert info["format-specific"]["data"]["extended-l2"] is True

    # The export serves the overlay: the base's data shows through NBD.
    exports = world.nbd.exports()
    assert [e["name"] for e in exports] == [inst["export"]]
    uri = f"nbd+unix:///{inst['export']}?socket={world.nbd.sock}"
    run(["qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 1M", "-c", "read -P 0 1M 1M", uri])

    # The config drive.
    label = run(["isoinfo", "-d", "-i", iso]).stdout
    assert "Volume id: config-2" in label
    listing = run(["isoinfo", "-R", "-f", "-i", iso]).stdout.split()
    assert "/openstack/latest/meta_data.json" in listing
    assert "/ec2/latest/meta-data.json" in listing
    cdir = extract_iso(iso, str(tmp_path / "cd"))
    versions = sorted(os.listdir(os.path.join(cdir, "openstack")))
    assert versions == sorted(["2012-08-10", "2013-04-04", "2013-10-17", "2015-10-15",
                               "2016-06-30", "2016-10-06", "2017-02-22", "2018-08-27",
                               "2020-10-14", "latest", "content"])
    for v in versions:
        if v == "content":
            continue
        d = os.path.join(cdir, "openstack", v)
        md = json.load(open(os.path.join(d, "meta_data.json")))
        assert md["uuid"] == inst["id"]
        assert md["name"] == "Web_1" and md["hostname"] == "web-1"
        assert md["public_keys"] == {"mykey": key.read_text().strip()}
        assert md["launch_index"] == 0 and md["availability_zone"] == "nova"
        assert open(os.path.join(d, "user_data"), "rb").read() == ud.read_bytes()
        for entry in md["files"]:
            content = open(os.path.join(cdir, "openstack", entry["content_path"].lstrip("/")),
                           "rb").read()
            expected = {"/etc/motd": f1.read_bytes(), "/opt/blob": f2.read_bytes()}
            assert content == expected[entry["path"]]
        if v >= "2013-10-17":
            assert json.load(open(os.path.join(d, "vendor_data.json"))) == {}
        if v >= "2015-10-15":
            nd = json.load(open(os.path.join(d, "network_data.json")))
            assert nd["links"][0]["ethernet_mac_address"] == inst["mac_address"]
            assert nd["links"][0]["vif_id"] == inst["port_id"]
            net = nd["networks"][0]
            assert net["ip_address"] == inst["ip_address"]
            assert net["netmask"] == "255.255.255.0"
            assert net["routes"][0]["gateway"] == "192.168.0.1"
            assert nd["services"] == [{"type": "dns", "address": "8.8.8.8"}]
    latest = json.load(open(os.path.join(cdir, "openstack/latest/meta_data.json")))
    assert len(latest["random_seed"]) == 684
    ec2 = json.load(open(os.path.join(cdir, "ec2/latest/meta-data.json")))
    assert ec2["local-ipv4"] == inst["ip_address"]
    assert ec2["instance-type"] == "m1.small"
    assert ec2["security-groups"] == ["default"]
    assert open(os.path.join(cdir, "ec2/latest/user-data"), "rb").read() == ud.read_bytes()

    # Listings.
    lst = world.spawn_json("list")
    assert [(i["name"], i["status"], i["networks"]) for i in lst] == [
        ("Web_1", "active", f"demo-net={inst['ip_address']}")]
    assert "Web_1" in world.spawn("list").stdout
    stats = world.spawn_json("hypervisor-stats")
    assert stats["memory_mb_used"] == 2048 and stats["disk_gb_used"] == 20
    assert stats["vcpus_used"] == 1 and stats["running_vms"] == 1

    # The image is in use.
    r = world.spawn("image-delete", "guest", check=False)
    assert r.returncode == 1 and "in use by instance(s): Web_1" in r.stderr

    world.spawn("delete", "Web_1")
    assert world.spawn_json("list") == []
    world.assert_nothing_left()
    assert sha256(base) == base_sum
    base_copy = os.path.join(world.spawn_dir, "_base", img["kiln_digest"])
    assert os.path.exists(base_copy)
    world.spawn("image-delete", "guest")
    assert not os.path.exists(base_copy)
    assert world.spawn_json("image-list") == []


def test_rollback_at_every_step(world, tmp_path):
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M"))
    for step in STEPS:
        env = dict(world.env, KILN_SPAWN_FAIL_AT=step)
        name = "f-" + step.replace("_", "-")
        r = world.spawn("boot", name, "--image", "img", "--flavor", "m1.tiny", "--net",
                        "demo-net", env=env, check=False)
        assert r.returncode == 1, r
        assert r.stderr.strip() == \
            f"kiln-spawn: fault injected at step {step} (KILN_SPAWN_FAIL_AT)", r.stderr
        show = world.spawn_json("show", name)
        assert show["status"] == "error" and step in show["fault"]
        assert show["steps"] == [] and show["ip_address"] == ""
        assert show["events"][-1]["status"] == "error"
        world.assert_nothing_left()
        world.spawn("delete", name)
    assert world.spawn_json("list") == []
    # Everything still works afterwards.
    world.spawn("boot", "ok", "--image", "img", "--flavor", "m1.tiny", "--net", "demo-net")
    world.spawn("delete", "ok")
    world.assert_nothing_left()


def test_capacity_names_the_resource_and_leaves_nothing(world, tmp_path):
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M"))
    world.spawn("config-set", "host_memory_mb", "2048")
    world.spawn("config-set", "host_vcpus", "64")
    world.spawn("config-set", "host_disk_gb", "100")
    stats = world.spawn_json("hypervisor-stats")
    assert stats["memory_mb_capacity"] == (2048 - 512) * 3 // 2
    r = world.spawn("boot", "big", "--image", "img", "--flavor", "m1.medium", "--net",
                    "demo-net", check=False)
    assert r.returncode == 1
    assert "memory (MiB): requested 4096, free 2304" in r.stderr, r.stderr
    assert "vCPUs" not in r.stderr and "disk" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert world.spawn_json("list") == []
    world.assert_nothing_left()
    world.spawn("config-set", "host_disk_gb", "10")
    r = world.spawn("boot", "big", "--image", "img", "--flavor", "m1.small", "--net",
                    "demo-net", check=False)
    assert "disk (GiB): requested 20, free 10" in r.stderr, r.stderr
    world.assert_nothing_left()


def boot_many(world, names, flavor="m1.tiny"):
    procs = [subprocess.Popen(world.spawn_cmd("boot", n, "--image", "img", "--flavor", flavor,
                                              "--net", "demo-net", "--format", "json"),
                              env=world.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for n in names]
    out = []
    for p in procs:
        so, se = p.communicate(timeout=TIMEOUT * 4)
        out.append((p.returncode, so, se))
    return out


def test_ten_parallel_boots(world, tmp_path):
    base = make_qcow2(str(tmp_path / "b.qcow2"), "64M", pattern="0x33")
    world.spawn("image-create", "img", base)
    names = [f"vm{i}" for i in range(10)]
    results = boot_many(world, names)
    for rc, so, se in results:
        assert rc == 0, se
    insts = world.spawn_json("list")
    assert sorted(i["name"] for i in insts) == names
    assert all(i["status"] == "active" for i in insts)
    ips = [i["ip_address"] for i in insts]
    macs = [i["mac_address"] for i in insts]
    assert len(set(ips)) == 10 and len(set(macs)) == 10
    # The base was copied by exactly one of the ten.
    assert sum(1 for i in insts if i["base_filled"]) == 1
    bases = [f for f in os.listdir(os.path.join(world.spawn_dir, "_base"))
             if not f.endswith(".lock")]
    assert len(bases) == 1
    stats = world.spawn_json("hypervisor-stats")
    assert stats["running_vms"] == 10 and stats["memory_mb_used"] == 5120
    assert len(world.nbd.exports()) == 10
    assert len(world.instance_ports()) == 10
    # Ten deletes at once.
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        for r in ex.map(lambda n: world.spawn("delete", n, check=False), names):
            assert r.returncode == 0, r.stderr
    world.assert_nothing_left()


def test_parallel_boots_beyond_capacity(world, tmp_path):
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M"))
    # (2560 - 512) * 1.5 = 3072 MiB: six m1.tiny and no more.
    world.spawn("config-set", "host_memory_mb", "2560")
    world.spawn("config-set", "host_vcpus", "64")
    world.spawn("config-set", "host_disk_gb", "100")
    results = boot_many(world, [f"vm{i}" for i in range(10)])
    ok = [r for r in results if r[0] == 0]
    failed = [r for r in results if r[0] != 0]
    assert len(ok) == 6, [r[2] for r in results]
    for rc, so, se in failed:
        assert rc == 1 and "insufficient resources" in se and "memory" in se, se
    insts = world.spawn_json("list")
    assert len(insts) == 6 and all(i["status"] == "active" for i in insts)
    assert len(world.instance_ports()) == 6
    assert len(world.nbd.exports()) == 6
    assert world.spawn_json("hypervisor-stats")["memory_mb_used"] == 3072
    world.spawn("delete", *[i["name"] for i in insts])
    world.assert_nothing_left()


def test_images_flavors_settings(world, tmp_path):
    q = make_qcow2(str(tmp_path / "q.qcow2"), "8M")
    r = world.spawn("image-create", "x", q, "--disk-format", "raw", check=False)
    assert r.returncode == 1 and "is a qcow2 image by its content, not raw" in r.stderr
    raw = tmp_path / "r.raw"
    raw.write_bytes(b"\1" * 4096)
    img = json.loads(world.spawn("image-create", "r", raw, "--format", "json").stdout)
    assert img["disk_format"] == "raw" and img["size"] == 4096
    r = world.spawn("image-show", "nope", check=False)
    assert r.returncode == 3 and r.stderr.strip() == "kiln-spawn: image 'nope' not found"
    r = world.spawn("image-create", "r", raw, check=False)
    assert "already exists" in r.stderr
    world.spawn("flavor-create", "k1.custom", "--vcpus", "3", "--ram", "1536", "--disk", "7")
    fl = {f["name"]: f for f in world.spawn_json("flavor-list")}
    assert fl["m1.tiny"] == {"name": "m1.tiny", "vcpus": 1, "ram": 512, "disk": 1,
                             "builtin": True}
    assert fl["m1.large"]["vcpus"] == 4 and fl["m1.large"]["ram"] == 8192
    assert fl["k1.custom"]["disk"] == 7
    r = world.spawn("flavor-create", "bad", "--vcpus", "x", "--ram", "1", "--disk", "1",
                    check=False)
    assert r.returncode == 1 and "Invalid --vcpus 'x'" in r.stderr
    r = world.spawn("config-set", "bogus", "1", check=False)
    assert "unknown setting 'bogus'" in r.stderr
    r = world.spawn("config-set", "cpu_allocation_ratio", "-2", check=False)
    assert "cpu_allocation_ratio" in r.stderr and r.returncode == 1
    world.spawn("config-set", "cpu_allocation_ratio", "")
    assert world.spawn_json("config-show")["cpu_allocation_ratio"] == "16.0"
    r = world.spawn("boot", "x", "--image", "r", "--flavor", "m1.tiny", "--net", "demo-net",
                    "--inject", check=False)
    # This raw image holds no file system, so the inject step fails.
    assert r.returncode == 1 and "holds no filesystem" in r.stderr, r.stderr
    world.spawn("delete", "x")
    r = world.spawn("frobnicate", check=False)
    assert r.returncode == 1 and "unknown command" in r.stderr
    world.assert_nothing_left()


def debugfs_cat(image, path):
    return run(["debugfs", "-R", f"cat {path}", image]).stdout


def test_inject(world, tmp_path):
    img = make_ext4_qcow2(tmp_path, "guest", {"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
                                               "/etc/hostname": "template\n"})
    world.spawn("image-create", "guest", img)
    key = tmp_path / "k.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnInject k@x\n")
    f = tmp_path / "motd"
    f.write_text("injected motd\n")
    args = ["boot", "inj", "--image", "guest", "--flavor", "m1.tiny", "--net", "demo-net",
            "--key-file", key, "--file", f"/etc/motd={f}", "--inject"]
    inst = json.loads(world.spawn(*args, "--format", "json").stdout)
    assert inst["status"] == "active"
    # Read the guest's disk back: the overlay (with its base) as the export serves it. (Read
    # from the file with -U: kiln-nbd has written nothing to it. Reading it through NBD with
    # qemu-img convert overflows the stack of a Debug/ASan kiln-nbd in block_status; see
    # docs/kiln-spawn.md.)
    out = str(tmp_path / "out.raw")
    run(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
         os.path.join(inst["instance_dir"], "disk"), out])
    run(["qemu-io", "-f", "raw", "-c", "read 0 64k",
         f"nbd+unix:///{inst['export']}?socket={world.nbd.sock}"])
    assert debugfs_cat(out, "/etc/motd") == "injected motd\n"
    assert debugfs_cat(out, "/etc/hostname").strip() == "inj"
    assert debugfs_cat(out, "/root/.ssh/authorized_keys").strip() == key.read_text().strip()
    stat = run(["debugfs", "-R", "stat /root/.ssh/authorized_keys", out]).stdout
    assert "Mode:  0600" in stat, stat
    run(["e2fsck", "-fn", out])
    world.spawn("delete", "inj")
    world.assert_nothing_left()

    # A guest without /etc/passwd cannot take root's key: the boot fails and rolls back.
    bad = make_ext4_qcow2(tmp_path, "nopasswd", {"/etc/hostname": "x\n"})
    world.spawn("image-create", "nopasswd", bad)
    r = world.spawn("boot", "inj2", "--image", "nopasswd", "--flavor", "m1.tiny", "--net",
                    "demo-net", "--key-file", key, "--inject", check=False)
    assert r.returncode == 1 and "/etc/passwd" in r.stderr, r.stderr
    assert world.spawn_json("show", "inj2")["status"] == "error"
    world.assert_nothing_left()
    # A bad guest path is refused before anything is claimed.
    r = world.spawn("boot", "inj3", "--image", "guest", "--flavor", "m1.tiny", "--net",
                    "demo-net", "--file", f"/etc/../x={f}", "--inject", check=False)
    assert r.returncode == 1 and "--inject" in r.stderr, r.stderr
    r = world.spawn("show", "inj3", check=False)
    assert r.returncode == 3


def test_progress_only_on_a_terminal(world, tmp_path):
    require_tools("script")
    raw = tmp_path / "big.raw"
    with open(raw, "wb") as f:
        for i in range(24):
            f.write(bytes([i + 1]) * (1 << 20))
    # Not a terminal: nothing on stderr.
    r = world.spawn("image-create", "quiet", raw)
    assert r.stderr == ""
    # A terminal (script(1) runs the command on a pty): a progress line that reaches 100%.
    cmd = " ".join(f"'{a}'" for a in world.spawn_cmd("image-create", "loud", str(raw)))
    r = run(["script", "-qec", cmd, "/dev/null"], env=world.env)
    assert "copying loud into the image store" in r.stdout, r.stdout
    assert "100% (24/24 MiB)" in r.stdout, r.stdout


def test_delete_after_a_build_killed_at_every_step(world, tmp_path):
    """A boot SIGKILLed right after each step's work: the record says what may exist, and
    delete removes all of it."""
    import signal
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M"))
    for step in STEPS:
        env = dict(world.env, KILN_SPAWN_PAUSE_AT=step)
        name = "k-" + step.replace("_", "-")
        p = subprocess.Popen(world.spawn_cmd("boot", name, "--image", "img", "--flavor",
                                             "m1.tiny", "--net", "demo-net"),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        line = p.stderr.readline()
        assert f"paused after step {step}" in line, line
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stderr.close()
        show = world.spawn_json("show", name)
        assert show["status"] == "building" and show["steps"][-1] == step, show
        world.spawn("delete", name)
        world.assert_nothing_left()
    assert world.spawn_json("list") == []


def test_one_operation_at_a_time_on_an_instance(world, tmp_path):
    """delete waits for a build in progress (the instance lock), and of two deletes at once
    one removes the instance and the other finds it gone."""
    import signal
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M"))
    env = dict(world.env, KILN_SPAWN_PAUSE_AT="export")
    boot = subprocess.Popen(world.spawn_cmd("boot", "vm", "--image", "img", "--flavor",
                                            "m1.tiny", "--net", "demo-net"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert "paused after step export" in boot.stderr.readline()
    delete = subprocess.Popen(world.spawn_cmd("delete", "vm"), env=world.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        delete.wait(timeout=1)
        raise AssertionError("delete did not wait for the build")
    except subprocess.TimeoutExpired:
        pass
    assert len(world.nbd.exports()) == 1  # the build's export is still there
    boot.send_signal(signal.SIGKILL)
    boot.wait()
    boot.stderr.close()
    _, err = delete.communicate(timeout=TIMEOUT)
    assert delete.returncode == 0, err
    world.assert_nothing_left()

    world.spawn("boot", "vm2", "--image", "img", "--flavor", "m1.tiny", "--net", "demo-net")
    procs = [subprocess.Popen(world.spawn_cmd("delete", "vm2"), env=world.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = sorted((p.wait(timeout=TIMEOUT), p.stderr.read()) for p in procs)
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert results[0] == (0, ""), results
    assert results[1][0] == 3 and "not found" in results[1][1], results
    world.assert_nothing_left()
    locks = os.path.join(world.spawn_dir, "locks")
    assert not os.path.isdir(locks) or os.listdir(locks) == []


def test_sigterm_during_boot_rolls_back(world, tmp_path):
    import signal
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M"))
    for step, sig in (("port", signal.SIGTERM), ("export", signal.SIGINT)):
        env = dict(world.env, KILN_SPAWN_PAUSE_AT=step)
        p = subprocess.Popen(world.spawn_cmd("boot", "vm", "--image", "img", "--flavor",
                                             "m1.tiny", "--net", "demo-net"),
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
        assert f"paused after step {step}" in p.stderr.readline()
        p.send_signal(sig)
        err = p.stderr.read()
        p.stderr.close()
        assert p.wait(timeout=TIMEOUT) == 1
        assert "interrupted before step" in err, err
        show = world.spawn_json("show", "vm")
        assert show["status"] == "error" and "interrupted" in show["fault"]
        world.assert_nothing_left()
        world.spawn("delete", "vm")


def cloud_init_path():
    """cloud-init's Python package (and configobj, which it imports), unpacked from Debian's
    packages into a cache directory, not installed."""
    d = os.environ.get("KILN_SPAWN_CLOUD_INIT_DIR") or os.path.join(
        os.path.dirname(__file__), ".cloud-init-cache")
    site = os.path.join(d, "tree", "usr", "lib", "python3", "dist-packages")
    if not os.path.isdir(os.path.join(site, "cloudinit")):
        require_tools("apt-get", "dpkg-deb")
        debs = os.path.join(d, "debs")
        os.makedirs(debs, exist_ok=True)
        subprocess.run(["apt-get", "download", "cloud-init", "python3-configobj"], cwd=debs,
                       check=True, capture_output=True, timeout=600)
        for deb in os.listdir(debs):
            run(["dpkg-deb", "-x", os.path.join(debs, deb), os.path.join(d, "tree")])
    return site


READ_WITH_CLOUD_INIT = r"""
import json, sys
from cloudinit.sources import DataSourceConfigDrive as ds
from cloudinit.sources.helpers import openstack
r = ds.read_config_drive(sys.argv[1])
md = r["metadata"]
net = openstack.convert_net_json(r["networkdata"], known_macs={sys.argv[2]: "eth0"})
print(json.dumps({
    "version": r["version"], "instance-id": md["instance-id"],
    "local-hostname": md["local-hostname"], "public-keys": md.get("public_keys"),
    "launch-index": md["launch_index"], "az": md["availability_zone"],
    "random-seed-bytes": len(md["random_seed"]),
    "userdata": r["userdata"].decode(), "files": {k: v.decode() for k, v in r["files"].items()},
    "vendordata": r.get("vendordata"), "ec2-instance-id": r["ec2-metadata"]["instance-id"],
    "network": net}))
"""


def test_cloud_init_reads_the_config_drive(world, tmp_path):
    """cloud-init's own ConfigDrive reader and network_data converter (from Debian's package)
    on the drive kiln-spawn wrote."""
    site = cloud_init_path()
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M"))
    key = tmp_path / "ci.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKilnCloudInit ci@kiln\n")
    ud = tmp_path / "ud"
    ud.write_text("#cloud-config\npackages: [htop]\n")
    f = tmp_path / "f"
    f.write_text("file for cloud-init\n")
    inst = json.loads(world.spawn("boot", "ci-vm", "--image", "img", "--flavor", "m1.tiny",
                                  "--net", "demo-net", "--key-file", key, "--user-data", ud,
                                  "--file", f"/etc/kiln.conf={f}", "--format", "json").stdout)
    cdir = extract_iso(os.path.join(inst["instance_dir"], "disk.config"), str(tmp_path / "cd"))
    out = run(["python3", "-c", READ_WITH_CLOUD_INIT, cdir, inst["mac_address"]],
              env=dict(os.environ, PYTHONPATH=site))
    r = json.loads(out.stdout)
    assert r["version"] == 2
    assert r["instance-id"] == inst["id"] and r["ec2-instance-id"] == "i-" + inst["id"][:8]
    assert r["local-hostname"] == "ci-vm"
    assert r["public-keys"] == {"ci": key.read_text().strip()}
    assert r["launch-index"] == 0 and r["az"] == "nova"
    assert r["random-seed-bytes"] == 512
    assert r["userdata"] == ud.read_text()
    assert r["files"] == {"/etc/kiln.conf": f.read_text()}
    assert r["vendordata"] == {}
    # network_data.json as cloud-init turns it into its network config (version 1).
    cfg = r["network"]["config"]
    phys = [c for c in cfg if c["type"] == "physical"]
    assert len(phys) == 1 and phys[0]["mac_address"] == inst["mac_address"]
    assert phys[0]["name"] == "eth0" and phys[0]["mtu"] == 1450
    subnet = phys[0]["subnets"][0]
    assert subnet["type"] == "static" and subnet["address"] == inst["ip_address"]
    assert subnet["netmask"] == "255.255.255.0"
    assert subnet["routes"][0]["gateway"] == "192.168.0.1"
    dns = [c for c in cfg if c["type"] == "nameserver"]
    assert [d["address"] for d in dns] == ["8.8.8.8"]
    world.spawn("delete", "ci-vm")
    world.assert_nothing_left()


def test_gre_network_mtu_on_the_config_drive(world, tmp_path):
    """A guest on a GRE network is told the MTU that leaves room for the GRE header (1458), as
    kiln-net's net-show gives it."""
    require_tools("xorriso")
    world.net("net-create", "gre-net", "--provider:network_type", "gre",
              "--provider:segmentation_id", "7")
    world.net("subnet-create", "gre-net", "10.7.0.0/24", "--name", "gre-subnet")
    world.set_baseline()  # the new network's own ports
    assert json.loads(world.net("net-show", "gre-net", "--format", "json").stdout)["mtu"] == 1458
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "g.qcow2"), "16M"))
    inst = json.loads(world.spawn("boot", "gre-vm", "--image", "img", "--flavor", "m1.tiny",
                                  "--net", "gre-net", "--format", "json").stdout)
    cdir = extract_iso(os.path.join(inst["instance_dir"], "disk.config"), str(tmp_path / "cd"))
    with open(os.path.join(cdir, "openstack", "latest", "network_data.json")) as f:
        nd = json.load(f)
    assert [link["mtu"] for link in nd["links"]] == [1458]
    world.spawn("delete", "gre-vm")
    world.assert_nothing_left()
