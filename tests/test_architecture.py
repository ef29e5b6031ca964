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
    # the call joins both halves to WebRTC; like cli.py it may import them (docs/calls.md)
    "iwcodec/call": {"eval", "kernels"},
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


def imports_the_call(path: Path) -> bool:
    """Whether ``path`` imports ``iwcodec.call`` or a module of it, in any spelling."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        if any(n == "iwcodec.call" or n.startswith("iwcodec.call.") for n in names):
            return True
    return False


def test_only_the_command_line_imports_the_call():
    """``iwcodec/call/`` sits above both halves, as the command line does: a half, the model,
    the bitstream or the evaluation that imported it would tie itself to WebRTC."""
    bad = []
    for folder in ("bitstream", "kernels", "codec", "sender", "receiver", "eval", "iwcodec"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel.parts[:2] == ("iwcodec", "call") or rel == Path("iwcodec/cli.py"):
                continue
            if imports_the_call(path):
                bad.append(str(rel))
    assert not bad, f"import iwcodec.call: {bad}"


def test_the_call_import_check_sees_each_spelling(tmp_path):
    spellings = {
        "a.py": "import iwcodec.call.session\n",
        "b.py": "from iwcodec.call import stats\n",
        "c.py": "from iwcodec import call\n",
        "d.py": "from iwcodec.call.media import Channels\n",
        "e.py": "from iwcodec import keyframe\nimport iwcodec.callbacks\n",
    }
    for name, text in spellings.items():
        (tmp_path / name).write_text(text)
    assert [n for n in spellings if imports_the_call(tmp_path / n)] == [
        "a.py",
        "b.py",
        "c.py",
        "d.py",
    ]
