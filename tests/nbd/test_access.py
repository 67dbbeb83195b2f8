"""Who can reach what through kiln-nbd: socket modes and owners (not the umask's), the control
socket's SO_PEERCRED check, --allow-dir for images and their backing chains, per-export
sockets that show one export only, and TCP bound to loopback unless told otherwise. Other
users are played with setpriv (nobody/nogroup), so nothing on the host changes."""

import grp
import json
import os
import socket
import stat

import pytest

from kilntest.images import QEMU_IO, MiB, create_qcow2, qemu_img, qemu_io
from kilntest.nbd import (KILN_NBD, NBDINFO, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST,
                          OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, REP_ACK, REP_ERR_UNKNOWN,
                          REP_META_CONTEXT, REP_SERVER, TIMEOUT, RawClient, as_user, control,
                          free_tcp_port, run, servers, unix_uri)  # noqa: F401  (fixture)

NOGROUP = grp.getgrnam("nogroup").gr_gid
NOBODY = 65534


def open_to_others(workdir):
    """Lets other users through the test's directory (mkdtemp makes it 0700)."""
    os.chmod(workdir, 0o755)


def raw_image(path, byte, size=4 * MiB):
    with open(path, "wb") as f:
        f.write(bytes([byte]) * size)
    return path


def mode_owner(path):
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode), path
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def umask(mask):
    return lambda: os.umask(mask)


CONTROL_CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect-error": e.strerror}))
    sys.exit(0)
replies, buf, closed = [], b"", False
for _ in range(2):  # a second request shows whether the connection is still open
    try:
        s.sendall(b'{"cmd":"list-exports"}\n')
    except OSError:
        pass  # closed already: what it sent before is still there to read
    try:
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except OSError:
        pass
    if b"\n" not in buf:
        closed = True
        break
    line, buf = buf.split(b"\n", 1)
    replies.append(json.loads(line))
