"""kiln-spawn cleanup: what a kiln-spawn that died left half-done on this host is rolled back
(a build, a snapshot), and what another kiln-spawn still works on is left alone. Real kiln-nbd,
kiln-net without plumbing, libvirt's test driver (kilntest.spawn's world)."""

import signal
import subprocess

from kilntest.spawn import TIMEOUT, make_qcow2, tmp_path, world  # noqa: F401

BOOT = ("--image", "img", "--flavor", "m1.tiny", "--net", "demo-net")


def paused_boot(world, name, step):
    """kiln-spawn boot NAME, paused (it waits, holding the instance's lock) after `step`."""
    env = dict(world.env, KILN_SPAWN_PAUSE_AT=step)
    p = subprocess.Popen(world.spawn_cmd("boot", name, *BOOT), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    assert f"paused after step {step}" in line, line
    return p


def kill(p):
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()


def cleanup(world):
    return world.spawn_json("cleanup")


def test_killed_builds_are_rolled_back_and_live_ones_left_alone(world, tmp_path):
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M"))
    world.spawn("boot", "steady", *BOOT)
    dead = [paused_boot(world, "dead-port", "port"), paused_boot(world, "dead-export", "export")]
    alive = paused_boot(world, "alive", "overlay")
    for p in dead:
        kill(p)
    try:
        r = cleanup(world)
        assert sorted(r["builds_rolled_back"]) == ["dead-export", "dead-port"], r
        assert r["in_progress"] == ["alive"], r
        assert r["deletes_finished"] == r["snapshots_rolled_back"] == r["errors"] == [], r
        for name, step in (("dead-port", "port"), ("dead-export", "export")):
            show = world.spawn_json("show", name)
            assert show["status"] == "error" and show["steps"] == [], show
            assert f"build interrupted after step {step}" in show["fault"], show
        assert world.spawn_json("show", "alive")["status"] == "building"
        assert world.spawn_json("show", "steady")["status"] == "active"
        # Nothing of the dead builds is left: the ports and the claims are the steady
        # instance's and the live build's, the one export the steady instance's.
        owners = {world.spawn_json("show", n)["port_id"] for n in ("steady", "alive")}
        assert {p["id"] for p in world.instance_ports()} == owners
        assert world.spawn_json("hypervisor-stats")["vcpus_used"] == 2
        assert len(world.nbd.exports()) == 1
    finally:
        kill(alive)
    # Now the last one is abandoned too; a second run finds only it, a third nothing.
    r = cleanup(world)
    assert r["builds_rolled_back"] == ["alive"] and r["in_progress"] == [], r
    r = cleanup(world)
    assert all(v == [] for v in r.values()), r
    for name in ("dead-port", "dead-export", "alive", "steady"):
        world.spawn("delete", name)
    world.assert_nothing_left()


def test_killed_snapshot_is_rolled_back(world, tmp_path):
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M", "0x11"))
    world.spawn("boot", "vm", *BOOT)
    env = dict(world.env, KILN_SPAWN_SNAPSHOT_STOP_AT="convert")
    p = subprocess.Popen(world.spawn_cmd("snapshot", "vm", "snap"), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    assert "stopped after snapshot step convert" in line, line
    kill(p)
    assert world.spawn_json("show", "vm")["task_state"].startswith("image_")
    r = cleanup(world)
    assert r["snapshots_rolled_back"] == ["vm"] and r["errors"] == [], r
    show = world.spawn_json("show", "vm")
    assert show["status"] == "active" and show["task_state"] == "", show
    assert [i["name"] for i in world.spawn_json("image-list")] == ["img"]
    # The export is back on the instance's own overlay, and a snapshot works again.
    [served] = [e["path"] for e in world.nbd.exports() if e["name"] == show["export"]]
    assert served == show["instance_dir"] + "/disk"
    world.spawn("snapshot", "vm", "snap")
    world.spawn("delete", "vm")
    world.spawn("image-delete", "snap")
    world.assert_nothing_left()


def test_nothing_to_clean(world):
    r = subprocess.run(world.spawn_cmd("cleanup"), env=world.env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r.stderr
    assert world.spawn_json("cleanup") == {"builds_rolled_back": [], "deletes_finished": [],
                                           "snapshots_rolled_back": [], "in_progress": [],
                                           "errors": []}
