"""The documentation builds without a warning, documents every public name, and its figures
and flag tables match the code.

One Sphinx build (about 15 s on 2 cores) is shared by the tests of this module.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import pkgutil
import re
import runpy
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

import gatekit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCRIPTS = ["examples/imagenet_gaternet.py", "examples/cifar_gaternet.py"]
# Packages a public module may need that gatekit does not require: a module that fails to
# import only because one of these is absent is left out of the documented-names check.
OPTIONAL_BACKENDS = ("triton",)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built HTML; only the tests that take it need Sphinx (the docs extra)."""
    pytest.importorskip("sphinx")
    pytest.importorskip("furo")
    out = tmp_path_factory.mktemp("docs")
    cmd = [
        sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
        "-d", str(out / "doctrees"), str(DOCS), str(out / "html"),
    ]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run.returncode == 0, f"docs build failed:\n{run.stdout}\n{run.stderr}"
    return out / "html"


def _inventory(html: Path) -> list[tuple[str, str]]:
    """(name, domain:role) of every object in Sphinx's objects.inv (format version 2)."""
    data = (html / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):  # four text header lines, then zlib-compressed entries
        header_end = data.index(b"\n", header_end) + 1
    entries = []
    for line in zlib.decompress(data[header_end:]).decode().splitlines():
        m = re.match(r"(.+?)\s+(\S+:\S+)\s+-?\d+\s", line)
        if m:
            entries.append((m.group(1), m.group(2)))
    return entries


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _public_modules() -> list[str]:
    names = ["gatekit"]
    for info in pkgutil.walk_packages(gatekit.__path__, "gatekit."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def _import_public_modules() -> list[tuple[str, object]]:
    """Every public module, imported.  A module is left out only when its import fails for
    lack of an optional backend that is really not installed; any other ImportError fails."""
    modules, broken = [], []
    for modname in _public_modules():
        try:
            modules.append((modname, importlib.import_module(modname)))
        except ImportError as e:
            root = (e.name or "").split(".")[0]
            if root in OPTIONAL_BACKENDS and importlib.util.find_spec(root) is None:
                continue
            broken.append(f"{modname}: {type(e).__name__}: {e}")
    assert not broken, "public modules that do not import:\n" + "\n".join(broken)
    return modules


def test_public_modules_import() -> None:
    """Needs no Sphinx: every public module imports (or lacks only an optional backend)."""
    names = {name for name, _ in _import_public_modules()}
    assert {"gatekit", "gatekit.functional", "gatekit.models", "gatekit.ops"} <= names


def test_package_docstring_names_every_public_name() -> None:
    """Needs no Sphinx: gatekit's docstring, the list of the public surface, names every
    name of ``gatekit.__all__``."""
    doc = gatekit.__doc__ or ""
    missing = [name for name in gatekit.__all__ if not re.search(rf"[`.]{re.escape(name)}`", doc)]
    assert not missing, f"gatekit's docstring does not name {missing}"


def test_build_is_warning_free_and_has_every_page(site: Path) -> None:
    pages = {p.stem for p in DOCS.glob("*.rst")}
    assert {"index", "quickstart", "method", "estimators", "transform", "ops", "examples",
            "results", "api"} <= pages
    for page in pages:
        assert (site / f"{page}.html").is_file(), page


def test_every_public_name_is_documented(site: Path) -> None:
    documented = set()
    for name, role in _inventory(site):
        if role.startswith("py:") and role != "py:module":
            with contextlib.suppress(ImportError, AttributeError):
                documented.add(id(_resolve(name)))
    missing = []
    for modname, module in _import_public_modules():
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not hasattr(obj, "__path__") and type(obj).__name__ != "module" and id(obj) not in documented:
                missing.append(f"{modname}.{name}")
    assert not missing, f"public names missing from the API reference: {missing}"


def _run_script(path: Path, argv: list[str]) -> str:
    """Run a script as ``__main__`` in this process (no second torch import); its stdout."""
    out = io.StringIO()
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *argv]
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            runpy.run_path(str(path), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return out.getvalue()


@functools.cache
def _help_flags(script: str) -> frozenset[str]:
    """The flags the script's own ``--help`` prints: the oracle, independent of the pages."""
    text = _run_script(ROOT / script, ["--help"])
    assert "usage:" in text, f"{script} --help printed no usage:\n{text}"
    flags = set()
    for line in text.splitlines():
        # argparse indents each option's invocation by two spaces; help text follows after two more.
        m = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
        if m:
            flags |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", m.group(1)))
    return frozenset(flags)


@pytest.mark.parametrize("script", SCRIPTS)
def test_flag_tables_list_every_flag(site: Path, script: str) -> None:
    if not (ROOT / script).exists():
        pytest.skip(f"{script} is not in this tree")
    flags = _help_flags(script) - {"-h", "--help"}
    assert flags, f"no flags found in the --help of {script}"
    page = (site / "examples.html").read_text()
    missing = sorted(f for f in flags if f'<span class="pre">{f}</span>' not in page)
    assert not missing, f"flags of {script} missing from examples.html: {missing}"


def test_figures_match_the_code() -> None:
    pytest.importorskip("torchvision")
    spec = importlib.util.spec_from_file_location("make_figures", DOCS / "_scripts" / "make_figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    drawn = {
        "gaternet.svg": figures.gaternet_svg(),
        "site_policies.svg": figures.site_policies_svg(figures.gated_convs()),
    }
    stale = [name for name, svg in drawn.items() if (DOCS / "_static" / name).read_text() != svg]
    assert not stale, f"stale figures {stale}: run python docs/_scripts/make_figures.py"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.rst") if ">>>" in p.read_text()))
def test_page_examples_run(page: str) -> None:
    """The ``>>>`` examples written on the pages themselves give the output they show."""
    import doctest

    pytest.importorskip("torchvision")
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testfile(str(DOCS / page), module_relative=False, optionflags=flags, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples on {page} failed (see above)"


@pytest.mark.parametrize("snippet", sorted(p.name for p in (DOCS / "_snippets").glob("*.py")))
def test_snippets_run(snippet: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The code the pages include with literalinclude runs as it stands."""
    pytest.importorskip("torchvision")
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)  # the snippet writes its plots into the working directory
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    _run_script(DOCS / "_snippets" / snippet, [])


def test_commands_on_the_pages_exist() -> None:
    """Every script a page tells the reader to run exists and takes the flags shown with it:
    ``examples/NAME.py`` and ``benchmarks/NAME.py`` by path, ``-m benchmarks.NAME`` (the way
    the benchmarks run) as the file of that module."""
    wrong = []
    for page in sorted(DOCS.glob("*.rst")):
        for line in page.read_text().splitlines():
            for m in re.finditer(r"((?:examples|benchmarks)/[\w/]+\.py|-m benchmarks\.\w+)([^\n`]*)", line):
                script, rest = m.group(1), m.group(2)
                if script.startswith("-m "):
                    script = script.removeprefix("-m ").replace(".", "/") + ".py"
                if not (ROOT / script).is_file():
                    wrong.append(f"{page.name}: {script} does not exist")
                    continue
                for flag in re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", rest):
                    if flag not in _help_flags(script):
                        wrong.append(f"{page.name}: {script} has no flag {flag}")
    assert not wrong, "\n".join(wrong)