print(json.dumps({"replies": replies, "closed": closed}))
"""


def control_as(ctl, user="nobody", group="nogroup"):
    """Two control requests (list-exports) from another user: the replies it gets, and
    whether the server closed the connection before the second one was answered."""
    p = run(as_user(["/usr/bin/python3", "-c", CONTROL_CLIENT, ctl], user, group))
    return json.loads(p.stdout)


def test_socket_modes_do_not_follow_umask(workdir, servers):
    img = raw_image(os.path.join(workdir, "d.raw"), 0x11)
    other = raw_image(os.path.join(workdir, "e.raw"), 0x12)
    for groups, mode, gid in [((), 0o600, 0), (("nogroup",), 0o660, NOGROUP)]:
        d = os.path.join(workdir, f"m{mode:o}")
        os.mkdir(d)
        sock, ctl = os.path.join(d, "nbd.sock"), os.path.join(d, "ctl.sock")
        state = os.path.join(d, "state", "sub", "state.json")
        args = ["-t", "--state-file", state, img]
        for g in groups:
            args = ["--socket-group", g, "--control-group", g] + args
        srv = servers.kiln(*args, sock=sock, control=ctl, preexec=umask(0))
        assert mode_owner(sock) == (mode, 0, gid)
        assert mode_owner(ctl) == (mode, 0, gid)
        # The state file's directories are created private, whatever the umask.
        assert control(ctl, "add-export", name="x", path=other, format="raw",
                       **{"read-only": True})["ok"]
        for sub in (os.path.dirname(state), os.path.dirname(os.path.dirname(state))):
            assert stat.S_IMODE(os.stat(sub).st_mode) == 0o700, sub
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
        srv.assert_clean_stop()
        assert not os.path.exists(sock) and not os.path.exists(ctl)


def test_socket_path_that_is_not_a_socket_is_kept(workdir):
    img = raw_image(os.path.join(workdir, "d.raw"), 0x11)
    precious = os.path.join(workdir, "precious.txt")
    with open(precious, "w") as f:
        f.write("keep me\n")
    p = run([KILN_NBD, "-t", "-k", precious, img], check=False, timeout=TIMEOUT)
    assert p.returncode == 1 and "not a socket" in p.stderr, p.stderr
    assert open(precious).read() == "keep me\n"


def test_control_socket_checks_peer_credentials(workdir, servers):
    open_to_others(workdir)
    img = raw_image(os.path.join(workdir, "d.raw"), 0x11)
    # Without --control-group only root (the server's user) may use the socket. Its mode
    # already keeps others out; opened up here to reach the SO_PEERCRED check behind it.
    d1 = os.path.join(workdir, "a")
    os.mkdir(d1)
    os.chmod(d1, 0o755)
    sock, ctl = os.path.join(d1, "nbd.sock"), os.path.join(d1, "ctl.sock")
    srv = servers.kiln("-t", img, sock=sock, control=ctl)
    assert control_as(ctl) == {"connect-error": "Permission denied"}
    os.chmod(ctl, 0o666)
    out = control_as(ctl)
    (reply,) = out["replies"]
    assert reply["ok"] is False and "permission denied" in reply["error"], out
    assert out["closed"] is True, out
    assert "uid 65534" in reply["error"] and reply["reason"] == "permission", reply
    assert control(ctl, "list-exports")["ok"] is True  # root still gets in
    assert "control connection from uid 65534" in srv.log()
    srv.assert_clean_stop()

    # --control-group daemon: its members get in; nobody/nogroup does not, socket mode or not.
    d2 = os.path.join(workdir, "b")
    os.mkdir(d2)
    os.chmod(d2, 0o755)
    sock, ctl = os.path.join(d2, "nbd.sock"), os.path.join(d2, "ctl.sock")
    srv = servers.kiln("-t", "--control-group", "daemon", img, sock=sock, control=ctl)
    assert mode_owner(ctl) == (0o660, 0, grp.getgrnam("daemon").gr_gid)
    out = control_as(ctl, "nobody", "daemon")
    assert len(out["replies"]) == 2 and out["closed"] is False, out
    assert out["replies"][0]["ok"] is True, out
    assert [e["name"] for e in out["replies"][0]["exports"]] == [""]
    os.chmod(ctl, 0o666)
    out = control_as(ctl, "nobody", "nogroup")
    assert len(out["replies"]) == 1 and out["closed"] is True, out
    assert out["replies"][0]["ok"] is False, out
    srv.assert_clean_stop()


def test_allow_dir(workdir, servers):
    inside, outside = os.path.join(workdir, "images"), os.path.join(workdir, "outside")
    os.mkdir(inside)
    os.mkdir(outside)
    good_base = create_qcow2(os.path.join(inside, "base.qcow2"), 4 * MiB)
    qemu_io(good_base, "write -P 0x21 0 64k")
    good = create_qcow2(os.path.join(inside, "good.qcow2"), backing="base.qcow2",
                        backing_fmt="qcow2")
    inner_link = os.path.join(inside, "alias.qcow2")
    os.symlink("good.qcow2", inner_link)
    secret = raw_image(os.path.join(outside, "secret.raw"), 0x5e)
    link_out = os.path.join(inside, "link.raw")
    os.symlink(secret, link_out)
    # A qcow2 inside whose backing file (raw!) is outside, by absolute and by relative name.
    evil_abs = os.path.join(inside, "evil-abs.qcow2")
    evil_rel = os.path.join(inside, "evil-rel.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", evil_abs)
    qemu_img("create", "-q", "-f", "qcow2", "-b", "../outside/secret.raw", "-F", "raw", evil_rel)
    # Through an inside directory that is a symlink to an outside one.
    os.symlink(outside, os.path.join(inside, "sub"))
    via_dir = os.path.join(inside, "sub", "secret.raw")

    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    srv = servers.kiln("-e", "0", "--allow-dir", inside, sock=sock, control=ctl)
    for name, path in [("passwd", "/etc/passwd"), ("link", link_out), ("abs", evil_abs),
                       ("rel", evil_rel), ("outside", secret), ("viadir", via_dir)]:
        # The format is given: a probed qcow2 naming a backing file is refused before the
        # backing's directory would be checked (docs/block-layer.md).
        fmt = "qcow2" if path.endswith(".qcow2") else "raw"
        r = control(ctl, "add-export", name=name, path=path, format=fmt, **{"read-only": True})
        assert r["ok"] is False, (name, r)
        assert "outside the allowed directories (--allow-dir)" in r["error"], (name, r)
        assert r["reason"] == "permission", (name, r)
    for name, path in [("good", good), ("alias", inner_link)]:
        r = control(ctl, "add-export", name=name, path=path, format="qcow2",
                    **{"read-only": True})
        assert r == {"ok": True}, (name, r)
    assert sorted(e["name"] for e in control(ctl, "list-exports")["exports"]) == ["alias", "good"]
    p = run([QEMU_IO, "-r", "-f", "raw", "-c", "read -P 0x21 0 64k", unix_uri(sock, "good")])
    assert "read 65536/65536" in p.stdout
    srv.assert_clean_stop()

    # --export and FILE go through the same check, and stop kiln-nbd at start.
    for args in (["--export", f"x={evil_abs},format=qcow2"], [secret]):
        p = run([KILN_NBD, "-t", "-k", sock, "--allow-dir", inside, *args], check=False,
                timeout=TIMEOUT)
        assert p.returncode == 1 and "outside the allowed directories" in p.stderr, p.stderr


def list_exports(client):
    replies = client.option(OPT_LIST)
    assert replies[-1][0] == REP_ACK, replies
    names = []
    for rtype, data in replies[:-1]:
        assert rtype == REP_SERVER
        n = int.from_bytes(data[:4], "big")
        names.append(data[4:4 + n].decode())
    return names


def test_per_export_sockets(workdir, servers):
    open_to_others(workdir)
    a_img = raw_image(os.path.join(workdir, "a.raw"), 0x0a, 4 * MiB)
    b_img = raw_image(os.path.join(workdir, "b.raw"), 0x0b, 8 * MiB)
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    a_sock, b_sock = os.path.join(workdir, "a.sock"), os.path.join(workdir, "b.sock")
    state = os.path.join(workdir, "state.json")
    srv = servers.kiln("-e", "0", "--state-file", state, sock=sock, control=ctl,
                       preexec=umask(0))
    assert control(ctl, "add-export", name="a", path=a_img, format="raw", socket=a_sock) == \
        {"ok": True}
    assert control(ctl, "add-export", name="b", path=b_img, format="raw", socket=b_sock,
                   owner="nobody:nogroup") == {"ok": True}
    assert mode_owner(a_sock) == (0o600, 0, 0)
    assert mode_owner(b_sock) == (0o600, NOBODY, NOGROUP)
    listed = {e["name"]: e for e in control(ctl, "list-exports")["exports"]}
    assert listed["b"]["socket"] == b_sock and listed["b"]["owner"] == "nobody:nogroup"

    # Through a.sock only "a" exists; "" is "a"; "b" is as unknown as a name never used.
    out = run([NBDINFO, "--list", "--json", unix_uri(a_sock)]).stdout
    assert [e["export-name"] for e in json.loads(out)["exports"]] == ["a"]
    with RawClient(a_sock) as c:
        c.start()
        c.structured_reply()
        assert list_exports(c) == ["a"]
        for name in ("b", "nonexistent"):
            for opt in (OPT_INFO, OPT_GO):
                replies = c.go(name, opt=opt)
                assert replies == [(REP_ERR_UNKNOWN, f"no export named '{name}'".encode())], \
                    replies
            for opt in (OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT):
                replies = c.option(opt, RawClient.meta_data(name, ["base:allocation"]))
                assert replies[-1][0] == REP_ERR_UNKNOWN, replies
        replies = c.option(OPT_LIST_META_CONTEXT, RawClient.meta_data("", ["base:allocation"]))
        assert replies[0][0] == REP_META_CONTEXT and replies[-1][0] == REP_ACK, replies
        assert c.go("")[-1][0] == REP_ACK and c.size == 4 * MiB
        assert c.pread(0, 4096).data == b"\x0a" * 4096
    with RawClient(a_sock) as c:
        c.start()
        c.send_option(OPT_EXPORT_NAME, b"b")
        assert c.closed_by_server()
    p = qemu_img("info", "--output=json", unix_uri(a_sock, "b"), check=False)
    assert p.returncode != 0, p.stdout
    assert json.loads(qemu_img("info", "--output=json", unix_uri(a_sock)).stdout)[
        "virtual-size"] == 4 * MiB
    p = run([QEMU_IO, "-f", "raw", "-c", "write -P 0x7a 4096 4096", "-c", "read -P 0x7a 4096 4096",
             unix_uri(a_sock, "a")])
    assert "read 4096/4096" in p.stdout
    # The shared socket still shows both, to root.
    out = run([NBDINFO, "--list", "--json", unix_uri(sock)]).stdout
    assert sorted(e["export-name"] for e in json.loads(out)["exports"]) == ["a", "b"]
    # b's owner reaches b through its socket; a's socket stays closed to it.
    p = run(as_user([NBDINFO, "--size", unix_uri(b_sock)]))
    assert p.stdout.strip() == str(8 * MiB)
    p = run(as_user([NBDINFO, "--size", unix_uri(a_sock)]), check=False)
    assert p.returncode != 0 and "ermission denied" in p.stderr, p.stderr

    # Removal closes the listener, disconnects a's clients and unlinks the socket.
    client = RawClient(a_sock).connect_export("")
    assert control(ctl, "remove-export", name="a") == {"ok": True}
    assert not os.path.exists(a_sock)
    assert client.closed_by_server()
    client.close()
    srv.assert_clean_stop()
    assert not os.path.exists(b_sock)

    # The state file keeps b's socket and owner: they come back on restart.
    srv = servers.kiln("-e", "0", "--state-file", state, sock=sock, control=ctl,
                       wait_for=[b_sock])
    assert mode_owner(b_sock) == (0o600, NOBODY, NOGROUP)
    assert run([NBDINFO, "--size", unix_uri(b_sock, "b")]).stdout.strip() == str(8 * MiB)
    srv.assert_clean_stop()

    # And on the command line.
    srv = servers.kiln("-t", "--export", f"a={a_img},format=raw,socket={a_sock},owner=nobody",
                       sock=sock, wait_for=[a_sock])
    assert mode_owner(a_sock) == (0o600, NOBODY, 0)
    out = run(as_user([NBDINFO, "--list", "--json", unix_uri(a_sock)])).stdout
    assert [e["export-name"] for e in json.loads(out)["exports"]] == ["a"]
    srv.assert_clean_stop()


def tcp_listen_addresses(port):
    found = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                found.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


@pytest.mark.parametrize("bind, expected", [(None, ["127.0.0.1"]), ("0.0.0.0", ["0.0.0.0"])])
def test_tcp_binds_loopback_unless_told(workdir, servers, bind, expected):
    img = raw_image(os.path.join(workdir, "d.raw"), 0x11)
    port = free_tcp_port()
    srv = servers.kiln("-t", img, port=port, bind=bind)
    assert tcp_listen_addresses(port) == expected
    out = run([NBDINFO, "--size", f"nbd://127.0.0.1:{port}/"]).stdout
    assert out.strip() == str(4 * MiB)
    srv.assert_clean_stop()
