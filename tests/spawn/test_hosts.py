"""kiln-spawn's host registry and scheduler through the command line: host-register/list/show/
set/delete, hypervisor-list/show/stats, the scheduler's dry run (schedule) and boot choosing a
host. The machine is the host "local-1" (KILN_HOST); "remote-1" is a registered record only (no
agent runs for it), so a boot the scheduler sends there stays queued until delete takes it
back. Against libvirt's test:///default driver and a kiln-nbd started by the World."""

import json

from kilntest.spawn import make_qcow2


def fails(world, *args, code=1):
    r = world.spawn(*args, check=False)
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    return r.stderr.strip()


def hosts(world):
    return {h["name"]: h for h in world.spawn_json("host-list")}


def test_register_list_show_set_delete(world):
    world.env["KILN_HOST"] = "local-1"
    # A new store registers the machine it runs on, from its settings (which it follows).
    world.spawn("config-set", "host_vcpus", "4")
    world.spawn("config-set", "host_memory_mb", "4096")
    world.spawn("config-set", "host_disk_gb", "100")
    local = hosts(world)["local-1"]
    assert (local["vcpus"], local["memory_mb"], local["disk_gb"]) == (4, 4096, 100)
    assert local["status"] == "enabled" and local["capacity_from_settings"] is True
    assert local["availability_zone"] == "nova" and local["heartbeat_at"]

    remote = json.loads(world.spawn(
        "host-register", "--name", "remote-1", "--availability-zone", "east", "--vcpus", "8",
        "--memory-mb", "16384", "--disk-gb", "200", "--cpu-allocation-ratio", "2.5",
        "--nbd-endpoint", "nbds://storage-1:10809", "--format", "json").stdout)
    assert remote["name"] == "remote-1" and remote["vcpus"] == 8
    assert remote["cpu_allocation_ratio"] == 2.5
    assert remote["ram_allocation_ratio"] == 1.5 and remote["reserved_memory_mb"] == 512
    assert remote["nbd_endpoint"] == "nbds://storage-1:10809"
    assert remote["libvirt_uri"] == "test:///default"  # kiln-spawn's --libvirt-uri
    assert remote["capacity_from_settings"] is False and remote["heartbeat_at"] == ""
    assert list(hosts(world)) == ["local-1", "remote-1"]
    show = world.spawn_json("host-show", "remote-1")
    assert show["availability_zone"] == "east" and show["instances"] == []
    assert "remote-1" in world.spawn("host-list").stdout

    # Bad input is refused with one clear line and changes nothing.
    assert "host name 'bad name' must be" in fails(world, "host-register", "--name", "bad name")
    assert "--cpu-allocation-ratio must be a number" in fails(
        world, "host-register", "--name", "x", "--cpu-allocation-ratio", "1e3")
    assert "--vcpus must be a whole number" in fails(
        world, "host-register", "--name", "x", "--vcpus", "+5")
    assert "availability zone" in fails(world, "host-set", "remote-1", "--availability-zone",
                                        "a:b")
    assert "needs something to change" in fails(world, "host-set", "remote-1")
    assert fails(world, "host-set", "nope", "--enable", code=3) == \
        "kiln-spawn: host 'nope' not found"
    assert fails(world, "host-show", "nope", code=3) == "kiln-spawn: host 'nope' not found"
    assert list(hosts(world)) == ["local-1", "remote-1"]

    r = json.loads(world.spawn("host-set", "remote-1", "--disable", "--reason", "maintenance",
                               "--format", "json").stdout)
    assert r["status"] == "disabled" and r["disabled_reason"] == "maintenance"
    assert r["libvirt_uri"] == "test:///default" and r["vcpus"] == 8  # the rest unchanged
    r = world.spawn_json("host-set", "remote-1", "--enable", "--memory-mb", "8192")
    assert r["status"] == "enabled" and r["disabled_reason"] == "" and r["memory_mb"] == 8192

    # Hypervisors: every host, and the sums.
    hv = {h["hypervisor_hostname"]: h for h in world.spawn_json("hypervisor-list")}
    assert hv["remote-1"]["vcpus_capacity"] == 20  # 8 * 2.5
    assert hv["local-1"]["memory_mb_capacity"] == (4096 - 512) * 3 // 2
    one = world.spawn_json("hypervisor-show", "remote-1")
    assert one["memory_mb_capacity"] == (8192 - 512) * 3 // 2
    assert one["nbd_endpoint"] == "nbds://storage-1:10809"
    assert fails(world, "hypervisor-show", "nope", code=3) == "kiln-spawn: host 'nope' not found"
    stats = world.spawn_json("hypervisor-stats")
    assert stats["count"] == 2
    assert stats["vcpus"] == 12 and stats["vcpus_capacity"] == 64 + 20
    assert stats["memory_mb_capacity"] == (4096 - 512) * 3 // 2 + (8192 - 512) * 3 // 2
    assert stats["vcpus_allocation_ratio"] is None  # 16 and 2.5
    assert stats["memory_mb_allocation_ratio"] == 1.5
    assert [h["hypervisor_hostname"] for h in stats["hosts"]] == ["local-1", "remote-1"]
    table = world.spawn("hypervisor-stats").stdout
    assert "remote-1" in table and "running_vms" in table

    world.spawn("host-delete", "remote-1")
    assert list(hosts(world)) == ["local-1"]
    assert fails(world, "host-delete", "remote-1", code=3) == \
        "kiln-spawn: host 'remote-1' not found"


