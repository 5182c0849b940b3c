"""What a finished run reports: parameters, FLOPs (dense and at the measured open fraction),
gate statistics with their plots, and one results JSON."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

import gatekit


def _conv_flops(model: nn.Module, hooked: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs (2 per multiply-add) of every Conv2d of ``hooked`` (inside ``model``) by name."""
    flops: dict[str, int] = {}
    hooks = []
    for name, m in hooked.named_modules():
        if isinstance(m, nn.Conv2d):
            def hook(mod: nn.Conv2d, _: Any, out: torch.Tensor, name: str = name) -> None:
                k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
                flops[name] = flops.get(name, 0) + 2 * out.numel() * k
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return flops


def flop_counts(model: nn.Module, image_size: int, stats: gatekit.GateStats | None) -> dict[str, Any]:
    """FLOPs per image, counted by ``FlopCounterMode`` on a CPU copy in eval mode.

    For a gated model, ``dense`` counts gater and backbone with every gate open; ``at_open_
    fraction`` subtracts, for every gated conv, its FLOPs times the fraction of its gates
    that were closed over the evaluation set: what skipping closed filters' outputs saves
    (convs downstream of an inner gate could save more; that is not counted).
    """
    from torch.utils.flop_counter import FlopCounterMode

    cpu = copy.deepcopy(model).float().cpu().eval()
    x = torch.zeros(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        cpu(x)
    out: dict[str, Any] = {"dense": int(counter.get_total_flops())}
    if isinstance(cpu, gatekit.GaterNet):
        with FlopCounterMode(display=False) as gater_counter, torch.no_grad():
            cpu.gate_logits(x)
        out["gater"] = int(gater_counter.get_total_flops())
        out["backbone_dense"] = out["dense"] - out["gater"]
        if stats is not None and stats.num_samples:
            per_conv = _conv_flops(cpu, cpu.backbone, x)
            saved = 0.0
            for layer in stats.layers():
                saved += per_conv.get(layer.name, 0) * (1.0 - layer.open_fraction)
            out["at_open_fraction"] = int(out["dense"] - saved)
            out["gated_conv_flops_saved"] = int(saved)
    return out


def gate_report(stats: gatekit.GateStats, out_dir: Any, class_names: list[str]) -> dict[str, Any]:
    """Print the statistics table, save the plots; returns the summary."""
    print("\ngate statistics on the evaluation set:")
    print(stats.table())
    summary = stats.summary()
    summary["class_names"] = class_names
    try:
        plots = stats.save_plots(out_dir, class_names=class_names)
        summary["plots"] = [p.name for p in plots]
    except gatekit.GatekitError as e:  # matplotlib missing: keep the numbers, say why
        print(f"no plots: {e}")
    return summary
