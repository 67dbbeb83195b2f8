"""kiln-spawn snapshot INSTANCE IMAGE_NAME against a real kiln-nbd (live snapshot and commit) and
libvirt's test:///default driver (no guest runs: the test reads and writes the instance's disk
through its NBD export with qemu-io, as a guest would). The image is checked with qemu-img
(check, compare with the export, no backing file) and Glance's fields; a new instance boots
from it and reads what the first one had written. Every step's failure, a kill after every
step and a commit that fails are rolled back: no image row, no temporary file, the instance
back to no task, on a chain that holds every write."""

import hashlib
import json
import os
import signal
import stat
import subprocess

from kilntest.spawn import TIMEOUT, make_qcow2, run, tmp_path, world  # noqa: F401

STEPS = ["freeze", "convert", "merge", "upload"]


def nbd_uri(world, inst):
    return f"nbd+unix:///{inst['export']}?socket={world.nbd.sock}"


def qemu_io_on(target, fmt, *cmds, read_only=False):
    """qemu-io's commands on `target`; a failed command or pattern check fails the test (some
    qemu-io versions exit 0 after them)."""
    args = ["qemu-io", *(["-r"] if read_only else []), "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    p = run([*args, target])
    assert "failed" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p


def qemu_io(world, inst, *cmds):
    """Reads and writes through the instance's export, as its guest would."""
    return qemu_io_on(nbd_uri(world, inst), "raw", *cmds)


def boot(world, name, image="img", flavor="m1.tiny"):
    world.spawn("boot", name, "--image", image, "--flavor", flavor, "--net", "demo-net")
    return world.spawn_json("show", name)


def small_boot(world, name):
    """An instance whose disk is its image's size (a flavor without disk, as Nova's disk 0):
    the copies and comparisons of the later tests stay small."""
    if not any(f["name"] == "s0" for f in world.spawn_json("flavor-list")):
        world.spawn("flavor-create", "s0", "--vcpus", "1", "--ram", "64", "--disk", "0")
    return boot(world, name, flavor="s0")


def served_path(world, inst):
    return [e["path"] for e in world.nbd.exports() if e["name"] == inst["export"]][0]


def digest(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def image_file(world, image):
    return os.path.join(world.spawn_dir, "images", image["id"])


def assert_no_snapshot_left(world, inst, images_before):
    """No image row or temporary file beyond `images_before`, no layer or record in the
    instance's directory, the instance active with no task, its export on its overlay."""
    assert sorted(i["name"] for i in world.spawn_json("image-list")) == images_before
    names = sorted(os.listdir(os.path.join(world.spawn_dir, "images")))
    ids = sorted(i["id"] for i in world.spawn_json("image-list"))
    assert names == ids, names
    left = [n for n in os.listdir(inst["instance_dir"]) if n.startswith("snapshot")]
    assert left == [], left
    show = world.spawn_json("show", inst["name"])
    assert show["status"] == "active" and show["task_state"] == "", show
    assert os.path.realpath(served_path(world, inst)) == \
        os.path.realpath(os.path.join(inst["instance_dir"], "disk"))


def test_snapshot_of_a_running_instance_boots_again(world, tmp_path):
    base = make_qcow2(str(tmp_path / "base.qcow2"), "16M", pattern="0x11")
    world.spawn("image-create", "img", base, "--min-ram", "64", "--property", "os_distro=kiln")
    img = world.spawn_json("image-show", "img")
    vm = boot(world, "vm")
    qemu_io(world, vm, "write -P 0x5a 4M 1M", "write -P 0x6b 900M 64k")

    snap = world.spawn_json("snapshot", "vm", "snap1")
    path = image_file(world, snap)
    # Glance's fields as image-create records them, Nova's snapshot properties.
    assert snap["name"] == "snap1" and snap["disk_format"] == "qcow2", snap
    assert snap["virtual_size"] == 1 << 30 and snap["size"] == os.path.getsize(path), snap
    assert snap["checksum"] == digest(path, "md5"), snap
    assert snap["os_hash_algo"] == "sha512" and snap["os_hash_value"] == digest(path, "sha512")
    assert snap["min_disk"] == 1 and snap["min_ram"] == 64, snap
    assert snap["image_type"] == "snapshot" and snap["instance_uuid"] == vm["id"], snap
    assert snap["base_image_ref"] == img["id"] and snap["os_distro"] == "kiln", snap
    assert world.spawn_json("image-show", "snap1") == snap
    assert "snap1" in [i["name"] for i in world.spawn_json("image-list")]

    # A standalone qcow2, clean, equal to the disk as the instance sees it (nothing wrote since).
    info = json.loads(run(["qemu-img", "info", "--output", "json", path]).stdout)
    assert "backing-filename" not in info and info["format"] == "qcow2", info
    assert "No errors were found" in run(["qemu-img", "check", path]).stdout
    run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", path, nbd_uri(world, vm)])

    # The temporary layer is merged and gone; Nova's task states, then none.
    assert_no_snapshot_left(world, vm, ["img", "snap1"])
    events = world.spawn_json("show", "vm")["events"]
    tasks = []
    for e in events:
        if not tasks or tasks[-1] != e["task_state"]:
            tasks.append(e["task_state"])
    assert tasks[-4:] == ["image_snapshot", "image_pending_upload", "image_uploading", ""], tasks

    # The instance goes on writing; the image does not change.
    qemu_io(world, vm, "write -P 0x77 8M 64k", "read -P 0x77 8M 64k", "read -P 0x5a 4M 1M")
    qemu_io_on(path, "qcow2", "read -P 0 8M 64k", read_only=True)
    assert digest(path, "md5") == snap["checksum"]

    # A new instance from the snapshot reads what the first had written, and the base's data.
    vm2 = boot(world, "vm2", "snap1")
    assert vm2["status"] == "active", vm2
    qemu_io(world, vm2, "read -P 0x11 0 1M", "read -P 0x5a 4M 1M", "read -P 0x6b 900M 64k",
            "read -P 0 8M 64k")
    # Busy while an instance uses it, then deleted.
    assert world.spawn("image-delete", "snap1", check=False).returncode != 0
    world.spawn("delete", "vm2")
    world.spawn("image-delete", "snap1")
    assert not os.path.exists(path)
    assert "snap1" not in [i["name"] for i in world.spawn_json("image-list")]
    world.spawn("delete", "vm")
    world.assert_nothing_left()


def test_formats_and_compression(world, tmp_path):
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M", "0x11"))
    vm = small_boot(world, "vm")
    # Compressible data (one byte repeated) and a second range.
    qemu_io(world, vm, "write -P 0x5a 2M 2M", "write -P 0x3c 12M 64k")
    for name, args, fmt, ctype in [("s-zlib", ["--compress", "zlib"], "qcow2", "zlib"),
                                   ("s-zstd", ["--compress", "zstd"], "qcow2", "zstd"),
                                   ("s-raw", ["--disk-format", "raw"], "raw", None)]:
        snap = world.spawn_json("snapshot", "vm", name, *args)
        path = image_file(world, snap)
        assert snap["disk_format"] == fmt, snap
        info = json.loads(run(["qemu-img", "info", "--output", "json", path]).stdout)
        assert info["format"] == fmt and "backing-filename" not in info, info
        if ctype:
            assert info["format-specific"]["data"]["compression-type"] == ctype, info
            assert "No errors were found" in run(["qemu-img", "check", path]).stdout
            # Compressed clusters: far smaller than the 2 MiB + 64 KiB written.
            assert os.path.getsize(path) < 1 << 20, os.path.getsize(path)
        run(["qemu-img", "compare", "-f", fmt, "-F", "raw", path, nbd_uri(world, vm)])
    # Bad options change nothing.
    for args, text in [(["--compress", "lz4"], "--compress must be zlib or zstd"),
                       (["--disk-format", "vmdk"], "--disk-format must be qcow2 or raw"),
                       (["--disk-format", "raw", "--compress", "zlib"], "--compress needs"),
                       ([], "already exists")]:
        p = world.spawn("snapshot", "vm", "s-zlib" if not args else "bad", *args, check=False)
        assert p.returncode != 0 and text in p.stderr, p.stderr
    p = world.spawn("snapshot", "nope", "x", check=False)
    assert p.returncode != 0 and "not found" in p.stderr, p.stderr
    assert_no_snapshot_left(world, vm, ["img", "s-raw", "s-zlib", "s-zstd"])
    world.spawn("delete", "vm")
    world.assert_nothing_left()


def test_snapshot_of_a_stopped_instance(world, tmp_path):
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M", "0x11"))
    vm = small_boot(world, "vm")
    qemu_io(world, vm, "write -P 0x5a 4M 1M")
    world.spawn("stop", "vm")
    # Its export still served: the same steps (the commit has nothing to copy).
    a = world.spawn_json("snapshot", "vm", "stopped-served")
    run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", image_file(world, a),
         nbd_uri(world, vm)])
    # Not served: the overlay is frozen already and converted as it is.
    assert world.nbd.control("remove-export", name=vm["export"])["ok"]
    b = world.spawn_json("snapshot", "vm", "stopped-unserved")
    disk = os.path.join(vm["instance_dir"], "disk")
    run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", image_file(world, b), disk])
    events = [e["message"] for e in world.spawn_json("show", "vm")["events"]]
    assert any("no live snapshot" in m for m in events), events
    assert world.spawn_json("show", "vm")["status"] == "stopped"
    world.spawn("start", "vm")
    qemu_io(world, vm, "read -P 0x5a 4M 1M")
    world.spawn("delete", "vm")
    world.assert_nothing_left()


