import os
import shutil
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def workdir():
    """A temporary directory of the test's own, removed whether the test passes or not
    (mounts under it are undone by the helpers that made them, before this runs)."""
    base = os.environ.get("KILN_TEST_TMPDIR") or None
    d = tempfile.mkdtemp(prefix="kiln-fs-it-", dir=base)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
