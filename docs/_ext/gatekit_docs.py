"""Sphinx directives that generate gatekit's reference pages from the code itself.

``.. gatekit-api:: MODULE``
    An autosummary table and the full autodoc entry of every name in ``MODULE.__all__``,
    so a new public name appears in the reference without anyone editing a page.  A name
    that is the same object as one documented earlier on the page (a re-export) gets one
    line pointing there instead of a second copy (``:only-new:`` drops those lines, for
    implementation modules whose names the package root already re-exports).

``.. gatekit-api-rest:: PACKAGE``
    The same for every other non-private module under ``PACKAGE``, listing only names no
    earlier section documented.

``.. gatekit-json-table:: FILE ...`` and ``.. gatekit-measured-figure:: FILE``
    Tables and plots of measured results, read from the JSON and PNG files that the
    benchmarks and training runs write; a file not there yet reads "not yet measured".
    ``.. gatekit-metric-plot:: FILE.jsonl ...`` draws training curves from metrics logs.

``.. gatekit-batchings::``
    A table of :func:`gatekit.skip_compute`'s batching modes, read from their one registry
    (``gatekit.inference.batching.BATCHINGS``): each mode's name, whether ``"auto"`` may
    choose it, its ``summary`` and, with ``:costs:``, the constants of the default rule
    (``gatekit.inference.BatchingRule().costs``), so a new mode appears on the page without
    anyone editing it.

``.. gatekit-argparse:: PATH``
    A table of every flag of the command-line script at ``PATH`` (relative to the
    repository root), read from its :mod:`argparse` parser, so the page cannot drift from
    the script.  With ``:func: NAME`` the parser comes from calling ``NAME()`` in the
    script; without it, the script's ``main()`` is run until it calls ``parse_args``, and
    the parser is taken there (nothing of the training runs).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import pkgutil
import sys
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from measured_json import cell, lookup
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------
# API reference
# --------------------------------------------------------------------------------------


def _kind(obj: Any) -> str | None:
    if inspect.ismodule(obj):
        return None  # documented in its own section
    if inspect.isclass(obj):
        return "autoexception" if issubclass(obj, BaseException) else "autoclass"
    if callable(obj):
        return "autofunction"
    return "autodata"


class ApiDirective(SphinxDirective):
    required_arguments = 1
    option_spec: ClassVar[dict[str, Any]] = {"exclude": directives.unchanged, "only-new": directives.flag}

    def run(self) -> list[nodes.Node]:
        modname = self.arguments[0]
        module = importlib.import_module(modname)
        if not getattr(module, "__all__", None):
            raise self.error(f"{modname} has no __all__ (or it is empty): nothing to document")
        self.env.temp_data.setdefault("gatekit_api_modules", set()).add(modname)
        entries, aliases = self._entries(modname, module)
        return self._parse(self._render(modname, entries, aliases, "only-new" in self.options))

    def _entries(self, modname: str, module: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """(kind, full name) of the objects to document here, and (alias, target) of re-exports."""
        exclude = set(self.options.get("exclude", "").split())
        names = [n for n in module.__all__ if n not in exclude]
        # Objects already documented on this page, by identity: re-exports are linked, not copied.
        seen: dict[int, str] = self.env.temp_data.setdefault("gatekit_api_seen", {})
        entries: list[tuple[str, str]] = []
        aliases: list[tuple[str, str]] = []
        for name in sorted(names, key=lambda n: (not inspect.isclass(getattr(module, n)), n.lower())):
            obj = getattr(module, name)
            kind = _kind(obj)
            if kind is None:
                continue
            full = f"{modname}.{name}"
            if id(obj) in seen:
                aliases.append((full, seen[id(obj)]))
                continue
            seen[id(obj)] = full
            entries.append((kind, full))
        return entries, aliases

    def _new_entries(self, modname: str, module: Any) -> list[tuple[str, str]]:
        if not getattr(module, "__all__", None):
            return []
        return self._entries(modname, module)[0]

    @staticmethod
    def _render(modname: str, entries: list[tuple[str, str]], aliases: list[tuple[str, str]],
                only_new: bool) -> list[str]:
        lines = [f".. py:currentmodule:: {modname}", ""]
        if entries:
            lines += [".. autosummary::", "   :nosignatures:", ""]
            lines += [f"   {full.rsplit('.', 1)[1]}" for _, full in entries]
            lines.append("")
        if aliases and not only_new:
            lines.append("Re-exported here, documented above:")
            lines.append("")
            for full, target in aliases:
                lines.append(f"- ``{full}`` is :py:obj:`{target}`")
            lines.append("")
        for kind, full in entries:
            lines.append(f".. {kind}:: {full}")
            if kind in ("autoclass", "autoexception"):
                lines += ["   :members:", "   :show-inheritance:"]
            lines.append("")
        return lines

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.section()
        container.document = self.state.document
        content = StringList(lines, source=f"<gatekit-api {self.arguments[0]}>")
        nested_parse_with_titles(self.state, content, container)
        return container.children


class ApiRestDirective(ApiDirective):
    """``.. gatekit-api-rest:: PACKAGE``: one section per remaining non-private module.

    Every module under ``PACKAGE`` whose dotted name has no part starting with ``_`` and
    that no ``gatekit-api`` directive earlier on the page covered gets a section with the
    names of its ``__all__`` not documented yet.  A module that cannot be imported here (an
    optional backend such as Triton missing) is listed as such.
    """

    option_spec: ClassVar[dict[str, Any]] = {}

    def run(self) -> list[nodes.Node]:
        package = importlib.import_module(self.arguments[0])
        done: set[str] = self.env.temp_data.setdefault("gatekit_api_modules", set())
        lines: list[str] = []
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            modname = info.name
            if modname in done or any(p.startswith("_") for p in modname.split(".")):
                continue
            try:
                module = importlib.import_module(modname)
            except ImportError as e:
                lines += [*_section(modname), f"Not importable here ({e}).", ""]
                continue
            new = self._new_entries(modname, module)
            if not new:
                continue
            summary = (module.__doc__ or "").strip().split("\n\n")[0]
            lines += [*_section(modname), " ".join(summary.split()), ""]
            lines += self._render(modname, new, [], only_new=True)
        return self._parse(lines)


def _section(modname: str) -> list[str]:
    title = f"``{modname}``"
    return [title, "~" * len(title), ""]


# --------------------------------------------------------------------------------------
# Measured results
# --------------------------------------------------------------------------------------

NOT_MEASURED = "not yet measured"


def _columns(text: str) -> list[tuple[str, str, str]]:
    """``key[:spec][ = header]; ...`` -> [(key, spec, header)]."""
    out = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        field, _, header = (x.strip() for x in part.partition(" = "))
        key, _, spec = field.partition(":")
        out.append((key, spec, header or key))
    return out


class JsonTableDirective(SphinxDirective):
    """``.. gatekit-json-table:: FILE [FILE ...]``: a table of measured numbers from JSON.

    With ``:rows:`` (one file), the rows are the list of records at that dotted key (``.``:
    the file's top level; a dict
    of values gives ``key``/``value`` rows, a dict of dicts one row per key with the inner
    keys as columns; ``:where: key=value`` filters them).  Without it each file
    is one row, labelled by the dotted key ``:label:`` or by the file's name.  Files that
    are not there yet leave the table, or their row, saying "not yet measured" with the
    ``:command:`` that makes them, so a page never shows a number nobody measured.
    ``:context:`` lists dotted keys of the first file shown above the table (machine,
    versions, command).  Paths are relative to the repository root.
    """

    required_arguments = 1
    optional_arguments = 20
    option_spec: ClassVar[dict[str, Any]] = {
        "rows": directives.unchanged,
        "columns": directives.unchanged_required,
        "context": directives.unchanged,
        "command": directives.unchanged,
        "label": directives.unchanged,
        "where": directives.unchanged,
    }

    def run(self) -> list[nodes.Node]:
        paths = [ROOT / a for a in self.arguments]
        for path in paths:
            self.env.note_dependency(str(path))
        loaded = {p: json.loads(p.read_text()) if p.exists() else None for p in paths}
        columns = _columns(self.options["columns"])
        command = self.options.get("command", "")
        lines: list[str] = []
        present = [d for d in loaded.values() if d is not None]
        if not present:
            made_by = f" Run ``{command}``; " if command else " "
            names = ", ".join(f"``{a}``" for a in self.arguments)
            lines += [f"*{NOT_MEASURED.capitalize()}.*{made_by}the table appears here once {names} "
                      "is in the repository.", ""]
            return self._parse(lines)
        first = present[0]
        context = [k for k in self.options.get("context", "").split(";") if k.strip()]
        facts = [(k.strip(), lookup(first, k.strip())) for k in context]
        facts = [f"{k.rsplit('.', 1)[-1]}: ``{v}``" for k, v in facts if v is not None]
        if facts:
            lines += ["Measured with " + "; ".join(facts) + ".", ""]
        if len(paths) == 1 and "rows" in self.options:
            rows_key = self.options["rows"].strip()
            records = first if rows_key == "." else lookup(first, rows_key)
            if isinstance(records, dict) and all(isinstance(v, dict) for v in records.values()):
                records = [{"key": k, **v} for k, v in records.items()]  # {row: {column: value}}
            elif isinstance(records, dict):  # {name: value} reads as rows of (key, value)
                records = [{"key": k, "value": v} for k, v in records.items()]
            if not isinstance(records, list):
                raise self.error(f"{self.arguments[0]}: {self.options['rows']!r} is not a list")
            where = self.options.get("where", "")
            if where:
                key, _, want = where.partition("=")
                records = [r for r in records if str(lookup(r, key.strip())) == want.strip()]
            rows = [[cell(lookup(r, k), spec) for k, spec, _ in columns] for r in records]
        else:  # each file is one row
            label = self.options.get("label", "")
            rows = []
            for arg, path in zip(self.arguments, paths):
                data = loaded[path]
                name = cell(lookup(data, label), "") if (data is not None and label) else Path(arg).stem
                if data is None:
                    rows.append([name, NOT_MEASURED] + [""] * (len(columns) - 1))
                else:
                    rows.append([name] + [cell(lookup(data, k), spec) for k, spec, _ in columns])
            if len(paths) > 1 or label:
                columns = [("", "", "run"), *columns]
            else:
                rows = [row[1:] if loaded[paths[0]] is not None else row for row in rows]
        lines += [".. list-table::", "   :header-rows: 1", ""]
        lines += ["   * - " + columns[0][2]] + [f"     - {h}" for _, _, h in columns[1:]]
        for row in rows:
            lines += [f"   * - {row[0] or ' '}"] + [f"     - {c or ' '}" for c in row[1:]]
        lines.append("")
        return self._parse(lines)

    def _parse(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source=f"<json {self.arguments[0]}>"), 0, container)
        return container.children


class MeasuredFigureDirective(SphinxDirective):
    """``.. gatekit-measured-figure:: FILE``: the plot at FILE (from the repository root) if
    it has been made, else a line saying it is not yet measured.  Content is the caption."""

    required_arguments = 1
    has_content = True
    option_spec: ClassVar[dict[str, Any]] = {"command": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        path = ROOT / self.arguments[0]
        self.env.note_dependency(str(path))
        if path.exists():
            docdir = (Path(self.env.srcdir) / self.env.docname).parent
            rel = os.path.relpath(path, docdir)
            lines = [f".. figure:: {rel}", "   :width: 100%", ""]
            lines += [f"   {line}" for line in self.content]
        else:
            command = self.options.get("command", "")
            made_by = f" (``{command}``)" if command else ""
            lines = [f"*Plot {NOT_MEASURED}:* ``{self.arguments[0]}``{made_by}."]
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source=f"<figure {self.arguments[0]}>"), 0, container)
        return container.children


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _line_chart(series: list[tuple[str, list[tuple[float, float]]]], xlabel: str, ylabel: str,
                percent: bool) -> str:
    """A small inline SVG line chart (no plotting library needed at build time)."""
    width, height, left, right, top, bottom = 640, 300, 60, 170, 15, 45
    xs = [x for _, pts in series for x, _ in pts]
    ys = [y for _, pts in series for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 0.01
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * (height - top - bottom)

    font = "font-family='sans-serif' font-size='11' fill='currentColor'"
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
           f"style='max-width:100%;height:auto' role='img'>"]
    out.append(f"<rect x='{left}' y='{top}' width='{width - left - right}' "
               f"height='{height - top - bottom}' fill='none' stroke='#999'/>")
    for i in range(6):
        y = y0 + (y1 - y0) * i / 5
        label = f"{100 * y:.1f}%" if percent else f"{y:.3g}"
        out.append(f"<line x1='{left}' x2='{width - right}' y1='{py(y):.1f}' y2='{py(y):.1f}' "
                   "stroke='#999' stroke-opacity='0.3'/>")
        out.append(f"<text x='{left - 5}' y='{py(y) + 4:.1f}' text-anchor='end' {font}>{label}</text>")
    step = max(1, round((x1 - x0) / 8))
    tick = x0
    while tick <= x1 + 1e-9:
        out.append(f"<text x='{px(tick):.1f}' y='{height - bottom + 15}' text-anchor='middle' "
                   f"{font}>{tick:g}</text>")
        tick += step
    out.append(f"<text x='{(left + width - right) / 2}' y='{height - 8}' text-anchor='middle' "
               f"{font}>{xlabel}</text>")
    out.append(f"<text x='14' y='{(top + height - bottom) / 2}' text-anchor='middle' {font} "
               f"transform='rotate(-90 14 {(top + height - bottom) / 2})'>{ylabel}</text>")
    # Runs of one configuration (names differing only in "_seedN") share a colour, one dash each.
    groups: dict[str, int] = {}
    seen_in_group: dict[str, int] = {}
    for i, (name, pts) in enumerate(series):
        group = name.split("_seed")[0]
        color = _PALETTE[groups.setdefault(group, len(groups)) % len(_PALETTE)]
        dash = ("", "6 3", "2 2", "8 3 2 3")[seen_in_group.get(group, 0) % 4]
        seen_in_group[group] = seen_in_group.get(group, 0) + 1
        dashed = f" stroke-dasharray='{dash}'" if dash else ""
        path = " ".join(f"{'M' if j == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for j, (x, y) in enumerate(pts))
        out.append(f"<path d='{path}' fill='none' stroke='{color}' stroke-width='1.8'{dashed}/>")
        ly = top + 14 + 18 * i
        out.append(f"<line x1='{width - right + 10}' x2='{width - right + 30}' y1='{ly}' y2='{ly}' "
                   f"stroke='{color}' stroke-width='2'{dashed}/>")
        out.append(f"<text x='{width - right + 35}' y='{ly + 4}' {font}>{name}</text>")
    out.append("</svg>")
    return "".join(out)


class MetricPlotDirective(SphinxDirective):
    """``.. gatekit-metric-plot:: FILE.jsonl ...``: one line per metrics log, drawn at build time.

    ``:y:`` the key to plot (e.g. ``val_acc``), ``:x:`` the x key (``epoch``), ``:event:``
    the records to use (``epoch``), ``:percent:`` to show fractions as percentages.  Logs
    not there yet are left out; with none, the plot reads "not yet measured".
    """

    required_arguments = 1
    optional_arguments = 20
    option_spec: ClassVar[dict[str, Any]] = {
        "y": directives.unchanged_required,
        "x": directives.unchanged,
        "event": directives.unchanged,
        "ylabel": directives.unchanged,
        "xlabel": directives.unchanged,
        "percent": directives.flag,
    }

    def run(self) -> list[nodes.Node]:
        xkey, ykey = self.options.get("x", "epoch"), self.options["y"]
        event = self.options.get("event", "epoch")
        series = []
        for arg in self.arguments:
            path = ROOT / arg
            self.env.note_dependency(str(path))
            if not path.exists():
                continue
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            pts = [(float(r[xkey]), float(r[ykey])) for r in records
                   if r.get("event", event) == event and xkey in r and ykey in r]
            if pts:
                series.append((Path(arg).name.split(".")[0], pts))
        if not series:
            names = ", ".join(f"``{a}``" for a in self.arguments)
            para = nodes.paragraph()
            self.state.nested_parse(StringList([f"*Plot {NOT_MEASURED}:* {names}."]), 0, para)
            return para.children
        svg = _line_chart(series, self.options.get("xlabel", xkey), self.options.get("ylabel", ykey),
                          "percent" in self.options)
        return [nodes.raw("", svg, format="html")]


# --------------------------------------------------------------------------------------
# Batching modes
# --------------------------------------------------------------------------------------


def _seconds(value: float) -> str:
    """``3.16e-09`` -> ``3.16 ns``: the rule's constants in the unit that reads best."""
    if value == 0:
        return "0"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-12:.3g} ps"


