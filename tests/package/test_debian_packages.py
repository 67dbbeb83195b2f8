"""The Debian packages as a user gets them: `cpack -G DEB` in the build directory, every package
unpacked with `dpkg -x` into a scratch root (never installed into this system), and from there:
`kiln-nbd --version`, a qcow2 image made by the packaged kiln-img and kiln-io and read back
through the packaged kiln-nbd with nbdcopy, the man pages through `man -l`, the systemd unit
through `systemd-analyze verify` and `security`, and the bash completions. No network."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from kilntest.images import MiB
from kilntest.nbd import NBDCOPY, Process, unix_uri

BUILD_DIR = os.environ.get("KILN_BUILD_DIR", "")
VERSION = os.environ.get("KILN_VERSION", "")
PACKAGES = ["kiln-nbd", "kiln-fs", "kiln-net", "kiln-spawn"]
# (binary, where it is installed, man section)
PROGRAMS = [("kiln-nbd", "usr/sbin", 8), ("kiln-img", "usr/bin", 1), ("kiln-io", "usr/bin", 1),
            ("kiln-fs", "usr/bin", 1), ("kiln-net", "usr/sbin", 8), ("kiln-spawn", "usr/sbin", 8)]
UNIT = "usr/lib/systemd/system/kiln-nbd.service"
# systemd-analyze security's exposure level of the unit (0 = fully sandboxed, 10 = not at all).
# 2.x is "OK" in its scale; a change that loosens the sandbox past this fails here.
MAX_EXPOSURE = 2.5


def run(args, **kw):
    p = subprocess.run(args, capture_output=True, text=True, timeout=600, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, args))}: exit {p.returncode}\n{p.stdout}{p.stderr}"
    return p


@pytest.fixture(scope="module")
def scratch():
    """The module's own temporary directory (packages, root, images, sockets), removed
    whether the tests pass or not."""
    d = tempfile.mkdtemp(prefix="kiln-pkg-", dir=os.environ.get("KILN_TEST_TMPDIR") or None)
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tmp_path(scratch, request):
    d = scratch / request.node.name
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def packages(scratch):
    """The .deb files, built from this build tree into a directory of the test's own."""
    assert BUILD_DIR and VERSION, "KILN_BUILD_DIR and KILN_VERSION are set by CTest"
    out = scratch / "debs"
    out.mkdir()
    run(["cpack", "-G", "DEB", "-B", str(out), "--config",
         os.path.join(BUILD_DIR, "CPackConfig.cmake")])
    debs = {}
    for name in PACKAGES:
        (deb,) = [f for f in os.listdir(out) if f.startswith(f"{name}_") and f.endswith(".deb")]
        debs[name] = os.path.join(out, deb)
    return debs


@pytest.fixture(scope="module")
def root(packages, scratch):
    """A scratch root with every package unpacked (`dpkg -x`: no maintainer scripts, no
    dpkg database, nothing outside this directory)."""
    r = scratch / "root"
    r.mkdir()
    for deb in packages.values():
        run(["dpkg", "-x", deb, str(r)])
    return r


def field(deb, name):
    return run(["dpkg-deb", "-f", deb, name]).stdout.strip()


def test_package_metadata(packages):
    for name, deb in packages.items():
        assert field(deb, "Package") == name
        assert field(deb, "Version") == VERSION
    # Depends: the shared libraries found by dpkg-shlibdeps, and the programs the binaries run.
    nbd = field(packages["kiln-nbd"], "Depends")
    assert re.search(r"\bliburing2\b", nbd) and re.search(r"\blibgnutls30\b", nbd), nbd
    assert re.search(r"\blibc6\b", nbd), nbd
    # libcrypto and Nettle are loaded on first use (LUKS), out of dpkg-shlibdeps' sight: named
    # by hand.
    assert re.search(r"\blibssl3\b", nbd) and re.search(r"\blibnettle8\b", nbd), nbd
    net = field(packages["kiln-net"], "Depends")
    assert re.search(r"\blibnftables1\b", net) and re.search(r"\bdnsmasq-base\b", net), net
    fs = field(packages["kiln-fs"], "Depends")
    assert re.search(r"\blibext2fs2\b", fs) and re.search(r"\bfuse3\b", fs), fs
    assert re.search(r"\blibssl3\b", fs) and re.search(r"\blibnettle8\b", fs), fs
    spawn = field(packages["kiln-spawn"], "Depends")
    assert re.search(r"\blibvirt0\b", spawn) and re.search(r"\bkiln-nbd\b", spawn), spawn
    # A storage host's package pulls in none of the compute path's libraries.
    assert "libvirt" not in nbd and "dnsmasq" not in nbd, nbd


def test_layout(root):
    """Files where Debian and systemd look for them; /etc ones are conffiles."""
    for path in [UNIT, "etc/default/kiln-nbd", "etc/logrotate.d/kiln-nbd",
                 "usr/share/doc/kiln-nbd/install.md",
                 "usr/share/doc/kiln-nbd/examples/image-dirs.conf"]:
        assert os.path.isfile(root / path), path
    assert not os.path.exists(root / "usr/etc")


def test_versions(root):
    for prog, where, _ in PROGRAMS:
        p = run([os.path.join(root, where, prog), "--version"])
        assert p.stdout == f"{prog} {VERSION}\n"


