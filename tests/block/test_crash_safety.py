"""A writer killed with SIGKILL at random moments: the image must never be corrupt (leaks are
allowed and repaired by `kiln-img check -r leaks`), and every write acknowledged before the
last completed flush must be there; with one operation at a time, every acknowledged write,
flushed or not. Bytes touched by operations after that may hold the old value or the value of
any of those operations, nothing else."""

import os
import random
import subprocess
import time

import pytest

from kilntest.images import (KILN_IO, MiB, Model, apply_model, assert_qemu_clean, create_qcow2,
                             first_difference, kiln_img, make_raw, parallel_batches, qemu_check,
                             random_ops, read_file, scaled, to_raw_qemu, wait_unlocked,
                             write_script)

ITERATIONS = int(os.environ.get("KILN_CRASH_ITERATIONS", "50"))
KINDS = [("write", 70), ("zero", 15), ("zero-u", 15)]


def op_value(op):
    return op[3] if op[0] == "write" else 0


def verify(previous, ops, flushed_upto, actual, what):
    """previous: content before the run; ops[:flushed_upto] are durable; the ops after them up
    to the next flush may or may not have happened, in part or in whole."""
    model = Model(previous)
    for op in ops[:flushed_upto]:
        apply_model(model, op)
    uncertain = []
    for op in ops[flushed_upto:]:
        if op[0] == "flush":
            break
        uncertain.append(op)
    expected = bytearray(model.data)
    for kind, off, length, _ in uncertain:
        expected[off:off + length] = actual[off:off + length]
    if bytes(expected) != actual:
        diff = first_difference(bytes(expected), actual)
        at = int(diff.split()[1].rstrip(":")) if diff.startswith("offset") else 0
        touching = [f"line {i + 1}: {op}" for i, op in enumerate(ops)
                    if op[0] != "flush" and op[1] <= at < op[1] + op[2]]
        raise AssertionError(f"{what}: durable data lost: {diff}; operations on that byte: "
                             + "; ".join(touching[-6:]))
    # Inside uncertain ranges: per piece (split at operation bounds and sectors), the old value
    # or one operation's value; torn pieces are checked byte by byte.
    bounds = set()
    for _, off, length, _ in uncertain:
        bounds.update((off, off + length))
        bounds.update(range(off - off % 512 + 512, off + length, 512))
    bounds = sorted(bounds)
    for a, b in zip(bounds, bounds[1:]):
        values = {op_value(op) for op in uncertain if op[1] <= a and b <= op[1] + op[2]}
        if not values:
            continue
        got = actual[a:b]
        if got == model.data[a:b] or any(got == bytes([v]) * (b - a) for v in values):
            continue
        for i in range(a, b):
            if actual[i] != model.data[i] and actual[i] not in values:
                raise AssertionError(f"{what}: byte {i} is {actual[i]:#x}, neither old "
                                     f"{model.data[i]:#x} nor one of {sorted(values)}")


def run_and_kill(img, script, nops, rng, parallel, workdir):
    args = [KILN_IO, "-f", "qcow2", img, "--script", script]
    if parallel:
        args += ["--parallel", str(parallel)]
    # stderr goes to a file: mixing buffered readline() on stdout with communicate() would
    # lose lines already buffered.
    err_path = os.path.join(workdir, "stderr.txt")
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err_file, text=True)
    kill_after = rng.randint(0, nops)
    lines = []
    killed = False
    try:
        while len(lines) < kill_after:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        time.sleep(rng.random() * 0.004)
        if proc.poll() is None:
            proc.kill()
            killed = True
        lines += proc.stdout.read().splitlines()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    err = read_file(err_path).decode(errors="replace")
    if not killed or proc.returncode == 0:
        assert proc.returncode == 0, f"kiln-io failed: {proc.returncode} {err}"
        return nops, False
    assert proc.returncode == -9, f"kiln-io ended with {proc.returncode}: {err}"
    assert "Sanitizer" not in err and "runtime error" not in err, err
    flushed = 0
    for line in lines:
        words = line.split()
        if len(words) == 2 and words[0] == "flushed":
            flushed = max(flushed, int(words[1]))
        # One operation at a time: every line acknowledged ("ok N") before the kill must have
        # survived it, flushed or not (the block layer puts the metadata of a write into the
        # file before it completes, in the order refcounts, then tables).
        if len(words) == 2 and words[0] == "ok" and not parallel:
            flushed = max(flushed, int(words[1]))
    return flushed, True


@pytest.mark.parametrize("extended", [False, True], ids=["64k", "extl2-128k"])
@pytest.mark.parametrize("parallel", [0, 8])
def test_sigkill_at_random_moments(workdir, parallel, extended):
    """extended: an overlay with extended L2 entries (subclusters), as kiln-spawn makes."""
    size = 8 * MiB
    cluster = 128 * 1024 if extended else 65536
    base = make_raw(os.path.join(workdir, "base.raw"), size, seed=3)
    img = create_qcow2(os.path.join(workdir, "img.qcow2"), size, cluster=cluster, backing=base,
                       backing_fmt="raw", extra_opts="extended_l2=on" if extended else None)
    content = read_file(to_raw_qemu(img, os.path.join(workdir, "now.raw")))
    rng = random.Random(f"crash-{parallel}" + ("-extl2" if extended else ""))
    wanted_kills = ITERATIONS if not parallel else max(10, ITERATIONS // 3)
    leaked_runs = kills = it = 0
    max_lock_wait = 0.0
    while kills < wanted_kills:
        it += 1
        assert it < 4 * wanted_kills, f"only {kills} of {it} runs were killed before the end"
        if parallel:
            ops = parallel_batches(rng, size, cluster, scaled(40, 10), 16)
            ops = [op if op[0] != "discard" else ("zero-u",) + op[1:] for op in ops]
        else:
            ops = random_ops(rng, size, cluster, scaled(400, 60), flush_every=(1, 12),
                             kinds=KINDS, max_clusters=3)
        script = os.path.join(workdir, "ops.txt")
        write_script(script, ops)
        flushed, killed = run_and_kill(img, script, len(ops), rng, parallel, workdir)
        waited = wait_unlocked(img)
        max_lock_wait = max(max_lock_wait, waited)
        kills += killed
        what = f"iteration {it} (flushed up to line {flushed})"

        rc, data, err = qemu_check(img)
        assert rc in (0, 3) and data and data.get("corruptions", 0) == 0, \
            f"{what}: qemu-img check rc={rc} {data} {err}"
        if rc == 3:
            leaked_runs += 1
            p = kiln_img("check", "-r", "leaks", img, check=False)
            assert p.returncode == 0, \
                f"{what}: kiln-img check -r leaks: {p.returncode} {p.stdout} {p.stderr}"
            assert_qemu_clean(img)
        actual = read_file(to_raw_qemu(img, os.path.join(workdir, "now.raw")))
        verify(content, ops, flushed, actual, what)
        content = actual
    print(f"{it} runs, {kills} killed by SIGKILL, {leaked_runs} left leaks that kiln-img repaired; "
          f"locks let go at most {max_lock_wait * 1000:.1f} ms after the process was reaped")