class BatchingsDirective(SphinxDirective):
    """``.. gatekit-batchings::``: the registered batching modes (see the module docstring)."""

    option_spec: ClassVar[dict[str, Any]] = {"costs": directives.flag}

    def run(self) -> list[nodes.Node]:
        from gatekit.inference import BatchingRule, _rule, batching, skip_compute

        default = inspect.signature(skip_compute).parameters["batching"].default
        modes = list(batching.BATCHINGS.items())
        if not modes:
            raise self.error("gatekit.inference.batching.BATCHINGS is empty: no mode registered")
        # The candidates in the order registered, then the modes that choose among them.
        modes.sort(key=lambda item: not item[1].candidate)
        costs = "costs" in self.options
        headers = ["mode", '``"auto"`` may choose it', "what it does"]
        if costs:
            headers += ["per call", "per conv call", "per weight copied", "per multiply-add"]
        lines = [".. list-table::", "   :header-rows: 1", ""]
        lines += ["   * - " + headers[0]] + [f"     - {h}" for h in headers[1:]]
        for name, cls in modes:
            label = f'``"{name}"``' + (" (default)" if name == default else "")
            summary = " ".join(cls.summary.split())
            row = [label, "yes" if cls.candidate else "no", _escape(summary[0].upper() + summary[1:]) + "."]
            if costs:
                cost = BatchingRule().costs.get(name)
                row += [_seconds(v) for v in cost] if cost is not None else ["\u2014"] * 4
            lines += [f"   * - {row[0]}"] + [f"     - {c}" for c in row[1:]]
        lines.append("")
        if costs:
            lines += [f"Multiply-add time is divided by ``threads ** {_rule.THREAD_SCALING:g}`` "
                      "(``THREAD_SCALING``, fitted with the constants).", ""]
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source="<gatekit-batchings>"), 0, container)
        return container.children


