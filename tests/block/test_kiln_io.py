"""kiln-io as a tool: commands, script protocol, errors."""

import os

import pytest

from kilntest.images import (KILN_IO, MiB, assert_one_line_error, assert_qemu_clean, create_qcow2,
                             kiln_img, kiln_io, qemu_img, qemu_io, read_file, run)


@pytest.fixture
def img(workdir):
    return create_qcow2(os.path.join(workdir, "img.qcow2"), 4 * MiB)


def test_commands_and_messages(workdir, img):
    host = os.path.join(workdir, "host.bin")
    with open(host, "wb") as f:
        f.write(bytes(range(256)) * 16)
    p = kiln_io(img, "write -P 0xab 1000 70000", "read -P 0xab 1000 70000", "zero 2000 100",
                "read -P 0 2000 100", f"writef {host} 1M 4096", "discard 2M 64k", "flush", "size",
                f"dump {workdir}/dump.raw")
    assert p.stdout.splitlines() == [
        "wrote 70000/70000 bytes at offset 1000",
        "read 70000/70000 bytes at offset 1000",
        "wrote 100/100 bytes at offset 2000",
        "read 100/100 bytes at offset 2000",
        "wrote 4096/4096 bytes at offset 1048576",
        "discard 65536/65536 bytes at offset 2097152",
        f"size {4 * MiB}",
        f"dumped {4 * MiB} bytes to {workdir}/dump.raw",
    ]
    assert_qemu_clean(img)
    qemu_io(img, "read -P 0xab 1000 1000", "read -P 0 2000 100", "read -P 0xab 2100 68900")
    dump = read_file(os.path.join(workdir, "dump.raw"))
    assert dump[MiB:MiB + 4096] == read_file(host)


def test_script_protocol(workdir, img):
    script = "write 0 4k\n\n# a comment\nflush\nread -P 0xcd 0 4k\nsize\n"
    p = run([KILN_IO, img, "--script", "-"], input=script)
    assert p.stdout.splitlines() == ["ok 1", "flushed 4", "ok 4", "ok 5", f"size {4 * MiB}",
                                     "ok 6"]


def test_parallel_script_acknowledges_every_line(workdir, img):
    lines = [f"write -P {i % 250 + 1} {i * 1000} 1000" for i in range(200)] + ["flush"]
    lines += [f"read -P {i % 250 + 1} {i * 1000} 1000" for i in range(200)]
    script = os.path.join(workdir, "s.txt")
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    p = kiln_io(img, extra=["--parallel", "16", "--script", script])
    acked = sorted(int(line.split()[1]) for line in p.stdout.splitlines() if line.startswith("ok"))
    assert acked == list(range(1, len(lines) + 1))
    assert "flushed 201" in p.stdout.splitlines()
    assert_qemu_clean(img)


@pytest.mark.parametrize("cmd,fragment", [
    ("write 4M 1", "offset 4194304"),
    ("read 4000k 200k", "offset"),
    ("zero 0 100G", "offset 0"),
    ("bogus 1 2", "unknown command"),
    ("read 1 2 3", "usage"),
    ("read -X 1 2", "unknown flag"),
    ("write -P 300 0 1", "pattern"),
    ("write -P 1,2 0 1", "one byte"),
    ("read -1 2", "flag"),
    ("read 1Q 2", "Invalid offset"),
    ("read -P 1 0 4k", "mismatch at offset 0"),
])
def test_command_errors(img, cmd, fragment):
    p = kiln_io(img, cmd, check=False)
    assert_one_line_error(p, "kiln-io")
    assert fragment in p.stderr


@pytest.mark.parametrize("cmd", ["write 0 1", "zero 0 1", "discard 0 64k"])
def test_read_only_refuses_writes(img, cmd):
    p = kiln_io(img, cmd, extra=["-r"], check=False)
    assert_one_line_error(p, "kiln-io")
    assert_qemu_clean(img)


def test_script_error_names_line(workdir, img):
    p = run([KILN_IO, img, "--script", "-"], input="write 0 1\nflush\nfrobnicate\nwrite 0 1\n",
            check=False)
    assert_one_line_error(p, "kiln-io")
    assert "line 3" in p.stderr
    assert p.stdout.splitlines() == ["ok 1", "flushed 2", "ok 2"]


@pytest.mark.parametrize("args", [[], ["a", "b"], ["--parallel", "0", "x"], ["--bogus", "x"],
                                  ["-f", "vmdk", "x"], ["--script", "/nonexistent", "x"],
                                  ["/nonexistent.qcow2"]])
def test_usage_errors(args):
    p = run([KILN_IO, *args], check=False)
    assert_one_line_error(p, "kiln-io")


def test_l2_cache_option(workdir):
    img = create_qcow2(os.path.join(workdir, "img.qcow2"), 64 * MiB, cluster=4096)
    cmds = [f"write -P {i + 1} {i * MiB} 4k" for i in range(64)]
    cmds += [f"read -P {i + 1} {i * MiB} 4k" for i in range(64)]
    kiln_io(img, *cmds, extra=["--l2-cache", "8k"])
    assert_qemu_clean(img)


