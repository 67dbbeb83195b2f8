"""Building blocks of the hostile-client suite (tests/nbd/test_hostile.py): the server under test
(kiln-nbd or qemu-nbd on one pattern image), its memory and CPU read from /proc, a
well-behaved "victim" client that checks every byte it reads and records its throughput, and
the tools of the attackers: sockets stalled at a chosen point of the handshake, requests sent
without reading their replies, and a server stalled in the middle of writing a given
option's replies (the kernel's socket buffer full because the client does not read)."""

import fcntl
import os
import socket
import struct
import termios
import threading
import time

from kilntest import MiB, scaled
from kilntest.nbd import (CMD_READ, INFO_BLOCK_SIZE, INFO_DESCRIPTION, INFO_NAME, KILN_NBD,
                          OPT_INFO, REPLY_FLAG_DONE, REPLY_MAGIC, QEMU_NBD, SIMPLE_REPLY_MAGIC,
                          STRUCTURED_REPLY_MAGIC, TIMEOUT, Closed, Process, RawClient, Reply,
                          assemble_read, cpu_seconds, run)  # noqa: F401  (cpu_seconds re-exported)

MAX_BLOCK = 32 * MiB  # the largest request both servers take (qemu-nbd's NBD_MAX_BUFFER_SIZE)
IMAGE_SIZE = 64 * MiB  # room for max-block reads that stay inside the export
VICTIM_REGION = 48 * MiB  # the victim writes only here (1 MiB); attackers never write here
ATTACK_REGION = 56 * MiB  # where a malformed write that a server accepts may land


# What a test measured, printed at its end (see test_nbd_hostile.measurements).
NOTES = []


def note(text):
    NOTES.append(text)
    print(text)  # also in pytest's report of a failing test


# ---------------------------------------------------------------------------------------------
# The image: an 8-byte block number in every 4 KiB block of the data ranges, holes between
# them (so that structured replies to large reads carry both data and hole chunks).

def data_ranges(size):
    """Data every other MiB of the first 40 MiB, then data up to the end."""
    ranges = [(off, MiB) for off in range(0, 40 * MiB, 2 * MiB)]
    ranges.append((40 * MiB, size - 40 * MiB))
    return ranges


_PATTERNS = {}  # size -> the image's bytes


def build_pattern_image(path, size=IMAGE_SIZE):
    """Writes the image and returns its content (a bytearray model of the disk). The pattern
    is made once per size: making it cost a third of a second, and nbd.hostile makes 54."""
    pattern = _PATTERNS.get(size)
    if pattern is None:
        made = bytearray(size)
        for off, length in data_ranges(size):
            made[off:off + length] = b"".join(struct.pack(">Q", (off + i) // 4096) * 512
                                              for i in range(0, length, 4096))
        pattern = _PATTERNS[size] = bytes(made)
    view = memoryview(pattern)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, length in data_ranges(size):
            f.seek(off)
            f.write(view[off:off + length])
    return bytearray(pattern)


# ---------------------------------------------------------------------------------------------
# The process: memory, CPU and descriptors from /proc

def proc_status(pid):
    """VmRSS, VmHWM (and the other Vm* lines) of `pid` in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Vm") and value.strip().endswith("kB"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak_rss(pid):
    """Resets VmHWM to the current RSS (proc(5): writing 5 to clear_refs), so that the peak
    read later is the attack's. Our own child: no privilege needed beyond ptrace access."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssWatch:
    """Samples a process's VmRSS in a thread. Past `abort_above` bytes it calls `on_abort`
    once (the attack is stopped there: an unbounded server must not take the machine's
    memory with it)."""

    def __init__(self, pid, abort_above=None, on_abort=None, period=0.02):
        self.pid, self.abort_above, self.on_abort, self.period = pid, abort_above, on_abort, period
        self.peak = 0
        self.aborted = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                rss = proc_status(self.pid)["VmRSS"]
            except (FileNotFoundError, ProcessLookupError, KeyError):
                return  # the process is gone; the test sees that
            self.peak = max(self.peak, rss)
            if self.abort_above and rss > self.abort_above and not self.aborted:
                self.aborted = True
                if self.on_abort:
                    self.on_abort()
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def wait_for(predicate, timeout=None, what="condition"):
    """Polls `predicate` until it is true; fails after `timeout` seconds."""
    deadline = time.monotonic() + (timeout or TIMEOUT)
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout or TIMEOUT}s waiting for {what}")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# The server under test

