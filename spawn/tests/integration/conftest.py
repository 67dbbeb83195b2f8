import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from spawn_helpers import tmp_path, world  # noqa: E402,F401
