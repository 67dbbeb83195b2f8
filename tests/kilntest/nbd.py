"""Helpers for kiln-nbd's integration tests: servers started and stopped by PID (kiln-nbd,
qemu-nbd), readiness read from the kernel's socket tables (a probe connection would count as
a client), a small raw-socket NBD client for the protocol's corners, the control socket, and
the image set shared by the differential tests."""

import contextlib
import errno as errno_mod
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

from kilntest import (MiB, SANITIZED, free_tcp_port, scaled, sha256,  # noqa: F401  (re-exported)
                      tcp_listening, unix_listening)
from kilntest import run as _run
from kilntest.images import create_qcow2, qemu_io

KILN_NBD = os.environ.get("KILN_NBD") or shutil.which("kiln-nbd") or "kiln-nbd"
QEMU_NBD = shutil.which("qemu-nbd") or "qemu-nbd"
NBDINFO = shutil.which("nbdinfo") or "nbdinfo"
NBDCOPY = shutil.which("nbdcopy") or "nbdcopy"
FIO = shutil.which("fio") or "fio"

# Sanitized servers start and answer several times slower.
TIMEOUT = 60 if SANITIZED else 20


# ---------------------------------------------------------------------------------------------
# Processes

class Process:
    """A server we started: waited for on its sockets, stopped by its PID, its log kept."""

    def __init__(self, name, args, log_path, unix=(), tcp=(), preexec=None):
        self.name = name
        self.args = [str(a) for a in args]
        self.log_path = log_path
        self.unix = list(unix)
        self.tcp = list(tcp)
        self.preexec = preexec
        self.proc = None
        self.returncode = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=self.preexec)
        self.wait_ready()
        return self

    @property
    def pid(self):
        return self.proc.pid

    def wait_ready(self):
        deadline = time.monotonic() + TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} before "
                                     f"listening: {self.log()}")
            if all(unix_listening(p) for p in self.unix) and all(tcp_listening(p) for p in self.tcp):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not listening after {TIMEOUT}s: {self.log()}")
            time.sleep(0.01)

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def wait(self, timeout=None):
        try:
            self.returncode = self.proc.wait(timeout=timeout or TIMEOUT)
        finally:
            self._log.close()
        return self.returncode

    def stop(self, sig=signal.SIGTERM):
        """Stops the server with `sig` and returns its exit status (negative: killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.wait()
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.wait()
            raise AssertionError(f"{self.name} did not stop within {TIMEOUT}s of {sig!r}: "
                                 f"{self.log()}")

    def assert_clean_stop(self):
        """SIGTERM: exit status 0, and nothing from the sanitizers or a crash in the log."""
        rc = self.stop(signal.SIGTERM)
        log = self.log()
        assert rc == 0, f"{self.name} exited with {rc} after SIGTERM: {log}"
        assert_no_sanitizer_report(log, self.name)


def assert_no_sanitizer_report(log, what):
    for needle in ("Sanitizer", "runtime error:", "LeakSanitizer", "AddressSanitizer"):
        assert needle not in log, f"{what}: sanitizer report:\n{log}"


class Servers:
    """Every process a test starts, stopped (SIGKILL if need be) when the test ends."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []
        self.count = 0

    def _log(self, name):
        self.count += 1
        return os.path.join(self.workdir, f"{name}-{self.count}.log")

    def kiln(self, *args, sock=None, port=None, control=None, bind="127.0.0.1", preexec=None,
             wait_for=()):
        """kiln-nbd with `args`, on a Unix socket and/or a TCP port (bound to `bind`, or to
        kiln-nbd's default if None); ready once every socket in `wait_for` listens too."""
        cmd = [KILN_NBD]
        unix, tcp = [], []
        if sock:
            cmd += ["-k", sock]
            unix.append(sock)
        if port:
            cmd += ["-p", port] + (["-b", bind] if bind else [])
            tcp.append(port)
        if control:
            cmd += ["--control", control]
            unix.append(control)
        assert sock or port, "tests listen on loopback or Unix sockets only"
        unix += list(wait_for)
        p = Process("kiln-nbd", cmd + list(args), self._log("kiln-nbd"), unix, tcp, preexec)
        self.procs.append(p)
        return p.start()

    def qemu_nbd(self, image, sock, fmt, name="", extra=(), shared="8", cache="writeback"):
        cmd = [QEMU_NBD, "-k", sock, "-x", name, "-f", fmt, "-t", "-e", shared, "-A",
               f"--cache={cache}", *extra, image]
        p = Process("qemu-nbd", cmd, self._log("qemu-nbd"), [sock])
        self.procs.append(p)
        return p.start()

    def close(self):
        for p in self.procs:
            if p.alive():
                with contextlib.suppress(Exception):
                    p.stop(signal.SIGKILL)


