"""The forward-hook oracle that gate_model's output is checked against.

It runs the *original* model and zeroes, with a forward hook on each site's ``after``
module, the channels whose gate is 0: no tracing, no graph rewriting, nothing shared with
the transform.
"""

from __future__ import annotations

import torch
from torch import nn


def hooked_forward(
    backbone: nn.Module, sites, gates: torch.Tensor, x: torch.Tensor
) -> torch.Tensor:
    """``backbone(x)`` with each site's gated-off channels zeroed after its ``after`` module."""
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
