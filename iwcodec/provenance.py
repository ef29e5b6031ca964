"""Where a result came from: the commit of the code that made it (every results JSON records it),
and whether the checkout differed from that commit."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _git(*args: str, timeout: float) -> str | None:
    """The output of ``git ARGS`` run in this checkout, or None where git fails or is absent
    (an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str | None:
    """The checkout's HEAD commit, or None outside a git checkout (an installed wheel)."""
    out = _git("rev-parse", "HEAD", timeout=10)
    return (out or "").strip() or None


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (the numbers may not be reproducible);
    None outside a git checkout."""
    out = _git("status", "--porcelain", "--untracked-files=no", timeout=30)
    return None if out is None else bool(out.strip())


__all__ = ["git_commit", "git_dirty"]
