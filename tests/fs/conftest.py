import os
import shutil
import tempfile

import pytest

from kilntest import fuse


@pytest.fixture
def workdir():
    """A temporary directory of the test's own, removed whether the test passes or not. The
    mounts a test made under it are undone by their own context managers first; a FUSE mount
    that a failed test left behind is forced off before the directory goes."""
    fuse.require_tools()
    d = tempfile.mkdtemp(prefix="kiln-fs-", dir=os.environ.get("KILN_TEST_TMPDIR") or None)
    try:
        yield d
    finally:
        for dirpath, dirnames, _ in os.walk(d):
            for name in dirnames:
                fuse.force_unmount(os.path.join(dirpath, name))
        shutil.rmtree(d, ignore_errors=True)