def test_schedule_and_boot_choose_a_host(world, tmp_path):
    world.env["KILN_HOST"] = "local-1"
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M"))
    world.spawn("config-set", "host_vcpus", "4")
    world.spawn("config-set", "host_memory_mb", "4096")  # (4096 - 512) * 1.5 = 5376 MiB
    world.spawn("config-set", "host_disk_gb", "100")
    world.spawn("host-register", "--name", "remote-1", "--availability-zone", "east",
                "--vcpus", "8", "--memory-mb", "16384", "--disk-gb", "200")

    # Spread (the default) prefers the emptier remote-1, pack the fuller local-1.
    plan = world.spawn_json("schedule", "--flavor", "m1.small")
    assert [(p["host"], p["result"]) for p in plan] == [("remote-1", "chosen"),
                                                        ("local-1", "passed")]
    assert plan[0]["weight"] > plan[1]["weight"]
    world.spawn("config-set", "scheduler_weigher", "pack")
    plan = world.spawn_json("schedule", "--flavor", "m1.small")
    assert plan[0]["host"] == "local-1" and plan[0]["result"] == "chosen"
    assert world.spawn_json("config-show")["scheduler_weigher"] == "pack"
    # config-show names the host whose settings it shows; --host shows another one's: its own
    # machine settings (remote-1 set none), the global ones as everywhere.
    mine = world.spawn_json("config-show")
    assert (mine["host"], mine["host_vcpus"]) == ("local-1", "4")
    theirs = world.spawn_json("config-show", "--host", "remote-1")
    assert (theirs["host"], theirs["host_vcpus"], theirs["scheduler_weigher"]) == \
        ("remote-1", "(discovered)", "pack")
    assert fails(world, "config-show", "--host", "nowhere", code=3) == \
        "kiln-spawn: host 'nowhere' not found (kiln-spawn host-list)"
    assert "scheduler_weigher must be spread or pack" in fails(
        world, "config-set", "scheduler_weigher", "fastest")
    world.spawn("config-set", "scheduler_weigher", "")
    # The zone, a forced host, ZONE:HOST; the dry run claims nothing.
    plan = world.spawn_json("schedule", "--flavor", "m1.small", "--availability-zone", "nova")
    assert [(p["host"], p["result"], p["filter"]) for p in plan] == [
        ("local-1", "chosen", ""), ("remote-1", "filtered", "AvailabilityZoneFilter")]
    plan = world.spawn_json("schedule", "--flavor", "m1.small", "--host", "local-1")
    assert plan[0]["host"] == "local-1" and plan[1]["filter"] == "HostFilter"
    plan = world.spawn_json("schedule", "--flavor", "m1.small", "--availability-zone", "east:")
    assert plan[0]["host"] == "remote-1" and plan[0]["result"] == "chosen"
    assert world.spawn_json("hypervisor-stats")["running_vms"] == 0
    # No valid host: the table, then the reason per host on stderr.
    r = world.spawn("schedule", "--flavor", "m1.xlarge", "--availability-zone", "nova",
                    check=False)
    assert r.returncode == 1 and "local-1" in r.stdout
    assert r.stderr.startswith("kiln-spawn: No valid host was found. There are not enough hosts "
                               "available. local-1: insufficient resources for flavor m1.xlarge"
                               ": memory (MiB): requested 16384, free 5376"), r.stderr
    assert "remote-1: in availability zone east, not nova" in r.stderr
    # An image's minimums against the flavor.
    big = make_qcow2(str(tmp_path / "big.qcow2"), "16M")
    world.spawn("image-create", "big", big, "--min-disk", "30", "--min-ram", "1024")
    assert "Flavor's disk is too small for requested image" in fails(
        world, "schedule", "--flavor", "m1.small", "--image", "big")
    world.spawn("flavor-create", "k1.lowmem", "--vcpus", "1", "--ram", "512", "--disk", "40")
    assert "Flavor's memory is too small for requested image" in fails(
        world, "boot", "x", "--image", "big", "--flavor", "k1.lowmem", "--net", "demo-net")
    assert world.spawn_json("list") == []

    # Boot: the scheduler picks remote-1, whose agent (none runs here) would build it: the boot
    # waits for it (--wait-timeout) and says so; the record and claim are remote-1's, and
    # delete takes the untaken build back (test_agent.py has the agent).
    msg = fails(world, "--wait-timeout", "1", "boot", "vm1", "--image", "img", "--flavor",
                "m1.small", "--net", "demo-net")
    assert msg == ("kiln-spawn: instance vm1 is still building (scheduling) on host remote-1 "
                   "after 1 s (is kiln-spawn agent running there?); it stays queued"), msg
    vm1 = world.spawn_json("show", "vm1")
    assert vm1["host"] == "remote-1" and vm1["port_id"] == "", vm1
    assert world.spawn_json("hypervisor-show", "remote-1")["memory_mb_used"] == 2048
    world.spawn("delete", "vm1")
    assert world.spawn_json("list") == []
    world.assert_nothing_left()
    # Forced to this host, or with remote-1 filtered out, the boot goes ahead here.
    vm1 = json.loads(world.spawn("boot", "vm1", "--image", "img", "--flavor", "m1.small",
                                 "--net", "demo-net", "--host", "local-1", "--format",
                                 "json").stdout)
    assert vm1["status"] == "active" and vm1["host"] == "local-1"
    world.spawn("host-set", "remote-1", "--disable")
    vm2 = world.spawn_json("boot", "vm2", "--image", "img", "--flavor", "m1.tiny", "--net",
                           "demo-net")
    assert vm2["host"] == "local-1"
    assert world.spawn_json("host-show", "local-1")["instances"] == ["vm1", "vm2"]
    hv = world.spawn_json("hypervisor-show", "local-1")
    assert hv["memory_mb_used"] == 2048 + 512 and hv["running_vms"] == 2
    assert world.spawn_json("hypervisor-show", "remote-1")["running_vms"] == 0
    # A zone no host is in.
    assert fails(world, "boot", "vm3", "--image", "img", "--flavor", "m1.tiny", "--net",
                 "demo-net", "--availability-zone", "west").startswith(
        "kiln-spawn: No valid host was found. There are not enough hosts available.")

    # A host with instances is not deleted.
    assert fails(world, "host-delete", "local-1") == \
        "kiln-spawn: host 'local-1' has instances: vm1, vm2 (delete them first)"
    world.spawn("delete", "vm1", "vm2")
    world.assert_nothing_left()
    world.spawn("host-delete", "local-1", "remote-1")
    assert world.spawn_json("host-list") == []
    assert "No host is registered (kiln-spawn host-register)" in fails(
        world, "boot", "vm4", "--image", "img", "--flavor", "m1.tiny", "--net", "demo-net")
    # Registering this machine again: its settings, kiln-spawn's libvirt URI and kiln-nbd.
    me = world.spawn_json("host-register")
    assert me["name"] == "local-1" and me["memory_mb"] == 4096
    assert me["capacity_from_settings"] is True
    assert me["libvirt_uri"] == "test:///default" and me["nbd_endpoint"] == world.nbd.ctl
    vm4 = world.spawn_json("boot", "vm4", "--image", "img", "--flavor", "m1.tiny", "--net",
                           "demo-net")
    assert vm4["host"] == "local-1"
    world.spawn("delete", "vm4")
    world.assert_nothing_left()
