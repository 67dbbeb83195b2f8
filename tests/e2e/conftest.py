import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import kiln_e2e  # noqa: E402


@pytest.fixture(scope="session")
def guest():
    """The test guest (vmlinuz, initrd.img, rootfs.raw), built once into KILN_GUEST_DIR."""
    kiln_e2e.require_tools()
    outdir = os.environ.get("KILN_GUEST_DIR") or os.path.join(tempfile.gettempdir(),
                                                              "kiln-e2e-guest")
    return kiln_e2e.build_guest(outdir)


@pytest.fixture
def workdir():
    """A temporary directory of the test's own (short: it holds Unix sockets), removed whether
    the test passes or not."""
    d = tempfile.mkdtemp(prefix="kiln-e2e-", dir=os.environ.get("KILN_TEST_TMPDIR") or None)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def procs(workdir):
    """Processes a test starts; each is killed by its PID at teardown if still running, before
    the work directory goes."""
    owned = []
    try:
        yield owned
    finally:
        for p in reversed(owned):
            p.cleanup()
