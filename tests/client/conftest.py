import sys
from pathlib import Path

# The client of this checkout, not whichever one the shared environment installed in editable
# mode (another worktree's): a change to client/ is tested with the server it goes with.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "client"))

from tests.live import live_world  # noqa: F401 - a fixture
