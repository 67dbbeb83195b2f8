"""Fixtures every Python suite under tests/ shares. pytest loads this file first (CTest runs
pytest with --rootdir=tests), which puts tests/ (the kilntest package) and scripts/lib (the
libvirt sandbox, shared with the demo) on the import path, also when a suite is run by hand."""

import json
import os
import resource
import shutil
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (HERE, os.path.join(HERE, "..", "scripts", "lib")):
    if os.path.abspath(path) not in sys.path:
        sys.path.insert(0, os.path.abspath(path))


def _keep_freed_memory():
    """pytest's own large buffers (NBD replies of up to 32 MiB, images read back to compare)
    are allocated and freed over and over. glibc serves each one with a fresh mmap and
    unmaps it when freed, so every buffer's pages are faulted in again, at about 12 us a
    fault on these VMs: reading the 768 MiB of replies of one nbd.hostile case cost 4.5 s
    of CPU. From the heap (no mmap) and without trimming it, a freed buffer's pages are
    reused: nbd.hostile's pytest CPU went from 30.8 s to 6.5 s. Only this process is
    changed (mallopt is not inherited across exec): the programs under test are not."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)


_keep_freed_memory()


def _temp_dir():
    """A new temporary directory under KILN_TEST_TMPDIR (else the system's), removed after the
    fixture that yields it, whether its tests pass or not."""
    d = tempfile.mkdtemp(prefix="kiln-test-", dir=os.environ.get("KILN_TEST_TMPDIR") or None)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def workdir():
    """A temporary directory of the test's own (short: it may hold Unix sockets)."""
    yield from _temp_dir()


@pytest.fixture(scope="module")
def module_workdir():
    """A temporary directory for what a module's tests share (images made once per module)."""
    yield from _temp_dir()


# ---------------------------------------------------------------------------------------------
# Where a suite's time goes: with KILN_TEST_REPORT_DIR set (CTest sets it), each suite writes
# <dir>/<suite>.json at its end: wall time, CPU time of pytest and of the child processes it
# waited for (not of daemons that left it), and every case's duration. scripts/test_report.py
# sums them up after each tier of scripts/test.sh.

_REPORT = {"cases": {}}


def pytest_sessionstart(session):
    _REPORT["start"] = time.monotonic()


def pytest_runtest_logreport(report):
    cases = _REPORT["cases"]
    cases[report.nodeid] = cases.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    out_dir = os.environ.get("KILN_TEST_REPORT_DIR")
    name = os.environ.get("KILN_TEST_NAME")
    if not out_dir or not name:
        return
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    data = {
        "suite": name,
        "wall": round(time.monotonic() - _REPORT["start"], 2),
        "cpu_self": round(me.ru_utime + me.ru_stime, 2),
        "cpu_children": round(kids.ru_utime + kids.ru_stime, 2),
        "cases": {k: round(v, 2) for k, v in _REPORT["cases"].items()},
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, name + ".json"), "w") as f:
        json.dump(data, f, indent=1)
