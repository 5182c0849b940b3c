"""How ``batching="auto"`` chooses: a rule over the gates, with constants that a tuning
call may fit to this machine.

For a batch, each candidate mode says what it computes (:meth:`.batching.Batching.runs`:
its runs and, per run, the channels of each site, from :class:`.batching.GateCounts`,
one pass over the gates).  With the model's conv geometry (:class:`ConvGeometry`: per
conv touching a site, which sites its output and input channels belong to and its
multiply-adds per channel pair; read once per sample shape by a pass that convolves
nothing), the rule estimates each mode's time as::

    call_s + passes * convs * conv_s + weights * copy_s
           + multiply_adds * mac_s / threads ** THREAD_SCALING

(``passes``: the convolution blocks each conv launches: 1, the number of distinct patterns
for ``"pattern"``, one group per sample for ``"gather"``; ``convs``: the conv
calls of one pass; ``weights``: the weight elements cut and copied, per pass or, for
``"gather"``, per sample; ``threads``: ``torch.get_num_threads()``) and picks the cheapest,
saying why (:class:`BatchingChoice`).  Nothing is timed in a forward: the same gates give
the same choice on any machine with the same rule and thread count.

The default constants (:data:`DEFAULT_COSTS`) were fitted by
``benchmarks/fit_batching_rule.py`` to the committed measurements
``benchmarks/results/end_to_end_cpu.json``, ``end_to_end_cpu_conv_gater.json`` (an AMD
EPYC) and ``end_to_end_cpu_grid.json`` (an Intel Xeon), 1 and 2 threads; ResNet-50 and
CIFAR ResNet-20, inner sites, batch 8 and 32, 30% to 70% open: least squares on relative
error, each mode's backbone time (the skip variant's median less the gater's).  On those
84 points the rule's choice was within 10% of the measured fastest mode at 78, and at
most 1.19x slower at the others (the measurements themselves vary by about 10% between
runs).  :func:`tune_batching` measures the candidates on
this machine and scales each mode's constants to what it measured, process-wide (as
``torch.backends.cudnn.benchmark`` is), never in a model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._errors import GatekitError
from .._graph import conv_output_size
from ._gather import GatherBatching
from ._masked import MaskedBatching
from ._pattern import PatternBatching
from ._union import UnionBatching
from .batching import BATCHINGS, Backbone, GateCounts, Runs, candidates, one_pattern
from .conv import SkipConv, add_residual

__all__ = ["BatchingChoice", "BatchingRule", "ModeCost", "set_batching_rule", "tune_batching"]

#: How multiply-add time falls with threads: ``threads ** -THREAD_SCALING`` (fitted).
THREAD_SCALING = 0.75


class ModeCost(NamedTuple):
    """One mode's constants: seconds per call, per conv call of a pass, per weight element
    copied, per multiply-add (at one thread)."""

    call_s: float
    conv_s: float
    copy_s: float
    mac_s: float

    def scaled(self, factor: float) -> ModeCost:
        return ModeCost(*(v * factor for v in self))


#: Fitted by benchmarks/fit_batching_rule.py (see the module docstring).
DEFAULT_COSTS: dict[str, ModeCost] = {
    PatternBatching.name: ModeCost(2.31e-3, 7.11e-5, 7.09e-10, 2.96e-11),
    UnionBatching.name: ModeCost(3.6e-3, 0.0, 0.0, 1.83e-11),
    GatherBatching.name: ModeCost(5.1e-3, 1.3e-5, 0.0, 3.6e-11),
    MaskedBatching.name: ModeCost(2.93e-3, 0.0, 0.0, 1.81e-11),
}


class ConvGeometry(NamedTuple):
    """Per conv that touches a live site: the column of its output / input channel count
    (a live site's index, or ``S``: a column of ones), the factor on it (1 for a site, the
    conv's channels otherwise), and its multiply-adds per (output, input) channel pair
    per sample; ``convs``: conv calls in one pass."""

    out_column: Tensor
    out_factor: Tensor
    in_column: Tensor
    in_factor: Tensor
    taps: Tensor
    macs: Tensor
    convs: int

    def _pairs(self, runs: Runs) -> Tensor:
        k = torch.cat([runs.channels, torch.ones(runs.channels.shape[0], 1, dtype=torch.float64)], 1)
        return (k[:, self.out_column] * self.out_factor) * (k[:, self.in_column] * self.in_factor)

    def work(self, runs: Runs) -> float:
        """Multiply-adds of the site-touching convs over ``runs``."""
        return float(runs.sizes @ (self._pairs(runs) @ self.macs))

    def weights(self, runs: Runs) -> float:
        """Weight elements the site-touching convs cut and copy over ``runs``."""
        return float(runs.copies @ (self._pairs(runs) @ self.taps))


class _Probe:
    """A run of the rewritten graph that convolves nothing: each conv returns zeros of its
    output's shape (every channel) and records its geometry."""

    def __init__(self) -> None:
        self.rows: list[tuple[int | None, int | None, int, int, float, float]] = []
        self.convs = 0

    def conv(self, conv: SkipConv, x: Tensor, out_site: int | None, in_site: int | None,
             residual: Tensor | None) -> Tensor:
        self.convs += 1
        size = conv_output_size(x.shape[2:], conv.kernel_size, conv.stride, conv.padding,
                                conv.dilation)
        in_site = in_site if conv.in_sliced else None
        if out_site is not None or in_site is not None:
            macs = float(conv.taps * math.prod(size))
            self.rows.append((out_site, in_site, conv.out_channels,
                              conv.in_channels // conv.groups, float(conv.taps), macs))
        return add_residual(x.new_zeros(x.shape[0], conv.out_channels, *size), residual)


def conv_geometry(backbone: Backbone, x: Any, gates: Tensor) -> ConvGeometry:
    """The :class:`ConvGeometry` of ``backbone`` for inputs shaped like ``x``."""
    probe = _Probe()
    sample = x[:1] if isinstance(x, Tensor) else x
    backbone.run(sample, torch.ones_like(gates[:1]), probe)
    live = [i for i, is_live in enumerate(backbone.live) if is_live]
    column = {site: j for j, site in enumerate(live)}
    ones = len(live)
    out_c, out_f, in_c, in_f, taps, macs = [], [], [], [], [], []
    for out_site, in_site, c_out, c_in, tap, m in probe.rows:
        for site, c, cols, facs in ((out_site, c_out, out_c, out_f), (in_site, c_in, in_c, in_f)):
            cols.append(column.get(site, ones))
            facs.append(1.0 if site in column else float(c))
        taps.append(tap)
        macs.append(m)

    def t(v: list, dtype: torch.dtype) -> Tensor:
        return torch.tensor(v, dtype=dtype)

    return ConvGeometry(t(out_c, torch.long), t(out_f, torch.float64), t(in_c, torch.long),
                        t(in_f, torch.float64), t(taps, torch.float64), t(macs, torch.float64),
                        probe.convs)


class BatchingChoice(NamedTuple):
    """What ``"auto"`` chose for a batch: ``mode``, ``reason`` (in words) and ``estimates``
    (each candidate's estimated seconds; empty when a mode is fixed)."""

    mode: str
    reason: str
    estimates: dict[str, float]


@dataclass(frozen=True)
class BatchingRule:
    """The rule ``batching="auto"`` applies (see the module docstring).

    ``costs``: a :class:`ModeCost` per candidate mode; ``fixed``: a mode chosen always
    (None: the cheapest estimate); ``measured``: what :func:`tune_batching` timed, seconds
    per candidate (empty for the default rule).

    >>> rule = BatchingRule()
    >>> sorted(rule.costs) == sorted(DEFAULT_COSTS), rule.fixed, rule.measured
    (True, None, {})
    """

    costs: dict[str, ModeCost] = field(default_factory=lambda: dict(DEFAULT_COSTS))
    fixed: str | None = None
    measured: dict[str, float] = field(default_factory=dict)

    def estimates(self, geometry: ConvGeometry, counts: GateCounts, threads: int) -> dict[str, float]:
        """Each candidate's estimated seconds for a batch with ``counts``."""
        result = {}
        scale = max(threads, 1) ** THREAD_SCALING
        for name in candidates():
            cost = self.costs.get(name)
            if cost is None:
                continue
            runs = BATCHINGS[name]().runs(counts)
            passes = runs.passes
            result[name] = (cost.call_s + passes * geometry.convs * cost.conv_s
                            + geometry.weights(runs) * cost.copy_s
                            + geometry.work(runs) * cost.mac_s / scale)
        return result

    def choose(self, geometry: ConvGeometry, counts: GateCounts, threads: int) -> BatchingChoice:
        if self.fixed is not None:
            return BatchingChoice(self.fixed, f"{self.fixed!r} fixed by tune_batching", {})
        est = self.estimates(geometry, counts, threads)
        best = min(est, key=est.__getitem__)
        others = ", ".join(f"{n} {1e3 * t:.3g} ms" for n, t in est.items() if n != best)
        reason = (f"{best}: cheapest estimate ({1e3 * est[best]:.3g} ms; {others}) for {counts.batch} "
                  f"samples in {counts.pattern_sizes.shape[0]} patterns, {threads} threads")
        return BatchingChoice(best, reason, est)


# No lock: setting the rule is one rebinding of this name, atomic in Python, and a
# BatchingRule is frozen, so a reader sees the old rule or the new one, whole.  A lock taken
# only by the writer protected nothing; concurrent set_batching_rule (or tune_batching)
# calls end with the last one's rule, with or without a lock.
_current = BatchingRule()


def current_rule() -> BatchingRule:
    """The process-wide rule ``"auto"`` applies (the default until tuned or set)."""
    return _current


def set_batching_rule(rule: BatchingRule | None) -> BatchingRule:
    """Make ``rule`` the process-wide rule of ``batching="auto"``; None restores the
    default.  Returns the rule it set.

    >>> set_batching_rule(None) == BatchingRule()
    True
    """
    global _current
    if rule is not None and not isinstance(rule, BatchingRule):
        raise GatekitError(f"set_batching_rule expects a BatchingRule or None, got {type(rule).__name__}")
    new = BatchingRule() if rule is None else rule
    _current = new
    return new


def _backbone(fast: Any) -> Backbone:
    backbone = getattr(fast, "backbone", None)
    if not (hasattr(backbone, "open_channels") and hasattr(backbone, "run")):
        raise GatekitError(
            f"tune_batching expects a model from gatekit.skip_compute, got {type(fast).__name__}; "
            f"make one with gatekit.skip_compute(net, batching='auto')")
    return backbone


@torch.no_grad()
def tune_batching(
    fast: Any,
    example: Any = None,
    gates: Tensor | None = None,
    *,
    budget: float | Tensor | None = None,
    fix: str | None = None,
    repeats: int = 3,
    apply: bool = True,
) -> BatchingRule:
    """Time ``"auto"``'s candidate modes on this machine and fit the rule to them; or fix a mode.

    ``fast``: a :class:`gatekit.SkipComputeNet`; ``example``: a batch as it will be served
    (its batch size, image size and kind of gates), with ``gates`` (default: the model's
    own eval-mode gates for ``example``, at ``budget`` for a budget-input model), whose
    samples must not all share one pattern.  Each candidate runs once to warm up, then
    ``repeats`` times; its fastest run is kept (noise only adds time).  Each mode's
    constants are then scaled so that the rule's estimate for this batch is what was
    measured.  ``fix="gather"`` (any candidate's name) instead makes ``"auto"`` always run
    that mode, measuring nothing.

    The rule is process-wide, for every ``"auto"`` model (``apply=False``: only returned;
    :func:`gatekit.inference.set_batching_rule` applies a rule, or restores the default
    with None).  Nothing is stored in ``fast``: copies and pickles of it carry no timings.
    Returns the rule, its ``measured`` seconds per candidate.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner").eval()
    >>> fast = gatekit.skip_compute(net, batching="auto")
    >>> gates = (torch.rand(4, net.num_gates) < 0.5).float()
    >>> rule = gatekit.tune_batching(fast, torch.randn(4, 3, 32, 32), gates, apply=False)
    >>> sorted(rule.measured) == sorted(gatekit.inference.BatchingRule().costs)
    True
    >>> gatekit.tune_batching(fast, fix="union").fixed
    'union'
    >>> _ = gatekit.inference.set_batching_rule(None)  # back to the default rule
    """
    backbone = _backbone(fast)
    if fix is not None:
        if fix not in candidates():
            names = ", ".join(repr(n) for n in candidates())
            raise GatekitError(f"tune_batching expects fix to be one of {names}, got {fix!r}")
        rule = BatchingRule(fixed=fix)
        return set_batching_rule(rule) if apply else rule
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise GatekitError(f"tune_batching expects repeats as an int >= 1, got {repeats!r}")
    if example is None:
        raise GatekitError("tune_batching expects an example batch (or fix=<mode>)")
    if gates is None:
        gates = fast.estimator(fast.gate_logits(example, budget))
    if one_pattern(gates):
        raise GatekitError(
            f"tune_batching needs an example whose samples open different filters: all "
            f"{gates.shape[0]} samples share one gate pattern, which every mode runs as one "
            f"pass; pass a larger or more varied example, or gates=...")
    base = current_rule() if current_rule().fixed is None else BatchingRule()
    geometry = conv_geometry(backbone, example, gates)
    counts = GateCounts.of(backbone, gates)
    predicted = base.estimates(geometry, counts, torch.get_num_threads())
    measured: dict[str, float] = {}
    for name in predicted:
        mode = BATCHINGS[name]()
        mode.run_mixed(backbone, example, gates)  # warm-up: allocator, oneDNN's caches
        runs = []
        for _ in range(repeats):
            if gates.is_cuda:
                torch.cuda.synchronize(gates.device)
            start = time.perf_counter()
            mode.run_mixed(backbone, example, gates)
            if gates.is_cuda:
                torch.cuda.synchronize(gates.device)
            runs.append(time.perf_counter() - start)
        measured[name] = min(runs)
    costs = {n: base.costs[n].scaled(measured[n] / predicted[n]) if predicted[n] > 0
             else base.costs[n] for n in measured}
    rule = replace(base, costs=costs, measured=measured)
    return set_batching_rule(rule) if apply else rule