def test_missing_backing_file(workdir):
    base = os.path.join(workdir, "base.qcow2")
    create_qcow2(base, MiB)
    top = create_qcow2(os.path.join(workdir, "top.qcow2"), MiB, backing=base, backing_fmt="qcow2")
    os.remove(base)
    p = kiln_io(top, "read 0 4k", check=False)
    assert_one_line_error(p, "kiln-io")
    assert "base.qcow2" in p.stderr
    # info does not need the backing file, as with qemu-img
    info = qemu_img("info", top).stdout
    assert "backing file: base.qcow2" in info


def test_chain_too_deep(workdir):
    prev = None
    for i in range(70):
        path = os.path.join(workdir, f"l{i}.qcow2")
        qemu_img("create", "-q", "-f", "qcow2", *(["-u", "-b", os.path.basename(prev), "-F",
                                                   "qcow2"] if prev else []), path, "1M")
        prev = path
    p = kiln_io(prev, "read 0 4k", extra=["-r"], check=False)
    assert_one_line_error(p, "kiln-io")
    p = kiln_img("info", "--backing-chain", prev, check=False)
    assert_one_line_error(p, "kiln-img")


# --- numbers: every numeric option and argument parsed strictly ------------------------------

@pytest.mark.parametrize("cmd,fragment", [
    ("read 1e3 10", "Invalid offset"), ("read 0x10 10", "Invalid offset"),
    ("read 10 1.5", "Invalid length"), ("read 10 0.1k", "Invalid length"),
    ("read 99999999999999999999 1", "Invalid offset"), ("read 16E 1", "Invalid offset"),
    ("zero 0 1k5", "Invalid length"), ("discard 1KB 1", "Invalid offset"),
    ("write -P 256 0 1", "pattern byte"), ("write -P 0x100 0 1", "pattern byte"),
    ("write -P 1e1 0 1", "pattern byte"), ("write -P 010 0 1", "pattern byte"),
    ("write -P 0x 0 1", "pattern byte"), ("read -P 1,,2 0 1", "pattern byte"),
    ("read -P 1, 0 1", "pattern byte"), ("writef /dev/null 1.5 1", "Invalid offset"),
])
def test_command_numbers_are_parsed_strictly(img, cmd, fragment):
    before = read_file(img)
    p = kiln_io(img, cmd, "write -P 7 0 64k", check=False)  # nothing runs after a bad line
    assert_one_line_error(p, "kiln-io")
    assert p.returncode == 1 and fragment in p.stderr, p.stderr
    assert read_file(img) == before


@pytest.mark.parametrize("args,fragment", [
    (["--parallel", "0"], "--parallel"), (["--parallel", "1025"], "--parallel"),
    (["--parallel", "016"], "--parallel"), (["--parallel", "0x10x"], "--parallel"),
    (["--parallel", " 4"], "--parallel"), (["--parallel", "4 "], "--parallel"),
    (["--parallel", "1e1"], "--parallel"), (["--parallel", ""], "--parallel"),
    (["--l2-cache", "0"], "L2 cache size"), (["--l2-cache", "1e3"], "L2 cache size"),
    (["--l2-cache", "8kk"], "L2 cache size"), (["--l2-cache", "2T"], "L2 cache size"),
    (["--l2-cache", "-8k"], "L2 cache size"),
])
def test_option_numbers_are_parsed_strictly(img, args, fragment):
    before = read_file(img)
    p = kiln_io(img, "write -P 7 0 64k", extra=args, check=False)
    assert_one_line_error(p, "kiln-io")
    assert p.returncode == 1 and fragment in p.stderr, p.stderr
    assert read_file(img) == before


def test_numbers_in_range_are_accepted(img):
    # (--parallel runs the commands between flushes concurrently: the reads come after one.)
    p = kiln_io(img, "write -P 0x2a 1.5k 0.5k", "flush", "read -P 42 1536 512",
                "read -P 0 0 1.5k", extra=["--parallel", "0x4", "--l2-cache", "1.5M"])
    assert "read 512/512 bytes at offset 1536" in p.stdout


@pytest.mark.parametrize("cache", [["-t", "none"], ["-n"], ["--cache", "directsync"],
                                   ["-t", "writethrough"]])
def test_cache_modes(workdir, cache):
    """qemu-io's -t/-n: unaligned writes through O_DIRECT (bounced) over a backing file land
    where asked, and the image checks clean; qemu-io reads the same bytes."""
    base = create_qcow2(os.path.join(workdir, "base.qcow2"), 4 * MiB)
    qemu_io(base, "write -P 0x11 0 4M")
    ov = create_qcow2(os.path.join(workdir, "ov.qcow2"), 4 * MiB, backing=base,
                      backing_fmt="qcow2")
    cmds = ["write -P 0xa1 1000 70000", "write -P 0xa2 513 7", "zero 200000 300",
            "discard 1M 64k", "flush", "read -P 0xa1 1000 70000", "read -P 0x11 0 513",
            "read -P 0 200000 300"]
    kiln_io(ov, *cmds, extra=["-f", "qcow2", *cache])
    assert_qemu_clean(ov)
    qemu_io(ov, "read -P 0x11 0 513", "read -P 0xa2 513 7", "read -P 0x11 520 480",
            "read -P 0xa1 1000 70000", "read -P 0 200000 300", "read -P 0x11 200300 100")


def test_unknown_cache_mode(img):
    p = run([KILN_IO, "-t", "sometimes", img], check=False)
    assert_one_line_error(p, "kiln-io")
    assert "Invalid cache mode 'sometimes'" in p.stderr
