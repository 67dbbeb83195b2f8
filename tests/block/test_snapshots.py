"""Internal qcow2 snapshots against QEMU 7.2, both ways: snapshots that kiln-img creates,
applies and deletes are listed, applied and read by qemu-img and qemu-io, and the other way
round; `qemu-img check` is clean after every step; the active image and every snapshot read
back the bytes written before and after it (16K/64K/2M clusters, extended L2 entries,
compressed clusters, a backing file). Writes through kiln-io and kiln-nbd to an image with
snapshots copy the shared clusters and leave the snapshots intact. kiln-img snapshot's
output and exit codes are qemu-img's. A SIGKILL during `snapshot -c/-d` leaves the old or the
new state and an image that check accepts (see docs/block-layer.md for the one window where
it needs the dirty-bit repair). Hostile snapshot tables are refused with one line."""

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import time

import pytest

from kilntest import KiB, MiB, content_digest, sampled_matrix, scaled
from kilntest.images import (KILN_IMG, QEMU_IMG, assert_one_line_error, assert_qemu_clean,
                             assert_same_bytes, header_get, header_set, kiln_img, kiln_io,
                             make_raw, patch_bytes, qemu_check, qemu_img, qemu_io, read_file,
                             run, wait_unlocked)
from kilntest.nbd import servers, unix_uri  # noqa: F401  (fixture)

SIZE = 8 * MiB


def assert_clean(img):
    """qemu-img check and kiln-img check both find nothing wrong."""
    assert_qemu_clean(img)
    p = kiln_img("check", img, check=False)
    assert p.returncode == 0 and "No errors were found" in p.stdout, p.stdout + p.stderr


def tool_img(maker):
    return kiln_img if maker == "kiln" else qemu_img


def active_bytes(workdir, img, name="active.raw"):
    out = os.path.join(workdir, name)
    qemu_img("convert", "-f", "qcow2", "-O", "raw", img, out)
    return read_file(out)


def snapshot_bytes_qemu(workdir, img, name):
    out = os.path.join(workdir, f"snap-{name}.raw")
    qemu_img("convert", "-f", "qcow2", "-l", f"snapshot.name={name}", "-O", "raw", img, out)
    return read_file(out)


def snapshot_bytes_kiln(workdir, img, name):
    out = os.path.join(workdir, f"ksnap-{name}.raw")
    kiln_io(img, f"dump {out}", extra=("-f", "qcow2", "-l", name))
    return read_file(out)


def snapshot_bytes_kiln_convert(workdir, img, name):
    out = os.path.join(workdir, f"csnap-{name}.raw")
    kiln_img("convert", "-f", "qcow2", "-l", f"snapshot.name={name}", "-O", "raw", img, out)
    return read_file(out)


def assert_snapshot(workdir, img, name, expected):
    assert_same_bytes(snapshot_bytes_qemu(workdir, img, name), expected,
                      f"snapshot {name} read by qemu-img")
    assert_same_bytes(snapshot_bytes_kiln(workdir, img, name), expected,
                      f"snapshot {name} read by kiln-io")
    assert_same_bytes(snapshot_bytes_kiln_convert(workdir, img, name), expected,
                      f"snapshot {name} converted by kiln-img convert -l")


def test_convert_l_forms(workdir):
    """kiln-img convert -l takes qemu-img's spellings: snapshot.id=, snapshot.name=, a bare
    id or name; into qcow2 too (compressed), read back by QEMU; an unknown one is an error."""
    img = os.path.join(workdir, "forms.qcow2")
    qemu_img("create", "-f", "qcow2", img, "4M")
    qemu_io(img, "write -P 0x11 0 1M")
    qemu_img("snapshot", "-c", "first", img)
    qemu_io(img, "write -P 0x22 0 1M")
    want = snapshot_bytes_qemu(workdir, img, "first")
    for i, form in enumerate(["snapshot.id=1", "snapshot.name=first", "first", "1"]):
        out = os.path.join(workdir, f"form{i}.qcow2")
        kiln_img("convert", "-l", form, "-O", "qcow2", "-c", img, out)
        assert_qemu_clean(out)
        assert_same_bytes(active_bytes(workdir, out, f"form{i}.raw"), want, form)
    p = kiln_img("convert", "-l", "snapshot.name=nope", "-O", "raw", img,
                 os.path.join(workdir, "x.raw"), check=False)
    assert p.returncode == 1 and "nope" in p.stderr, p.stderr


