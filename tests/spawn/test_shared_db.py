"""kiln-spawn and kiln-net on a shared PostgreSQL database (KILN_DB_URL, --db) instead of their
SQLite files: a boot and a delete through the command lines, what the database holds seen with
psql, a second "host" (another state directory) that sees the same model and whose agent
builds what the scheduler sends it, and no SQLite file written. The server is the one ctest
starts for the store tests (fixture kiln_pg); each test gets a database of its own, dropped
afterwards. The agent that outlives a restart of the server has a server of its own
(tests/common/pg_server.sh in its temporary directory)."""

import json
import os
import subprocess
import uuid

import pytest

from kilntest.spawn import KILN_NET, World, make_qcow2, require_tools, run

PG_URL = os.environ.get("KILN_TEST_PG_URL", "")
PG_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common",
                         "pg_server.sh")


def psql(url, sql):
    return run(["psql", url, "-qtAc", sql]).stdout.split()


@pytest.fixture
def database():
    assert PG_URL, "KILN_TEST_PG_URL is not set (run through ctest: fixture kiln_pg)"
    require_tools("psql")
    name = "kiln_cli_" + uuid.uuid4().hex[:12]
    psql(PG_URL, f"CREATE DATABASE {name}")
    query = PG_URL.split("?", 1)[1]
    try:
        yield f"postgresql:///{name}?{query}"
    finally:
        psql(PG_URL, f"DROP DATABASE {name} WITH (FORCE)")


def sqlite_files(top):
    return [os.path.join(d, f) for d, _, files in os.walk(top) for f in files
            if f.endswith((".db", ".db-wal", ".db-shm"))]


def test_boot_and_delete_on_a_shared_database(tmp_path, database, monkeypatch):
    monkeypatch.setenv("KILN_DB_URL", database)
    world = World(str(tmp_path / "host-a"))
    try:
        base = make_qcow2(str(tmp_path / "base.qcow2"), "64M", pattern="0x5a")
        world.spawn("image-create", "guest", base, "--disk-format", "qcow2")
        inst = json.loads(world.spawn("boot", "vm1", "--image", "guest", "--flavor", "m1.tiny",
                                      "--net", "demo-net", "--format", "json").stdout)
        assert inst["status"] == "active", inst

        # The rows are in the database, in each module's schema.
        assert psql(database, "SELECT name FROM kiln_spawn.instances") == ["vm1"]
        assert psql(database, "SELECT name FROM kiln_spawn.images") == ["guest"]
        assert "demo-net" in psql(database, "SELECT name FROM kiln_net.networks")
        port_ids = psql(database, "SELECT id FROM kiln_net.ports WHERE device_id = "
                        f"'{inst['id']}'")
        assert len(port_ids) == 1

        # Another host (its own state directory) on the same URL sees the same model, through
        # --db as through the environment.
        other = dict(os.environ, KILN_STATE_DIR=str(tmp_path / "host-b"))
        other.pop("KILN_DB_URL")
        os.makedirs(other["KILN_STATE_DIR"])
        ports = json.loads(run([KILN_NET, "--db", database, "--format", "json", "port-list"],
                               env=other).stdout)
        assert port_ids[0] in [p["id"] for p in ports]
        # ... and without the URL, its own empty SQLite model.
        alone = json.loads(run([KILN_NET, "--format", "json", "net-list"], env=other).stdout)
        assert alone == []

        world.spawn("delete", "vm1")
        world.assert_nothing_left()
        assert psql(database, "SELECT count(*) FROM kiln_spawn.instances") == ["0"]
        assert psql(database, "SELECT count(*) FROM kiln_spawn.claims") == ["0"]
        # Nothing of the model went to a file on host A.
        assert sqlite_files(world.state) == []
    finally:
        world.close()