def test_failure_at_every_step_rolls_back(world, tmp_path):
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M", "0x11"))
    vm = small_boot(world, "vm")
    qemu_io(world, vm, "write -P 0x5a 4M 1M")
    for n, step in enumerate(STEPS):
        env = dict(world.env, KILN_SPAWN_SNAPSHOT_FAIL_AT=step)
        p = world.spawn("snapshot", "vm", "snap", check=False, env=env)
        assert p.returncode != 0, p.stdout
        assert f"fault injected at snapshot step {step}" in p.stderr, p.stderr
        assert_no_snapshot_left(world, vm, ["img"])
        # The guest's disk holds what it held, and takes writes, whichever chain serves it.
        qemu_io(world, vm, "read -P 0x5a 4M 1M", f"write -P {0x20 + n} 8M 64k",
                f"read -P {0x20 + n} 8M 64k")
        messages = [e["message"] for e in world.spawn_json("show", "vm")["events"]]
        undone = [m.split("undid step ")[1] for m in messages if "snap: undid step " in m]
        assert undone[-(n + 1):] == list(reversed(STEPS[:n + 1])), messages
    p = world.spawn("snapshot", "vm", "snap", check=False,
                    env=dict(world.env, KILN_SPAWN_SNAPSHOT_FAIL_AT="nope"))
    assert p.returncode != 0 and "names no snapshot step" in p.stderr, p.stderr
    world.spawn("snapshot", "vm", "snap")  # and then it works
    world.spawn("delete", "vm")
    world.spawn("image-delete", "snap")
    world.assert_nothing_left()


