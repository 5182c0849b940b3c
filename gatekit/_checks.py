"""What :class:`gatekit.GaterNet` checks of its input, its gates, its budget and its
gater's output: each a function of the model's description and the tensors, apart from
its forward.  Every failure is one :class:`gatekit.GatekitError` saying what was expected,
what was got and how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, fx, nn

from ._errors import GatekitError, InputShapeError
from ._graph import is_conv
from .sites import GateSite

__all__: list[str] = []


class InputSpec(NamedTuple):
    """What the backbone's first conv reads: the conv's name, input rank and channels."""

    conv: str
    ndim: int
    channels: int


def input_spec(backbone: nn.Module) -> InputSpec | None:
    """The spec of the conv that reads the backbone's input directly, if exactly one does.

    None when the input first goes through anything else (a normalisation, a resize): then
    the model says nothing about the input's shape, and the check is left to that code.
    """
    if not isinstance(backbone, fx.GraphModule):
        return None
    inputs = [n for n in backbone.graph.nodes if n.op == "placeholder" and n.target != "gates"]
    if not inputs:
        return None
    modules = dict(backbone.named_modules())
    readers = {(user.target, modules.get(user.target)) for user in inputs[0].users
               if user.op == "call_module" and user.args and user.args[0] is inputs[0]}
    convs = [(name, m) for name, m in readers if is_conv(m)]
    if len(convs) != 1 or len(readers) != 1:
        return None
    name, conv = convs[0]
    return InputSpec(str(name), len(conv.kernel_size) + 2, conv.in_channels)


def site_counts(sites: Sequence[GateSite], limit: int = 4) -> str:
    """``"layer1.0.conv2: 64, ... (16 sites)"``: the first sites' gate counts, for messages."""
    shown = ", ".join(f"{s.name}: {s.num_gates}" for s in sites[:limit])
    more = f", ... ({len(sites)} sites)" if len(sites) > limit else ""
    return shown + more


def _batch(x: Any) -> int | None:
    return x.shape[0] if isinstance(x, Tensor) and x.ndim > 0 else None


def _check_rows(t: Tensor, x: Any, message: str) -> None:
    """One row of ``t`` per sample of ``x`` (when ``x`` is a tensor); ``message`` says what
    was got, with ``{rows}`` and ``{batch}``."""
    batch = _batch(x)
    if batch is not None and t.shape[0] != batch:
        raise GatekitError(message.format(rows=t.shape[0], batch=batch))


def check_input(spec: InputSpec | None, x: Any) -> None:
    """An input the backbone's first conv can read (rank and channels), when one conv reads it."""
    if spec is None or not isinstance(x, Tensor):
        return
    spatial = {3: "L", 4: "H, W", 5: "D, H, W"}.get(spec.ndim, "...")
    expected = f"(N, {spec.channels}, {spatial})"
    fix = ""
    if x.ndim == spec.ndim - 1 and x.shape[0] == spec.channels:
        fix = "; add the batch dimension with x.unsqueeze(0)"
    elif x.ndim == spec.ndim and x.shape[-1] == spec.channels:
        fix = "; the channels look last: permute to channels first (channels_last is a memory format, not a shape)"
    if x.ndim != spec.ndim:
        raise InputShapeError(
            f"the gated model expects a {spec.ndim}-d input {expected} (its backbone's "
            f"{spec.conv} reads it), got shape {tuple(x.shape)}{fix}"
        )
    if x.shape[1] != spec.channels:
        raise InputShapeError(
            f"the gated model expects an input with {spec.channels} channels {expected} "
            f"(its backbone's {spec.conv} has in_channels={spec.channels}), got "
            f"{x.shape[1]} channels in shape {tuple(x.shape)}{fix}"
        )


def check_features(features: Any, x: Any, in_features: int, num_gates: int,
                   sites: Sequence[GateSite]) -> None:
    """The gater's output: ``(N, in_features)``, one row per sample of ``x``."""
    if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[1] != in_features:
        got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise GatekitError(
            f"the gater must return features of shape (N, {in_features}), got {got}; "
            f"its head maps them to {num_gates} gate logits ({site_counts(sites)}). "
            f"Fix: make the gater end in a (N, D) feature vector (pool and flatten, no "
            f"classifier) and pass gater_features=D to gate_model if D changed"
        )
    _check_rows(features, x, "the gater returned {rows} feature rows for a batch of {batch} "
                "inputs; expected one row per sample; check the gater's reshapes")


