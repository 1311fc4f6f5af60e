"""Running the command line as a user does: a fresh ``python -m argmaxcheck`` process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "data" / "tiny-gpt2"


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "argmaxcheck", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600, check=False)
