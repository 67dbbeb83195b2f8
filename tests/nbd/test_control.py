"""The control socket (JSON lines): exports added, listed and removed while kiln-nbd runs,
statistics that follow the traffic, clear errors for bad requests; and the state file: exports
added through the control API come back after a restart."""

import json
import os
import socket

from kilntest.images import QEMU_IO, MiB, assert_qemu_clean, qemu_img, read_file
from kilntest.nbd import (NBDINFO, Control, RawClient, build_overlay, build_raw, control, run,
                          servers, sha256, unix_uri)  # noqa: F401  (fixture)


def nbdinfo_size(sock, name):
    p = run([NBDINFO, "--json", unix_uri(sock, name)], check=False)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)["exports"][0]["export-size"]


def qemu_io_nbd(uri, *cmds):
    args = [QEMU_IO, "-f", "raw"]
    for c in cmds:
        args += ["-c", c]
    p = run(args + [uri])
    assert "fail" not in p.stdout + p.stderr, p.stdout + p.stderr
    return p.stdout


def test_add_list_remove_stats(workdir, servers):
    ov, base = build_overlay(os.path.join(workdir, "a"))
    raw = build_raw(os.path.join(workdir, "b"))
    base_sum = sha256(base)
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    srv = servers.kiln("-e", "0", sock=sock, control=ctl)  # nothing to serve but the control API
    c = Control(ctl)
    assert c("list-exports") == {"ok": True, "exports": []}
    assert nbdinfo_size(sock, "vm1") is None

    r = c("add-export", name="vm1", path=ov, format="qcow2", description="first vm")
    assert r == {"ok": True}, r
    r = c("add-export", name="ro-raw", path=raw, **{"read-only": True})
    assert r == {"ok": True}, r
    listed = {e["name"]: e for e in c("list-exports")["exports"]}
    assert set(listed) == {"vm1", "ro-raw"}
    size = os.path.getsize(raw)
    assert listed["vm1"]["format"] == "qcow2" and listed["vm1"]["size"] == size
    assert listed["vm1"]["path"] == ov and listed["vm1"]["read-only"] is False
    assert listed["vm1"]["description"] == "first vm"
    assert listed["ro-raw"]["format"] == "raw" and listed["ro-raw"]["read-only"] is True
    assert nbdinfo_size(sock, "vm1") == size
    exports = run([NBDINFO, "--list", "--json", unix_uri(sock)]).stdout
    assert sorted(e["export-name"] for e in json.loads(exports)["exports"]) == ["ro-raw", "vm1"]

    # Statistics follow the traffic.
    s0 = c("stats", name="vm1")["stats"]["vm1"]
    qemu_io_nbd(unix_uri(sock, "vm1"), "write -P 0x71 0 65536", "write -P 0x72 1M 4096",
                "read -P 0x71 0 65536", "read -P 0x72 1M 4096")
    s1 = c("stats", name="vm1")["stats"]["vm1"]
    assert s1["writes"] - s0["writes"] >= 2 and s1["reads"] - s0["reads"] >= 2, (s0, s1)
    assert s1["bytes-written"] - s0["bytes-written"] == 65536 + 4096, (s0, s1)
    assert s1["bytes-read"] - s0["bytes-read"] >= 65536 + 4096, (s0, s1)
    assert s1["requests"] > s0["requests"] and s1["total-connections"] == s0["total-connections"] + 1
    assert s1["errors"] == s0["errors"]
    with RawClient(sock) as rc:
        rc.connect_export("vm1")
        assert c("stats", name="vm1")["stats"]["vm1"]["connections"] == 1
        assert rc.pread(size, 512).error != 0
        assert rc.pwrite(size - 1, b"ab") != 0
    s2 = c("stats")["stats"]
    assert set(s2) == {"vm1", "ro-raw"}
    assert s2["vm1"]["errors"] - s1["errors"] == 2, s2
    # A write to the read-only export is refused (EPERM) and counted as its error.
    e0 = c("stats", name="ro-raw")["stats"]["ro-raw"]["errors"]
    with RawClient(sock) as rc:
        rc.connect_export("ro-raw")
        assert rc.pwrite(0, b"x" * 512) == 1
    assert c("stats", name="ro-raw")["stats"]["ro-raw"]["errors"] == e0 + 1

    # Bad requests get a clear error and its reason; the connection and the server go on.
    bad = "invalid-argument"
    for line, what, reason in [
            ("this is not json\n", "invalid JSON", bad), ("[1,2]\n", "cmd", bad),
            ('{"cmd":"frobnicate"}\n', "unknown command", bad),
            ('{"cmd":"add-export","name":"x"}\n', "", bad),
            ('{"cmd":"add-export","name":"vm1","path":"' + ov + '"}\n', "exists", "exists"),
            ('{"cmd":"add-export","name":"y","path":"/nonexistent/img"}\n', "", "not-found"),
            ('{"cmd":"remove-export","name":"nope"}\n', "nope", "not-found"),
            ('{"cmd":"stats","name":"nope"}\n', "", "not-found")]:
        r = c.raw(line)
        assert r["ok"] is False and what in r["error"] and r["reason"] == reason, (line, r)
    assert sorted(e["name"] for e in c("list-exports")["exports"]) == ["ro-raw", "vm1"]

    # Removing: the export disappears for new clients; the image is closed cleanly.
    assert c("remove-export", name="vm1") == {"ok": True}
    assert nbdinfo_size(sock, "vm1") is None
    assert [e["name"] for e in c("list-exports")["exports"]] == ["ro-raw"]
    assert_qemu_clean(ov)
    p = run([QEMU_IO, "-f", "qcow2", "-c", "read -P 0x71 0 65536", "-c", "read -P 0x72 1M 4096",
             ov])
    assert "fail" not in p.stdout
    # And it can be added again under the same name.
    assert c("add-export", name="vm1", path=ov, format="qcow2") == {"ok": True}
    assert nbdinfo_size(sock, "vm1") == size
    c.close()
    srv.assert_clean_stop()
    assert_qemu_clean(ov)
    assert sha256(base) == base_sum


