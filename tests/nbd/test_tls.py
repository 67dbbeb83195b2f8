"""NBD over TLS: kiln-nbd with X.509 credentials (qemu's file names) and pre-shared keys
(psktool's file format), reached by the clients people use — nbdinfo, nbdcopy and libnbd's
Python binding, qemu-img and qemu-io with --object tls-creds-* — and refused to clients that
do not speak TLS or hold the wrong key. What a session writes is checked against the image
with `qemu-img compare` after the server has stopped."""

import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile

import nbd
import pytest

from kilntest.images import MiB, assert_qemu_clean, create_qcow2, qemu_img
from kilntest.nbd import (KILN_NBD, NBDCOPY, NBDINFO, OPT_ABORT, OPT_EXPORT_NAME, OPT_GO, OPT_LIST,
                          OPT_STARTTLS, REP_ACK, REP_ERR_INVALID, REP_ERR_POLICY, RawClient,
                          control, free_tcp_port, run, servers)  # noqa: F401

REP_ERR_TLS_REQD = 0x80000005
SIZE = 32 * MiB
QEMU_IO = "qemu-io"


def certtool(*args):
    run(["certtool", *args])


def write_template(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class Creds:
    """A throw-away CA, a server certificate for localhost/127.0.0.1, a client certificate,
    and PSK files: the right key, a wrong key for the same identity, an unknown identity."""

    def __init__(self, d):
        self.d = d
        pki = os.path.join(d, "pki")
        os.makedirs(pki)

        def key(name):
            path = os.path.join(pki, name + "-key.pem")
            certtool("--generate-privkey", "--key-type=ecdsa", "--outfile", path)
            return path

        def template(name, lines):
            path = os.path.join(pki, name + ".info")
            write_template(path, lines + ["expiration_days = 2"])
            return path

        ca_key = key("ca")
        self.ca = os.path.join(pki, "ca-cert.pem")
        certtool("--generate-self-signed", "--load-privkey", ca_key, "--template",
                 template("ca", ["cn = Kiln test CA", "ca", "cert_signing_key"]),
                 "--outfile", self.ca)

        def issue(name, lines):
            k = key(name)
            cert = os.path.join(pki, name + "-cert.pem")
            certtool("--generate-certificate", "--load-privkey", k, "--load-ca-certificate",
                     self.ca, "--load-ca-privkey", ca_key, "--template",
                     template(name, lines + ["encryption_key", "signing_key"]),
                     "--outfile", cert)
            return cert, k

        server = issue("server", ["cn = localhost", "dns_name = localhost",
                                  "ip_address = 127.0.0.1", "tls_www_server"])
        client = issue("client", ["cn = kiln-test-client", "organization = Kiln tests",
                                  "tls_www_client"])

        # The server's directory, and two client directories (libnbd and qemu both read
        # ca-cert.pem, client-cert.pem and client-key.pem from a directory).
        self.server_dir = self._dir("server", {"ca-cert.pem": self.ca,
                                               "server-cert.pem": server[0],
                                               "server-key.pem": server[1]})
        self.client_dir = self._dir("client", {"ca-cert.pem": self.ca,
                                               "client-cert.pem": client[0],
                                               "client-key.pem": client[1]})
        self.client_nocert_dir = self._dir("client-nocert", {"ca-cert.pem": self.ca})

        # PSK: psktool writes "identity:hexkey"; qemu wants the file as DIR/keys.psk.
        self.psk = os.path.join(d, "keys.psk")
        run(["psktool", "-u", "alice", "-p", self.psk])
        self.psk_dir = os.path.join(d, "qemu-psk")
        os.makedirs(self.psk_dir)
        with open(self.psk) as f:
            good = f.read()
        with open(os.path.join(self.psk_dir, "keys.psk"), "w") as f:
            f.write(good)
        identity, hexkey = good.strip().split(":")
        wrong = format(int(hexkey, 16) ^ 1, "0%dx" % len(hexkey))
        self.wrong_psk = self._file("wrong.psk", f"{identity}:{wrong}\n")
        self.stranger_psk = self._file("stranger.psk", f"mallory:{hexkey}\n")
        # Two tenants' keys in one server file; each tenant holds only its own.
        self.tenants_psk = os.path.join(d, "tenants.psk")
        run(["psktool", "-u", "alice", "-p", self.tenants_psk])
        run(["psktool", "-u", "bob", "-p", self.tenants_psk])
        with open(self.tenants_psk) as f:
            lines = dict(line.strip().split(":", 1) for line in f if line.strip())
        self.alice_psk = self._file("alice.psk", f"alice:{lines['alice']}\n")
        self.bob_psk = self._file("bob.psk", f"bob:{lines['bob']}\n")

    def _dir(self, name, files):
        path = os.path.join(self.d, name)
        os.makedirs(path)
        for dst, src in files.items():
            with open(src, "rb") as i, open(os.path.join(path, dst), "wb") as o:
                o.write(i.read())
        return path

    def _file(self, name, text):
        path = os.path.join(self.d, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o600)
        return path


@pytest.fixture(scope="module")
def creds():
    # Not tmp_path_factory: pytest keeps its last three base directories, so keys and
    # certificates would outlive the test run in /tmp.
    d = tempfile.mkdtemp(prefix="kiln-tls-test-")
    try:
        yield Creds(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def image(workdir, pattern=0x5A):
    path = create_qcow2(os.path.join(workdir, "disk.qcow2"), SIZE)
    run([QEMU_IO, "-f", "qcow2", "-c", f"write -P {pattern} 0 1M", "-c",
         f"write -P {pattern + 1} {SIZE - MiB} 1M", path])
    return path


def psk_uri(sock, creds, psk=None, user="alice"):
    return f"nbds+unix://{user}@/?socket={sock}&tls-psk-file={psk or creds.psk}"


def x509_uri(sock, cert_dir):
    return f"nbds+unix:///?socket={sock}&tls-certificates={cert_dir}"


def nbdinfo_json(uri):
    return json.loads(run([NBDINFO, "--json", uri]).stdout)


def random_file(path, size):
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return path


def qemu_tls_object(kind, creds):
    if kind == "psk":
        return f"tls-creds-psk,id=tls0,endpoint=client,dir={creds.psk_dir},username=alice"
    return f"tls-creds-x509,id=tls0,endpoint=client,dir={creds.client_dir}"


def qemu_nbd_opts(sock):
    # Over a Unix socket QEMU has no host name to check the certificate against: give it one.
    return f"driver=nbd,server.type=unix,server.path={sock},tls-creds=tls0,tls-hostname=localhost"


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["psk", "x509"])
def test_nbdinfo_shows_tls(workdir, servers, creds, kind):
    sock = os.path.join(workdir, "s.sock")
    flags = ["--tls-psk", creds.psk] if kind == "psk" else ["--tls-creds", creds.server_dir]
    servers.kiln("-f", "qcow2", "-t", "-e", "4", *flags, image(workdir), sock=sock)
    uri = psk_uri(sock, creds) if kind == "psk" else x509_uri(sock, creds.client_dir)
    info = nbdinfo_json(uri)
    assert info["TLS"] is True
    assert info["exports"][0]["export-size"] == SIZE
    assert "with TLS" in run([NBDINFO, uri]).stdout


@pytest.mark.parametrize("kind", ["psk", "x509"])
def test_sessions_read_and_write(workdir, servers, creds, kind):
    """nbdcopy writes 32 MiB through TLS and reads it back; qemu-io writes through QEMU's TLS
    client; after the server stops, qemu-img compare finds the image equal to what was sent."""
    sock = os.path.join(workdir, "s.sock")
    img = image(workdir)
    flags = ["--tls-psk", creds.psk] if kind == "psk" else ["--tls-creds", creds.server_dir]
    server = servers.kiln("-f", "qcow2", "-t", "-e", "8", *flags, img, sock=sock)
    uri = psk_uri(sock, creds) if kind == "psk" else x509_uri(sock, creds.client_dir)

    src = random_file(os.path.join(workdir, "src.raw"), SIZE)
    run([NBDCOPY, src, uri])
    back = os.path.join(workdir, "back.raw")
    run([NBDCOPY, uri, back])
    with open(src, "rb") as a, open(back, "rb") as b:
        assert a.read() == b.read(), "bytes read back through TLS differ from those written"

    # QEMU's client: a write through TLS, then the whole export compared with the reference.
    obj = qemu_tls_object(kind, creds)
    run([QEMU_IO, "--object", obj, "--image-opts", qemu_nbd_opts(sock),
         "-c", "write -P 0x6b 3M 5M"])
    run([QEMU_IO, "-f", "raw", "-c", "write -P 0x6b 3M 5M", src])
    p = qemu_img("compare", "--object", obj, "--image-opts", qemu_nbd_opts(sock),
                 f"driver=raw,file.filename={src}", check=False)
    assert p.returncode == 0, p.stdout + p.stderr

    server.assert_clean_stop()
    assert_qemu_clean(img)
    p = qemu_img("compare", "-f", "qcow2", "-F", "raw", img, src, check=False)
    assert p.returncode == 0, p.stdout + p.stderr


def test_x509_over_tcp_checks_the_host_name(workdir, servers, creds):
    port = free_tcp_port()
    servers.kiln("-f", "qcow2", "-t", "--tls-creds", creds.server_dir, image(workdir),
                 port=port)
    ok = nbdinfo_json(f"nbds://localhost:{port}/?tls-certificates={creds.client_dir}")
    assert ok["TLS"] is True
    p = qemu_img("info", "--object", qemu_tls_object("x509", creds), "--image-opts",
                 f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},"
                 "tls-creds=tls0", check=False)
    assert p.returncode == 0, p.stderr
    # A certificate made out to another name is refused by the client.
    p = qemu_img("info", "--object", qemu_tls_object("x509", creds), "--image-opts",
                 f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port},"
                 "tls-creds=tls0,tls-hostname=storage.example", check=False)
    assert p.returncode != 0


