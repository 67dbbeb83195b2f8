"""kiln-spawn image-create --url: downloads over HTTP (a server this test runs on 127.0.0.1)
and file://, checksums, the format by content, refused images, and that a failed or
interrupted download stores nothing (no row in image-list, no file in the image store)."""

import hashlib
import http.server
import json
import os
import pathlib
import signal
import subprocess
import threading
import time

import pytest

from kilntest.spawn import KILN_SPAWN, TIMEOUT, make_qcow2, require_tools, run
from kilntest.spawn import tmp_path  # noqa: F401  (fixture)

SLOW_CHUNK = 64 * 1024


class Handler(http.server.BaseHTTPRequestHandler):
    """GET /file/NAME serves a file of the server's directory; the other paths misbehave."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send_body(self, status, body, length=None, headers=()):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        srv = self.server
        if self.path.startswith("/file/"):
            self.send_body(200, (srv.root / self.path[6:]).read_bytes())
        elif self.path == "/missing":
            self.send_body(404, b"no such image\n")
        elif self.path == "/broken":
            self.send_body(500, b"internal error\n")
        elif self.path.startswith("/short/"):
            # Content-Length promises more than is sent, then the connection closes.
            body = (srv.root / self.path[7:]).read_bytes()
            self.send_body(200, body[: len(body) // 2], length=len(body))
            self.close_connection = True
        elif self.path == "/to-file":
            self.send_body(302, b"", headers=[("Location", f"file://{srv.root}/secret")])
        elif self.path == "/loop":
            self.send_body(302, b"", headers=[("Location", "/loop")])
        elif self.path in ("/forever", "/slow"):
            # /forever: no Content-Length, never ends; /slow: paced, for the SIGTERM test.
            self.send_response(200)
            if self.path == "/slow":
                self.send_header("Content-Length", str(1 << 30))
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                while not srv.stopping.is_set():
                    self.wfile.write(b"\x01" * SLOW_CHUNK)
                    if self.path == "/slow":
                        time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            self.send_body(404, b"")


@pytest.fixture
def server(tmp_path):  # noqa: F811
    root = tmp_path / "www"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.root = root
    srv.stopping = threading.Event()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()


class Store:
    def __init__(self, d):
        self.state = d / "state"
        self.state.mkdir()
        self.env = dict(os.environ, KILN_STATE_DIR=str(self.state), KILN_RUN_DIR=str(d / "run"))

    @property
    def images_dir(self):
        return self.state / "spawn" / "images"

    def cmd(self, *args):
        return [KILN_SPAWN, *args]

    def spawn(self, *args, check=True):
        return run(self.cmd(*args), env=self.env, check=check)

    def create(self, *args):
        return json.loads(self.spawn("image-create", *args, "--format", "json").stdout)

    def refused(self, *args, needle):
        p = self.spawn("image-create", *args, check=False)
        assert p.returncode != 0, p.stdout
        assert needle in p.stderr, p.stderr
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert bad not in p.stderr, p.stderr
        self.assert_nothing_stored()
        return p.stderr

    def assert_nothing_stored(self):
        assert json.loads(self.spawn("image-list", "--format", "json").stdout) == []
        left = os.listdir(self.images_dir) if self.images_dir.exists() else []
        assert left == [], left


@pytest.fixture
def store(tmp_path):  # noqa: F811
    return Store(tmp_path)


def digest(path, algo):
    return hashlib.new(algo, pathlib.Path(path).read_bytes()).hexdigest()


def test_http_import_sha256_records_glance_fields(store, server):
    require_tools("qemu-img", "qemu-io")
    src = make_qcow2(str(server.root / "debian.img"), "64M", pattern="0x5a")
    img = store.create("debian", "--url", f"{server.url}/file/debian.img", "--checksum",
                       f"sha256:{digest(src, 'sha256').upper()}", "--property",
                       "os_distro=debian", "--property", "hw_disk_bus=virtio", "--min-disk",
                       "2", "--min-ram", "512")
    show = json.loads(store.spawn("image-show", "debian", "--format", "json").stdout)
    assert show == img
    assert show["disk_format"] == "qcow2"
    assert show["size"] == os.path.getsize(src)
    assert show["virtual_size"] == 64 << 20
    assert show["checksum"] == digest(src, "md5")
    assert show["os_hash_algo"] == "sha512"
    assert show["os_hash_value"] == digest(src, "sha512")
    assert show["min_disk"] == 2 and show["min_ram"] == 512
    assert show["os_distro"] == "debian" and show["hw_disk_bus"] == "virtio"
    # The table has the same rows.
    table = store.spawn("image-show", "debian").stdout
    for field in ("checksum", "os_hash_algo", "os_hash_value", "min_disk", "os_distro"):
        assert f" {field} " in table, table
    # The stored bytes are the served bytes.
    stored = store.images_dir / img["id"]
    assert stored.read_bytes() == pathlib.Path(src).read_bytes()
    assert os.listdir(store.images_dir) == [img["id"]]


def test_file_url_import_md5(store, server):
    src = server.root / "disk.raw"
    src.write_bytes(os.urandom(1 << 20))
    img = store.create("rawdisk", "--url", f"file://{src}", "--checksum",
                       f"md5:{digest(src, 'md5')}")
    assert img["disk_format"] == "raw" and img["size"] == 1 << 20
    assert img["virtual_size"] == 1 << 20
    assert img["checksum"] == digest(src, "md5")
    # A local FILE (no --url) is recorded with the same fields.
    plain = store.create("plain", str(src))
    assert plain["checksum"] == img["checksum"]
    assert plain["os_hash_value"] == digest(src, "sha512")


def test_raw_named_qcow2_is_stored_as_raw(store, server):
    (server.root / "disk.qcow2").write_bytes(b"not a qcow2 header" + bytes(65536))
    img = store.create("named", "--url", f"{server.url}/file/disk.qcow2")
    assert img["disk_format"] == "raw"
    assert img["virtual_size"] == img["size"] == 65536 + 18


def test_checksum_mismatch(store, server):
    (server.root / "a.raw").write_bytes(b"a" * 4096)
    bad = "0" * 64
    err = store.refused("img", "--url", f"{server.url}/file/a.raw", "--checksum",
                        f"sha256:{bad}", needle="checksum mismatch")
    assert bad in err and digest(server.root / "a.raw", "sha256") in err
    store.refused("img", "--url", f"{server.url}/file/a.raw", "--checksum", "md5:" + "1" * 32,
                  needle="checksum mismatch")
    store.refused("img", "--url", f"{server.url}/file/a.raw", "--checksum", "sha1:abc",
                  needle="must be sha256 or md5")


def test_truncated_download(store, server):
    (server.root / "b.raw").write_bytes(os.urandom(256 * 1024))
    store.refused("img", "--url", f"{server.url}/short/b.raw", needle="truncated")


@pytest.mark.parametrize("path,status", [("/missing", 404), ("/broken", 500)])
def test_http_error(store, server, path, status):
    store.refused("img", "--url", server.url + path, needle=f"HTTP {status}")


def test_qcow2_with_backing_file(store, server):
    require_tools("qemu-img")
    make_qcow2(str(server.root / "base.qcow2"), "16M")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(server.root / "base.qcow2"), "-F",
         "qcow2", str(server.root / "top.qcow2")])
    store.refused("top", "--url", f"{server.url}/file/top.qcow2", needle="has a backing file")


def test_qcow2_with_external_data_file(store, server):
    require_tools("qemu-img")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
         f"data_file={server.root / 'data.raw'}", str(server.root / "ext.qcow2"), "16M"])
    store.refused("ext", "--url", f"{server.url}/file/ext.qcow2",
                  needle="external data files are not supported")


def test_what_a_url_may_reach(store, server):
    (server.root / "secret").write_bytes(b"root:x:0:0\n")
    store.refused("img", "--url", "ftp://127.0.0.1/x.img", needle="only file://, http:// and")
    store.refused("img", "--url", "gopher://127.0.0.1/x", needle="only file://, http:// and")
    store.refused("img", "--url", f"{server.url}/to-file", needle="scheme that is not accepted")
    store.refused("img", "--url", f"{server.url}/loop", needle="redirects")
    store.refused("img", "--url", f"{server.url}/forever", "--max-size", "1M",
                  needle="larger than the limit of 1048576 bytes")
    store.refused("img", "--url", "file:///dev/zero", "--max-size", "1M",
                  needle="larger than the limit of 1048576 bytes")
    store.refused("img", "--url", f"file://{server.root}/nope", needle="cannot download")
    store.refused("img", "--url", f"{server.url}/file/secret", "--property", "size=1",
                  needle="property 'size' is reserved")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_download_leaves_nothing(store, server, sig):
    p = subprocess.Popen(store.cmd("image-create", "big", "--url", f"{server.url}/slow"),
                         env=store.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Mid-transfer: the temporary file exists and has bytes in it.
        deadline = time.monotonic() + TIMEOUT
        while True:
            tmp = [f for f in (os.listdir(store.images_dir) if store.images_dir.exists() else [])
                   if f.startswith(".tmp-")]
            if tmp and os.path.getsize(store.images_dir / tmp[0]) > 0:
                break
            assert p.poll() is None, p.communicate()
            assert time.monotonic() < deadline, "the download never started"
            time.sleep(0.05)
        p.send_signal(sig)
        out, err = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode != 0, out
    assert "interrupted" in err, err
    assert "Sanitizer" not in err, err
    store.assert_nothing_stored()