def test_remove_export_with_client_connected(workdir, servers):
    ov, _ = build_overlay(os.path.join(workdir, "a"))
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    srv = servers.kiln("-e", "0", sock=sock, control=ctl)
    assert control(ctl, "add-export", name="vm", path=ov, format="qcow2")["ok"]
    client = RawClient(sock).connect_export("vm")
    assert client.pwrite(0, b"\x44" * 4096) == 0
    assert control(ctl, "remove-export", name="vm") == {"ok": True}
    assert client.closed_by_server(), "the client of a removed export is still connected"
    client.close()
    assert control(ctl, "list-exports")["exports"] == []
    assert_qemu_clean(ov)
    out = os.path.join(workdir, "o.raw")
    qemu_img("convert", "-f", "qcow2", "-O", "raw", ov, out)
    assert read_file(out)[:4096] == b"\x44" * 4096
    srv.assert_clean_stop()


def test_control_request_too_long(workdir, servers):
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    srv = servers.kiln(sock=sock, control=ctl)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(ctl)
    s.settimeout(20)
    try:
        s.sendall(b'{"cmd":"' + b"x" * (70 * 1024))
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = b""
    try:
        while chunk := s.recv(4096):
            reply += chunk
    except ConnectionResetError:
        pass
    s.close()
    assert json.loads(reply.splitlines()[0]) == {"ok": False, "error": "request too long",
                                                 "reason": "invalid-argument"}, reply
    assert control(ctl, "list-exports") == {"ok": True, "exports": []}
    srv.assert_clean_stop()


def test_stop_with_control_clients_connected(workdir, servers):
    """SIGTERM while an admin's control connection is open, idle or with a request half sent:
    the server ends both and stops cleanly (under ASan: nothing left behind)."""
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    srv = servers.kiln("-e", "0", sock=sock, control=ctl)
    idle = Control(ctl)
    assert idle("list-exports") == {"ok": True, "exports": []}
    partial = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    partial.connect(ctl)
    partial.sendall(b'{"cmd":"list-')
    srv.assert_clean_stop()
    partial.close()
    idle.close()


def test_description_bounded_by_the_protocol(workdir, servers):
    """A description travels in NBD_INFO_DESCRIPTION, a protocol string of at most 4096 bytes:
    one of 4096 reaches the client whole, a longer one is refused when the export is added."""
    raw = build_raw(os.path.join(workdir, "b"))
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    srv = servers.kiln("-e", "0", sock=sock, control=ctl)
    c = Control(ctl)
    r = c("add-export", name="long", path=raw, format="raw", description="d" * 4097)
    assert r["ok"] is False and "description longer than 4096 bytes" in r["error"], r
    assert c("list-exports")["exports"] == []
    assert c("add-export", name="max", path=raw, format="raw", description="d" * 4096)["ok"]
    info = json.loads(run([NBDINFO, "--json", unix_uri(sock, "max")]).stdout)
    assert info["exports"][0]["description"] == "d" * 4096
    srv.assert_clean_stop()