class Target:
    """A server (kiln-nbd or qemu-nbd) serving the pattern image as export `name` on `sock`."""

    def __init__(self, kind, proc, sock, model, image, name="", ctl=None):
        self.kind, self.proc, self.sock, self.model = kind, proc, sock, model
        self.image, self.name, self.ctl = image, name, ctl

    @property
    def pid(self):
        return self.proc.pid

    @property
    def is_kiln(self):
        return self.kind == "kiln-nbd"

    def client(self, **kw):
        return RawClient(self.sock, **kw)

    def status(self):
        return proc_status(self.pid)

    def assert_alive(self):
        if self.proc.alive():
            return
        log = self.proc.log()
        # A sanitizer's report, from its first line; else the end of the log.
        at = max(log.find("ERROR: AddressSanitizer"), log.find("runtime error:"))
        excerpt = log[log.rfind("\n", 0, at) + 1:][:8000] if at >= 0 else log[-3000:]
        raise AssertionError(f"{self.kind} died (exit status {self.proc.proc.poll()}):\n{excerpt}")

    def died_on(self, error):
        """Called on a failure that may be the server going down (a connection reset, a
        refused control request): waits a little for it to finish dying, and if it did,
        fails with its log (the sanitizer's report) instead."""
        deadline = time.monotonic() + 10
        while self.proc.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assert_alive()
        raise error

    def assert_serves(self, offsets=(0, 40 * MiB + 4096 * 7, IMAGE_SIZE - 4096)):
        """A new client gets through the handshake and reads the right bytes."""
        self.assert_alive()
        with self.client() as c:
            c.connect_export(self.name, structured=True)
            for off in offsets:
                r = c.pread(off, 4096)
                assert r.error == 0 and r.data == bytes(self.model[off:off + 4096]), (off, r)


def kiln_supports(option):
    """True if kiln-nbd's --help lists `option` (an option another change may add)."""
    return option in run([KILN_NBD, "--help"]).stdout


def start_process(servers, name, cmd, unix=()):
    """A server started from an arbitrary command line (e.g. under prlimit), owned by the
    `servers` fixture like the ones it starts itself."""
    p = Process(name, cmd, servers._log(name), unix=unix)
    servers.procs.append(p)
    return p.start()


def start_target(kind, servers, workdir, shared=None, kiln_args=(), prefix=(), control=False):
    """kiln-nbd or qemu-nbd serving a fresh pattern image as the default export.
    `shared`: the -e value (default: unlimited for kiln-nbd, 64 for qemu-nbd, which has no
    "unlimited"); `prefix`: a command to run the server under (prlimit)."""
    img = os.path.join(workdir, "disk.raw")
    model = build_pattern_image(img)
    sock = os.path.join(workdir, "nbd.sock")
    ctl = os.path.join(workdir, "ctl.sock") if control else None
    if kind == "kiln-nbd":
        cmd = [*prefix, KILN_NBD, "-k", sock, "-f", "raw", "-t",
               "-e", str(0 if shared is None else shared), *kiln_args]
        unix = [sock]
        if ctl:
            cmd += ["--control", ctl]
            unix.append(ctl)
        proc = start_process(servers, "kiln-nbd", cmd + [img], unix)
    else:
        assert not control and not kiln_args
        cmd = [*prefix, QEMU_NBD, "-k", sock, "-f", "raw", "-t",
               "-e", str(64 if shared is None else shared), "--cache=writeback", img]
        proc = start_process(servers, "qemu-nbd", cmd, [sock])
    t = Target(kind, proc, sock, model, img, ctl=ctl)
    servers.__dict__.setdefault("targets", []).append(t)
    return t


# ---------------------------------------------------------------------------------------------
# The victim: a well-behaved client that must keep being served, correctly, during attacks

class Victim:
    """One connection doing rounds of (write 64 KiB to its own region, read it back, read
    256 KiB of the pattern) and checking every byte. Each `run` is a named phase whose
    throughput is recorded; a request that is not answered within the client's timeout
    (generous: kilntest.nbd.TIMEOUT) fails the test."""

    WRITE = 64 * 1024
    READ = 256 * 1024

    def __init__(self, target):
        self.model = target.model
        self.c = target.client()
        self.c.connect_export(target.name, structured=True)
        self.i = 0
        self.phases = []  # (name, rounds, bytes, seconds)

    def round(self):
        self.i += 1
        i = self.i
        off = VICTIM_REGION + (i % 16) * self.WRITE
        data = bytes([i % 251 + 1]) * self.WRITE
        err = self.c.pwrite(off, data)
        assert err == 0, f"victim write at {off} failed: error {err}"
        self.model[off:off + self.WRITE] = data
        r = self.c.pread(off, self.WRITE)
        assert r.error == 0 and r.data == data, f"victim read back at {off}: {r}"
        roff = (i * 7919 * 4096) % (40 * MiB)
        r = self.c.pread(roff, self.READ)
        assert r.error == 0, f"victim read at {roff}: error {r.error}"
        assert r.data == bytes(self.model[roff:roff + self.READ]), f"victim: wrong data at {roff}"
        return 2 * self.WRITE + self.READ

    def run(self, rounds, phase):
        t0 = time.monotonic()
        moved = 0
        for _ in range(rounds):
            moved += self.round()
        self.phases.append((phase, rounds, moved, time.monotonic() - t0))

    def report(self, title):
        """Notes the throughput of each phase."""
        note(f"{title}: victim throughput")
        for name, rounds, moved, secs in self.phases:
            rate = moved / MiB / secs if secs > 0 else float("inf")
            note(f"  {name:<28} {rounds:4d} rounds {moved / MiB:8.1f} MiB {secs:7.3f} s "
                 f"{rate:9.1f} MiB/s")

    def close(self):
        self.c.close()


