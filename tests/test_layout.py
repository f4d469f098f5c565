"""The layout's rules, read from the source: no module imports its own package's ``__init__``
back (built-ins register through ``api`` modules, versions come from ``suite.version``);
packages import one way (attentions and tasks know nothing of suite or results; results knows
nothing of models); mlflow, numba and triton are imported only where they belong; no variant
or task is named by code outside its own file."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import attentions
import tasks

from .conftest import ROOT

PACKAGES = ("attentions", "tasks", "suite", "results")


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, names) of every import in a file, function bodies included."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            out.append((module, [alias.name for alias in node.names]))
    return out


def back_imports(path: Path) -> list[str]:
    """Names a module takes from its own package's ``__init__`` (submodules excepted)."""
    rel = path.relative_to(ROOT)
    if rel.name == "__init__.py":
        return []
    package = ".".join(rel.parent.parts)
    found = []
    for module, names in imports(path):
        if module != package:
            continue
        for name in names:
            if not (path.parent / f"{name}.py").exists() and not (path.parent / name).is_dir():
                found.append(f"{name} from {package}")
    return found


def test_no_module_imports_its_own_package_init():
    bad = {str(p.relative_to(ROOT)): back_imports(p) for p in modules()}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, bad


@pytest.mark.parametrize("pkg,forbidden", [("attentions", ("suite", "results")),
                                           ("tasks", ("suite", "results")),
                                           ("results", ("suite", "attentions"))])
def test_imports_flow_one_way(pkg, forbidden):
    for path in sorted((ROOT / pkg).rglob("*.py")):
        for module, _ in imports(path):
            assert module.split(".")[0] not in forbidden, f"{path.relative_to(ROOT)}: {module}"


@pytest.mark.parametrize("library,homes", [
    ("mlflow", ("results/",)),
    ("numba", ("attentions/backends/numba",)),
    ("triton", ("attentions/backends/triton", "suite/bench/cuda.py")),  # its GPU timer
])
def test_heavy_libraries_stay_home(library, homes):
    for path in modules():
        rel = str(path.relative_to(ROOT))
        if any(m.split(".")[0] == library for m, _ in imports(path)):
            assert rel.startswith(homes), rel


def test_no_variant_or_task_named_outside_its_file():
    """A string literal equal to a built-in's name appears only in that built-in's file. The
    exceptions are selections by name: the tasks a profile trains, the cells a benchmark times
    by default."""
    own = {n: attentions.get(n).__module__ for n in attentions.names()
           if attentions.get(n).__module__.startswith("attentions.")}
    own |= {n: tasks.REGISTRY.get(n).__module__ for n in tasks.names()
            if tasks.REGISTRY.get(n).__module__.startswith("tasks.")}
    kinds = {"softmax", "entmax", "topk"}  # also the normalizer kinds the kernels dispatch on
    for path in modules():
        rel = path.relative_to(ROOT)
        module = ".".join(rel.with_suffix("").parts)
        if module == "suite.profiles" or module.startswith("suite.bench."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value.split(":")[0]
                if name in own and own[name] != module and name not in kinds:
                    pytest.fail(f"{rel}:{node.lineno} names {node.value!r}")
