"""The project's import rules, and a checker that reads every module's imports with ``ast``.

Packages sit on floors; each may import the packages named in :data:`ALLOWED` (and itself). The
checker reports every import that crosses a line it may not, naming the module, the line and the
rule, and every cycle between modules (imports inside functions count: a lazy import that closes a
circle still ties the two modules together). docs/architecture.md draws the same map.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

GROUND = frozenset({"bridge", "bridge.protocol", "bridge.core", "bridge.data", "bridge.storage"})
# bridge.analytics: the sidecar (above) builds the store and hands the storage writer its feed
BELOW_ENGINE = GROUND | {"reports", "ml", "strategies", "bridge.risk", "bridge.audit", "bridge.feeds",
                         "bridge.analytics"}

# package -> packages it may import besides itself; listed bottom to top.
ALLOWED: dict[str, frozenset[str]] = {
    "bridge": frozenset(),                        # the package itself: a version string, nothing else
    "bridge.protocol": frozenset(),
    "bridge.core": frozenset({"bridge", "bridge.protocol"}),
    "bridge.data": frozenset({"bridge", "bridge.protocol", "bridge.core"}),
    "bridge.storage": frozenset({"bridge", "bridge.protocol", "bridge.core"}),
    "reports": GROUND,
    "ml": GROUND | {"reports"},
    "strategies": GROUND | {"reports", "ml"},
    "bridge.risk": GROUND,
    "bridge.feeds": GROUND,
    "bridge.audit": GROUND,
    "bridge.analytics": GROUND,                  # the ClickHouse store: fed by the writer, never in the hot thread
    "bridge.engine": BELOW_ENGINE,
    "bridge.transport": BELOW_ENGINE | {"bridge.engine"},
    "bridge.console": BELOW_ENGINE | {"bridge.engine", "bridge.transport"},
    "bridge.alerts": BELOW_ENGINE | {"bridge.engine", "bridge.transport"},
    "bridge.nt8": BELOW_ENGINE | {"bridge.engine", "bridge.transport"},
    "bridge.research": BELOW_ENGINE | {"bridge.engine", "bridge.transport", "bridge.nt8"},
    "bridge.cli": BELOW_ENGINE | {"bridge.engine", "bridge.transport", "bridge.nt8", "bridge.research",
                                  "bridge.console", "bridge.alerts"},
}
ROOTS = ("bridge", "strategies", "ml", "reports")
SKIP_PARTS = frozenset({"migrations", "__pycache__"})  # Alembic loads migrations by path, not by import


@dataclass(frozen=True)
class Import:
    module: str   # the importing module
    target: str   # the imported module (or the package, for names that are not modules)
    path: Path
    line: int


def package_of(module: str, allowed: dict[str, frozenset[str]] = ALLOWED) -> str | None:
    """The longest key of ``allowed`` that ``module`` is, or lies under."""
    best = None
    for pkg in allowed:
        if module == pkg or module.startswith(pkg + "."):
            if best is None or len(pkg) > len(best):
                best = pkg
    return best


def discover(root: Path, roots: Iterable[str] = ROOTS) -> dict[str, Path]:
    """Every module under the project's packages: dotted name -> file."""
    modules: dict[str, Path] = {}
    for top in roots:
        for path in sorted((root / top).rglob("*.py")):
            rel = path.relative_to(root)
            if SKIP_PARTS & set(rel.parts):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path, modules: dict[str, Path], roots: Iterable[str] = ROOTS) -> list[Import]:
    """The project imports of one module, resolved to modules where they name one."""
    roots = tuple(roots)
    is_pkg = path.name == "__init__.py"
    found: list[Import] = []

    def add(target: str, line: int) -> None:
        if target.split(".")[0] in roots:
            found.append(Import(module, target, path, line))

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                add(sub if sub in modules else source, node.lineno)
    return found


def violations(root: Path, allowed: dict[str, frozenset[str]] = ALLOWED, roots: Iterable[str] = ROOTS) -> list[str]:
    """Every forbidden import and every import cycle under ``root``, as readable lines."""
    modules = discover(root, roots)
    problems: list[str] = []
    graph: dict[str, set[str]] = {m: set() for m in modules}
    where: dict[tuple[str, str], Import] = {}
    for module, path in modules.items():
        mine = package_of(module, allowed)
        for imp in imports_of(module, path, modules, roots):
            theirs = package_of(imp.target, allowed)
            rel = imp.path.relative_to(root)
            if mine is None or theirs is None:
                unplaced = module if mine is None else imp.target
                problems.append(f"{rel}:{imp.line}: {unplaced} belongs to no package of the import rules")
            elif theirs != mine and theirs not in allowed[mine]:
                problems.append(f"{rel}:{imp.line}: {module} imports {imp.target}: "
                                f"{mine} may not import {theirs} (it may import: "
                                f"{', '.join(sorted(allowed[mine])) or 'nothing of the project'})")
            if imp.target in graph:
                graph[module].add(imp.target)
                where.setdefault((module, imp.target), imp)
    for cycle in _cycles(graph):
        steps = []
        for a, b in zip(cycle, cycle[1:] + cycle[:1]):
            imp = where[(a, b)]
            steps.append(f"{a} -> {b} ({imp.path.relative_to(root)}:{imp.line})")
        problems.append("import cycle: " + "; ".join(steps))
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component with more than one module (Tarjan),
    plus modules that import themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # iterative would be longer; the project is far below the recursion limit
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            components.append(comp)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    cycles = []
    for comp in components:
        if len(comp) == 1:
            if comp[0] in graph[comp[0]]:
                cycles.append(comp)
            continue
        members = set(comp)
        path = [min(comp)]  # walk inside the component until a module repeats
        seen = {path[0]: 0}
        while True:
            nxt = min(w for w in graph[path[-1]] if w in members)
            if nxt in seen:
                cycles.append(path[seen[nxt]:])
                break
            seen[nxt] = len(path)
            path.append(nxt)
    return cycles
