"""Runs the ``>>>`` examples in the docstrings of every module under gatekit.

Modules are found with :func:`pkgutil.walk_packages`, so new modules are covered without
editing this file.  A module whose import fails because an optional third-party dependency
is missing (e.g. Triton on a machine without it) is skipped with that reason; any other
import error fails.
"""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil

import pytest
import torch

import gatekit

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _module_names() -> list[str]:
    names = ["gatekit"]
    failed: list[str] = []  # packages walk_packages could not import: collected, then reported
    for info in pkgutil.walk_packages(gatekit.__path__, "gatekit.", onerror=failed.append):
        names.append(info.name)
    return sorted(set(names + failed))


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing = e.name or ""
        if missing and missing.split(".")[0] != "gatekit":
            pytest.skip(f"{name} needs the optional dependency {missing!r}, which is not installed")
        raise


@pytest.mark.parametrize("name", _module_names())
def test_docstring_examples(name: str) -> None:
    module = _import(name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, name)
    # Only the docstrings defined in this module, not those of names it re-exports.
    tests = [t for t in tests if t.examples]
    if not tests:
        pytest.skip(f"{name} has no docstring examples")
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = io.StringIO()
    torch.set_printoptions(profile="default")  # the examples show default tensor printing
    for test in tests:
        runner.run(test, out=report.write)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples failed:\n{report.getvalue()}"
    )


def test_missing_optional_dependency_skips_but_broken_import_fails(tmp_path, monkeypatch):
    (tmp_path / "gk_needs_optional.py").write_text("import gk_no_such_dependency\n")
    (tmp_path / "gk_broken_internal.py").write_text("import gatekit.gk_no_such_module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(pytest.skip.Exception, match="gk_no_such_dependency"):
        _import("gk_needs_optional")
    with pytest.raises(ImportError, match="gk_no_such_module"):
        _import("gk_broken_internal")
