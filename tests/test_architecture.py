"""The folder import rules of docs/architecture.md, checked on the source (ast, no imports run)."""

from __future__ import annotations

import ast
import functools
import os
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


@functools.cache
def parsed(path: Path) -> ast.Module:
    """The syntax tree of ``path``, parsed once for all the checks (they only read it)."""
    return ast.parse(path.read_text(), str(path))


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(parsed(path)):
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


# benchmarks/ measures the kernels and the model, not a half of the codec; no library folder
# may lean on it (or on a tools/ folder, should one come back).
BENCHMARKS_FORBIDDEN = {"sender", "receiver", "eval", "tools"}
LIBRARY_FOLDERS = ("bitstream", "kernels", "codec", "sender", "receiver", "eval", "iwcodec")


def python_files() -> list[Path]:
    """Every Python file of the repository that git tracks or would track."""
    skip = {".venv", ".cache", ".carry", ".whl", "build", "dist", ".git"}
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]  # not walked at all (.venv is large)
        found += [Path(folder, f) for f in files if f.endswith(".py")]
    return sorted(found)


def test_benchmarks_import_no_half():
    bad = []
    for path in sorted((ROOT / "benchmarks").rglob("*.py")):
        wrong = imported_roots(path) & BENCHMARKS_FORBIDDEN
        if wrong:
            bad.append(f"{path.relative_to(ROOT)} imports {sorted(wrong)}")
    assert not bad, "\n".join(bad)


def test_no_tools_folder_of_scripts():
    """What users and maintainers need is a library function with an ``iwcodec`` subcommand;
    a one-off study stays in git history, named by the README of the results it made."""
    scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tools").rglob("*.py"))
    assert not scripts, f"scripts in tools/: {scripts}"


def test_no_library_imports_tools_or_benchmarks():
    bad = []
    for folder in LIBRARY_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            wrong = imported_roots(path) & {"tools", "benchmarks"}
            if wrong:
                bad.append(f"{path.relative_to(ROOT)} imports {sorted(wrong)}")
    assert not bad, "\n".join(bad)


PATH_TRICKS = ("addsitedir", "spec_from_file_location")


def path_tricks(path: Path, root: Path = ROOT) -> list[str]:
    """Where ``path`` edits the import path (``sys.path``, ``site.addsitedir``) or loads a
    module from a file name (``importlib.util.spec_from_file_location``): the ways a script
    folder gets imported without being a package."""
    found = []
    rel = path.relative_to(root)
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Attribute):
            is_sys = isinstance(node.value, ast.Name) and node.value.id == "sys"
            if (is_sys and node.attr == "path") or node.attr in PATH_TRICKS:
                found.append(f"{rel}:{node.lineno} {'sys.' if is_sys else ''}{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module in ("sys", "site", "importlib.util"):
            names = {a.name for a in node.names} & {"path", *PATH_TRICKS}
            found += [f"{rel}:{node.lineno} from {node.module} import {n}" for n in sorted(names)]
    return found


def test_nothing_edits_the_import_path():
    """Everything is imported as a package (pyproject's package list; tests/ helpers sit next
    to the tests, where pytest looks), so no file needs to edit sys.path."""
    found = [hit for path in python_files() for hit in path_tricks(path)]
    assert not found, "\n".join(found)


def test_the_import_path_check_sees_each_trick(tmp_path):
    tricks = {
        "a.py": "import sys\nsys.path.insert(0, '.')\n",
        "b.py": "import sys\nsys.path[:0] = ['.']\n",
        "c.py": "from sys import path\npath.append('.')\n",
        "d.py": "import site\nsite.addsitedir('.')\n",
        "e.py": "import importlib.util\nimportlib.util.spec_from_file_location('x', 'x.py')\n",
        "f.py": "import sys\nprint(sys.argv)\n",
    }
    for name, text in tricks.items():
        (tmp_path / name).write_text(text)
    caught = [name for name in tricks if path_tricks(tmp_path / name, tmp_path)]
    assert caught == ["a.py", "b.py", "c.py", "d.py", "e.py"]


def imports_the_call(path: Path) -> bool:
    """Whether ``path`` imports ``iwcodec.call`` or a module of it, in any spelling."""
    for node in ast.walk(parsed(path)):
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
