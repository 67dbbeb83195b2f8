import os
import tempfile

import pytest

from kilntest import guest as kiln_guest


@pytest.fixture(scope="session")
def guest():
    """The test guest (vmlinuz, initrd.img, rootfs.raw), built once into KILN_GUEST_DIR."""
    kiln_guest.require_tools()
    outdir = os.environ.get("KILN_GUEST_DIR") or os.path.join(tempfile.gettempdir(),
                                                              "kiln-e2e-guest")
    return kiln_guest.build_guest(outdir)


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