VICTIM_ROUNDS = scaled(12, 6)


# ---------------------------------------------------------------------------------------------
# Attackers

class SocketClient(RawClient):
    """A RawClient on a socket the caller connected itself."""

    def __init__(self, sock):  # noqa: super().__init__ would connect
        self.sock, self.handle, self.pending = sock, 0, {}
        self.structured, self.size, self.tflags = False, None, None


def attempt(t, wait=1.0):
    """A client beyond a connection limit tries to connect and select the export. Returns
    (client or None, outcome): 'served', 'refused <reply>' (an error reply to NBD_OPT_GO),
    'closed', 'not accepted' (no greeting within `wait` s: left in the listen backlog) or
    'backlog full' (connect() itself refused)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(wait)
    try:
        s.connect(t.sock)
    except (BlockingIOError, ConnectionRefusedError, socket.timeout):
        s.close()
        return None, "backlog full"
    c = SocketClient(s)
    try:
        c.greeting()
    except socket.timeout:
        return c, "not accepted"
    except Closed:
        return c, "closed"
    s.settimeout(TIMEOUT)
    try:
        c.send(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
        replies = c.go(t.name)
    except Closed:
        return c, "closed"
    if replies[-1][0] == 1:  # NBD_REP_ACK
        return c, "served"
    return c, f"refused {replies[-1][0]:#x} {replies[-1][1][:60]!r}"


def stalled_handshake(path, kind):
    """A connection that stops at a point of the handshake and then sends nothing more.
    kind: 'silent' (nothing sent), 'flags' (the client flags only), 'option-magic' (flags and
    the first 8 bytes of an option header), 'half-header' (flags and 10 bytes of the
    16-byte option header), 'short-data' (an NBD_OPT_GO header promising 1000 bytes of which
    10 are sent). Returns the RawClient."""
    c = RawClient(path)
    if kind == "silent":
        return c
    c.greeting()
    flags = struct.pack(">I", 3)  # FIXED_NEWSTYLE | NO_ZEROES
    hdr = struct.pack(">QII", 0x49484156454F5054, 7, 1000)
    tail = {"flags": b"", "option-magic": hdr[:8], "half-header": hdr[:10],
            "short-data": hdr + b"\0" * 10}[kind]
    c.send(flags + tail)
    return c


def queued_bytes(sock):
    """Bytes received by `sock` and not read yet (SIOCINQ)."""
    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


def wait_until_server_stalls(sock, settle=0.3):
    """Waits until no more bytes arrive on `sock` for `settle` seconds, twice in a row: the
    server has filled the socket's buffer and is blocked writing to it (the callers send
    more requests than the buffer can hold the replies of). Returns the bytes queued."""
    deadline = time.monotonic() + TIMEOUT
    last, since, confirmed = -1, time.monotonic(), 0
    while True:
        n = queued_bytes(sock)
        now = time.monotonic()
        if n != last:
            last, since, confirmed = n, now, 0
        elif now - since >= settle and n > 0:
            confirmed += 1
            if confirmed == 2:
                return n
            since = now
        if now > deadline:
            raise AssertionError(f"the server's replies never stopped arriving ({n} bytes)")
        time.sleep(0.02)


def peek(sock, n):
    out = b""
    while len(out) < n:
        out = sock.recv(n, socket.MSG_PEEK)
    return out


def parse_option_replies(data):
    """Splits option replies: returns ([(option, type, payload)...] complete, bytes left)."""
    replies, pos = [], 0
    while len(data) - pos >= 20:
        magic, opt, rtype, length = struct.unpack(">QIII", data[pos:pos + 20])
        assert magic == REPLY_MAGIC, f"bad option reply magic {magic:#x} at byte {pos}"
        if len(data) - pos - 20 < length:
            break
        replies.append((opt, rtype, data[pos + 20:pos + 20 + length]))
        pos += 20 + length
    return replies, len(data) - pos


def final_replies(replies):
    """How many options the replies complete (an ACK or an error ends an option)."""
    return sum(1 for _, rtype, _ in replies if rtype == 1 or rtype & 0x80000000)


def info_option(name):
    return OPT_INFO, RawClient.info_data(name, (INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE))


def send_options(c, options):
    c.send(b"".join(struct.pack(">QII", 0x49484156454F5054, opt, len(data)) + data
                    for opt, data in options))


# An option no server knows: answered with one short error reply, written in one piece. A
# stream of them fills the socket buffer in small steps, so that the server blocks at the
# very first write of whatever option comes next.
FILLER = (0x4C4C4946, b"")


def stall_count(path, before=(), count=3000):
    """How many FILLER options a server answers in full before it blocks writing to a client
    that reads nothing. Measured on a throw-away connection; the same bytes block at the same
    place on the next connection (the kernel accounts a Unix socket's buffer by the writes)."""
    with RawClient(path) as c:
        c.start()
        for opt, data in before:
            c.option(opt, data)
        send_options(c, [FILLER] * count)
        n = wait_until_server_stalls(c.sock)
        replies, _ = parse_option_replies(peek(c.sock, n))
        done = final_replies(replies)
        assert done < count, f"the server answered all {count} options without blocking"
        return done


def stall_in_option(path, target, before=(), attempts=3):
    """A connection whose server is blocked at the first write of its answer to `target` (an
    option (number, data)): `before` options first, then as many FILLER options as fill the
    socket buffer, then `target`, and nothing read. Returns (client, fillers sent).
    (A server descheduled for a while on a busy machine can look blocked too early; the
    calibration is then too short, the target gets answered, and the attempt is repeated.)"""
    for _ in range(attempts):
        k = stall_count(path, before)
        c = RawClient(path)
        c.start()
        for opt, data in before:
            c.option(opt, data)
        send_options(c, [FILLER] * k + [target])
        deadline = time.monotonic() + TIMEOUT
        while True:
            n = wait_until_server_stalls(c.sock)
            replies, _ = parse_option_replies(peek(c.sock, n))
            done = final_replies(replies)
            if done >= k or time.monotonic() > deadline:
                break
        if done == k and all(o == FILLER[0] for o, _, _ in replies):
            return c, k
        c.close()
    raise AssertionError(f"could not stall the server in option {target[0]}: after {k} fillers "
                         f"it finished {done} options")


def read_option_replies(c, count):
    """Reads the replies to `count` options (or up to a disconnect). Returns
    ([(option, type, payload)...], closed)."""
    replies, done = [], 0
    try:
        while done < count:
            opt, rtype, data = c.option_reply()
            replies.append((opt, rtype, data))
            if rtype == 1 or rtype & 0x80000000:
                done += 1
    except Closed:
        return replies, True
    return replies, False


def next_reply(c):
    """The next complete reply on RawClient `c`, where the chunks of several structured
    replies may interleave (qemu-nbd sends the chunks of concurrent reads as they come).
    Checks that every chunk belongs to a request in flight and lies inside it."""
    partial = c.__dict__.setdefault("partial_replies", {})
    while True:
        magic = struct.unpack(">I", c.recv_exact(4))[0]
        if magic == SIMPLE_REPLY_MAGIC:
            return c.simple_reply_body()
        assert magic == STRUCTURED_REPLY_MAGIC, f"bad reply magic {magic:#x}"
        flags, rtype, h, length = struct.unpack(">HHQI", c.recv_exact(16))
        assert h in c.pending, f"chunk for unknown handle {h}"
        body = c.recv_exact(length)
        chunks = partial.setdefault(h, [])
        chunks.append((rtype, body))
        if not flags & REPLY_FLAG_DONE:
            continue
        del partial[h]
        cmd, offset, length = c.pending.pop(h)
        error = next((struct.unpack(">I", body[:4])[0] for rtype, body in chunks
                      if rtype & 0x8000), 0)
        data = assemble_read(chunks, offset, length) if cmd == CMD_READ and not error else b""
        return Reply(h, error, data, chunks, structured=True)


class NonReader:
    """A connection in transmission that sends requests and reads no reply."""

    def __init__(self, target, structured):
        self.c = target.client()
        self.c.connect_export(target.name, structured=structured)
        self.offsets = {}

    def send_reads(self, count, length, span=MAX_BLOCK):
        """`count` READs of `length` bytes at offsets spread over the first `span` bytes, sent in
        one write (28 bytes each: the socket buffer takes them all whether or not the server
        reads them)."""
        step = max(4096, (span - length) // max(1, count)) // 4096 * 4096
        msgs = []
        for i in range(count):
            self.c.handle += 1
            off = (i * step) % max(4096, span - length + 1)
            msgs.append(struct.pack(">IHHQQI", 0x25609513, 0, 0, self.c.handle, off, length))
            self.c.pending[self.c.handle] = (0, off, length)
            self.offsets[self.c.handle] = off
        self.c.send(b"".join(msgs))

    def close(self):
        self.c.close()
