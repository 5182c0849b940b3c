"""``batching="auto"``'s default constants are what the documented fit gives on the committed
measurements: ``python -m benchmarks.fit_batching_rule`` (which times nothing) reproduces
``BatchingRule().costs`` from the files under ``benchmarks/results/``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import gatekit

pytest.importorskip("scipy")
fit_batching_rule = pytest.importorskip("benchmarks.fit_batching_rule")

ROOT = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"python -m benchmarks\.fit_batching_rule((?:[ \t]+(?:\\\n)?[ \t]*[^\s\\]+)*)")


def documented_files(text: str) -> list[list[str]]:
    """The files each ``python -m benchmarks.fit_batching_rule ...`` command of ``text`` names
    (a command may continue over lines ending in a backslash)."""
    return [[w for w in m.group(1).replace("\\\n", " ").split()] for m in COMMAND.finditer(text)]


def test_the_fit_on_the_committed_files_gives_the_default_costs() -> None:
    points = [p for path in fit_batching_rule.COMMITTED for p in fit_batching_rule.features(path)]
    assert len(points) == 84
    fitted = {name: fit_batching_rule.rounded(cost)
              for name, cost in fit_batching_rule.fit(points).items()}
    default = gatekit.inference.BatchingRule().costs
    assert fitted == default, (
        f"the fit on the committed files gives {fitted}, but the default rule holds {default}: "
        "refit (python -m benchmarks.fit_batching_rule) and paste its DEFAULT_COSTS into the "
        "rule, or commit the measurements the constants came from")


@pytest.mark.parametrize("page", ["benchmarks/fit_batching_rule.py", "docs/ops.rst"])
def test_the_documented_command_fits_the_committed_files(page: str) -> None:
    text = fit_batching_rule.__doc__ if page.endswith(".py") else (ROOT / page).read_text()
    commands = documented_files(text)
    committed = [p.relative_to(ROOT).as_posix() for p in fit_batching_rule.COMMITTED]
    assert commands, f"{page} shows no python -m benchmarks.fit_batching_rule command"
    for files in commands:
        assert files == committed, (f"{page}'s command fits {files}; the default constants "
                                    f"come from {committed}")


def test_documented_files_reads_continued_lines() -> None:
    text = "x::\n\n    python -m benchmarks.fit_batching_rule a.json \\\n        b.json c.json\n\nz"
    assert documented_files(text) == [["a.json", "b.json", "c.json"]]
