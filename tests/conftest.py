"""Fixtures every Python suite under tests/ shares. pytest loads this file first (CTest runs
pytest with --rootdir=tests), which puts tests/ (the kilntest package) and scripts/lib (the
libvirt sandbox, shared with the demo) on the import path, also when a suite is run by hand."""

import os
import shutil
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (HERE, os.path.join(HERE, "..", "scripts", "lib")):
    if os.path.abspath(path) not in sys.path:
        sys.path.insert(0, os.path.abspath(path))


@pytest.fixture
def workdir():
    """A temporary directory of the test's own (short: it may hold Unix sockets), removed
    whether the test passes or not."""
    base = os.environ.get("KILN_TEST_TMPDIR") or None
    d = tempfile.mkdtemp(prefix="kiln-test-", dir=base)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