def test_plain_clients_refused_when_tls_required(workdir, servers, creds):
    sock = os.path.join(workdir, "s.sock")
    servers.kiln("-f", "qcow2", "-t", "--tls-psk", creds.psk, image(workdir), sock=sock)

    p = run([NBDINFO, f"nbd+unix:///?socket={sock}"], check=False)
    assert p.returncode != 0

    # Every option but STARTTLS and ABORT gets NBD_REP_ERR_TLS_REQD ...
    with RawClient(sock) as c:
        c.start()
        assert c.option(OPT_LIST)[-1][0] == REP_ERR_TLS_REQD
        assert c.go("")[-1][0] == REP_ERR_TLS_REQD
        assert c.option(OPT_ABORT)[-1][0] == REP_ACK
    # ... and NBD_OPT_EXPORT_NAME, which has no error reply, ends the connection.
    with RawClient(sock) as c:
        c.start()
        c.send_option(OPT_EXPORT_NAME, b"")
        assert c.closed_by_server()

    # TLS clients are still served.
    assert nbdinfo_json(psk_uri(sock, creds))["TLS"] is True


@pytest.mark.parametrize("which", ["wrong-key", "unknown-identity"])
def test_wrong_psk_refused(workdir, servers, creds, which):
    sock = os.path.join(workdir, "s.sock")
    server = servers.kiln("-f", "qcow2", "-t", "--tls-psk", creds.psk, image(workdir),
                          sock=sock)
    if which == "wrong-key":
        uri = psk_uri(sock, creds, psk=creds.wrong_psk)
    else:
        uri = psk_uri(sock, creds, psk=creds.stranger_psk, user="mallory")
    p = run([NBDINFO, uri], check=False)
    assert p.returncode != 0
    assert "TLS handshake failed" in server.log()
    assert nbdinfo_json(psk_uri(sock, creds))["TLS"] is True


