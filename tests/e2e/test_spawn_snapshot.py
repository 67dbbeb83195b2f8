"""kiln-spawn snapshot of a running guest, end to end (the sandbox's libvirtd, TCG, kiln-nbd):
instance A writes a file to its root disk and syncs, then goes on writing records; `kiln-spawn
snapshot A snap1` takes a live snapshot. While kiln-spawn stands still after its convert step
(KILN_SPAWN_SNAPSHOT_STOP_AT, a test hook), the new image is compared with A's frozen chain
(qemu-img compare) and checked (qemu-img check). A goes on syncing records after the snapshot;
instance B, booted from snap1, reads the file from inside the guest."""

import json
import os
import re
import signal
import subprocess

import pytest

from kilntest import sha256
from kilntest.guest import run
from test_spawn_boot import GuestCloud

MARKER = "/kiln/snapshot-marker"
TEXT = "written-by-instance-A-before-its-snapshot"


@pytest.fixture
def cloud(guest, workdir, procs):
    c = GuestCloud(workdir, guest, procs)
    c.network()
    return c


def synced(console):
    """The last record the guest's loop reported synced (0 if none)."""
    found = re.findall(r"KILN-TEST: synced (\d+)", console)
    return int(found[-1]) if found else 0


def test_snapshot_of_a_running_guest_boots_with_its_files(cloud):
    cloud.image()
    # A: the marker, synced, then a record every half second for as long as it runs.
    cloud.spawn(*cloud.boot_args(
        "A", f"kiln.test=write,loop kiln.path={MARKER} kiln.data={TEXT} kiln.count=1 "
        "kiln.secs=3600 kiln.sleep=0.5 kiln.end=hang"))
    a = cloud.spawn_json("show", "A")
    cloud.wait_console("A", f"KILN-TEST: wrote {MARKER}")
    cloud.wait_console("A", "KILN-TEST: synced 1")

    # kiln-spawn's snapshot talks to kiln-nbd and its store only: run on the host, where the
    # test can stop and continue it.
    images = os.path.join(cloud.env["KILN_STATE_DIR"], "spawn", "images")
    snap = subprocess.Popen(cloud.spawn_args("--format", "json", "snapshot", "A", "snap1"),
                            env=dict(cloud.env, KILN_SPAWN_SNAPSHOT_STOP_AT="convert"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = snap.stderr.readline()
        assert "stopped after snapshot step convert" in line, line + snap.stderr.read()
        # The frozen chain (A's overlay over its base: read-only now, kiln-nbd writes the
        # temporary layer) and the image made from it.
        frozen = os.path.join(a["instance_dir"], "disk")
        tmp = [os.path.join(images, n) for n in os.listdir(images) if n.startswith(".tmp-")]
        assert len(tmp) == 1, os.listdir(images)
        run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", frozen, tmp[0]])
        assert "No errors were found" in run(["qemu-img", "check", tmp[0]]).stdout
        digest = sha256(tmp[0])
        # The guest runs and writes meanwhile (into the temporary layer).
        before = synced(cloud.console("A"))
        cloud.wait_console("A", f"KILN-TEST: synced {before + 1}\n")
    finally:
        snap.send_signal(signal.SIGCONT)
    out, err = snap.communicate(timeout=120)
    assert snap.returncode == 0, err
    image = json.loads(out)
    assert image["name"] == "snap1" and image["image_type"] == "snapshot", image
    assert image["instance_uuid"] == a["id"], image
    path = os.path.join(images, image["id"])
    assert sha256(path) == digest, "the registered image is not the one converted"

    # A still runs and writes, on its own overlay again.
    after = synced(cloud.console("A"))
    cloud.wait_console("A", f"KILN-TEST: synced {after + 2}\n")
    out = cloud.console("A")
    assert "KILN-TEST: FAIL" not in out and "I/O error" not in out, out[-3000:]
    assert cloud.spawn_json("show", "A")["status"] == "active"
    assert not [n for n in os.listdir(a["instance_dir"]) if n.startswith("snapshot")]

    # B boots from the snapshot image and reads A's file.
    args = cloud.boot_args("B", f"kiln.test=cat kiln.path={MARKER}")
    args[args.index("--image") + 1] = "snap1"
    cloud.spawn(*args)
    out = cloud.wait_console("B", "KILN-TEST: end ok")
    assert f"KILN-TEST: BEGIN cat {MARKER}\n{TEXT}\nKILN-TEST: END cat" in out, out[-3000:]

    cloud.spawn("delete", "A", "B")
    cloud.spawn("image-delete", "snap1")
    assert not os.path.exists(path)
    cloud.assert_nothing_left()