def test_two_hosts_share_the_scheduler(tmp_path, database, monkeypatch):
    """Two kiln-spawn hosts (KILN_HOST a and b, state directories of their own) on one
    database: each registers itself, both see both; a boot on a that the scheduler sends to b
    is queued for b and built by b's agent (in b's state directory), and its delete from a is
    b's agent's too; a boot forced to a goes ahead on a."""
    monkeypatch.setenv("KILN_DB_URL", database)
    world = World(str(tmp_path / "host-a"))
    agent = None
    try:
        world.env["KILN_HOST"] = "a"
        world.spawn("config-set", "host_memory_mb", "4096")
        base = make_qcow2(str(tmp_path / "base.qcow2"), "16M")
        world.spawn("image-create", "guest", base, "--disk-format", "qcow2")
        other = dict(world.env, KILN_HOST="b", KILN_STATE_DIR=str(tmp_path / "host-b"))
        os.makedirs(other["KILN_STATE_DIR"])
        run(world.spawn_cmd("host-register", "--memory-mb", "65536"), env=other)
        assert psql(database, "SELECT name FROM kiln_spawn.hosts ORDER BY name") == ["a", "b"]
        # The image's file is host a's: b refuses to build without it, then gets a copy.
        r = run(world.spawn_cmd("image-cache", "guest", str(tmp_path / "other.qcow2")),
                env=other, check=False)
        assert r.returncode != 0
        make_qcow2(str(tmp_path / "other.qcow2"), "16M", "0x5a")
        r = run(world.spawn_cmd("image-cache", "guest", str(tmp_path / "other.qcow2")),
                env=other, check=False)
        assert r.returncode == 1 and "is not image guest (digest" in r.stderr, r.stderr
        run(world.spawn_cmd("image-cache", "guest", base), env=other)
        agent = subprocess.Popen(world.spawn_cmd("agent", "--poll-interval", "50"), env=other,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        vm_b = json.loads(world.spawn("boot", "vm-b", "--image", "guest", "--flavor", "m1.tiny",
                                      "--net", "demo-net", "--format", "json").stdout)
        assert vm_b["status"] == "active" and vm_b["host"] == "b", vm_b
        assert vm_b["instance_dir"].startswith(other["KILN_STATE_DIR"] + "/"), vm_b
        assert os.path.isfile(vm_b["instance_dir"] + "/disk")
        assert psql(database, "SELECT host, kind, state FROM kiln_spawn.work_queue") == \
            ["b|build|done"]
        inst = json.loads(world.spawn("boot", "vm1", "--image", "guest", "--flavor", "m1.tiny",
                                      "--net", "demo-net", "--host", "a", "--format",
                                      "json").stdout)
        assert inst["status"] == "active" and inst["host"] == "a"
        assert psql(database, "SELECT host FROM kiln_spawn.claims ORDER BY host") == ["a", "b"]
        hv = json.loads(run(world.spawn_cmd("hypervisor-list", "--format", "json"),
                            env=other).stdout)
        assert {h["hypervisor_hostname"]: h["running_vms"] for h in hv} == {"a": 1, "b": 1}
        world.spawn("delete", "vm1", "vm-b")
        assert not os.path.exists(vm_b["instance_dir"])
        assert psql(database, "SELECT count(*) FROM kiln_spawn.work_queue") == ["0"]
        world.assert_nothing_left()
    finally:
        if agent:
            agent.terminate()
            _, err = agent.communicate(timeout=60)
            assert agent.returncode == 0, err
        world.close()


def test_agent_outlives_a_restart_of_the_database_server(tmp_path, monkeypatch):
    """A PostgreSQL restart drops every connection: kiln-spawn's agent waits for the server
    and opens its connection again (as nova-compute does) instead of ending, then builds what
    is queued for it."""
    pg = str(tmp_path / "pg")
    os.chmod(tmp_path, 0o711)  # the server runs as postgres
    run(["bash", PG_SERVER, "start", pg], timeout=120)
    world = agent = None
    try:
        monkeypatch.setenv("KILN_DB_URL", f"postgresql:///postgres?host={pg}&user=kiln")
        world = World(str(tmp_path / "host-a"))
        world.env["KILN_HOST"] = "a"
        world.spawn("image-create", "guest", make_qcow2(str(tmp_path / "base.qcow2"), "16M"))
        world.spawn("host-register", "--name", "b")
        agent = subprocess.Popen(world.spawn_cmd("agent", "--host", "b", "--poll-interval", "50"),
                                 env=world.env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
        boot = ("--image", "guest", "--flavor", "m1.tiny", "--net", "demo-net", "--host", "b",
                "--format", "json")
        assert json.loads(world.spawn("boot", "vm1", *boot).stdout)["status"] == "active"
        run(["bash", PG_SERVER, "restart", pg, "1"], timeout=120)  # down for a second
        # The server's restart ended the agent's connection; it is still running and takes the
        # next build once it has a connection again.
        vm2 = json.loads(world.spawn("--wait-timeout", "60", "boot", "vm2", *boot).stdout)
        assert vm2["status"] == "active" and vm2["host"] == "b", vm2
        assert agent.poll() is None
        world.spawn("delete", "vm1", "vm2")
        world.assert_nothing_left()
    finally:
        if agent:
            agent.terminate()
            _, err = agent.communicate(timeout=60)
        if world:
            world.close()
        run(["bash", PG_SERVER, "stop", pg], check=False, timeout=60)
    assert agent.returncode == 0, err
    assert "the database is unreachable" in err and "the database is back" in err, err