def test_verify_peer_needs_a_client_certificate(workdir, servers, creds):
    sock = os.path.join(workdir, "s.sock")
    server = servers.kiln("-f", "qcow2", "-t", "--tls-creds", creds.server_dir,
                          "--tls-verify-peer", image(workdir), sock=sock)
    p = run([NBDINFO, x509_uri(sock, creds.client_nocert_dir)], check=False)
    assert p.returncode != 0
    assert "TLS handshake failed" in server.log()
    assert nbdinfo_json(x509_uri(sock, creds.client_dir))["TLS"] is True


def test_tls_on_serves_plain_and_tls_clients(workdir, servers, creds):
    sock = os.path.join(workdir, "s.sock")
    servers.kiln("-f", "qcow2", "-t", "-e", "4", "--tls=on", "--tls-psk", creds.psk,
                 image(workdir), sock=sock)
    assert nbdinfo_json(f"nbd+unix:///?socket={sock}")["TLS"] is False
    assert nbdinfo_json(psk_uri(sock, creds))["TLS"] is True

    # libnbd's own client through TLS: what it writes, it reads back.
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_psk_file(creds.psk)
    h.set_tls_username("alice")
    h.connect_unix(sock)
    assert h.get_tls_negotiated()
    data = bytes(range(256)) * 4096
    h.pwrite(data, 7 * MiB + 512)
    h.flush()
    assert h.pread(len(data), 7 * MiB + 512) == data
    h.shutdown()


