"""No two modules of gatekit import each other, directly or through a loop.

Imports are read with ``ast`` from the source, every ``import`` and ``from ... import``
statement, including those inside functions (a lazy import is still a dependency).  A
package's ``__init__`` counts as the package: ``from . import ops`` and
``from .ops import gated_conv2d`` both depend on ``gatekit.ops``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import gatekit

ROOT = Path(gatekit.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = ["gatekit", *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Each gatekit module -> the gatekit modules it imports (anywhere in its code)."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                # ``from pkg import sub`` depends on the submodule when there is one, else
                # on ``pkg`` (a name defined there).  A submodule's own parent packages
                # load before it whatever it imports, so they are not edges.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    for alias in node.names
                ]
            else:
                continue
            for target in targets:
                # The longest prefix that is a gatekit module: gatekit.ops.reference.x -> ...reference
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _edges_within(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    inside = set(component)
    return [f"{a} -> {b}" for a in component for b in sorted(graph[a] & inside)]


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    assert not found, "gatekit modules import each other: " + "; ".join(
        ", ".join(_edges_within(graph, c)) for c in found
    )


def _parents_of(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_module_imports_its_package_root() -> None:
    # gatekit/__init__ imports (nearly) everything, so importing it from inside is a loop
    # the cycle check above also sees; this names the usual culprit directly.
    graph = import_graph()
    bad = [f"{m} -> {d}" for m, d_set in graph.items() for d in d_set if d in _parents_of(m)]
    assert not bad, f"submodules import their own package: {bad}"


def test_the_checker_sees_cycles(tmp_path: Path) -> None:
    # The check must be able to fail: a loop through a lazy import inside a function.
    pkg = tmp_path / "gatekit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import x\n")
    (pkg / "c.py").write_text("import gatekit.a\n")
    graph = import_graph(pkg)
    assert graph["gatekit.a"] == {"gatekit.sub.b"}
    assert cycles(graph) == [["gatekit.a", "gatekit.c", "gatekit.sub.b"]]
    (pkg / "c.py").write_text("import torch\n")
    assert cycles(import_graph(pkg)) == []


def _package(module: str, files: dict[str, Path]) -> str:
    """The package a module belongs to: itself for a package's ``__init__``, else its parent."""
    return module if files[module].name == "__init__.py" else module.rpartition(".")[0]


def private_imports(root: Path = ROOT) -> list[str]:
    """Each use of a private name (a leading underscore, dunders aside) that one gatekit
    module takes from outside its reach: a private name of a module of another package
    (``from ..inference.skip import _rewrite``, or ``skip._rewrite`` on a module imported
    from there), or anything from a private module of another package (``from
    ..inference._skip import rewrite``).  A package's private modules are for it and its
    subpackages: ``gatekit._errors`` serves every package of gatekit, and
    ``gatekit.inference._skip`` only ``gatekit.inference``."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}

    def private(name: str) -> bool:
        return name.startswith("_") and not name.startswith("__")

    def outside(package: str, owner: str) -> bool:
        return package != owner and not package.startswith(owner + ".")

    found: list[str] = []
    for name, path in files.items():
        package = _package(name, files)
        tree = ast.parse(path.read_text(), filename=str(path))
        modules: dict[str, str] = {}  # local name -> the gatekit module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in files:
                        modules[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node.level, node.module)
                if base not in files:
                    continue
                base_private = private(base.rpartition(".")[2])
                for alias in node.names:
                    if f"{base}.{alias.name}" in files:  # a module, not a name
                        modules[alias.asname or alias.name] = f"{base}.{alias.name}"
                        if private(alias.name) and outside(package, base):
                            found.append(f"{name}: from {base} import {alias.name}")
                    elif ((private(alias.name) or base_private)
                          and outside(package, _package(base, files))):
                        found.append(f"{name}: from {base} import {alias.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in modules and private(node.attr)):
                target = modules[node.value.id]
                if f"{target}.{node.attr}" not in files and _package(target, files) != package:
                    found.append(f"{name}: {node.value.id}.{node.attr} (from {target})")
    return sorted(set(found))


def test_no_private_name_crosses_a_package() -> None:
    found = private_imports()
    assert not found, (
        "gatekit modules take private names from another package; make the name public "
        "(no leading underscore) in the module where the idea lives, and import that: "
        + "; ".join(found)
    )


def test_the_checker_sees_private_imports(tmp_path: Path) -> None:
    # The check must be able to fail: both spellings, and not within one package.
    pkg = tmp_path / "gatekit"
    (pkg / "inference").mkdir(parents=True)
    (pkg / "export").mkdir()
    for f in ("__init__.py", "inference/__init__.py", "export/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "inference" / "_skip.py").write_text("def _rewrite(): ...\ndef rewrite(): ...\n")
    (pkg / "inference" / "_conv.py").write_text("from ._skip import _rewrite\n")
    (pkg / "inference" / "plan.py").write_text("def _walk(): ...\ndef walk(): ...\n")
    (pkg / "_errors.py").write_text("class GatekitError(Exception): ...\n")
    (pkg / "export" / "_net.py").write_text(
        "from ..inference._skip import _rewrite, rewrite\n"
        "from ..inference import _skip, plan\n"
        "from ..inference.plan import _walk, walk\n"
        "from .._errors import GatekitError\n"
        "_skip._rewrite, _skip.rewrite, plan._walk, plan.walk\n"
    )
    assert private_imports(pkg) == [
        "gatekit.export._net: _skip._rewrite (from gatekit.inference._skip)",
        "gatekit.export._net: from gatekit.inference import _skip",
        "gatekit.export._net: from gatekit.inference._skip import _rewrite",
        "gatekit.export._net: from gatekit.inference._skip import rewrite",
        "gatekit.export._net: from gatekit.inference.plan import _walk",
        "gatekit.export._net: plan._walk (from gatekit.inference.plan)",
    ]
