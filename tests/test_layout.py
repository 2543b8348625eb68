"""The project's layout, read from the source with ast: no import cycle among the top-level files, project imports
only at the top of a file, the README's file table in import order (each file after every project file it
imports), every file at most 400 lines, and the pure-Python files free of third-party imports."""
import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted(ROOT.glob("*.py"))
PROJECT = {f.stem for f in FILES}
MAX_LINES = 400


def imported(node):
    """The top-level module names an import statement names."""
    if isinstance(node, ast.Import):
        return [a.name.split(".")[0] for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []


def project_imports(path):
    """{project module this file imports anywhere}: module-level, under if/try, or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return {m for node in ast.walk(tree) for m in imported(node) if m in PROJECT and m != path.stem}


GRAPH = {f.stem: project_imports(f) for f in FILES}


def test_there_are_files_to_check():
    assert {"steps", "model", "prm", "bon", "metrics", "recipe", "train", "bench"} <= PROJECT


def test_no_import_cycle():
    state, cycles = {}, []  # depth-first search: "active" on the current path, "done" after

    def visit(m, path):
        state[m] = "active"
        for n in sorted(GRAPH[m]):
            if state.get(n) == "active":
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"
    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_project_import_inside_a_function():
    found = []
    for f in FILES:
        tree = ast.parse(f.read_text(encoding="utf-8"), str(f))
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                for node in ast.walk(fn):
                    found += [f"{f.name}:{node.lineno} ({fn.name if hasattr(fn, 'name') else 'lambda'}) imports {m}"
                              for m in imported(node) if m in PROJECT]
    assert found == []


def readme_order():
    """The files of README.md's table, in its order: the rows that start with | `NAME.py`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^\| `([A-Za-z_][\w]*)\.py`", text, re.M)


def test_readme_table_lists_every_file_after_the_files_it_imports():
    order = readme_order()
    assert len(order) == len(set(order)), f"listed twice: {sorted({m for m in order if order.count(m) > 1})}"
    assert sorted(PROJECT - set(order)) == [], "top-level files missing from README.md's table"
    assert sorted(set(order) - PROJECT) == [], "README.md's table lists files that do not exist"
    late = [f"{m}.py imports {n}.py, listed after it" for i, m in enumerate(order) for n in sorted(GRAPH[m])
            if order.index(n) > i]
    assert late == []


@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_file_is_at_most_400_lines(path):
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, f"{path.name}: {n} lines"


@pytest.mark.parametrize("name,allowed", [("steps", set()), ("answers", {"math_verify", "sympy"})])
def test_light_files_import_no_torch(name, allowed):
    """steps.py is pure Python (its docstring; issues 11, 12); answers.py adds only math-verify and sympy (issue 15)."""
    tree = ast.parse((ROOT / f"{name}.py").read_text(encoding="utf-8"))
    third = {m for node in ast.walk(tree) for m in imported(node)} - set(sys.stdlib_module_names) - PROJECT
    assert third == allowed, f"{name}.py imports {sorted(third)}"
