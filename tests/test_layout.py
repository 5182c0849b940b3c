"""The layout rules of the scripts and the training package, read from the source with ``ast``.

- Each training flag is named in at most 3 files of ``examples/``: its declaration (a field of
  ``gaternet_training.config``) and the modules that use it.
- No script edits ``sys.path``, and none imports a private name from another script.

(That gatekit's docstring names every name of ``__all__`` is checked by
``tests/test_docs.py::test_package_docstring_names_every_public_name``, and that no gatekit
module imports another package's private module by ``tests/test_import_graph.py``.)
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from collections import defaultdict
from pathlib import Path

from gaternet_training import config as config_module

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CONFIGS = (config_module.RunConfig, config_module.CifarConfig, config_module.ImageNetConfig)
MAX_FILES = 3


# --------------------------------------------------------------------------------------
# each training flag is named in at most 3 files
# --------------------------------------------------------------------------------------


def _docstrings(tree: ast.Module) -> set[int]:
    """The ids of the docstring constants of ``tree`` (prose for readers, not code)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                found.add(id(first.value))
    return found


def _own_flags(tree: ast.Module) -> set[int]:
    """The ids of the strings a script declares its own flags with (``add_argument("--x")``):
    another script's flag, even when it shares a training flag's name."""
    return {id(arg) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument" for arg in node.args}


def _call_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _is_config(node: ast.expr) -> bool:
    """``config`` or ``<x>.config``: how the training code names a run's config."""
    return ((isinstance(node, ast.Name) and node.id == "config")
            or (isinstance(node, ast.Attribute) and node.attr == "config"))


def fields_named(source: str, fields: set[str]) -> set[str]:
    """The fields of the config that ``source`` names in its code: a read of ``config.<field>``
    (or ``getattr(config, "<field>")``), a value given as ``<field>=`` to ``dict``, ``replace``
    or a ``*Config``, or the flag ``--<field-name>`` in a string (a message, an argv).
    Docstrings and comments are prose, not code; a script's own ``add_argument`` flags are
    its own."""
    tree = ast.parse(source)
    skip = _docstrings(tree) | _own_flags(tree)
    flags = {f: re.compile(r"(?<![\w-])--" + f.replace("_", "-") + r"(?![\w-])") for f in fields}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in fields and _is_config(node.value):
            found.add(node.attr)
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            if name in ("dict", "replace") or name.endswith("Config"):
                found.update(kw.arg for kw in node.keywords if kw.arg in fields)
            if (name == "getattr" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value in fields):
                found.add(node.args[1].value)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in skip):
            found.update(f for f, flag in flags.items() if flag.search(node.value))
    return found


def _declarations() -> dict[str, int]:
    """Each field of the configs -> how many of the config classes declare it: ``data`` is a
    flag of the CIFAR script and another of the ImageNet script."""
    count: dict[str, int] = defaultdict(int)
    for cls in CONFIGS:
        for name in inspect.get_annotations(cls):
            if name in {f.name for f in dataclasses.fields(cls)}:
                count[name] += 1
    return count


def flag_files(root: Path = EXAMPLES) -> dict[str, list[str]]:
    """Each field of the configs -> the files of ``root`` that name it, the declaration's
    (``gaternet_training/config.py``) first."""
    declared = _declarations()
    home = "gaternet_training/config.py"
    files: dict[str, list[str]] = {name: [home] for name in declared}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        for name in fields_named(path.read_text(), set(declared)):
            if rel != home:
                files[name].append(rel)
    return files


def test_each_flag_is_named_in_at_most_three_files() -> None:
    """Adding or changing a flag touches its declaration and the one or two modules that use
    it.  A field two configs declare (one flag of each script) may be named in 3 files per
    script, the declaration shared: 1 + 2 per declaration."""
    declared = _declarations()
    over = {name: files for name, files in flag_files().items()
            if len(files) > 1 + (MAX_FILES - 1) * declared[name]}
    assert not over, (
        "flags named in more files than their declaration and two uses: "
        + "; ".join(f"{name}: {', '.join(files)}" for name, files in sorted(over.items()))
        + ".  Read the value through one module (give the others what it builds), or let "
          "messages name the setting without the flag")