def test_starttls_refused_without_tls(workdir, servers):
    sock = os.path.join(workdir, "s.sock")
    servers.kiln("-f", "qcow2", "-t", image(workdir), sock=sock)
    with RawClient(sock) as c:
        c.start()
        assert c.option(OPT_STARTTLS)[-1][0] == REP_ERR_POLICY
        assert c.go("")[-1][0] == REP_ACK  # still usable in the clear


def test_starttls_protocol_errors(workdir, servers, creds):
    sock = os.path.join(workdir, "s.sock")
    server = servers.kiln("-f", "qcow2", "-t", "--tls-psk", creds.psk, image(workdir),
                          sock=sock)
    with RawClient(sock) as c:
        c.start()
        assert c.option(OPT_STARTTLS, b"x")[-1][0] == REP_ERR_INVALID
    # Bytes sent after STARTTLS, before the server's reply, are plaintext that a man in the
    # middle could have added: the server closes instead of taking them into the session.
    with RawClient(sock) as c:
        c.start()
        c.send(struct.pack(">QII", 0x49484156454F5054, OPT_STARTTLS, 0)
               + struct.pack(">QII", 0x49484156454F5054, OPT_GO, 0))
        assert c.closed_by_server()
    assert "data after NBD_OPT_STARTTLS" in server.log()
    # Garbage instead of a ClientHello fails the handshake and only that connection.
    with RawClient(sock) as c:
        c.start()
        c.send_option(OPT_STARTTLS)
        opt, rtype, _ = c.option_reply()
        assert (opt, rtype) == (OPT_STARTTLS, REP_ACK)
        c.send(b"GET / HTTP/1.1\r\nHost: kiln\r\n\r\n")
        assert c.closed_by_server()
    assert nbdinfo_json(psk_uri(sock, creds))["TLS"] is True
    # A client that goes quiet in the middle of the handshake does not hold others up.
    quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    quiet.connect(sock)
    try:
        quiet.recv(18)
        quiet.sendall(struct.pack(">I", 3) + struct.pack(">QII", 0x49484156454F5054,
                                                        OPT_STARTTLS, 0))
        assert nbdinfo_json(psk_uri(sock, creds))["TLS"] is True
    finally:
        quiet.close()


