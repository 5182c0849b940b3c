"""The measured numbers that the README and the docs' prose quote match the JSON files that
the benchmarks and training runs wrote into ``benchmarks/results/``.

The pages' tables are read from those files when the docs are built
(``docs/_ext/gatekit_docs.py``); prose is typed, so each number quoted in it is a claim
here: the page, the fragment as the page writes it with ``{}`` for each number, the file(s)
under ``benchmarks/results/`` and a function that computes the numbers from them, formatted
as the page writes them (``format``, as the tables do).  A rerun that changes a number fails
its claim until the page says the new one.  A tie rounds as ``format`` rounds the float
(a mean error of 13.715% shows as 13.71%), as the tables and the scripts' printouts do; a
difference of two quoted numbers is taken between the numbers as shown, so that a reader
who subtracts gets the page's difference.

To add a claim, append one line to ``CLAIMS``.  Numbers with no committed file behind
them (one-off measurements) are not here; their pages say so and give the command.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _measured_json() -> Any:
    """The docs' JSON reader (``docs/_ext/measured_json.py``; no Sphinx needed)."""
    path = ROOT / "docs" / "_ext" / "measured_json.py"
    spec = importlib.util.spec_from_file_location("measured_json", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


measured_json = _measured_json()


@functools.cache
def load(source: str) -> Any:
    return json.loads((RESULTS / source).read_text())


# --------------------------------------------------------------------------------------
# Reading and formatting
# --------------------------------------------------------------------------------------


def value(data: Any, dotted: str) -> Any:
    """The value at ``dotted`` in ``data``; a missing key fails (a page quotes nothing)."""
    got = measured_json.lookup(data, dotted)
    if got is None:
        raise KeyError(f"no {dotted!r} in the file")
    return got


def keys(*fields: str) -> Callable[[Any], tuple[str, ...]]:
    """Numbers read as the table directive's ``:columns:`` read them: ``"key.path:spec"``."""

    def numbers(data: Any) -> tuple[str, ...]:
        out = []
        for field in fields:
            dotted, _, spec = field.partition(":")
            out.append(measured_json.cell(value(data, dotted), spec))
        return tuple(out)

    return numbers


def x(ratio: float, places: int = 2) -> str:
    return f"{ratio:.{places}f}x"


def pct(fraction: float, places: int = 2) -> str:
    return f"{fraction:.{places}%}"


def points(a: float, b: float) -> float:
    """``a - b`` in percentage points, between the two as a page shows them (``.2%``)."""
    return float(f"{100 * a:.2f}") - float(f"{100 * b:.2f}")


def hundreds(n: float, up: bool) -> str:
    """``n`` rounded down (or up) to a multiple of 100, with a thousands separator."""
    rounded = (math.ceil if up else math.floor)(n / 100) * 100
    return f"{rounded:,}"


def every_gate(fraction: float) -> str:
    return "every gate" if fraction == 1 else f"{fraction:.0%} of the gates"


def mean(runs: list[dict], key: str = "test_error") -> float:
    """The mean of ``key`` over runs (seeds): errors, FLOPs fractions."""
    return statistics.mean(r[key] for r in runs)


def spread(runs: list[dict]) -> float:
    """Best to worst test error over the seeds, in points as shown."""
    return points(max(r["test_error"] for r in runs), min(r["test_error"] for r in runs))


def gated_ahead(v: Any) -> float:
    """gating_vs_pruning.json: static's mean error minus the gated model's, in points."""
    return points(mean(v["static"]), mean(v["budget"]))


# --------------------------------------------------------------------------------------
# benchmarks/end_to_end_cpu.py: one row per (model, threads, batch, open)
# --------------------------------------------------------------------------------------


def row(data: Any, rows: str = "results", **where: Any) -> dict:
    """The one record of ``data[rows]`` whose fields equal ``where``."""
    found = [r for r in value(data, rows) if all(r.get(k) == v for k, v in where.items())]
    if len(found) != 1:
        raise LookupError(f"{len(found)} records with {where}, expected one")
    return found[0]


def ratio(data: Any, slower: str, faster: str, **where: Any) -> float:
    """``median_ms[slower] / median_ms[faster]`` at one point: how many times faster."""
    med = row(data, **where)["median_ms"]
    return med[slower] / med[faster]


def speedup(data: Any, variant: str, **where: Any) -> float:
    """The plain backbone's median time over ``variant``'s (gater included)."""
    return ratio(data, "plain", variant, **where)


def rn50(data: Any, variant: str, batch: int, open_: float = 0.5, threads: tuple[int, ...] = (1, 2)) -> tuple:
    """ResNet-50's speed-ups at one point, one number per thread count."""
    return tuple(x(speedup(data, variant, model="resnet50", threads=t, batch=batch, open=open_))
                 for t in threads)


# --------------------------------------------------------------------------------------
# benchmarks/export_cpu.py: ONNX Runtime against the plain model's ONNX
# --------------------------------------------------------------------------------------


def onnx(data: Any, variant: str = "onnx_gaternet", **where: Any) -> float:
    """The plain model's ONNX median time over ``variant``'s."""
    return ratio(data, "onnx_plain", variant, **where)


# --------------------------------------------------------------------------------------
# CIFAR-10: pareto.json (cifar10_pareto.py), means over seeds
# --------------------------------------------------------------------------------------


def static_runs(p: Any, budget: float) -> list[dict]:
    runs = [s for s in p["static"] if s["budget"] == budget]
    if not runs:
        raise LookupError(f"no static run at budget {budget}")
    return runs


def static_mean(p: Any, budget: float, key: str = "test_error") -> float:
    return mean(static_runs(p, budget), key)


def budgets(p: Any) -> list[float]:
    """Every budget the one model was evaluated at, over its seeds."""
    return [pt["budget"] for r in p["any_budget"] for pt in r["points"]]


def one_model_at(p: Any, budget: float, key: str = "test_error") -> float:
    """The one model's mean over seeds at requested (calibrated) budget ``budget``."""
    rows = [pt for r in p["any_budget"] for pt in r["points"] if pt["budget"] == budget]
    if len(rows) != len(p["any_budget"]):
        raise LookupError(f"not every seed of the one model has budget {budget}")
    return statistics.mean(pt[key] for pt in rows)


def one_model_beside(p: Any, budget: float, key: str = "test_error") -> float:
    """The one model's mean at the budget nearest the FLOPs static's ``budget`` runs kept."""
    kept = static_mean(p, budget, "backbone_flops_fraction")
    nearest = min((pt["budget"] for pt in p["any_budget"][0]["points"]), key=lambda b: abs(b - kept))
    return one_model_at(p, nearest, key)


def worst_flops_miss(p: Any) -> float:
    return max(abs(pt["backbone_flops_fraction"] - pt["budget"]) for r in p["any_budget"] for pt in r["points"])


def seeds_each(p: Any, *static_budgets: float) -> str:
    """"two seeds" when the one model and static pruning at each budget have two each."""
    counts = {len(p["any_budget"])} | {len(static_runs(p, b)) for b in static_budgets}
    if len(counts) != 1:
        return f"unequal seeds ({sorted(counts)})"
    n = counts.pop()
    return {1: "one seed", 2: "two seeds", 3: "three seeds"}.get(n, f"{n} seeds")


def within(v: float, places: int = 3) -> str:
    """An upper bound, as "within 0.002" reads: ``v`` rounded up."""
    return f"{math.ceil(v * 10**places) / 10**places:.{places}f}"


# --------------------------------------------------------------------------------------
# The claims
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    doc: str  # README.md or docs/PAGE.rst
    text: str  # as the page writes it, "{}" for each number
    source: str | tuple[str, ...]  # file(s) under benchmarks/results/
    numbers: Callable[..., Sequence[str]]  # one loaded file per source -> the numbers

    @property
    def sources(self) -> tuple[str, ...]:
        return (self.source,) if isinstance(self.source, str) else self.source

    def expected(self) -> str:
        numbers = tuple(self.numbers(*(load(s) for s in self.sources)))
        if len(numbers) != self.text.count("{}"):  # format() would drop the extra ones
            raise ValueError(f"{len(numbers)} numbers for the {self.text.count('{}')} places of {self.text!r}")
        return self.text.format(*numbers)


E2E_RULE = "end_to_end_cpu_rule.json"
EXPORT = "export_cpu.json"
GPU = "gated_conv_gpu_h100.json"
PAYS = "cifar10/gating_pays.json"
VS_STATIC = "cifar10/gating_vs_pruning.json"
PARETO = "cifar10/pareto.json"
FT_GATED = "cifar10/finetune10_gated.json"
FT_BUDGET = "cifar10/finetune10_budget.json"

README = [
    # "Do the gates follow the image?" (the stand-in run's numbers are a one-off: examples.rst)
    Claim("README.md", "on CIFAR-10 {} input-dependent", PAYS, lambda g: (
        every_gate(min(g[k]["input_dependent_fraction_1_99"] for k in ("gated", "budget"))),)),
    Claim("README.md", "{} to {} gate patterns on {} test images", (FT_GATED, FT_BUDGET), lambda *runs: (
        hundreds(min(r["gate_stats"]["distinct_patterns"] for r in runs), up=False),
        hundreds(max(r["gate_stats"]["distinct_patterns"] for r in runs), up=True),
        f"{runs[0]['gate_stats']['num_samples']:,}")),
    # "Does gating pay in accuracy?"
    Claim("README.md", "from one plain ResNet-20 ({} test error), gated {}; at {} of the backbone's FLOPs {}",
          PAYS, keys("plain.test_error:.2%", "gated.test_error:.2%", "budget.backbone_flops_fraction:.1%",
                     "budget.test_error:.2%")),
    # "Does it beat static pruning at equal FLOPs?"
    Claim("README.md", "By {} points, {} the seed spread: {} against Torch-Pruning's {} at {} of the FLOPs",
          VS_STATIC, lambda v: (
              f"{gated_ahead(v):.2f}", "inside" if gated_ahead(v) < spread(v["budget"]) else "outside",
              pct(mean(v["budget"])), pct(mean(v["static"])),
              pct(mean(v["static"], "backbone_flops_fraction"), 0))),
    # "Can one model serve any budget?" (pareto.json; new runs: rewrite the row and these)
    Claim("README.md", "within {} of every requested FLOPs fraction from {} to {}", PARETO, lambda p: (
        within(worst_flops_miss(p)), f"{min(budgets(p)):.1f}", f"{max(budgets(p)):.1f}")),
    Claim("README.md", "at {} and {} of the FLOPs ({} / {} against {} / {}, {} each)", PARETO, lambda p: (
        *(pct(static_mean(p, b, "backbone_flops_fraction"), 0) for b in (0.3, 0.4)),
        *(pct(one_model_beside(p, b)) for b in (0.3, 0.4)),
        *(pct(static_mean(p, b)) for b in (0.3, 0.4)),
        seeds_each(p, 0.3, 0.4))),
    Claim("README.md", "{} points behind at {}", PARETO, lambda p: (
        f"{points(one_model_beside(p, 0.565), static_mean(p, 0.565)):.1f}",
        pct(static_mean(p, 0.565, "backbone_flops_fraction"), 1))),
    Claim("README.md", "{} above plain at 100%", PARETO, lambda p: (
        f"{points(one_model_at(p, 1.0), mean(p['plain'])):.1f}",)),
    # "Does skipping closed filters pay on the CPU?" (the default "auto", its rule)
    Claim("README.md", "{} / {} the plain backbone at batch 1 (1 / 2 threads), {} / {} at batch 32", E2E_RULE,
          lambda d: (*rn50(d, "skip_pattern", 1), *rn50(d, "skip_auto", 32))),
    Claim("README.md", "one run on a {}-core {}, `benchmarks/results/end_to_end_cpu_rule.json`", E2E_RULE,
          lambda d: (str(d["machine"]["cpus"]), "Xeon" if "Xeon" in d["machine"]["cpu"] else d["machine"]["cpu"])),
    # "Does the exported model still skip?" (one thread, against the plain model's ONNX)
    Claim("README.md", "ResNet-50 at batch 1 {} at 30% open, {} at 50%, {} at 70%; at batch 8 {}", EXPORT,
          lambda e: (*(x(onnx(e, model="resnet50", batch=1, threads=1, open=o)) for o in (0.3, 0.5, 0.7)),
                     x(onnx(e, model="resnet50", batch=8, threads=1, open=0.5)))),
    Claim("README.md", "the trained ResNet-20 {}, though {} faster than eager skipping at batch 1", EXPORT,
          lambda e: (x(onnx(e, model="resnet20_run", batch=1, threads=1)),
                     x(ratio(e, "eager_skip", "onnx_gaternet", model="resnet20_run", batch=1, threads=1), 1))),
    # "Does the fused gated conv pay on a GPU?"
    Claim("README.md", "{} to {} over cuDNN + eager epilogue (geometric mean, CUDA graphs)", GPU, lambda g: (
        x(min(g["geomean_speedup"]["graph_speedup"].values())),
        x(max(g["geomean_speedup"]["graph_speedup"].values())))),
]

CLAIMS: list[Claim] = [*README]


# --------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------


@functools.cache
def page(doc: str) -> str:
    """The page's text with every run of whitespace one space (prose wraps anywhere)."""
    return " ".join((ROOT / doc).read_text().split())


def what_it_says(claim: Claim) -> str:
    """What the page has where the claim's fixed words are, to show beside the expected."""
    parts = [re.escape(re.sub(r"\s+", " ", p)) for p in claim.text.split("{}")]
    found = re.search(r"(.{0,40}?)".join(parts), page(claim.doc))
    return repr(found.group(0)) if found else "no text with the claim's words around the numbers"


@pytest.mark.parametrize("claim", CLAIMS, ids=[f"{c.doc}: {c.text}" for c in CLAIMS])
def test_quoted_number_matches_its_file(claim: Claim) -> None:
    expected = " ".join(claim.expected().split())
    assert expected in page(claim.doc), (
        f"{claim.doc} should say {expected!r} (from {', '.join(claim.sources)} in benchmarks/results/); "
        f"it says {what_it_says(claim)}")