def test_the_flag_scan_sees_each_way_of_naming_a_flag() -> None:
    fields = {"budget_ends", "arch", "seed", "data"}
    source = '''
"""Docstring prose: --arch and --seed are not counted here."""
def f(config, run):
    # a comment: --data
    x = config.budget_ends + run.config.arch
    y = dict(seed=1)
    p.add_argument("--data")
    raise ValueError("--budget-ends-extra is another flag; --arch-x too")
'''
    assert fields_named(source, fields) == {"budget_ends", "arch", "seed"}
    assert fields_named('getattr(config, "data")', fields) == {"data"}
    assert fields_named('m = "pass --data DIR"', fields) == {"data"}
    assert fields_named("other.arch; replace(config, lr=1)", fields) == set()


# --------------------------------------------------------------------------------------
# no script edits sys.path or imports a private name from another script
# --------------------------------------------------------------------------------------

SCRIPT_ROOTS = ("benchmarks", "examples")


def _script_files() -> list[Path]:
    return sorted(p for d in SCRIPT_ROOTS for p in (ROOT / d).rglob("*.py"))


def _script_modules() -> set[str]:
    """The importable names of the scripts: ``benchmarks.cifar10_evaluate``, and the examples'
    ``gaternet_training.train`` (the package is installed from examples/)."""
    names = set()
    for path in _script_files():
        rel = path.relative_to(ROOT).with_suffix("")
        parts = rel.parts[1:] if rel.parts[0] == "examples" else rel.parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def sys_path_edits(source: str) -> list[int]:
    """The lines of ``source`` that change ``sys.path`` (a call on it, or an assignment)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t for t in targets if ast.unparse(t) == "sys.path"), None)
        if target is not None and ast.unparse(target) == "sys.path":
            lines.append(node.lineno)
    return sorted(lines)


def private_imports(source: str, module: str, scripts: set[str]) -> list[str]:
    """``module.name`` for each private name (``_x``) that ``source`` (the script ``module``)
    imports from another script, and each private module of another script it imports."""
    package = module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in scripts:  # a module: private when its own name is
                    if alias.name.startswith("_") and target != module:
                        found.append(target)
                elif base in scripts and base != module and alias.name.startswith("_"):
                    found.append(target)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name in scripts
                      and alias.name != module and alias.name.rpartition(".")[2].startswith("_")]
    return found


def test_no_script_edits_sys_path_or_imports_another_scripts_private_names() -> None:
    scripts = _script_modules()
    edits, private = [], []
    for path in _script_files():
        rel = path.relative_to(ROOT)
        parts = rel.with_suffix("").parts
        module = ".".join(parts[1:] if parts[0] == "examples" else parts)
        module = module.removesuffix(".__init__")
        source = path.read_text()
        edits += [f"{rel}:{line}" for line in sys_path_edits(source)]
        private += [f"{rel}: {name}" for name in private_imports(source, module, scripts)]
    assert not edits, ("these lines edit sys.path; import through the packages instead "
                       f"(python -m benchmarks.NAME, the installed gaternet_training): {edits}")
    assert not private, ("these scripts import another script's private names; make the name "
                         f"public in one shared module, or keep it in its own script: {private}")


def test_the_import_scan_sees_sys_path_edits_and_private_imports() -> None:
    assert sys_path_edits("import sys\nsys.path.insert(0, 'x')\nsys.path += ['y']\n") == [2, 3]
    assert sys_path_edits("import sys\nprint(sys.path[0])\n") == []
    scripts = {"benchmarks.a", "benchmarks.b", "benchmarks.run_files", "gaternet_training.train"}
    source = ("from benchmarks.a import _load, load\nfrom .b import _x\n"
              "from gaternet_training.train import _train\nfrom . import run_files\n")
    assert private_imports(source, "benchmarks.c", scripts) == [
        "benchmarks.a._load", "benchmarks.b._x", "gaternet_training.train._train"]
    assert private_imports("from benchmarks.a import _load\n", "benchmarks.a", scripts) == []