def check_logits(logits: Tensor) -> None:
    """Finite logits (eager mode only: skipped inside ``torch.compile``)."""
    if torch.compiler.is_compiling():
        return
    bad = ~torch.isfinite(logits)
    if bool(bad.any()):
        raise GatekitError(
            f"the gate logits contain {int(bad.sum())} non-finite values (NaN or inf) "
            f"out of {logits.numel()}; expected finite logits. Fix: look for a diverging "
            f"gater (lower the learning rate, clip gradients, check the input), or "
            f"pass check_finite=False to let them through"
        )


def check_gates(gates: Any, x: Any, num_gates: int, sites: Sequence[GateSite]) -> None:
    """Given gates: ``(N, num_gates)`` floating, on ``x``'s device, finite (eager mode)."""
    expected = f"(N, {num_gates}) ({site_counts(sites)})"
    if not isinstance(gates, Tensor):
        raise GatekitError(f"gates must be a tensor of shape {expected}, got {type(gates).__name__}")
    if gates.ndim != 2 or gates.shape[1] != num_gates:
        raise GatekitError(
            f"gates must have shape {expected}, got {tuple(gates.shape)}; "
            f"model.sites lists each site's offset and size"
        )
    _check_rows(gates, x, "gates has {rows} rows for a batch of {batch} inputs; expected one "
                "row of gates per sample")
    if not gates.is_floating_point():
        raise GatekitError(
            f"gates must be floating point (like the activations they scale), got "
            f"{gates.dtype}; convert with gates.float()"
        )
    if isinstance(x, Tensor) and gates.device != x.device:
        raise GatekitError(
            f"gates are on {gates.device} but the input is on {x.device}; "
            f"move them with gates.to(x.device)"
        )
    if torch.compiler.is_compiling():
        return
    finite = torch.isfinite(gates)
    if not bool(finite.all()):
        sample, column = (int(i) for i in (~finite).nonzero()[0])
        site = next(s for s in sites if s.offset <= column < s.stop)
        value = gates[sample, column].item()
        raise GatekitError(
            f"gates must be finite, got {value} for sample {sample}, gate {column} "
            f"(site {site.name}, its gate {column - site.offset}) and "
            f"{int((~finite).sum())} non-finite values in all; pass gates in [0, 1], "
            f"e.g. (logits > 0).float()"
        )


def budget_vector(x: Any, budget: float | Tensor | None, reads_budget: bool) -> Tensor | None:
    """The per-sample budgets ``(N,)`` (float32, on ``x``'s device), or None for a model
    without a budget input; checked: present exactly when the head reads it, in (0, 1]."""
    if not reads_budget:
        if budget is not None:
            raise GatekitError(
                "this GaterNet has no budget input, got budget=...; build it with "
                "gatekit.gate_model(..., budget_input=True) to serve several budgets, or "
                "drop the budget argument"
            )
        return None
    if budget is None:
        raise GatekitError(
            "this GaterNet reads a compute budget (built with budget_input=True): call it "
            "as model(x, budget=b), b a float in (0, 1] or an (N,) tensor of them"
        )
    n = _batch(x)
    device = x.device if isinstance(x, Tensor) else None
    if isinstance(budget, Tensor):
        if not budget.is_floating_point() or budget.ndim > 1 or (
                budget.ndim == 1 and n is not None and budget.shape[0] != n):
            raise GatekitError(
                f"budget must be a float or a floating tensor of shape ({n},), one per "
                f"sample, got {budget.dtype} of shape {tuple(budget.shape)}"
            )
        b = budget.to(device=device, dtype=torch.float32)
        if b.ndim == 0 and n is not None:
            b = b.expand(n)
    elif isinstance(budget, bool) or not isinstance(budget, int | float):
        raise GatekitError(f"budget must be a float in (0, 1] or an (N,) tensor, got {budget!r}")
    else:
        b = torch.full((n if n is not None else 1,), float(budget), device=device)
    if not torch.compiler.is_compiling() and not bool(((b > 0) & (b <= 1)).all()):
        raise GatekitError(
            f"budget must lie in (0, 1] (the fraction of the gated FLOPs a sample may "
            f"use), got values from {b.min().item()} to {b.max().item()}"
        )
    return b
