#!/usr/bin/python3
"""kiln-spawn's scheduler: time per decision with 10, 100 and 1000 registered hosts (simulated
rows inserted directly, 5 claims on each), on SQLite and on PostgreSQL (a throwaway server
started here in a temporary directory, as tests/common/pg_server.sh does for the tests, stopped
by its PID afterwards). Prints a Markdown table of medians and p99 for

- plan:  Scheduler::plan(), `kiln-spawn schedule`'s dry run: one read transaction that reads
         every host and every host's usage (claims grouped by host), then filters and weighers;
- claim: Scheduler::claim(), what `boot` does: the same inside the write transaction (the
         writers' lock), the claim's insert and the commit (each claim released afterwards);

and the query plans of the two queries. In process (kiln-scheduler-bench), so no process start
or schema check is counted.

    bench/scheduler_bench.py [--build build/release] [--hosts 10,100,1000] [--decisions 200]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.abspath(os.path.join(HERE, ".."))
PG_SERVER = os.path.join(TOP, "tests", "common", "pg_server.sh")

HOSTS_SQL = ("SELECT name, libvirt_uri, nbd_endpoint, availability_zone, vcpus, memory_mb, "
             "disk_gb, cpu_ratio_ppm, ram_ratio_ppm, disk_ratio_ppm, reserved_vcpus, "
             "reserved_memory_mb, reserved_disk_mb, enabled, disabled_reason, from_settings, "
             "heartbeat_at, created_at, updated_at FROM hosts ORDER BY name")
USAGE_SQL = ("SELECT host, SUM(vcpus), SUM(ram_mb), SUM(disk_gb), COUNT(*) FROM claims "
             "GROUP BY host")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def bench(binary, d, db, hosts, decisions):
    cmd = [binary, "--dir", d, "--hosts", str(hosts), "--decisions", str(decisions)]
    if db:
        cmd += ["--db", db]
    return json.loads(run(cmd).stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(TOP, "build", "release"))
    ap.add_argument("--hosts", default="10,100,1000")
    ap.add_argument("--decisions", type=int, default=200)
    a = ap.parse_args()
    binary = os.path.join(a.build, "bench", "kiln-scheduler-bench")
    counts = [int(n) for n in a.hosts.split(",")]
    top = tempfile.mkdtemp(prefix="kiln-sched-bench.")
    os.chmod(top, 0o755)  # the server runs as postgres when this runs as root
    pg_dir = os.path.join(top, "pg")
    rows, plans = [], {}
    try:
        run([PG_SERVER, "start", pg_dir])
        pg = f"postgresql:///postgres?host={pg_dir}&user=kiln"
        for n in counts:
            d = os.path.join(top, f"sqlite-{n}")
            os.makedirs(d)
            rows.append(("SQLite", bench(binary, d, "", n, a.decisions)))
            if n == counts[-1]:
                db = os.path.join(d, "spawn.db")
                plans["SQLite"] = [run(["sqlite3", db, "EXPLAIN QUERY PLAN " + q]).stdout
                                   for q in (HOSTS_SQL, USAGE_SQL)]
            name = f"bench_{n}"
            run(["psql", pg, "-qc", f"CREATE DATABASE {name}"])
            url = f"postgresql:///{name}?host={pg_dir}&user=kiln"
            d = os.path.join(top, f"pg-{n}")
            os.makedirs(d)
            rows.append(("PostgreSQL", bench(binary, d, url, n, a.decisions)))
            if n == counts[-1]:
                plans["PostgreSQL"] = [
                    run(["psql", url, "-qAtc", "SET search_path TO kiln_spawn; "
                         "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) " + q]).stdout
                    for q in (HOSTS_SQL, USAGE_SQL)]
    finally:
        subprocess.run([PG_SERVER, "stop", pg_dir], check=False)
        shutil.rmtree(top, ignore_errors=True)

    print(f"nproc {os.cpu_count()}, load {open('/proc/loadavg').read().split()[:3]}, "
          f"{a.decisions} decisions per row\n")
    print("| engine | hosts | claims | plan median µs | plan p99 µs | claim median µs | "
          "claim p99 µs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for engine, r in rows:
        print(f"| {engine} | {r['hosts']} | {r['claims']} | {r['plan_median_us']:.0f} | "
              f"{r['plan_p99_us']:.0f} | {r['claim_median_us']:.0f} | {r['claim_p99_us']:.0f} |")
    for engine, (hp, up) in plans.items():
        print(f"\n{engine}, {counts[-1]} hosts — hosts query:\n```\n{hp.strip()}\n```")
        print(f"usage query:\n```\n{up.strip()}\n```")


if __name__ == "__main__":
    sys.exit(main())
