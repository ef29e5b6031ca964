"""The folder import rules of docs/architecture.md, checked on the source (ast, no imports run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "bitstream": {"torch", "codec", "sender", "receiver", "kernels", "eval", "av"},
    "kernels": {"codec", "sender", "receiver", "eval", "bitstream"},
    "codec": {"sender", "receiver", "eval", "bitstream", "av", "mediapipe"},
    "sender": {"receiver", "eval"},
    "receiver": {"sender", "eval"},
    "eval": set(),
}
# iwcodec/ holds the command line (which may import everything) and leaves every folder uses.
LEAF_FORBIDDEN = {"torch", "codec", "sender", "receiver", "eval", "kernels"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_shared_leaves_import_no_half():
    bad = []
    for path in sorted((ROOT / "iwcodec").glob("*.py")):
        if path.name in ("cli.py", "__main__.py"):
            continue
        wrong = imported_roots(path) & LEAF_FORBIDDEN
        if wrong:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(wrong)}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_folder_imports_follow_the_rules(folder):
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        wrong = imported_roots(path) & FORBIDDEN[folder]
        if wrong:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(wrong)}")
    assert not bad, "\n".join(bad)


def test_nothing_imports_eval():
    for folder in ("bitstream", "kernels", "codec", "sender", "receiver"):
        for path in (ROOT / folder).rglob("*.py"):
            assert "eval" not in imported_roots(path), path
