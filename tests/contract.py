"""The run-folder contract checker of the project's shared/ folder (DESIGN.md, "Files of a run"). It lives beside
the repository, not in it: where it is absent (a fresh clone) a test that needs it is reported as skipped."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECKER = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_run_folder.py"


def check_run_folder(folder: Path) -> None:
    if not CHECKER.exists():
        pytest.skip(f"the run-folder contract checker is not at {CHECKER} (it lives in the project's shared/ "
                    "folder, outside this repository)")
    done = subprocess.run([sys.executable, str(CHECKER), str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