@pytest.mark.parametrize("args, message", [
    (["--tls=require"], "needs --tls-creds or --tls-psk"),
    (["--tls=maybe", "--tls-psk", "PSK"], "--tls must be off, on or require"),
    (["--tls=off", "--tls-psk", "PSK"], "--tls=off with TLS credentials"),
    (["--tls-psk", "PSK", "--tls-creds", "DIR"], "exclude each other"),
    (["--tls-psk", "BAD"], "expected IDENTITY:HEXKEY"),
    (["--tls-psk", "ODD"], "even number of hex digits"),
    (["--tls-psk", "EMPTY"], "no keys"),
    (["--tls-creds", "NOKEY"], "server-key.pem"),
    (["--tls-psk", "PSK", "--tls-verify-peer"], "needs X.509"),
])
def test_bad_tls_options_fail_clearly(workdir, creds, args, message):
    bad = os.path.join(workdir, "bad.psk")
    write_template(bad, ["# a comment", "alice 0011"])
    odd = os.path.join(workdir, "odd.psk")
    write_template(odd, ["alice:001"])
    empty = os.path.join(workdir, "empty.psk")
    write_template(empty, ["# nothing"])
    for f in (bad, odd, empty):
        os.chmod(f, 0o600)  # (a key file others can read gets a warning line of its own)
    nokey = os.path.join(workdir, "nokey")
    os.makedirs(nokey)
    with open(os.path.join(creds.server_dir, "server-cert.pem"), "rb") as f:
        with open(os.path.join(nokey, "server-cert.pem"), "wb") as o:
            o.write(f.read())
    subst = {"PSK": creds.psk, "BAD": bad, "ODD": odd, "EMPTY": empty,
             "DIR": creds.server_dir, "NOKEY": nokey}
    img = image(workdir)
    p = subprocess.run([KILN_NBD, "-k", os.path.join(workdir, "s.sock"), "-f", "qcow2",
                        *[subst.get(a, a) for a in args], img],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p.stderr
    assert message in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def nbdinfo_list(uri):
    p = run([NBDINFO, "--list", "--json", uri])
    return sorted(e["export-name"] for e in json.loads(p.stdout)["exports"])


def test_tls_identity_keeps_tenants_apart(workdir, servers, creds):
    """Exports kept for one TLS identity are invisible to every other client: alice lists and
    opens hers and the shared one, never bob's (NBD_REP_ERR_UNKNOWN, as for a name never
    used); a plain client (--tls=on) sees only the shared one. Kept across a restart."""
    sock, ctl = os.path.join(workdir, "s.sock"), os.path.join(workdir, "ctl.sock")
    state = os.path.join(workdir, "state.json")
    imgs = {}
    for name, pattern in (("alice-disk", 0x41), ("bob-disk", 0x42), ("shared", 0x53)):
        imgs[name] = create_qcow2(os.path.join(workdir, name + ".qcow2"), SIZE)
        run([QEMU_IO, "-f", "qcow2", "-c", f"write -P {pattern} 0 1M", imgs[name]])
    args = ["--tls=on", "--tls-psk", creds.tenants_psk, "--state-file", state]
    server = servers.kiln(*args, sock=sock, control=ctl)
    for name, ident in (("alice-disk", "alice"), ("bob-disk", "bob"), ("shared", None)):
        extra = {"tls-identity": ident} if ident else {}
        assert control(ctl, "add-export", name=name, path=imgs[name], format="qcow2",
                       **extra) == {"ok": True}

    def check():
        def alice(name=""):
            return f"nbds+unix://alice@/{name}?socket={sock}&tls-psk-file={creds.alice_psk}"

        bob = f"nbds+unix://bob@/?socket={sock}&tls-psk-file={creds.bob_psk}"
        assert nbdinfo_list(alice()) == ["alice-disk", "shared"]
        assert nbdinfo_list(bob) == ["bob-disk", "shared"]
        assert nbdinfo_list(f"nbd+unix:///?socket={sock}") == ["shared"]
        h = nbd.NBD()
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_psk_file(creds.alice_psk)
        h.set_tls_username("alice")
        h.set_export_name("alice-disk")
        h.connect_unix(sock)
        assert h.pread(4096, 0) == b"\x41" * 4096
        h.shutdown()
        # Refused exactly as a name that was never used is.
        p = run([NBDINFO, alice("bob-disk")], check=False)
        never = run([NBDINFO, alice("bob-diks")], check=False)
        assert p.returncode != 0 and never.returncode != 0
        assert p.stderr.replace("bob-disk", "X") == never.stderr.replace("bob-diks", "X")
        p = run([NBDINFO, f"nbd+unix:///alice-disk?socket={sock}"], check=False)
        assert p.returncode != 0

    check()
    listed = {e["name"]: e.get("tls-identity") for e in
              control(ctl, "list-exports")["exports"]}
    assert listed == {"alice-disk": "alice", "bob-disk": "bob", "shared": None}
    server.assert_clean_stop()
    servers.kiln(*args, sock=sock, control=ctl)
    check()


def test_tls_identity_from_client_certificate(workdir, servers, creds):
    sock, ctl = os.path.join(workdir, "s.sock"), os.path.join(workdir, "ctl.sock")
    servers.kiln("--tls-creds", creds.server_dir, "--tls-verify-peer", sock=sock, control=ctl)
    img = image(workdir)
    dn = "CN=kiln-test-client,O=Kiln tests"
    assert control(ctl, "add-export", name="mine", path=img, format="qcow2",
                   **{"tls-identity": dn}) == {"ok": True}
    other = create_qcow2(os.path.join(workdir, "other.qcow2"), SIZE)
    assert control(ctl, "add-export", name="theirs", path=other, format="qcow2",
                   **{"tls-identity": "CN=someone else"}) == {"ok": True}
    assert nbdinfo_list(x509_uri(sock, creds.client_dir)) == ["mine"]
    assert nbdinfo_json(f"nbds+unix:///mine?socket={sock}&tls-certificates="
                        f"{creds.client_dir}")["exports"][0]["export-size"] == SIZE
    p = run([NBDINFO, f"nbds+unix:///theirs?socket={sock}&tls-certificates={creds.client_dir}"],
            check=False)
    assert p.returncode != 0


def test_tls_identity_needs_tls(workdir, servers):
    sock, ctl = os.path.join(workdir, "s.sock"), os.path.join(workdir, "ctl.sock")
    servers.kiln(sock=sock, control=ctl)
    r = control(ctl, "add-export", name="x", path=image(workdir), format="qcow2",
                **{"tls-identity": "alice"})
    assert r["ok"] is False and "needs TLS" in r["error"], r