@pytest.fixture
def servers(workdir):
    s = Servers(workdir)
    try:
        yield s
    finally:
        s.close()


def unix_uri(sock, name=""):
    return f"nbd+unix:///{name}?socket={sock}"


def tcp_uri(port, name=""):
    return f"nbd://127.0.0.1:{port}/{name}"


def run(args, check=True, timeout=None, input=None):
    return _run(args, check=check, input=input, timeout=timeout or 10 * TIMEOUT)


def proc_status_kib(pid, field):
    """A memory figure of a process from /proc/PID/status (VmRSS, VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def cpu_seconds(pid):
    """User plus system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def as_user(args, user="nobody", group="nogroup"):
    """`args` run as another user and group with no supplementary groups (util-linux
    setpriv): nothing on the host changes."""
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", *args]


# ---------------------------------------------------------------------------------------------
# The control socket

class Control:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.buf = b""

    def raw(self, line):
        self.sock.sendall(line if isinstance(line, bytes) else line.encode())
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("control socket closed")
            self.buf += chunk
        reply, self.buf = self.buf.split(b"\n", 1)
        return json.loads(reply)

    def __call__(self, cmd, **kw):
        return self.raw(json.dumps({"cmd": cmd, **kw}) + "\n")

    def close(self):
        self.sock.close()


def control(sock_path, cmd, **kw):
    c = Control(sock_path)
    try:
        return c(cmd, **kw)
    finally:
        c.close()


# ---------------------------------------------------------------------------------------------
# A raw NBD client (the upstream protocol document's wire format), for the corners that real
# clients never reach.

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED_REPLY, OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT = 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP, REP_ERR_POLICY, REP_ERR_INVALID = 0x80000001, 0x80000002, 0x80000003
REP_ERR_UNKNOWN, REP_ERR_TOO_BIG = 0x80000006, 0x80000009
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

TF_HAS_FLAGS, TF_READ_ONLY, TF_FLUSH, TF_FUA, TF_ROTATIONAL = 1, 2, 4, 8, 16
TF_TRIM, TF_WRITE_ZEROES, TF_DF, TF_MULTI_CONN, TF_CACHE, TF_FAST_ZERO = 32, 64, 128, 256, 1024, 2048

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE = 0, 1, 2, 3, 4, 5
CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = 6, 7
CMD_FLAG_FUA, CMD_FLAG_NO_HOLE, CMD_FLAG_DF, CMD_FLAG_REQ_ONE, CMD_FLAG_FAST_ZERO = 1, 2, 4, 8, 16

REPLY_FLAG_DONE = 1
REPLY_NONE, REPLY_OFFSET_DATA, REPLY_OFFSET_HOLE, REPLY_BLOCK_STATUS = 0, 1, 2, 5
REPLY_ERROR, REPLY_ERROR_OFFSET = 0x8001, 0x8002

EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP = 1, 5, 12, 22, 28, 75, 95


