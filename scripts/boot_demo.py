#!/usr/bin/env python3
"""Kiln's main job: boot a cloud image the way nova-compute does, with every component for real.

kiln-nbd serves the disks; libvirtd (a private one, in namespaces of its own, so the host's
libvirt, network and processes are untouched) runs the guest under QEMU; kiln-net makes a tenant
network with a router and DHCP inside those namespaces; kiln-spawn registers the image, claims
resources, makes the port, the overlay and the config drive, injects a file, exports the disk
and starts the domain. The guest boots Kiln's Debian cloud image from its own bootloader;
cloud-init applies the hostname, the SSH key and the user data from the config drive and grows
the root to the flavor's disk. The demo then logs in with `kiln-spawn ssh` and shows what the
guest says: its hostname, the user data's file, the injected file, `df` of the grown root, its
address, a ping of its router, and the metadata service (`kiln-spawn metadata-serve`, reached
through the router's metadata proxy) answering the guest at 169.254.169.254. Everything is
removed at the end.

    scripts/boot_demo.py BUILD_DIR CLOUD_IMAGE
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, "scripts", "lib"))
from kiln_cloud import GUEST_METADATA_COMMAND, MetadataService, allow_ssh_and_ping  # noqa: E402
from kiln_sandbox import LibvirtSandbox  # noqa: E402


def step(text):
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def main():
    build, cloud_image = (os.path.abspath(a) for a in sys.argv[1:3])
    kiln_nbd = os.path.join(build, "nbdserver", "kiln-nbd", "kiln-nbd")
    kiln_net = os.path.join(build, "netplumb", "kiln-net")
    kiln_spawn = os.path.join(build, "spawn", "kiln-spawn")
    work = tempfile.mkdtemp(prefix="kiln-demo-")
    os.chmod(work, 0o755)  # dnsmasq rereads its host file as nobody
    # kiln-net runs the metadata proxy of this build (not an installed one).
    env = {"KILN_METADATA_PROXY": os.path.join(build, "netplumb", "kiln-net-metadata-proxy"),
           **os.environ, "KILN_STATE_DIR": os.path.join(work, "state"),
           "KILN_RUN_DIR": os.path.join(work, "run")}
    os.makedirs(env["KILN_STATE_DIR"])
    os.makedirs(env["KILN_RUN_DIR"])
    nbd = sandbox = metadata = None
    try:
        step("kiln-nbd, with a control socket for kiln-spawn's exports")
        sock, ctl = os.path.join(work, "nbd.sock"), os.path.join(work, "nbd-control.sock")
        nbd_log = open(os.path.join(work, "kiln-nbd.log"), "w")
        nbd = subprocess.Popen([kiln_nbd, "-k", sock, "--control", ctl], stdout=nbd_log,
                               stderr=subprocess.STDOUT)
        while not os.path.exists(ctl):
            if nbd.poll() is not None:
                raise SystemExit("kiln-nbd did not start")
            time.sleep(0.02)
        print(f"kiln-nbd PID {nbd.pid}: NBD on {sock}, control on {ctl}")

        step("libvirtd (QEMU driver) in mount, network and PID namespaces of its own")
        sandbox = LibvirtSandbox(work).start()
        print(f"libvirt URI: {sandbox.uri}")

        def inside(*args, show=True):
            p = subprocess.run(["nsenter", f"--target={sandbox.init_pid()}", "--net", "--mount",
                                "--pid", "--", *args], env=env, capture_output=True, text=True)
            if show and p.stdout:
                print(p.stdout, end="")
            if p.returncode != 0:
                raise SystemExit(p.stderr.strip() or f"{args[0]} failed")
            return p.stdout

        def net(*args, **kw):
            print("$ kiln-net " + " ".join(args))
            return inside(kiln_net, *args, **kw)

        # Each instance reaches its disk through a kiln-nbd socket of its own, owned by the
        # user libvirt runs QEMU as (docs/kiln-spawn.md).
        spawn_globals = ["--libvirt-uri", sandbox.uri, "--nbd-control", ctl,
                         "--virt-type", "qemu"]

        def spawn(*args, **kw):
            print("$ kiln-spawn " + " ".join(args))
            return inside(kiln_spawn, *spawn_globals, *args, **kw)

        step("A tenant network: net, subnet with DHCP, router (the Neutron walkthrough)")
        net("--tenant-id", "demo", "net-create", "demo-net", "--provider:network_type", "vxlan",
            "--provider:segmentation_id", "1", show=False)
        net("--tenant-id", "demo", "subnet-create", "--name", "demo-subnet", "demo-net",
            "192.168.0.0/24", "--gateway", "192.168.0.1", "--dns-nameserver", "192.168.0.1",
            show=False)
        net("--tenant-id", "demo", "router-create", "demo-router", show=False)
        net("router-interface-add", "demo-router", "demo-subnet", show=False)
        net("subnet-list")

        step("The metadata service, with kiln-net's proxies in the DHCP and router namespaces")
        md_sock = os.path.join(work, "metadata.sock")
        metadata = MetadataService(["nsenter", f"--target={sandbox.init_pid()}", "--net",
                                    "--mount", "--"], kiln_spawn, md_sock, env)
        print(f"kiln-spawn metadata-serve PID {metadata.proc.pid} on {md_sock}")
        net("config-set", "metadata_socket", md_sock, show=False)
        net("apply")

        step("Register the cloud image (copied into the store, XXH3-128) and a flavor")
        spawn("image-create", "debian-12", cloud_image, "--property", "os_admin_user=debian")
        spawn("flavor-create", "c1.demo", "--vcpus", "1", "--ram", "1024", "--disk", "4")

        step("Boot: claim, port, overlay, config drive, injection, NBD export, libvirt domain")
        key = os.path.join(work, "id_demo")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "demo@kiln",
                        "-f", key], check=True)
        user_data = os.path.join(work, "user-data")
        with open(user_data, "w") as f:
            f.write("#cloud-config\n"
                    "write_files:\n"
                    "  - path: /etc/kiln-demo\n"
                    "    content: \"written by cloud-init from the demo's user data\\n\"\n"
                    "runcmd:\n"
                    "  - [ sh, -c, 'echo \"KILN-DEMO: user data ran on $(hostname)\" > /dev/ttyS0' ]\n")
        motd = os.path.join(work, "motd")
        with open(motd, "w") as f:
            f.write("This file was injected by kiln-spawn through kiln-fs.\n")
        started = time.monotonic()
        spawn("boot", "demo-vm", "--image", "debian-12", "--flavor", "c1.demo", "--net",
              "demo-net", "--key-file", key + ".pub", "--user-data", user_data,
              "--file", f"/etc/motd={motd}", "--inject")
        print(f"(boot returned with the domain running after "
              f"{(time.monotonic() - started) * 1000:.0f} ms)")

        step("Allow SSH and ping in the default security group (as in Neutron, it lets nothing in)")
        allow_ssh_and_ping(net, show=False)

        step("The guest boots from its own disk: GRUB, the kernel, cloud-init (minutes under "
             "emulation)")
        deadline = time.monotonic() + 900
        console = ""
        while time.monotonic() < deadline:
            console = inside(kiln_spawn, *spawn_globals, "console-log", "demo-vm", show=False)
            if "KILN-DEMO: user data ran" in console:
                break
            time.sleep(2)
        lines = console.replace("\r", "").splitlines()
        shown = [ln for ln in lines if "Booting `" in ln or "Cloud-init v." in ln
                 or "KILN-DEMO" in ln or "resized filesystem" in ln]
        print("\n".join(shown) or "\n".join(lines[-40:]))
        inst = json.loads(inside(kiln_spawn, *spawn_globals, "--format", "json", "show",
                                 "demo-vm", show=False))

        step(f"Log in: kiln-spawn ssh demo-vm -i {os.path.basename(key)} (as the image's "
             "os_admin_user, debian)")
        # sudo: cloud-init writes the config drive's injected files again at first boot, with
        # mode 0660 (as with Nova), over the copy kiln-fs put in the disk.
        guest_says = ("echo \"hostname: $(hostname)\"; sudo cat /etc/kiln-demo /etc/motd; "
                      "df -h /; ip -4 -o addr show scope global; ping -c1 -W5 192.168.0.1")
        ok = False
        while time.monotonic() < deadline:
            p = subprocess.run(["nsenter", f"--target={sandbox.init_pid()}", "--net", "--mount",
                                "--pid", "--", kiln_spawn, *spawn_globals, "ssh", "demo-vm",
                                "-i", key, "-o", "BatchMode=yes",
                                "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "--",
                                guest_says], env=env, capture_output=True, text=True)
            if p.returncode == 0:
                print(p.stdout, end="")
                ok = f"inet {inst['ip_address']}/" in p.stdout and "1 received" in p.stdout
                break
            time.sleep(3)
        print(f"\nport IP {inst['ip_address']}, MAC {inst['mac_address']}: "
              + ("the guest configured it and reached its router." if ok else "NOT confirmed."))

        step("The metadata service from inside the guest: GET http://169.254.169.254"
             "/openstack/latest/meta_data.json")
        p = subprocess.run(["nsenter", f"--target={sandbox.init_pid()}", "--net", "--mount",
                            "--pid", "--", kiln_spawn, *spawn_globals, "ssh", "demo-vm",
                            "-i", key, "-o", "BatchMode=yes",
                            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "--",
                            GUEST_METADATA_COMMAND], env=env, capture_output=True, text=True)
        try:
            md = json.loads(p.stdout)
            shown = {k: md.get(k) for k in ("uuid", "name", "hostname", "availability_zone",
                                             "public_keys")}
            print(json.dumps(shown, indent=2))
            md_ok = md.get("uuid") == inst["id"]
        except ValueError:
            print(p.stdout + p.stderr)
            md_ok = False
        print("the metadata service answered the guest with its own data." if md_ok
              else "metadata NOT confirmed.")
        ok = ok and md_ok

        step("Delete: domain, export, overlay, port and claim go")
        spawn("delete", "demo-vm", show=False)
        spawn("list")
        spawn("hypervisor-stats")
        return 0 if ok else 1
    finally:
        if metadata is not None:
            metadata.cleanup()
        if sandbox is not None:
            sandbox.stop()
        if nbd is not None and nbd.poll() is None:
            nbd.terminate()
            nbd.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