# --------------------------------------------------------------------------------------
# Command-line flags
# --------------------------------------------------------------------------------------


class _GotParser(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _load_script(path: Path) -> Any:
    name = "_gatekit_docs_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    # Scripts import their sibling modules (the shared training code) by plain name.
    sys.path.insert(0, str(path.parent))
    try:
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def get_parser(path: Path, func: str | None) -> argparse.ArgumentParser:
    """The argparse parser of the script at ``path``, without running the script's work."""
    module = _load_script(path)
    if func:
        parser = getattr(module, func)()
        if not isinstance(parser, argparse.ArgumentParser):
            raise TypeError(f"{path}:{func}() returned {type(parser).__name__}, not an ArgumentParser")
        return parser

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _GotParser(self)

    saved = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    argparse.ArgumentParser.parse_known_args = capture  # type: ignore[method-assign]
    try:
        module.main()
    except _GotParser as got:
        return got.parser
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = saved
    raise RuntimeError(f"{path}: main() returned without calling parse_args")


def _flag(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    """The flag as ``--help`` spells it (``--resume [CHECKPOINT]``), one literal per spelling."""
    formatter = parser._get_formatter()
    invocation = formatter._format_action_invocation(action)
    return ", ".join(f"``{part}``" for part in invocation.split(", "))


def _help(action: argparse.Action, parser: argparse.ArgumentParser) -> str:
    """The help text as ``--help`` prints it, with the default added where it says none."""
    text = action.help or ""
    if "%(" in text:
        formatter = parser._get_formatter()
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = formatter._expand_help(action)
    text = " ".join(text.split())
    shown = action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0
    if shown and "default" not in text:
        text += f" (default: {action.default})"
    # Defaults computed from the building machine's home directory are shown portably.
    text = text.replace(str(Path.home()), "~")
    return _escape(text)


def _escape(text: str) -> str:
    """Help strings are plain text: keep reST from reading ``*``, ``_`` or backquotes as markup."""
    for ch in "\\*`|_[":
        text = text.replace(ch, "\\" + ch)
    return text


class ArgparseDirective(SphinxDirective):
    required_arguments = 1
    option_spec: ClassVar[dict[str, Any]] = {"func": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        path = ROOT / self.arguments[0]
        self.env.note_dependency(str(path))
        try:
            parser = get_parser(path, self.options.get("func"))
        except Exception as e:  # a broken script must fail the build with its name on it
            raise self.error(f"cannot read the flags of {self.arguments[0]}: {type(e).__name__}: {e}") from e

        lines: list[str] = []
        for group in parser._action_groups:
            actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS]
            actions = [a for a in actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = group.title or "options"
            lines += [f".. rubric:: {title.capitalize()}", ""]
            if group.description:
                lines += [" ".join(group.description.split()), ""]
            lines += [".. list-table::", "   :header-rows: 1", "   :widths: 35 65", ""]
            lines += ["   * - flag", "     - meaning"]
            for a in actions:
                lines += [f"   * - {_flag(a, parser)}", f"     - {_help(a, parser) or ' '}"]
            lines.append("")
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(StringList(lines, source=f"<argparse {self.arguments[0]}>"), 0, container)
        return container.children


def _public_bases(app: Sphinx, name: str, obj: Any, options: Any, bases: list[type]) -> None:
    """Show ``Bases: Gate``, not the private mixins a class is built from."""
    bases[:] = [b for b in bases if not b.__name__.startswith("_")] or bases


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-bases", _public_bases)
    app.add_directive("gatekit-api", ApiDirective)
    app.add_directive("gatekit-api-rest", ApiRestDirective)
    app.add_directive("gatekit-argparse", ArgparseDirective)
    app.add_directive("gatekit-batchings", BatchingsDirective)
    app.add_directive("gatekit-json-table", JsonTableDirective)
    app.add_directive("gatekit-measured-figure", MeasuredFigureDirective)
    app.add_directive("gatekit-metric-plot", MetricPlotDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