def writes(rng, size, cluster, n, value):
    """qemu-io style write commands: partial and whole clusters, all with pattern `value`."""
    cmds = []
    for _ in range(n):
        length = rng.choice([512, 4096, cluster, cluster + 4096, 3 * cluster])
        length = min(length, size // 4)
        off = rng.randrange(0, size - length) // 512 * 512
        cmds.append(f"write -P {value} {off} {length}")
    return cmds


def kiln_write(img, cmds):
    kiln_io(img, *cmds, extra=("-f", "qcow2"))


def qemu_write(img, cmds):
    qemu_io(img, *cmds)


def list_ids_names(img):
    p = qemu_img("snapshot", "-l", img)
    rows = p.stdout.splitlines()[2:]
    return [tuple(r.split()[:2]) for r in rows]


# ---------------------------------------------------------------------------------------------
# The command line: qemu-img's output and exit codes

def test_cli_output_and_exit_codes(workdir):
    """Same stdout, same exit code and the same message (after the tool's name) as qemu-img
    for listing, duplicates, missing snapshots, raw images and misuse."""
    img = os.path.join(workdir, "a.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "64M")
    raw = os.path.join(workdir, "r.raw")
    make_raw(raw, MiB, seed=1)

    def both(*args):
        q = run([QEMU_IMG, "snapshot", *args], check=False)
        k = run([KILN_IMG, "snapshot", *args], check=False)
        return q, k

    def same(q, k, what):
        assert q.returncode == k.returncode, f"{what}: qemu {q.returncode} kiln {k.returncode}"
        assert q.stdout == k.stdout, f"{what}:\n{q.stdout}\n---\n{k.stdout}"
        if q.returncode:
            qmsg = q.stderr.strip().splitlines()[-1 if "Try" not in q.stderr else 0]
            assert k.stderr.strip() == "kiln-img: " + qmsg.split("qemu-img: ", 1)[1], \
                f"{what}: {q.stderr!r} vs {k.stderr!r}"

    same(*both("-l", img), "empty list")
    kiln_img("snapshot", "-c", "one", img)
    qemu_img("snapshot", "-c", "one", img)  # duplicate names are allowed (new ids)
    kiln_img("snapshot", "-q", "-c", "two", img)
    assert [i for i, _ in list_ids_names(img)] == ["1", "2", "3"]
    same(*both("-l", img), "list")
    same(*both("-l", "-U", img), "list -U")
    same(*both("-a", "nope", img), "apply missing")
    same(*both("-d", "nope", img), "delete missing")
    same(*both("-d", "2", img), "delete takes names only")
    same(*both("-l", "-c", "x", img), "mixed actions")
    same(*both("-c", "x"), "no file")
    same(*both(img), "no action")
    same(*both("-l", raw), "raw list")
    same(*both("-a", "x", raw), "raw apply")
    same(*both("-d", "x", raw), "raw delete")
    same(*both("-c", "x", raw), "raw create")
    # info: the snapshot table and the JSON array as qemu-img prints them.
    qi = qemu_img("info", img).stdout
    ki = kiln_img("info", img).stdout
    section = lambda t: t[t.index("Snapshot list:"):t.index("Format specific")]  # noqa: E731
    assert section(qi) == section(ki)
    qj = json.loads(qemu_img("info", "--output=json", img).stdout)["snapshots"]
    kj = json.loads(kiln_img("info", "--output=json", img).stdout)["snapshots"]
    assert qj == kj
    assert [s["id"] for s in kj] == ["1", "2", "3"] and kj[2]["icount"] == 0
    # Apply takes an id first: "1" is the first "one"; delete takes the first of a name.
    same(*both("-a", "1", img), "apply by id")
    kiln_img("snapshot", "-d", "one", img)
    assert list_ids_names(img) == [("2", "one"), ("3", "two")]
    # A new id is the largest numeric id plus one.
    kiln_img("snapshot", "-c", "three", img)
    assert list_ids_names(img)[-1] == ("4", "three")
    assert_qemu_clean(img)


# ---------------------------------------------------------------------------------------------
# Differential: kiln-img and qemu-img take turns

MATRIX = [
    (16 * KiB, "std", "kiln"), (64 * KiB, "std", "kiln"), (64 * KiB, "std", "qemu"),
    (2 * MiB, "std", "kiln"), (64 * KiB, "ext", "kiln"), (64 * KiB, "ext", "qemu"),
    (16 * KiB, "ext", "qemu"), (64 * KiB, "v2", "kiln"), (4 * KiB, "v2", "qemu"),
]
OPTS = {"std": "", "ext": ",extended_l2=on", "v2": ",compat=0.10"}


@pytest.mark.parametrize("cluster,extended,first", sampled_matrix(
    MATRIX, [f"{c // KiB}k-{e}-{m}-first" for c, e, m in MATRIX]))
def test_differential(workdir, cluster, extended, first):
    """The tools alternate: `first` creates s1, the other s2, writes go through kiln-io and
    qemu-io in turn; every snapshot reads back what the image held when it was taken, through
    qemu-img and kiln-io; apply and delete by either tool restore and keep the right bytes;
    qemu-img check is clean after every step."""
    other = "qemu" if first == "kiln" else "kiln"
    rng = random.Random(cluster + len(extended))
    size = max(SIZE, 8 * cluster)
    img = os.path.join(workdir, "img.qcow2")
    opts = f"cluster_size={cluster}" + OPTS[extended]
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, img, str(size))
    qemu_write(img, writes(rng, size, cluster, 12, 0x11))
    state0 = active_bytes(workdir, img)

    tool_img(first)("snapshot", "-c", "s1", img)
    assert_clean(img)
    kiln_write(img, writes(rng, size, cluster, 12, 0x22))  # copies shared clusters
    assert_clean(img)
    state1 = active_bytes(workdir, img)
    assert state1 != state0
    assert_snapshot(workdir, img, "s1", state0)

    tool_img(other)("snapshot", "-c", "s2", img)
    qemu_write(img, writes(rng, size, cluster, 12, 0x33))
    kiln_write(img, writes(rng, size, cluster, 12, 0x44) + ["zero 0 " + str(cluster)])
    assert_clean(img)
    state2 = active_bytes(workdir, img)
    assert_snapshot(workdir, img, "s1", state0)
    assert_snapshot(workdir, img, "s2", state1)

    tool_img(first)("snapshot", "-a", "s1", img)
    assert_clean(img)
    assert_same_bytes(active_bytes(workdir, img), state0, "after applying s1")
    kiln_write(img, writes(rng, size, cluster, 6, 0x55))  # the snapshot keeps its bytes
    assert_snapshot(workdir, img, "s1", state0)
    assert_clean(img)

    tool_img(other)("snapshot", "-a", "s2", img)
    assert_same_bytes(active_bytes(workdir, img), state1, "after applying s2")
    tool_img(first)("snapshot", "-d", "s1", img)
    assert_clean(img)
    assert_snapshot(workdir, img, "s2", state1)
    kiln_write(img, writes(rng, size, cluster, 6, 0x66))
    assert_snapshot(workdir, img, "s2", state1)
    tool_img(other)("snapshot", "-d", "s2", img)
    assert_clean(img)
    assert list_ids_names(img) == []
    assert state2  # written, checked clean, then replaced by the applies above


def test_compressed_and_backing(workdir):
    """An image with compressed clusters (qemu-img convert -c) over a backing file: the
    snapshot holds the compressed clusters; Kiln's writes over them copy them; both tools read
    the snapshot as it was; apply and delete keep check clean."""
    cluster = 64 * KiB
    base = make_raw(os.path.join(workdir, "base.raw"), SIZE, seed=7)
    src = make_raw(os.path.join(workdir, "src.raw"), SIZE, seed=8)
    comp = os.path.join(workdir, "comp.qcow2")
    qemu_img("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", f"cluster_size={cluster}",
             src, comp)
    img = os.path.join(workdir, "img.qcow2")
    # The compressed image becomes an overlay of base.raw (rebase -u keeps its clusters).
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", "base.raw", "-F", "raw", comp)
    os.rename(comp, img)
    info = json.loads(qemu_img("check", "--output=json", img).stdout)
    assert info.get("compressed-clusters", 0) > 0
    state0 = active_bytes(workdir, img)
    assert state0 != read_file(src)  # the backing file shows where src.raw had zeros

    kiln_img("snapshot", "-c", "before", img)
    assert_clean(img)
    kiln_write(img, [f"write -P 0x99 {cluster // 2} {6 * cluster}", f"write -P 0x98 {SIZE // 2} 4096"])
    qemu_write(img, [f"write -P 0x97 {SIZE - 3 * cluster} 700"])
    assert_clean(img)
    state1 = active_bytes(workdir, img)
    assert_snapshot(workdir, img, "before", state0)
    qemu_img("snapshot", "-c", "after", img)
    kiln_img("snapshot", "-a", "before", img)
    assert_clean(img)
    assert_same_bytes(active_bytes(workdir, img), state0, "applied 'before'")
    kiln_img("snapshot", "-d", "before", img)
    assert_clean(img)
    assert_snapshot(workdir, img, "after", state1)
    qemu_img("snapshot", "-a", "after", img)
    assert_same_bytes(active_bytes(workdir, img), state1, "applied 'after' with qemu-img")
    kiln_img("snapshot", "-d", "after", img)
    assert_clean(img)


def test_apply_restores_size(workdir):
    """A snapshot taken at 8 MiB, the image grown to 3 GiB (a bigger L1 table) and written at
    the end: applying it brings the size and the bytes back, as qemu-img does."""
    img = os.path.join(workdir, "img.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=16384", img, str(SIZE))
    qemu_write(img, ["write -P 1 0 1M"])
    state0 = active_bytes(workdir, img)
    kiln_img("snapshot", "-c", "small", img)
    qemu_img("resize", img, "3G")
    qemu_write(img, ["write -P 2 3000M 1M", "write -P 3 0 4096"])
    l1_before = header_get(img, "l1_size")
    kiln_img("snapshot", "-a", "small", img)
    assert_clean(img)
    assert header_get(img, "size") == SIZE
    assert header_get(img, "l1_size") >= l1_before  # as QEMU: the L1 table does not shrink
    assert_same_bytes(active_bytes(workdir, img), state0, "applied 'small'")
    qemu_img("resize", img, "3G")
    qemu_img("snapshot", "-c", "big", img)
    qemu_img("resize", "--shrink", img, str(SIZE))
    kiln_img("snapshot", "-a", "big", img)
    assert header_get(img, "size") == 3 * 1024 * MiB
    assert_clean(img)


def test_apply_needs_a_larger_l1(workdir):
    """A snapshot whose L1 table is larger than the active one (here: the active image cut to
    512 MiB with a one-entry L1 table after a 1 GiB snapshot): apply writes a new L1 table and
    switches size, l1_size and l1_table_offset in one header write; bytes and check right."""
    img = os.path.join(workdir, "img.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, "1G")
    qemu_write(img, ["write -P 1 0 1M", "write -P 2 700M 1M"])
    state0 = os.path.join(workdir, "state0.qcow2")  # compared by qemu-img, not as 1 GiB raw
    shutil.copyfile(img, state0)
    qemu_img("snapshot", "-c", "big", img)
    qemu_write(img, ["write -P 3 600M 64K"])
    qemu_io(img, "discard 512M 512M")  # nothing left behind the L1 table's second entry
    with open(img, "r+b") as f:
        f.seek(header_get(img, "l1_table_offset") + 8)
        f.write(bytes(8))
    header_set(img, "size", 512 * MiB)
    header_set(img, "l1_size", 1)
    qemu_img("check", "-q", "-r", "leaks", img)  # the L2 table the entry named
    assert_clean(img)
    old_l1 = header_get(img, "l1_table_offset")
    kiln_img("snapshot", "-a", "big", img)
    assert header_get(img, "l1_size") == 2 and header_get(img, "size") == 1024 * MiB
    assert header_get(img, "l1_table_offset") != old_l1
    assert_clean(img)
    assert_same_content(state0, img, "applied 'big'")


def test_kiln_nbd_writes_keep_snapshots(workdir, servers):  # noqa: F811
    """Writes, zero writes and discards through kiln-nbd into an image with two snapshots:
    afterwards both snapshots read as before and the image checks clean."""
    cluster = 64 * KiB
    img = os.path.join(workdir, "img.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}", img, str(SIZE))
    qemu_write(img, ["write -P 1 0 2M", f"write -P 2 {SIZE - MiB} 1M"])
    state0 = active_bytes(workdir, img, "s0.raw")
    kiln_img("snapshot", "-c", "s1", img)
    qemu_write(img, ["write -P 3 512K 1M"])
    state1 = active_bytes(workdir, img, "s1.raw")
    qemu_img("snapshot", "-c", "s2", img)
    sock = os.path.join(workdir, "nbd.sock")
    srv = servers.kiln("-f", "qcow2", "-t", img, sock=sock)
    uri = unix_uri(sock)
    qemu_io(uri, "write -P 0x41 5000 3000", "write -P 0x42 1M 200K", "write -z 0 64K",
            f"discard {SIZE - MiB} 128K", "write -P 0x43 3M 1M", fmt="raw")
    served = os.path.join(workdir, "served.raw")
    qemu_img("convert", "-f", "raw", "-O", "raw", uri, served)
    srv.stop()
    srv.assert_clean_stop()
    assert_clean(img)
    assert_same_bytes(active_bytes(workdir, img, "after.raw"), read_file(served), "active")
    assert_snapshot(workdir, img, "s1", state0)
    assert_snapshot(workdir, img, "s2", state1)


def test_kiln_check_counts_the_whole_table(workdir):
    """kiln-img check sizes the snapshot table from each entry's extra data: QEMU 7.2 writes 24
    bytes, and a table of eight entries spans two 512-byte clusters (counting 16 bytes, check
    reported the second cluster as leaked)."""
    img = os.path.join(workdir, "c.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", img, "1M")
    qemu_write(img, ["write -P 1 0 4k"])
    for i in range(8):
        qemu_img("snapshot", "-c", f"snap{i}", img)
    p = kiln_img("check", img, check=False)
    assert p.returncode == 0 and "No errors were found" in p.stdout, p.stdout + p.stderr
    kiln_img("snapshot", "-c", "ninth", img)
    assert kiln_img("check", img, check=False).returncode == 0
    assert_clean(img)


def test_refcount_overflow(workdir):
    """1-bit refcounts cannot count a shared cluster: -c fails with one line naming the
    reason, and the image is left as it was (check clean, dirty bit clear, no snapshot)."""
    img = os.path.join(workdir, "r1.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o", "refcount_bits=1", img, "16M")
    qemu_write(img, ["write -P 1 0 1M"])
    p = kiln_img("snapshot", "-c", "x", img, check=False)
    assert_one_line_error(p, "kiln-img")
    assert "Could not create snapshot 'x': -34" in p.stderr, p.stderr
    assert "refcount_bits too small" in p.stderr, p.stderr
    assert_clean(img)
    assert header_get(img, "incompatible_features") & 1 == 0
    assert list_ids_names(img) == []


# ---------------------------------------------------------------------------------------------
# SIGKILL during snapshot -c / -d

def big_image(workdir, cluster=512):
    """An image with many L2 tables (a few clusters written in every L2 table's range) so that
    the snapshot operations take a while and a kill lands inside them; small clusters keep
    its virtual size (and the bytes compared) small."""
    img = os.path.join(workdir, "big.qcow2")
    l2_range = cluster // 8 * cluster
    tables = scaled(2000)
    size = tables * l2_range
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}", img, str(size))
    script = os.path.join(workdir, "fill.txt")
    with open(script, "w") as f:
        for t in range(tables):
            f.write(f"write -P {t % 250 + 1} {t * l2_range} {2 * cluster}\n")
    kiln_io(img, extra=("-f", "qcow2", "--script", script))
    return img


def assert_same_content(a, b, what):
    """The two qcow2 images read the same, by qemu-img compare."""
    p = qemu_img("compare", "-f", "qcow2", "-F", "qcow2", a, b, check=False)
    assert p.returncode == 0, f"{what}: {p.stdout} {p.stderr}"


def check_after_kill(img):
    """check accepts the image: clean or leaks only; or, when the kill fell between a
    refcount write and the matching OFLAG_COPIED write (the window no order avoids), the
    dirty bit is set and the only errors are OFLAG_COPIED ones, which the next writable open
    repairs. Returns what happened."""
    rc, data, err = qemu_check(img)
    if rc in (0, 3) and data and data.get("corruptions", 0) == 0:
        return "leaks" if rc == 3 else "clean"
    dirty = header_get(img, "incompatible_features") & 1
    assert dirty, f"corrupt without the dirty bit: rc={rc} {data} {err}"
    p = qemu_img("check", img, check=False)
    bad = [line for line in p.stdout.splitlines() + p.stderr.splitlines()
           if line.startswith("ERROR")]
    assert bad and all("OFLAG_COPIED" in line for line in bad), p.stdout + p.stderr
    kiln_io(img, "flush", extra=("-f", "qcow2"))  # a writable open repairs a dirty image
    assert_qemu_clean(img)
    return "copied-window"


@pytest.mark.parametrize("op", ["create", "delete"])
def test_sigkill(workdir, op):
    """kiln-img snapshot -c (or -d) killed at random moments: the image is the old or the new
    state (snapshot list), check accepts it, and the active image and every listed snapshot
    read the bytes they held."""
    img = big_image(workdir)
    base = os.path.join(workdir, "base.qcow2")
    os.rename(img, base)
    if op == "delete":
        qemu_img("snapshot", "-c", "keep", base)
        qemu_img("snapshot", "-c", "victim", base)
    start = time.monotonic()
    probe = os.path.join(workdir, "probe.qcow2")
    subprocess.run(["cp", "--sparse=always", base, probe], check=True)
    kiln_img("snapshot", "-c" if op == "create" else "-d", "victim", probe)
    duration = time.monotonic() - start

    def qemu_raw(img, snapshot=None):
        out = os.path.join(workdir, "read.raw")
        snap = ["-l", f"snapshot.name={snapshot}"] if snapshot else []
        qemu_img("convert", "-f", "qcow2", *snap, "-O", "raw", img, out)
        return out

    want = read_file(qemu_raw(base))
    want_digest = content_digest(os.path.join(workdir, "read.raw"), block=4096)

    def assert_reads_as_base(img, snapshot, what):
        # The raw file is sparse (a few KiB of data in every 32 KiB): its holes are not read.
        out = qemu_raw(img, snapshot)
        if content_digest(out, block=4096) != want_digest:
            assert_same_bytes(read_file(out), want, what)
            raise AssertionError(f"{what}: content_digest differs, bytes do not")

    rng = random.Random(42)
    outcomes = {}
    for _ in range(scaled(25)):
        work = os.path.join(workdir, "work.qcow2")
        subprocess.run(["cp", "--sparse=always", base, work], check=True)
        args = [KILN_IMG, "snapshot", "-c" if op == "create" else "-d", "victim", work]
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0, duration * 1.2))
        p.send_signal(signal.SIGKILL)
        p.wait()
        wait_unlocked(work)
        what = check_after_kill(work)
        names = [n for _, n in list_ids_names(work)]
        old = ["keep", "victim"] if op == "delete" else []
        new = ["keep"] if op == "delete" else ["victim"]
        assert names in (old, new), names
        state = "new" if names == new else "old"
        outcomes[(what, state)] = outcomes.get((what, state), 0) + 1
        # What qemu-img reads in the active image and in each snapshot, as a sparse raw file
        # (qemu-img convert skips the unallocated ranges), compared with what it read in the
        # base image before the kill. One process per image read: a qemu-img compare (and,
        # since compare takes no -l, a qcow2 copy of each snapshot before it) cost twice
        # as much CPU.
        assert_reads_as_base(work, None, "active after kill")
        for n in names:
            assert_reads_as_base(work, n, f"snapshot {n}")
    print("outcomes", outcomes)


