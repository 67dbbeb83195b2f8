import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import fuse_helpers  # noqa: E402


@pytest.fixture
def workdir():
    """A temporary directory of the test's own, removed whether the test passes or not (the
    mounts the test made under it are undone by their own context managers first)."""
    fuse_helpers.require_tools()
    d = tempfile.mkdtemp(prefix="kiln-fuse-")
    try:
        yield d
    finally:
        for dirpath, dirnames, _ in os.walk(d):
            for name in dirnames:
                fuse_helpers.force_unmount(os.path.join(dirpath, name))
        shutil.rmtree(d, ignore_errors=True)
