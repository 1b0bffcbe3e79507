"""Two import-linter contract types that the stock ones do not cover (used by pyproject's [tool.importlinter]).

- ``acyclic_modules``: no import cycle between any two modules of the package, counting imports inside
  functions (grimp records them as lazy imports); type-checking-only imports are left out by the session.
- ``no_private_names``: no module imports a name starting with ``_`` from another module of the package
  (dunders such as ``__version__`` excepted). A layer that needs another's private helper makes it public.

``lint-imports`` finds this module through ``PYTHONPATH=tests`` (see ``.ci/run``).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root) & modules)))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child) & modules))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


class AcyclicModulesContract(Contract):
    type_name = "acyclic_modules"

    package = fields.StringField()

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        modules = graph.find_descendants(str(self.package)) | {str(self.package)}
        cycles = _cycles(graph, modules)
        return ContractCheck(kept=not cycles, metadata={"cycles": cycles})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for cycle in check.metadata["cycles"]:
            output.print_error(f"import cycle: {' <-> '.join(cycle)}")
            output.new_line()


def private_imports(module: str, package: str) -> list[str]:
    """``module``'s imports of private names from other modules of ``package``, as 'line: statement'."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return []
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    here = module.split(".") if spec.origin.endswith("__init__.py") else module.split(".")[:-1]
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = here[: len(here) - node.level + 1] if node.level else []
        source = ".".join(base + ([node.module] if node.module else []))
        if source != package and not source.startswith(package + "."):
            continue
        for alias in node.names:
            name = alias.name
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                bad.append(f"{module}:{node.lineno}: from {source} import {name}")
    return bad


class NoPrivateNamesContract(Contract):
    type_name = "no_private_names"

    package = fields.StringField()

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        modules = sorted(graph.find_descendants(str(self.package)) | {str(self.package)})
        bad = [line for m in modules for line in private_imports(m, str(self.package))]
        return ContractCheck(kept=not bad, metadata={"bad": bad})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["bad"]:
            output.print_error(f"private name imported across modules: {line}")
            output.new_line()
