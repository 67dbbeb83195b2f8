import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from spawn_helpers import tmp_path  # noqa: E402,F401