# ---------------------------------------------------------------------------------------------
# Hostile snapshot tables

def with_snapshot(workdir, size="16M"):
    img = os.path.join(workdir, "h.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", img, size)
    qemu_write(img, ["write -P 1 0 256K"])
    qemu_img("snapshot", "-c", "s", img)
    return img


def entry_offset(img):
    return header_get(img, "snapshots_offset")


HOSTILE = {
    # The table over the header, over the L1 table, past the end of the file, misaligned.
    "table-on-header": lambda img: header_set(img, "snapshots_offset", 0),
    "table-on-l1": lambda img: header_set(img, "snapshots_offset",
                                          header_get(img, "l1_table_offset")),
    "table-on-reftable": lambda img: header_set(img, "snapshots_offset",
                                                header_get(img, "refcount_table_offset")),
    "table-past-eof": lambda img: header_set(img, "snapshots_offset", 1 << 40),
    "table-misaligned": lambda img: header_set(img, "snapshots_offset",
                                               header_get(img, "snapshots_offset") + 8),
    "absurd-nb-snapshots": lambda img: header_set(img, "nb_snapshots", 0xffffffff),
    "many-nb-snapshots": lambda img: header_set(img, "nb_snapshots", 60000),
    # The snapshot's L1 table: outside the file, misaligned, on the header, on the reftable.
    "l1-past-eof": lambda img: patch_bytes(img, entry_offset(img), struct.pack(">Q", 1 << 44)),
    "l1-misaligned": lambda img: patch_bytes(img, entry_offset(img), struct.pack(">Q", 0x10200)),
    "l1-on-header": lambda img: patch_bytes(img, entry_offset(img), struct.pack(">Q", 0)),
    "l1-on-reftable": lambda img: patch_bytes(
        img, entry_offset(img), struct.pack(">Q", header_get(img, "refcount_table_offset"))),
    "l1-size-absurd": lambda img: patch_bytes(img, entry_offset(img) + 8,
                                              struct.pack(">I", 0x7fffffff)),
    "extra-data-absurd": lambda img: patch_bytes(img, entry_offset(img) + 36,
                                                 struct.pack(">I", 0xffffffff)),
    "name-past-table": lambda img: patch_bytes(img, entry_offset(img) + 14,
                                               struct.pack(">H", 0xffff)),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_snapshot_table(workdir, kind):
    """kiln-img info, snapshot -l/-a/-c/-d and kiln-io -l refuse the image with one line (no
    crash, no sanitizer report, bounded time and memory)."""
    img = with_snapshot(workdir)
    HOSTILE[kind](img)
    for args in (["info", img], ["snapshot", "-l", img], ["snapshot", "-a", "s", img],
                 ["snapshot", "-c", "x", img], ["snapshot", "-d", "s", img]):
        p = run([KILN_IMG, *args], check=False, limit_memory=True, timeout=60)
        assert_one_line_error(p, "kiln-img")
    p = run(["kiln-io" if not os.environ.get("KILN_IO") else os.environ["KILN_IO"],
             "-f", "qcow2", "-l", "s", img, "-c", "read 0 512"], check=False, limit_memory=True,
            timeout=60)
    assert_one_line_error(p, "kiln-io")


def test_hostile_snapshot_l2(workdir):
    """A snapshot whose L1 table points at an L2 table outside the file, and one that names
    the same L2 table twice: apply and delete fail with one line and change nothing but the
    dirty bit."""
    img = with_snapshot(workdir, "2G")  # an L1 table of 4 entries
    sn = header_get(img, "snapshots_offset")
    with open(img, "rb") as f:
        f.seek(sn)
        l1_off = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1_off)
        first = f.read(8)
    patch_bytes(img, l1_off, struct.pack(">Q", (1 << 40) | (1 << 63)))
    before = read_file(img)
    for args in (["snapshot", "-a", "s", img], ["snapshot", "-d", "s", img]):
        p = kiln_img(*args, check=False)
        assert_one_line_error(p, "kiln-img")
        assert "outside the image" in p.stderr, p.stderr
    # The failed operations wrote nothing that matters: the dirty bit at most.
    after = bytearray(read_file(img))
    after[72:80] = before[72:80]
    assert bytes(after) == before
    patch_bytes(img, l1_off, first + first)
    before = read_file(img)
    p = kiln_img("snapshot", "-a", "s", img, check=False)
    assert_one_line_error(p, "kiln-img")
    assert "twice" in p.stderr, p.stderr
    after = bytearray(read_file(img))
    after[72:80] = before[72:80]
    assert bytes(after) == before


def test_snapshot_corpus_seeds_parse(workdir):
    """The fuzz corpus has images with snapshots; each opens (or is refused) with one line."""
    corpus = os.path.join(os.path.dirname(__file__), "..", "fuzz", "corpus")
    seeds = []
    for root, _, files in os.walk(corpus):
        seeds += [os.path.join(root, f) for f in files if "snapshot" in f]
    assert seeds, "no snapshot seeds in tests/fuzz/corpus"
    for s in seeds:
        p = run([KILN_IMG, "snapshot", "-l", "-f", "qcow2", s], check=False, limit_memory=True,
                timeout=60)
        assert p.returncode in (0, 1), p.stderr
        if p.returncode:
            assert_one_line_error(p, "kiln-img")
