#!/usr/bin/env python3
"""Where a test tier's time went: reads the reports the Python suites write
(BUILD/test-reports/<suite>.json, see tests/conftest.py) and prints the costliest suites by
CPU time (pytest and the processes it waited for) and the longest cases.

    scripts/test_report.py BUILD_DIR [--suites N] [--cases N]
"""

import argparse
import glob
import json
import os
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build_dir")
    ap.add_argument("--suites", type=int, default=15, help="suites to list (default 15)")
    ap.add_argument("--cases", type=int, default=15, help="cases to list (default 15)")
    args = ap.parse_args()

    reports = []
    for path in sorted(glob.glob(os.path.join(args.build_dir, "test-reports", "*.json"))):
        try:
            with open(path) as f:
                reports.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"test_report: {path}: {e}", file=sys.stderr)
    if not reports:
        print(f"test_report: no reports under {args.build_dir}/test-reports")
        return 0

    def cpu(r):
        return r["cpu_self"] + r["cpu_children"]

    total_wall = sum(r["wall"] for r in reports)
    total_cpu = sum(cpu(r) for r in reports)
    print(f"{len(reports)} Python suites: {total_wall:.0f} s of wall time, "
          f"{total_cpu:.0f} s of CPU time (pytest and the processes it waited for)")
    print(f"{'suite':<32} {'wall s':>8} {'CPU s':>8} {'pytest':>8}")
    for r in sorted(reports, key=cpu, reverse=True)[:args.suites]:
        print(f"{r['suite']:<32} {r['wall']:>8.1f} {cpu(r):>8.1f} {r['cpu_self']:>8.1f}")

    cases = [(d, r["suite"], case.split("::", 1)[-1])
             for r in reports for case, d in r["cases"].items()]
    print("\nlongest cases (set-up and tear-down included):")
    for d, suite, case in sorted(cases, reverse=True)[:args.cases]:
        print(f"{d:>8.1f} s  {suite}  {case}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