def connect_retrying(sock, addr):
    """connect(); a Unix socket whose accept backlog is full answers EAGAIN at once to a
    socket with a timeout (a blocking one would wait): wait and retry, as a blocking client."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return sock.connect(addr)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


class Closed(Exception):
    """The server closed the connection."""


class Reply:
    def __init__(self, handle, error=0, data=b"", chunks=(), structured=False):
        self.handle = handle
        self.error = error
        self.data = data
        self.chunks = list(chunks)
        self.structured = structured

    def __repr__(self):
        return f"Reply(handle={self.handle}, error={self.error}, {len(self.data)} bytes)"


def assemble_read(chunks, offset, length):
    """The bytes of a structured READ reply of `length` bytes at `offset`, from its data and
    hole chunks, which must lie inside the request and cover it."""
    buf = bytearray(length)
    covered = 0
    for rtype, body in chunks:
        if rtype == REPLY_OFFSET_DATA:
            off = struct.unpack(">Q", body[:8])[0] - offset
            assert 0 <= off and off + len(body) - 8 <= length, "data chunk out of range"
            buf[off:off + len(body) - 8] = body[8:]
            covered += len(body) - 8
        elif rtype == REPLY_OFFSET_HOLE:
            off, n = struct.unpack(">QI", body)
            assert offset <= off and off + n <= offset + length, "hole out of range"
            covered += n
    assert covered == length, f"read reply covers {covered} of {length} bytes"
    return buf


class RawClient:
    """One NBD connection driven by hand. Methods raise Closed when the server hangs up."""

    def __init__(self, sock_path=None, port=None, timeout=None):
        if sock_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            addr = sock_path
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            addr = ("127.0.0.1", port)
        self.sock.settimeout(timeout or TIMEOUT)
        connect_retrying(self.sock, addr)
        self.handle = 0
        self.pending = {}  # handle -> (type, length)
        self.structured = False
        self.size = None
        self.tflags = None

    # -- bytes
    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise Closed(str(e)) from e

    def recv_exact(self, n):
        """Exactly n bytes, as a bytearray. Received into one buffer: a 32 MiB reply built
        from 1 MiB chunks and copied into bytes at the end cost a test seconds."""
        out = bytearray(n)
        view = memoryview(out)
        got = 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:])
            except ConnectionResetError as e:
                raise Closed(str(e)) from e
            if not k:
                raise Closed(f"connection closed after {got} of {n} bytes")
            got += k
        return out

    def closed_by_server(self, timeout=None):
        """True if the server closes the connection (EOF or reset) within the timeout, data
        received before that ignored."""
        self.sock.settimeout(timeout or TIMEOUT)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- handshake
    def greeting(self):
        magic, opt, flags = struct.unpack(">QQH", self.recv_exact(18))
        assert magic == NBDMAGIC and opt == IHAVEOPT, (hex(magic), hex(opt))
        self.server_flags = flags
        return flags

    def start(self, no_zeroes=True):
        flags = self.greeting()
        assert flags & FLAG_FIXED_NEWSTYLE
        cf = FLAG_FIXED_NEWSTYLE | (FLAG_NO_ZEROES if no_zeroes else 0)
        self.send(struct.pack(">I", cf))
        self.no_zeroes = no_zeroes
        return flags

    def send_option(self, opt, data=b"", length=None):
        self.send(struct.pack(">QII", IHAVEOPT, opt, len(data) if length is None else length)
                  + data)

    def option_reply(self):
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        assert magic == REPLY_MAGIC, hex(magic)
        return opt, rtype, self.recv_exact(length)

    def option(self, opt, data=b""):
        """Sends an option and collects its replies up to the final one (ACK or an error)."""
        self.send_option(opt, data)
        replies = []
        while True:
            ropt, rtype, rdata = self.option_reply()
            assert ropt == opt, (ropt, opt)
            replies.append((rtype, rdata))
            if rtype == REP_ACK or rtype & 0x80000000:
                return replies

    def structured_reply(self):
        replies = self.option(OPT_STRUCTURED_REPLY)
        assert replies == [(REP_ACK, b"")], replies
        self.structured = True

    @staticmethod
    def meta_data(name, queries):
        d = struct.pack(">I", len(name)) + name.encode() + struct.pack(">I", len(queries))
        for q in queries:
            d += struct.pack(">I", len(q)) + q.encode()
        return d

    def set_meta_context(self, name, queries):
        replies = self.option(OPT_SET_META_CONTEXT, self.meta_data(name, queries))
        assert replies[-1][0] == REP_ACK, replies
        return {rdata[4:].decode(): struct.unpack(">I", rdata[:4])[0]
                for rtype, rdata in replies if rtype == REP_META_CONTEXT}

    @staticmethod
    def info_data(name, infos=()):
        name = name if isinstance(name, bytes) else name.encode()
        return (struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos))
                + b"".join(struct.pack(">H", i) for i in infos))

    def go(self, name="", infos=(INFO_BLOCK_SIZE,), opt=OPT_GO):
        """NBD_OPT_GO (or INFO): returns the replies; on success records size and flags."""
        replies = self.option(opt, self.info_data(name, infos))
        for rtype, rdata in replies:
            if rtype == REP_INFO and struct.unpack(">H", rdata[:2])[0] == INFO_EXPORT:
                self.size, self.tflags = struct.unpack(">QH", rdata[2:12])
        return replies

    def export_name(self, name):
        """Old-style selection: NBD_OPT_EXPORT_NAME, answered without an option reply."""
        name = name if isinstance(name, bytes) else name.encode()
        self.send_option(OPT_EXPORT_NAME, name)
        self.size, self.tflags = struct.unpack(">QH", self.recv_exact(10))
        if not self.no_zeroes:
            assert self.recv_exact(124) == bytes(124)
        return self.size, self.tflags

    def connect_export(self, name="", structured=False, meta=None):
        self.start()
        if structured:
            self.structured_reply()
        if meta:
            self.contexts = self.set_meta_context(name, meta)
        replies = self.go(name)
        assert replies[-1][0] == REP_ACK, f"GO {name!r} refused: {replies}"
        return self

    # -- transmission
    def request(self, cmd, offset=0, length=0, flags=0, payload=b"", send_payload=True):
        self.handle += 1
        h = self.handle
        hdr = struct.pack(">IHHQQI", REQUEST_MAGIC, flags, cmd, h, offset, length)
        self.send(hdr + (payload if send_payload else b""))
        self.pending[h] = (cmd, offset, length)
        return h

    def simple_reply_body(self):
        """The rest of a simple reply whose magic has been read: error, handle and the data of
        a successful READ, for a request in flight."""
        err, h = struct.unpack(">IQ", self.recv_exact(12))
        assert h in self.pending, f"reply to unknown handle {h}"
        cmd, _, length = self.pending.pop(h)
        data = self.recv_exact(length) if cmd == CMD_READ and err == 0 else b""
        return Reply(h, err, data)

    def reply(self):
        """The next reply (all chunks of a structured one)."""
        magic = struct.unpack(">I", self.recv_exact(4))[0]
        if magic == SIMPLE_REPLY_MAGIC:
            return self.simple_reply_body()
        assert magic == STRUCTURED_REPLY_MAGIC, f"bad reply magic {magic:#x}"
        assert self.structured, "structured reply chunk without negotiation"
        chunks, error = [], 0
        while True:
            if chunks:
                assert struct.unpack(">I", self.recv_exact(4))[0] == STRUCTURED_REPLY_MAGIC
            flags, rtype, h, length = struct.unpack(">HHQI", self.recv_exact(16))
            assert h in self.pending, f"chunk for unknown handle {h}"
            body = self.recv_exact(length)
            chunks.append((rtype, body))
            if rtype & 0x8000:
                error = struct.unpack(">I", body[:4])[0]
            if flags & REPLY_FLAG_DONE:
                break
            # Chunks of one reply may interleave with other replies in principle; Kiln and
            # this client keep them together.
        cmd, offset, length = self.pending.pop(h)
        data = assemble_read(chunks, offset, length) if cmd == CMD_READ and not error else b""
        return Reply(h, error, data, chunks, structured=True)

    def pread(self, offset, length, flags=0):
        h = self.request(CMD_READ, offset, length, flags)
        r = self.reply()
        assert r.handle == h
        return r

    def pwrite(self, offset, data, flags=0):
        h = self.request(CMD_WRITE, offset, len(data), flags, data)
        r = self.reply()
        assert r.handle == h
        return r.error

    def simple(self, cmd, offset=0, length=0, flags=0):
        h = self.request(cmd, offset, length, flags)
        r = self.reply()
        assert r.handle == h
        return r.error

    def flush(self):
        return self.simple(CMD_FLUSH)

    def disc(self):
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))


def errno_name(e):
    return errno_mod.errorcode.get(e, str(e))


# ---------------------------------------------------------------------------------------------
# The image set of the differential tests: a qcow2 overlay with data over a qcow2 base with
# data, and a raw image, each built twice (one copy per server).

IMAGE_SIZE = scaled(64 * MiB, 16 * MiB) // MiB * MiB


def build_overlay(d, size=IMAGE_SIZE):
    """base.qcow2 (data in several places) and overlay.qcow2 over it (its own data, zeroes
    over base data). Returns (overlay, base)."""
    os.makedirs(d, exist_ok=True)
    base = create_qcow2(os.path.join(d, "base.qcow2"), size)
    qemu_io(base, "write -P 0x11 0 1M", f"write -P 0x22 {size // 4} 3M",
            f"write -P 0x23 {size // 2 + 12345} 100000", f"write -P 0x24 {size - MiB} 1M")
    ov = create_qcow2(os.path.join(d, "overlay.qcow2"), size, backing=base, backing_fmt="qcow2")
    qemu_io(ov, "write -P 0x33 512k 1M", f"write -z {size // 4 + MiB} 64k",
            f"write -P 0x34 {size // 2} 70000", f"write -P 0x35 {size // 8 + 999} 5000")
    return ov, base


def build_raw(d, size=IMAGE_SIZE):
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "disk.raw")
    with open(path, "wb") as f:
        f.truncate(size)
    qemu_io(path, "write -P 0x41 0 1M", f"write -P 0x42 {size // 3} 2M",
            f"write -P 0x43 {size - 4096} 4096", fmt="raw")
    return path


def build_image(kind, d):
    """(top image, format, base or None) for kind 'overlay' or 'raw' in directory d."""
    if kind == "overlay":
        ov, base = build_overlay(d)
        return ov, "qcow2", base
    return build_raw(d), "raw", None


def copy_image_set(src_dir, dst_dir):
    shutil.copytree(src_dir, dst_dir)

