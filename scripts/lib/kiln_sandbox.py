"""A libvirtd of the test's own: the system QEMU driver inside new mount, network and PID
namespaces, so that a test can boot guests through the real libvirt API without touching the
host's libvirt, its configuration, its network or its processes.

Inside the namespaces, tmpfs mounts replace /run, /var/lib/libvirt, /var/log/libvirt,
/var/cache/libvirt and /etc/libvirt (filled with our qemu.conf and libvirtd.conf); /etc/passwd
and /etc/group are bind-mounted copies that have the `libvirt-qemu` user and group, which
libvirt 9's QEMU driver resolves before it reads qemu.conf. The daemon's sockets live in the
test's work directory, so clients outside reach it as `qemu:///system?socket=...`. QEMU runs as
root (or as the user given, e.g. libvirt-qemu: then what QEMU opens must already be that user's,
as there is no dynamic ownership) without security drivers, cgroups or per-domain namespaces,
and writes its serial console straight to files (`stdio_handler = "file"`, no virtlogd).

The namespace's PID 1 is a shell that starts libvirtd and waits: it reaps the orphans that
QEMU capability probes leave (libvirtd as PID 1 would not, and would then wait 40 s for each
probe to die). Stopping the sandbox kills that PID 1, which ends every process in the
namespace: libvirtd and any guest it started.
"""

import os
import re
import shutil
import signal
import subprocess
import time

QEMU_CONF = """\
user = "{user}"
group = "{user}"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
"""

START = """\
set -e
mount --make-rprivate /
# /run whole: libvirtd also keeps /run/libvirtd.pid, which must not be the host's (nor
# another sandbox's: two would fight over its lock).
for d in /run /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /etc/libvirt; do
  mkdir -p "$d"
  mount -t tmpfs -o mode=0755 tmpfs "$d"
done
cp "$SANDBOX"/etc/* /etc/libvirt/
mount --bind "$SANDBOX/passwd" /etc/passwd
mount --bind "$SANDBOX/group" /etc/group
ip link set lo up
libvirtd -f /etc/libvirt/libvirtd.conf &
wait $!
"""


def _with_line(src, dst, name, line):
    with open(src) as f:
        text = f.read()
    if not any(entry.split(":", 1)[0] == name for entry in text.splitlines()):
        text = text.rstrip("\n") + "\n" + line + "\n"
    with open(dst, "w") as f:
        f.write(text)


class LibvirtSandbox:
    def __init__(self, workdir, qemu_user="root", qemu_conf_extra=""):
        # The name goes into qemu.conf: a user and group of that name must exist (the
        # sandbox's own passwd and group files have libvirt-qemu).
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", qemu_user):
            raise ValueError(f"bad QEMU user name: {qemu_user!r}")
        self.qemu_user = qemu_user
        # More qemu.conf lines (e.g. nbd_tls_x509_cert_dir for disks over NBD+TLS).
        self.qemu_conf_extra = qemu_conf_extra
        self.dir = os.path.join(workdir, "libvirt")
        self.sock = os.path.join(self.dir, "libvirt-sock")
        self.log_path = os.path.join(self.dir, "libvirtd.log")
        self.proc = None

    @property
    def uri(self):
        return f"qemu:///system?socket={self.sock}"

    def start(self, timeout=60):
        etc = os.path.join(self.dir, "etc")
        os.makedirs(etc, exist_ok=True)
        for name in os.listdir("/etc/libvirt"):
            src = os.path.join("/etc/libvirt", name)
            if os.path.isfile(src):
                shutil.copy(src, etc)
        with open(os.path.join(etc, "qemu.conf"), "w") as f:
            f.write(QEMU_CONF.format(user=self.qemu_user) + self.qemu_conf_extra)
        with open(os.path.join(etc, "libvirtd.conf"), "w") as f:
            f.write(f'unix_sock_dir = "{self.dir}"\n'
                    'unix_sock_group = "root"\n'
                    'unix_sock_rw_perms = "0700"\n'
                    'auth_unix_rw = "none"\n'
                    'auth_unix_ro = "none"\n'
                    f'log_outputs = "3:file:{self.log_path}"\n')
        _with_line("/etc/passwd", os.path.join(self.dir, "passwd"), "libvirt-qemu",
                   "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin")
        _with_line("/etc/group", os.path.join(self.dir, "group"), "libvirt-qemu",
                   "libvirt-qemu:x:64055:")
        _with_line(os.path.join(self.dir, "group"), os.path.join(self.dir, "group"), "kvm",
                   "kvm:x:64056:")
        script = os.path.join(self.dir, "start.sh")
        with open(script, "w") as f:
            f.write(START)
        self.out = open(os.path.join(self.dir, "sandbox.out"), "ab")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "sh",
             script],
            env={**os.environ, "SANDBOX": self.dir}, stdin=subprocess.DEVNULL,
            stdout=self.out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the libvirt sandbox exited with {self.proc.returncode}:"
                                     f"\n{self.diagnostics()}")
            if os.path.exists(self.sock):
                p = self.virsh("version", check=False)
                if p.returncode == 0:
                    return self
            time.sleep(0.05)
        raise AssertionError(f"libvirtd did not answer in {timeout}s:\n{self.diagnostics()}")

    def init_pid(self):
        """PID (in our namespace) of the sandbox's PID 1: the child of unshare."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            return int(f.read().split()[0])

    def qemu_ids(self):
        """(uid, gid) QEMU runs as, from the sandbox's own passwd and group files."""
        def lookup(name, field):
            with open(os.path.join(self.dir, name)) as f:
                for line in f:
                    entry = line.rstrip("\n").split(":")
                    if entry[0] == self.qemu_user:
                        return int(entry[field])
            raise AssertionError(f"{self.qemu_user} not in the sandbox's {name}")
        return lookup("passwd", 2), lookup("group", 2)

    def netns(self):
        """Path of the sandbox's network namespace, for `nsenter --net=`."""
        return f"/proc/{self.init_pid()}/ns/net"

    def virsh(self, *args, check=True, timeout=120):
        p = subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed ({p.returncode}): "
                                 f"{p.stderr}\n{self.diagnostics()}")
        return p

    def diagnostics(self):
        text = []
        for name in ("sandbox.out", "libvirtd.log"):
            try:
                with open(os.path.join(self.dir, name), errors="replace") as f:
                    text.append(f"--- {name} ---\n{f.read()[-4000:]}")
            except OSError:
                pass
        return "\n".join(text)

    def stop(self):
        """Ends the namespace (libvirtd and every guest in it) by killing its PID 1."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.init_pid(), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                os.kill(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.out.close()

    cleanup = stop
