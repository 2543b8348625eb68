"""The project's layout, read from the source with ast. Three layers, imports running one way:

- common/ (the plumbing: loader, tiny model, formats, suite, metrics, command line) imports only common/ and
  steps.py, the one paper file below it (segmentation, which imports no project file);
- the paper's files at the top level import common/ and the paper files listed before them in the README's file
  map, never lab/;
- lab/ (evidence, report, controls, speed, serving) imports both; bench.py imports all three.
Plus: no import cycle, project imports only at the top of a file, every file in the README's map in import order,
no assigned lambda and no one-letter module alias (they made the code hard to read), the light files light."""
import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = sorted(ROOT.glob("*.py")) + sorted(ROOT.glob("common/*.py")) + sorted(ROOT.glob("lab/*.py"))


def module_name(path):
    """prm.py -> "prm"; common/data.py -> "common.data"; common/__init__.py -> "common"."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {module_name(p): p for p in PATHS}
PACKAGES = {"common", "lab"}


def imported(node):
    """The project modules one import statement names ("from common import data" -> common.data)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in MODULES]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module in PACKAGES:
            return [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
        return [node.module] if node.module.split(".")[0] in MODULES else []
    return []


def tree(path):
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


GRAPH = {m: {n for node in ast.walk(tree(p)) for n in imported(node)} - {m} for m, p in MODULES.items()}


def layer(m):
    if m.startswith("common"):
        return "plumbing"
    if m.startswith("lab"):
        return "lab"
    return "bench" if m == "bench" else "paper"


def test_the_three_layers_are_there():
    assert {"steps", "prm", "orm", "judge", "tree_search", "omegaprm", "train", "bon", "bench", "policy"} <= set(MODULES)
    assert {"common.model", "common.data", "common.tasks", "common.metrics", "common.cli"} <= set(MODULES)
    assert {"lab.evidence", "lab.report", "lab.api", "lab.serve"} <= set(MODULES)


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


def test_segmentation_imports_no_project_file():
    assert GRAPH["steps"] == set()


def test_the_plumbing_imports_only_the_plumbing_and_segmentation():
    bad = {m: sorted(n for n in GRAPH[m] if layer(n) != "plumbing" and n != "steps")
           for m in MODULES if layer(m) == "plumbing"}
    assert {m: v for m, v in bad.items() if v} == {}


def test_the_paper_files_never_import_the_lab():
    bad = {m: sorted(n for n in GRAPH[m] if layer(n) in ("lab", "bench")) for m in MODULES if layer(m) == "paper"}
    assert {m: v for m, v in bad.items() if v} == {}


def test_the_lab_imports_no_bench():
    assert [m for m in MODULES if layer(m) == "lab" and "bench" in GRAPH[m]] == []


def test_no_project_import_inside_a_function():
    found = []
    for m, path in MODULES.items():
        for fn in ast.walk(tree(path)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                for node in ast.walk(fn):
                    found += [f"{path.name}:{node.lineno} imports {n}" for n in imported(node)]
    assert found == []


def readme_order():
    """The files of README.md's file map, in its order: the rows that start with | `PATH.py`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [p.replace("/", ".") for p in re.findall(r"^\| `([\w/]+)\.py`", text, re.M)]


def test_readme_file_map_lists_every_file_after_the_files_it_imports():
    order = readme_order()
    listed = set(order)
    assert len(order) == len(listed), f"listed twice: {sorted({m for m in order if order.count(m) > 1})}"
    files = {m for m in MODULES if m not in PACKAGES}  # the packages' __init__ say only what the folder holds
    assert sorted(files - listed) == [], "files missing from README.md's file map"
    assert sorted(listed - files) == [], "README.md's file map lists files that do not exist"
    late = [f"{m} imports {n}, listed after it" for i, m in enumerate(order) for n in sorted(GRAPH[m])
            if n in listed and order.index(n) > i]
    assert late == []


def test_no_assigned_lambda_and_no_lambda_returning_a_lambda():
    found = []
    for m, path in MODULES.items():
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} assigns a lambda")
            if isinstance(node, ast.Lambda) and isinstance(node.body, ast.Lambda):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} a lambda returns a lambda")
    assert found == []


def test_no_one_letter_alias_of_a_project_module():
    """(torch.nn.functional as F stays: every PyTorch reader knows it.)"""
    found = [f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name} as {a.asname}"
             for m, path in MODULES.items() for node in ast.walk(tree(path))
             if isinstance(node, (ast.Import, ast.ImportFrom)) and imported(node) for a in node.names
             if a.asname and len(a.asname) == 1]
    assert found == []


@pytest.mark.parametrize("name,allowed", [("steps", set()), ("common.answers", {"math_verify", "sympy"})])
def test_light_files_import_no_torch(name, allowed):
    """steps.py is pure Python; answers.py adds only math-verify and sympy."""
    third = {n.split(".")[0] for node in ast.walk(tree(MODULES[name]))
             for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])}
    third -= set(sys.stdlib_module_names) | {"common", "lab"} | set(MODULES)
    assert third == allowed, f"{name} imports {sorted(third)}"
