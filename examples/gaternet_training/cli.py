"""The command line, generated from the run's config: every field of the config made with
:func:`config.flag` is a flag (:func:`parser`), and the parsed flags with the script's defaults
build the config (:func:`run_config`).  Nothing here names a flag: they are declared once, in
:mod:`.config`."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from .config import RAMP_HELP, Flag, RunConfig, cli_name

C = TypeVar("C", bound=RunConfig)

# The help's groups, in this order; a group no config field names is left out, one not listed
# here (a script's own) comes after them.
GROUPS = ("data", "model", "warm start", "recipe", "distillation", "run time", "output")


def flags(config_type: type[RunConfig]) -> list[tuple[str, Flag]]:
    """``(field name, flag)`` of every field of ``config_type`` that is a flag, in field order."""
    return [(f.name, how) for f in dataclasses.fields(config_type)
            if (how := Flag.of(f)) is not None]


def default_of(config_type: type[RunConfig], name: str, defaults: Mapping[str, Any]) -> Any:
    """The value a run of ``config_type`` gets for field ``name`` without its flag: the
    script's default, else the field's (``dataclasses.MISSING`` when neither gives one)."""
    if name in defaults:
        return defaults[name]
    return {f.name: f.default for f in dataclasses.fields(config_type)}[name]


def parser(config_type: type[RunConfig], doc: str, defaults: Mapping[str, Any],
           shown: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The script's parser: its docstring's first paragraph as the description, the rest (and
    how loss weights ramp) as the epilog, a flag for every flag field of ``config_type``.

    Every flag parses to None when not given, so that :func:`run_config` can tell a flag
    left unset from one given.  Its help shows the default ``shown`` gives for the field, else
    the script's (``defaults``), else the field's.
    """
    description, _, epilog = doc.partition("\n\n")
    p = argparse.ArgumentParser(description=description, epilog=epilog + RAMP_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    values = {f.name: str(default_of(config_type, f.name, defaults))
              for f in dataclasses.fields(config_type)}
    values.update(shown or {})
    fields = flags(config_type)
    names = {how.group for _, how in fields}
    for title in [*(g for g in GROUPS if g in names), *sorted(names - set(GROUPS))]:
        group = p.add_argument_group(title)
        for name, how in fields:
            if how.group == title:
                group.add_argument(cli_name(name), dest=name, default=None,
                                   help=how.help.format_map(values), **_argparse_keywords(how))
    return p


def _argparse_keywords(how: Flag) -> dict[str, Any]:
    keywords = {"type": how.type, "metavar": how.metavar, "choices": how.choices,
                "action": how.action, "nargs": how.nargs, "const": how.const}
    keywords = {k: v for k, v in keywords.items() if v is not None}
    if how.required:
        keywords["required"] = True
    return keywords


def run_config(config_type: type[C], args: argparse.Namespace, defaults: Mapping[str, Any]) -> C:
    """The run's config from the parsed flags: a flag left unset (None) takes the script's
    default (``defaults``), else the field's.

    A flag without a field of ``config_type``, or a field with no value, raises ``TypeError``:
    the script and its config disagree, and no run of it can start.
    """
    names = {f.name for f in dataclasses.fields(config_type)}
    given = {k: v for k, v in vars(args).items() if v is not None}
    for key in sorted({*vars(args), *defaults} - names):
        raise TypeError(f"{config_type.__name__} has no field {key!r}: a flag or default of the "
                        "script that its config does not declare")
    values = {name: given[name] if name in given else default_of(config_type, name, defaults)
              for name in names}
    missing = sorted(name for name, value in values.items() if value is dataclasses.MISSING)
    if missing:
        raise TypeError(f"{config_type.__name__}.{missing[0]} has no value: give its flag a "
                        "default, or add it to the script's defaults")
    return config_type(**values)