def test_state_file_restores_exports(workdir, servers):
    ov, base = build_overlay(os.path.join(workdir, "a"))
    raw = build_raw(os.path.join(workdir, "b"))
    cli_img = build_raw(os.path.join(workdir, "c"))
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    state = os.path.join(workdir, "state.json")
    args = ["-e", "0", "--state-file", state, "--export", f"cli={cli_img},format=raw"]

    srv = servers.kiln(*args, sock=sock, control=ctl)
    assert control(ctl, "add-export", name="vm1", path=ov, format="qcow2",
                   description="kept")["ok"]
    assert control(ctl, "add-export", name="vm2", path=raw, **{"read-only": True})["ok"]
    assert control(ctl, "add-export", name="gone", path=raw, **{"read-only": True})["ok"]
    assert control(ctl, "remove-export", name="gone")["ok"]
    qemu_io_nbd(unix_uri(sock, "vm1"), f"write -P 0x5e {3 * MiB} 65536")
    srv.assert_clean_stop()
    assert_qemu_clean(ov)
    saved = json.load(open(state))
    assert sorted(e["name"] for e in saved["exports"]) == ["vm1", "vm2"], saved

    srv = servers.kiln(*args, sock=sock, control=ctl)
    listed = {e["name"]: e for e in control(ctl, "list-exports")["exports"]}
    assert set(listed) == {"cli", "vm1", "vm2"}, listed
    assert listed["vm1"]["format"] == "qcow2" and listed["vm1"]["description"] == "kept"
    assert listed["vm2"]["read-only"] is True
    out = qemu_io_nbd(unix_uri(sock, "vm1"), f"read -P 0x5e {3 * MiB} 65536")
    assert "read 65536/65536" in out
    p = run([QEMU_IO, "-f", "raw", "-c", "write 0 512", unix_uri(sock, "vm2")], check=False)
    assert "failed" in p.stdout + p.stderr or p.returncode != 0, "vm2 lost its read-only flag"
    # Removing through the control API is remembered too.
    assert control(ctl, "remove-export", name="vm2")["ok"]
    srv.assert_clean_stop()
    srv = servers.kiln(*args, sock=sock, control=ctl)
    assert sorted(e["name"] for e in control(ctl, "list-exports")["exports"]) == ["cli", "vm1"]
    srv.assert_clean_stop()
    assert_qemu_clean(ov)


def test_control_daemon_serves_many_clients_by_default(workdir, servers):
    """With --control and no -e, kiln-nbd serves many guests: no one-client limit."""
    raw1, raw2 = build_raw(os.path.join(workdir, "a")), build_raw(os.path.join(workdir, "b"))
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    servers.kiln(sock=sock, control=ctl)
    assert control(ctl, "add-export", name="vm1", path=raw1, format="raw") == {"ok": True}
    assert control(ctl, "add-export", name="vm2", path=raw2, format="raw") == {"ok": True}
    clients = [RawClient(sock).connect_export(name) for name in ("vm1", "vm2", "vm1", "vm2")]
    for c in clients:
        c.disc()


def test_state_file_export_with_missing_image(workdir, servers):
    """An image recorded in the state file that is gone at start does not stop kiln-nbd: the
    other exports are served, the missing one is listed as failed (clients do not see it),
    stays recorded, and remove-export forgets it."""
    raw1, raw2 = build_raw(os.path.join(workdir, "a")), build_raw(os.path.join(workdir, "b"))
    sock, ctl = os.path.join(workdir, "nbd.sock"), os.path.join(workdir, "ctl.sock")
    state = os.path.join(workdir, "state.json")
    srv = servers.kiln("-e", "0", "--state-file", state, sock=sock, control=ctl)
    assert control(ctl, "add-export", name="vm1", path=raw1, format="raw") == {"ok": True}
    assert control(ctl, "add-export", name="vm2", path=raw2, format="raw") == {"ok": True}
    srv.assert_clean_stop()
    os.unlink(raw2)

    srv = servers.kiln("-e", "0", "--state-file", state, sock=sock, control=ctl)
    listed = {e["name"]: e for e in control(ctl, "list-exports")["exports"]}
    assert listed["vm1"]["state"] == "ready" and listed["vm1"]["size"] == os.path.getsize(raw1)
    assert listed["vm2"]["state"] == "failed", listed
    assert raw2 in listed["vm2"]["error"] and "No such file" in listed["vm2"]["error"], listed
    assert listed["vm2"]["reason"] == "not-found", listed
    assert "size" not in listed["vm2"]
    assert "export 'vm2' is not served" in srv.log()
    assert nbdinfo_size(sock, "vm1") == os.path.getsize(raw1)
    assert nbdinfo_size(sock, "vm2") is None
    exports = run([NBDINFO, "--list", "--json", unix_uri(sock)]).stdout
    assert [e["export-name"] for e in json.loads(exports)["exports"]] == ["vm1"]
    with RawClient(sock) as rc:
        rc.start()
        assert rc.go("vm2")[-1][0] == 0x80000006  # NBD_REP_ERR_UNKNOWN
    r = control(ctl, "add-export", name="vm2", path=raw1, format="raw")
    assert r["ok"] is False and "exists" in r["error"] and r["reason"] == "exists", r
    # Still recorded while it is failed (the image may come back)...
    assert sorted(e["name"] for e in json.load(open(state))["exports"]) == ["vm1", "vm2"]
    # ...until it is removed.
    assert control(ctl, "remove-export", name="vm2") == {"ok": True}
    assert [e["name"] for e in json.load(open(state))["exports"]] == ["vm1"]
    assert [e["name"] for e in control(ctl, "list-exports")["exports"]] == ["vm1"]
    srv.assert_clean_stop()
    srv = servers.kiln("-e", "0", "--state-file", state, sock=sock, control=ctl)
    assert [e["name"] for e in control(ctl, "list-exports")["exports"]] == ["vm1"]
    srv.assert_clean_stop()
