"""What a finished run reports: parameters, FLOPs (dense and at the measured open fraction),
gate statistics with their plots, and one results JSON."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

import gatekit
import gatekit.plots

from . import models
from .config import RunConfig


def flop_counts(model: nn.Module, image_size: int, stats: gatekit.GateStats | None,
                config: RunConfig, *, dense_backbone: nn.Module | None = None,
                budget: float | None = None) -> dict[str, Any]:
    """FLOPs per image, counted by ``FlopCounterMode`` on a CPU copy in eval mode.

    For a gated model, ``dense`` counts gater and backbone with every gate open;
    ``at_open_fraction`` subtracts, for every gate, what closing it removes from its conv's
    output channels (:func:`gatekit.gate_costs`) times the fraction of the evaluation images
    for which it was closed: what skipping closed filters' outputs saves (the convs reading
    an inner gate save more: ``--count-downstream`` counts that too, as
    ``gate_costs(downstream=True)`` does, and ``downstream`` records it).  ``backbone_fraction`` is the
    backbone's share at that open fraction, ``(at_open_fraction - gater) / backbone_dense``.

    A statically pruned plain model is counted against the dense model it was pruned from
    (``dense_backbone``): ``backbone_dense`` is that model's FLOPs, ``dense`` and
    ``at_open_fraction`` the pruned model's, ``backbone_fraction`` their ratio.  A model with
    a budget input runs at ``budget``.
    """
    cpu = copy.deepcopy(model).float().cpu().eval()
    x = models.probe(image_size)
    # a budget-input model is run at ``budget`` (its head reads it: a few FLOPs)
    kw: dict[str, Any] = {} if budget is None else {"budget": budget}
    out: dict[str, Any] = {"dense": _count(lambda x: cpu(x, **kw), x)}
    if dense_backbone is not None:
        out["backbone_dense"] = _count(copy.deepcopy(dense_backbone).float().cpu().eval(), x)
        out["at_open_fraction"] = out["dense"]
        out["backbone_fraction"] = out["dense"] / out["backbone_dense"]
    if isinstance(cpu, gatekit.GaterNet):
        out["gater"] = _count(lambda x: cpu.gate_logits(x, **kw), x)
        out["backbone_dense"] = out["dense"] - out["gater"]
        if stats is not None and stats.num_samples:
            downstream = config.count_downstream
            costs = gatekit.gate_costs(cpu, x, downstream=downstream)
            out["downstream"] = downstream
            saved = float((costs * (1.0 - stats.open_fraction.double())).sum())
            out["at_open_fraction"] = round(out["dense"] - saved)
            out["gated_conv_flops_saved"] = round(saved)
            out["backbone_fraction"] = ((out["at_open_fraction"] - out["gater"])
                                        / out["backbone_dense"])
    return out


def _count(fn: Any, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(x)
    return int(counter.get_total_flops())


def gate_report(stats: gatekit.GateStats, out_dir: Any, class_names: list[str]) -> dict[str, Any]:
    """Print the statistics table, save the plots; returns the summary."""
    print("\ngate statistics on the evaluation set (input-dependent: open for some but not all "
          "images):")
    print(stats.table())
    summary = stats.summary()
    summary["class_names"] = class_names
    try:
        plots = gatekit.plots.save_plots(stats, out_dir, class_names=class_names)
        summary["plots"] = [p.name for p in plots]
    except gatekit.GatekitError as e:  # matplotlib missing: keep the numbers, say why
        print(f"no plots: {e}")
    return summary


def gate_report_1_99(stats: gatekit.GateStats) -> dict[str, Any]:
    """The statistics at GaterNet's thresholds: input-dependent when open for more than 1% and
    fewer than 99% of the evaluation images.  Printed as the table's totals line; returns the
    summary without the per-class matrix (``gate_stats`` has it)."""
    s = stats.with_thresholds(always_on=0.99, always_off=0.01)
    print("at GaterNet's thresholds (input-dependent: open for 1% < fraction < 99% of images):")
    lines = s.table().splitlines()
    print("\n".join([lines[0], *(line for line in lines if line.startswith("total"))]))
    summary = s.summary()
    summary.pop("class_open_fraction", None)
    return summary