def test_help(root):
    """`PROG --help` as a new user types it, no command: the usage on stdout, exit 0."""
    for prog, where, _ in PROGRAMS:
        p = subprocess.run([os.path.join(root, where, prog), "--help"], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, f"{prog} --help: exit {p.returncode}\n{p.stderr}"
        assert re.search(r"usage", p.stdout, re.I), f"{prog} --help printed no usage"


def test_served_read(root, tmp_path):
    """A qcow2 image made and written by the packaged tools, served by the packaged kiln-nbd
    on a Unix socket, read back whole with nbdcopy: the bytes written, zeros elsewhere."""
    img = tmp_path / "disk.qcow2"
    size = 8 * MiB
    run([root / "usr/bin/kiln-img", "create", "-q", "-f", "qcow2", img, str(size)])
    run([root / "usr/bin/kiln-io", "-f", "qcow2", img, "-c", "write -P 0xa5 1M 2M",
         "-c", "write -P 0x3c 7M 4k", "-c", "flush"])
    expected = bytearray(size)
    expected[1 * MiB:3 * MiB] = b"\xa5" * (2 * MiB)
    expected[7 * MiB:7 * MiB + 4096] = b"\x3c" * 4096

    sock = str(tmp_path / "nbd.sock")
    server = Process("kiln-nbd", [root / "usr/sbin/kiln-nbd", "-k", sock, "-f", "qcow2", "-r",
                                  "-t", "-e", "4", img],
                     str(tmp_path / "kiln-nbd.log"), unix=[sock])
    server.start()
    try:
        out = tmp_path / "out.raw"
        run([NBDCOPY, unix_uri(sock), str(out)])
        assert out.read_bytes() == bytes(expected)
    finally:
        rc = server.stop()
    assert rc == 0, f"kiln-nbd exited with {rc} after SIGTERM: {server.log()}"


def test_man_pages(root):
    env = dict(os.environ, MANPAGER="cat", MANWIDTH="100", LC_ALL="C.UTF-8")
    for prog, _, section in PROGRAMS:
        page = root / f"usr/share/man/man{section}/{prog}.{section}.gz"
        text = run(["man", "-l", str(page)], env=env).stdout
        assert prog in text and VERSION in text, text[:500]
    nbd = run(["man", "-l", str(root / "usr/share/man/man8/kiln-nbd.8.gz")], env=env).stdout
    # help2man made it from --help: the options are there.
    assert "--control" in nbd and "--allow-dir" in nbd, nbd


def test_unit_verifies(root, tmp_path):
    """`systemd-analyze verify` of the packaged unit, in a root that has the packaged kiln-nbd
    (the unit names it without a directory), systemd's own units (sysinit.target and the
    rest of what every service depends on, copied from this host), and /usr/bin/kill
    (ExecReload). The man page named by Documentation= is looked up in the scratch root."""
    v = tmp_path / "verify-root"
    shutil.copytree("/usr/lib/systemd/system", v / "usr/lib/systemd/system", symlinks=True)
    shutil.copy(root / UNIT, v / UNIT)
    (v / "usr/sbin").mkdir()
    (v / "usr/bin").mkdir()
    shutil.copy(root / "usr/sbin/kiln-nbd", v / "usr/sbin/kiln-nbd")
    shutil.copy(shutil.which("kill"), v / "usr/bin/kill")
    for d in ("bin", "sbin", "lib"):
        os.symlink(f"usr/{d}", v / d)
    env = dict(os.environ, MANPATH=str(root / "usr/share/man"))
    p = subprocess.run(["systemd-analyze", "verify", f"--root={v}", f"/{UNIT}"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and p.stderr.strip() == "", f"{p.stdout}{p.stderr}"


def test_unit_security(root):
    p = run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
             "--no-pager", f"/{UNIT}"])
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout)
    assert m, p.stdout
    print(f"systemd-analyze security: exposure {m.group(1)}")
    assert float(m.group(1)) <= MAX_EXPOSURE, p.stdout


def complete(root, line):
    """The words bash completion offers at the end of `line`, with the packaged completion
    file and the packaged binaries first on PATH."""
    words = line.split(" ")
    prog = words[0]
    script = f"""
        source {root}/usr/share/bash-completion/completions/{prog}
        COMP_WORDS=({' '.join(repr(w) for w in words)})
        COMP_CWORD={len(words) - 1}
        _kiln
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    env = dict(os.environ, PATH=f"{root}/usr/sbin:{root}/usr/bin:{os.environ['PATH']}")
    return run(["bash", "-c", script], env=env).stdout.split()


def test_completions(root):
    for prog, _, _ in PROGRAMS:
        assert os.path.isfile(root / "usr/share/bash-completion/completions" / prog)
    assert complete(root, "kiln-nbd --allow") == ["--allow-dir="]
    assert "--state-file=" in complete(root, "kiln-nbd --")
    assert complete(root, "kiln-img cr") == ["create"]
    assert complete(root, "kiln-fs inj") == ["inject"]
    assert "net-create" in complete(root, "kiln-net --format json net")
    assert "--image=" not in complete(root, "kiln-spawn boot --")  # its options are "--image IMG"
    assert "--image" in complete(root, "kiln-spawn --state-dir /tmp boot --")
