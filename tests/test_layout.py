"""The package's layout rules (issue 12), checked on the source with ``ast``: which package may import
which, where torch may be imported, private names kept private, rules defined once, and tests/ mirroring
mapkit/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mapkit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(tree) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` of every import, at any depth (lazy imports too)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno))
    return out


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _violations(importer_packages, allowed=None, forbidden=()):
    bad = []
    for name, tree in MODULES.items():
        if not _in(name, *importer_packages):
            continue
        for target, _names, line in _imports(tree):
            if not _in(target, "mapkit"):
                continue
            if allowed is not None and not _in(target, *allowed):
                bad.append(f"{name}:{line} imports {target}")
            if forbidden and _in(target, *forbidden):
                bad.append(f"{name}:{line} imports {target}")
    return bad


def test_preprocess_imports_only_errors_settings_and_itself():
    assert _violations(["mapkit.preprocess"], allowed=["mapkit.errors", "mapkit.settings", "mapkit.preprocess"]) == []


def test_datasets_never_import_training_runs_writers_or_the_cli():
    assert _violations(["mapkit.datasets"], forbidden=["mapkit.train", "mapkit.runs", "mapkit.writers",
                                                       "mapkit.cli"]) == []


def test_writers_import_only_the_pure_core():
    assert _violations(["mapkit.writers"], allowed=["mapkit.errors", "mapkit.settings", "mapkit.preprocess",
                                                    "mapkit.writers"]) == []


def test_library_never_imports_runs_or_the_cli():
    library = ["mapkit.preprocess", "mapkit.datasets", "mapkit.writers", "mapkit.train", "mapkit.errors",
               "mapkit.settings", "mapkit.progress"]
    assert _violations(library, forbidden=["mapkit.runs", "mapkit.cli"]) == []
    assert _violations(["mapkit.runs"], forbidden=["mapkit.cli"]) == []


def test_torch_only_in_training_and_the_torch_datasets():
    bad = [f"{name}:{line}" for name, tree in MODULES.items()
           if not _in(name, "mapkit.train", "mapkit.datasets.torch_datasets", "mapkit.datasets.object_stream",
                       "mapkit.runs.generate")
           for target, _n, line in _imports(tree) if _in(target, "torch")]
    assert bad == []


def test_private_names_stay_in_their_module():
    bad = [f"{name}:{line} takes {n} from {target}" for name, tree in MODULES.items()
           for target, names, line in _imports(tree) if _in(target, "mapkit")
           for n in names if n.startswith("_") and not n.startswith("__")]
    assert bad == []


def _assigned(name: str) -> list[str]:
    where = []
    for module, tree in MODULES.items():
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, ast.AnnAssign) else []
            for t in targets:
                names = [e.id for e in t.elts] if isinstance(t, ast.Tuple) else [getattr(t, "id", None)]
                if name in names:
                    where.append(module)
    return where


def _defined(name: str) -> list[str]:
    return [module for module, tree in MODULES.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name]


@pytest.mark.parametrize("constant", ["DIFFICULTIES", "DIFFICULTY_SPECS", "GAP_NAMES", "LEVEL_DATASETS", "FPS",
                                      "PAD", "BOS", "EOS", "UNK", "KIND_ROOTS"])
def test_each_rule_is_defined_once(constant):
    assert len(_assigned(constant)) == 1, _assigned(constant)


@pytest.mark.parametrize("function", ["song_end_beat", "split_by_song", "dumps", "write_level_files"])
def test_each_helper_is_defined_once(function):
    assert len(_defined(function)) <= 1, _defined(function)


def test_no_fps_default_but_the_time_base():
    bad = []
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
                defaults += node.args.kw_defaults
                for a, d in zip(args, defaults):
                    if a.arg == "fps" and isinstance(d, ast.Constant) and d.value is not None:
                        bad.append(f"{module}.{node.name}: fps={d.value}")
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "fps" and isinstance(
                    node.value, ast.Constant):
                bad.append(f"{module}: fps = {node.value.value}")
    assert bad == []


def test_tests_mirror_the_package():
    """Every test file sits in the folder of its package and names an existing module (scenarios: end_to_end)."""
    bad = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        rel = path.relative_to(ROOT / "tests")
        if rel.parts[0] == "end_to_end" or rel.name == "test_layout.py":
            continue
        package = PACKAGE.joinpath(*rel.parts[:-1])
        stem = rel.stem[len("test_"):]
        modules = {p.stem for p in package.glob("*.py")} | {p.name for p in package.iterdir() if p.is_dir()}
        if not any(stem == m or stem.startswith(m + "_") for m in modules):
            bad.append(str(rel))
    assert bad == []


#: The most lines a function in mapkit/ may have, counted from its ``def`` line to its last line, its
#: docstring excluded (documentation is never what makes a function too long to read).
MAX_FUNCTION_LINES = 80
#: What a longer function's docstring says (with the reason after it) when it truly reads better whole.
LONG_FUNCTION_MARKER = "one function because"


def _function_lengths() -> list[tuple[str, int, str]]:
    """``(module:function:line, code lines, docstring)`` of every function and method in mapkit/, nested ones too."""
    out = []
    for module, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node, clean=False)
                if doc is not None:
                    first = node.body[0]
                    n -= first.end_lineno - first.lineno + 1
                out.append((f"{module}:{node.name}:{node.lineno}", n, doc or ""))
    return out


def test_functions_are_short_unless_their_docstring_says_why():
    lengths = _function_lengths()
    assert any(n > 40 for _, n, _ in lengths)  # the count reads real code
    too_long = [f"{name} ({n} lines)" for name, n, doc in lengths
                if n > MAX_FUNCTION_LINES and LONG_FUNCTION_MARKER not in " ".join(doc.lower().split())]
    assert not too_long, (f"functions over {MAX_FUNCTION_LINES} lines (docstring excluded) without "
                          f"'{LONG_FUNCTION_MARKER} ...' in their docstring: {too_long}")
