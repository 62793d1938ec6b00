"""The package's import rules, checked on the source of every module (docs/concepts.md, "Packages by stage").

Imports only go down: no module imports names from the ``__init__`` of a package it belongs to (the old
``from . import __version__`` cycle), ``losses/`` imports nothing but torch, the standard library, itself and
``constants.py``, no private (underscore) name is imported from another module, and the import graph has no cycle.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

import hf_distill

PACKAGE = Path(hf_distill.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ["hf_distill", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}


def _imports(module: str):
    """``(line, imported module, names)`` of every import in ``module``, function-level ones included; relative
    imports resolved (``names`` is ``None`` for ``import x``)."""
    path = MODULES[module]
    package = module if module in PACKAGES else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, None
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            yield node.lineno, target, [alias.name for alias in node.names]


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(PACKAGE.parent)}:{line}"


def test_the_modules_are_found():
    assert {"hf_distill.losses.objective", "hf_distill.models.facts", "hf_distill.version"} <= set(MODULES)


def test_no_module_imports_names_from_the_init_of_its_own_package():
    """A module inside a package that imports a name the package's ``__init__`` defines runs into that ``__init__``
    half-initialised (``from . import __version__``); ``__version__`` lives in ``version.py``."""
    bad = []
    for module in MODULES:
        own = {module.rsplit(".", i)[0] for i in range(module.count(".") + 1)} & PACKAGES
        if module in PACKAGES:
            own.discard(module)  # an __init__ gathers its own submodules
        for line, target, names in _imports(module):
            if target in own:
                bad += [f"{_where(module, line)}: {name}" for name in names or [] if f"{target}.{name}" not in MODULES]
    assert not bad, f"names imported from the __init__ of a package the module is in: {bad}"


def test_losses_import_only_torch_the_standard_library_themselves_and_constants():
    allowed = {"__future__", "torch", *sys.stdlib_module_names}
    bad = []
    for module in (m for m in MODULES if m == "hf_distill.losses" or m.startswith("hf_distill.losses.")):
        for line, target, _ in _imports(module):
            inside = target == "hf_distill.losses" or target.startswith("hf_distill.losses.")
            if not (inside or target == "hf_distill.constants" or target.split(".")[0] in allowed):
                bad.append(f"{_where(module, line)}: {target}")
    assert not bad, f"losses/ imports outside torch, the standard library, losses/ and constants.py: {bad}"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_is_imported_from_another_module():
    bad = []
    for module in MODULES:
        for line, target, names in _imports(module):
            if target.startswith("hf_distill"):
                bad += [f"{_where(module, line)}: {target}.{name}" for name in names or [] if _private(name)]
    assert not bad, f"private helpers imported across modules (make them public or move them): {bad}"


def _graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (a name that is a submodule counts as that submodule)."""
    graph = {}
    for module in MODULES:
        edges = set()
        for _, target, names in _imports(module):
            if target.startswith("hf_distill"):
                edges |= {f"{target}.{n}" if f"{target}.{n}" in MODULES else target for n in names or [None]}
        graph[module] = edges & set(MODULES)
    return graph


# the stages of the package, lowest first (docs/concepts.md, "How a batch flows"): a module imports from its own
# stage or a lower one, never from a higher one
STAGES = [
    ["constants", "version", "file_checks", "schedules", "checks", "launch", "cpu_memory"],
    ["models"],
    ["mapping", "losses", "cross_tokenizer"],
    ["distributed", "teachers", "distillation_config"],
    ["data", "tasks"],
    ["generation", "checkpoints", "report", "publish"],
    ["distillation_plan", "distillation_trainer", "generations"],
    ["validation"],
    ["recipes", "cli", "__init__"],
]


def _part(module: str) -> str:
    """The top-level part of the package a module belongs to: ``losses`` for ``hf_distill.losses.task``."""
    return module.split(".")[1] if "." in module else "__init__"


def test_every_part_of_the_package_has_a_stage():
    parts = {_part(m) for m in MODULES}
    staged = [name for stage in STAGES for name in stage]
    assert sorted(parts) == sorted(staged), "add a new module or package to STAGES (and to docs/concepts.md)"


def test_imports_only_go_down_the_stages():
    stage = {name: i for i, names in enumerate(STAGES) for name in names}
    graph = _graph()
    up = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if stage[_part(target)] > stage[_part(module)]
    ]
    assert not up, f"imports up the stages: {up}"


def test_imports_only_go_down_the_graph_has_no_cycle():
    graph, state, path = _graph(), {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                pytest.fail(f"import cycle: {' -> '.join(path[path.index(target) :] + [target])}")
            if target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def _definitions(pattern: str) -> list[str]:
    """``module.name`` of every function (at any depth) and top-level assignment whose name matches ``pattern``."""
    found = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
        names += [
            t.id for stmt in tree.body if isinstance(stmt, ast.Assign) for t in stmt.targets if isinstance(t, ast.Name)
        ]
        found += [f"{module}.{name}" for name in names if re.fullmatch(pattern, name)]
    return sorted(found)


@pytest.mark.parametrize(
    "pattern, where",
    [
        ("IGNORE_INDEX", ["hf_distill.constants.IGNORE_INDEX"]),
        ("RESULTS_FILE", ["hf_distill.constants.RESULTS_FILE"]),
        ("__version__", ["hf_distill.version.__version__"]),
        (r"_?unwrap\w*", ["hf_distill.models.facts.unwrap"]),
        (r"_?pad_rows", ["hf_distill.data.padding.pad_rows"]),
    ],
)
def test_shared_names_are_defined_once(pattern, where):
    assert _definitions(pattern) == where
