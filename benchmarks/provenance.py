"""What a benchmark's numbers were measured with: shared by the benchmark scripts (run as
``python benchmarks/NAME.py``, so this folder is on sys.path)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nfcli


def nfcli_commit() -> str:
    """The git commit of the nfcli being scored, with '-dirty' if its tree has changes."""
    root = Path(nfcli.__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown (not a git checkout)"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