def stopped_snapshot(world, name, step):
    """kiln-spawn snapshot vm NAME, stopped (SIGSTOP) after `step`'s work."""
    env = dict(world.env, KILN_SPAWN_SNAPSHOT_STOP_AT=step)
    p = subprocess.Popen(world.spawn_cmd("snapshot", "vm", name), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    assert f"stopped after snapshot step {step}" in line, line
    return p


def test_killed_after_every_step_is_rolled_back(world, tmp_path):
    """A snapshot SIGKILLed after each step: the instance's record says what may exist; its
    next snapshot rolls that back first, and delete removes all of it."""
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M", "0x11"))
    vm = small_boot(world, "vm")
    qemu_io(world, vm, "write -P 0x5a 4M 1M")
    for n, step in enumerate(STEPS):
        p = stopped_snapshot(world, f"killed-{n}", step)
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stderr.close()
        show = world.spawn_json("show", "vm")
        assert show["task_state"].startswith("image_"), show
        # Writes go on through whatever chain the export serves now.
        qemu_io(world, vm, f"write -P {0x30 + n} 8M 64k")
        # The next snapshot rolls the killed one back, then succeeds with what was written.
        snap = world.spawn_json("snapshot", "vm", f"ok-{n}")
        qemu_io_on(image_file(world, snap), "qcow2", f"read -P {0x30 + n} 8M 64k",
                   "read -P 0x5a 4M 1M", read_only=True)
        want = ["img"] + sorted(f"ok-{i}" for i in range(n + 1))
        assert_no_snapshot_left(world, vm, sorted(want))
    # Killed once more (after convert: a temporary image file and a layer exist): delete
    # removes them with the instance.
    p = stopped_snapshot(world, "last", "convert")
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stderr.close()
    assert any(n.startswith(".tmp-") for n in os.listdir(os.path.join(world.spawn_dir, "images")))
    world.spawn("delete", "vm")
    for n in range(len(STEPS)):
        world.spawn("image-delete", f"ok-{n}")
    assert os.listdir(os.path.join(world.spawn_dir, "images")) == \
        [i["id"] for i in world.spawn_json("image-list")]
    world.assert_nothing_left()


def test_a_failed_commit_keeps_the_layer(world, tmp_path):
    """The commit back fails (another process reads the frozen overlay, so kiln-nbd cannot make
    it writable): no image, the export stays on the layer and the instance records it; start
    serves it again, a later snapshot includes it, delete removes it."""
    world.spawn("image-create", "img", make_qcow2(str(tmp_path / "b.qcow2"), "16M", "0x11"))
    vm = small_boot(world, "vm")
    qemu_io(world, vm, "write -P 0x5a 4M 1M")
    disk = os.path.join(vm["instance_dir"], "disk")
    p = stopped_snapshot(world, "snap", "convert")
    # A reader of the frozen overlay that holds it open (QEMU's locks: no writer beside it).
    reader = subprocess.Popen(["stdbuf", "-oL", "qemu-io", "-r", "-f", "qcow2", "-c",
                               "read 0 512", "-c", "sleep 600000", disk],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = reader.stdout.readline()
        assert "read 512/512 bytes" in line, line
        p.send_signal(signal.SIGCONT)
        _, err = p.communicate(timeout=TIMEOUT)
        assert p.returncode != 0, err
        assert "commit" in err, err
        layer = os.path.realpath(served_path(world, vm))
        assert os.path.basename(layer).startswith("snapshot-"), layer
        assert os.path.dirname(layer) == os.path.realpath(vm["instance_dir"])
        assert stat.S_IMODE(os.stat(layer).st_mode) == 0o600  # tenant data
        with open(os.path.join(vm["instance_dir"], "snapshot.json")) as f:
            record = json.load(f)
        assert [os.path.realpath(x) for x in record["layers"]] == [layer], record
        assert record["image_id"] == "", record
        show = world.spawn_json("show", "vm")
        assert show["task_state"] == "" and show["status"] == "active", show
        assert any("stays on" in e["message"] for e in show["events"])
        assert [i["name"] for i in world.spawn_json("image-list")] == ["img"]
        assert [n for n in os.listdir(os.path.join(world.spawn_dir, "images"))
                if n.startswith(".tmp-")] == []
        qemu_io(world, vm, "write -P 0x66 8M 64k")
    finally:
        reader.kill()
        reader.wait()
        reader.stdout.close()
    # stop, the export lost, start: it comes back on the layer, with every write.
    world.spawn("stop", "vm")
    assert world.nbd.control("remove-export", name=vm["export"])["ok"]
    world.spawn("start", "vm")
    assert os.path.realpath(served_path(world, vm)) == layer
    qemu_io(world, vm, "read -P 0x5a 4M 1M", "read -P 0x66 8M 64k")
    # A later snapshot sees the layer's writes; its own layer is merged into that one.
    snap = world.spawn_json("snapshot", "vm", "later")
    run(["qemu-img", "compare", "-f", "qcow2", "-F", "raw", image_file(world, snap),
         nbd_uri(world, vm)])
    assert os.path.realpath(served_path(world, vm)) == layer
    world.spawn("delete", "vm")
    world.spawn("image-delete", "later")
    world.assert_nothing_left()
