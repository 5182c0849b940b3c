"""The forward-hook oracle that gate_model's output is checked against.

It runs the *original* model and zeroes, with a forward hook on each site's ``after``
module, the channels whose gate is 0: no tracing, no graph rewriting, nothing shared with
the transform.  It takes the sites from gatekit, so it first checks what it can of them
without gatekit: the chunks tile the gate vector.  Which modules they name is pinned per
model in test_sites.py and test_zoo.py.

A freshly built model's norms are the identity in eval mode (mean 0, var 1, weight 1,
bias 0), and zeroing a channel before such a norm equals zeroing it after: run the oracle on
a model passed through :func:`perturb_norms` so that a gate on the wrong side of the norm
fails.
"""

from __future__ import annotations

import torch
from torch import nn


def hooked_forward(
    backbone: nn.Module, sites, gates: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """``backbone(x)`` with each site's gated-off channels zeroed after its ``after`` module."""
    check_offsets(sites, gates.shape[1])
    modules = dict(backbone.named_modules())
    handles = []
    for s in sites:
        keep = gates[:, s.offset : s.stop].repeat_interleave(s.group_size, dim=1) != 0
        shape = (x.shape[0], s.channels) + (1,) * s.spatial_dims
        if s.channel_dim == -1:  # a site whose ``after`` module works channels-last
            shape = (x.shape[0],) + (1,) * s.spatial_dims + (s.channels,)
        keep = keep.reshape(shape)
        handles.append(
            modules[s.after].register_forward_hook(
                lambda m, i, o, keep=keep: o.masked_fill(~keep, 0)
            )
        )
    try:
        return backbone(x)
    finally:
        for h in handles:
            h.remove()


def check_offsets(sites, num_gates: int) -> None:
    """Each site's chunk starts where the previous one stops, from 0 up to ``num_gates``."""
    spans = [(s.offset, s.stop) for s in sites]
    assert spans, "no sites"
    assert all(stop - start == s.channels // s.group_size for (start, stop), s in zip(spans, sites))
    starts = [start for start, _ in spans]
    stops = [0] + [stop for _, stop in spans[:-1]]
    assert starts == stops, f"chunks do not tile the gate vector: {spans}"
    assert spans[-1][1] == num_gates, f"last chunk stops at {spans[-1][1]}, not {num_gates}"


def perturb_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm weights, biases and running statistics, in place (returns ``model``).

    Covers every module with a 1-D ``weight`` and no ``kernel_size`` (BatchNorm, LayerNorm,
    GroupNorm, timm's norm variants); zero-initialised last BNs (timm's ResNets) would
    otherwise make a residual gate a no-op, and identity norms hide a gate on the wrong side.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform_(t: torch.Tensor, lo: float, hi: float) -> None:
        t.copy_(torch.rand(t.shape, generator=gen, dtype=torch.float64) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            weight = getattr(m, "weight", None)
            if not isinstance(weight, torch.Tensor) or hasattr(m, "kernel_size"):
                continue
            if isinstance(getattr(m, "running_var", None), torch.Tensor):
                uniform_(m.running_mean, -0.2, 0.2)
                uniform_(m.running_var, 0.5, 1.5)
            if weight.ndim == 1:
                uniform_(weight, 0.5, 1.5)
                bias = getattr(m, "bias", None)
                if isinstance(bias, torch.Tensor) and bias.ndim == 1:
                    uniform_(bias, -0.2, 0.2)
    return model
