"""What the demo (scripts/boot_demo.py), the end-to-end tests (tests/e2e/test_cloud_image.py)
and the benchmark (bench/spawn_bench.py) do alike around a booted cloud image: open the default
security group to SSH and ping, run the metadata service, and ask it from inside a guest.

Each helper takes the caller's way of running a command inside its sandbox (a function that
runs `kiln-net ARGS...`, or the command prefix that enters the sandbox's namespaces), so that
the three keep their own output and error handling."""

import os
import subprocess
import time

METADATA_URL = "http://169.254.169.254/openstack/latest/meta_data.json"

# Run inside a guest of Kiln's cloud image (kiln-spawn ssh): the metadata service's
# meta_data.json for this guest. The image has no curl; python3 is there for cloud-init.
GUEST_METADATA_COMMAND = (
    "python3 -c 'import sys, urllib.request; "
    f"sys.stdout.write(urllib.request.urlopen(\"{METADATA_URL}\", timeout=10).read().decode())'")


def allow_ssh_and_ping(net, **kw):
    """As in Neutron, the default security group lets nothing in from outside the group: allow
    SSH and ping from anywhere, as a user would with `security-group-rule-create`. `net` runs
    `kiln-net ARGS...`; `kw` goes to it."""
    for proto, ports in (("tcp", ["--port-range-min", "22", "--port-range-max", "22"]),
                         ("icmp", [])):
        net("security-group-rule-create", "default", "--direction", "ingress",
            "--protocol", proto, *ports, "--remote-ip-prefix", "0.0.0.0/0", **kw)


class MetadataService:
    """`kiln-spawn metadata-serve` on the Unix socket `sock`, started through `enter` (the
    command prefix that enters the sandbox's mount and network namespaces; nsenter execs the
    server, so the PID is the server's) with `env`, and stopped by that PID. Its log is
    `sock`.log."""

    def __init__(self, enter, kiln_spawn, sock, env, timeout=30):
        self.sock = sock
        with open(sock + ".log", "w") as log:
            self.proc = subprocess.Popen([*enter, kiln_spawn, "metadata-serve", "--socket", sock],
                                         env=env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + timeout
        while not os.path.exists(sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.cleanup()
                raise RuntimeError("metadata-serve did not start: " + open(sock + ".log").read())
            time.sleep(0.05)

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
