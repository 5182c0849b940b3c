"""The validated arguments of one ``gated_conv2d`` call, shared by every implementation.

Validation lives here, once, so that each implementation only answers whether it *supports*
inputs that are already known to be well formed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._errors import GatekitError
from .._graph import conv_output_size

__all__ = ["ACTIVATIONS", "GatedConvInputs", "make_inputs"]

#: Activations the op fuses; ``None`` means identity.
ACTIVATIONS = ("relu", None)

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _pair(name: str, value: int | Sequence[int], minimum: int) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    elif (
        isinstance(value, Sequence)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise GatekitError(f"{name} must be an int or a pair of ints (got {value!r})")
    if min(pair) < minimum:
        raise GatekitError(f"{name} must be >= {minimum} (got {value!r})")
    return pair


@dataclass(frozen=True)
class GatedConvInputs:
    """Everything one ``gated_conv2d`` call computes with, validated and normalised.

    ``gate`` is kept in its grouped form ``(N, C_out // group_size)``; ``group_size``
    says how many adjacent output channels share one gate.  ``in_gate`` likewise, with
    ``in_group_size``, for the input channels (``None`` when not given).

    >>> import torch
    >>> inp = make_inputs(torch.zeros(2, 3, 5, 5), torch.zeros(8, 3, 3, 3), torch.ones(2, 4))
    >>> inp.group_size, inp.out_hw
    (2, (3, 3))
    """

    x: torch.Tensor
    weight: torch.Tensor
    gate: torch.Tensor
    bias: torch.Tensor | None
    scale: torch.Tensor | None
    shift: torch.Tensor | None
    in_gate: torch.Tensor | None
    activation: str | None
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    @property
    def group_size(self) -> int:
        """Adjacent output channels that share one gate."""
        return self.weight.shape[0] // self.gate.shape[1]

    @property
    def in_group_size(self) -> int:
        """Adjacent input channels that share one ``in_gate`` entry (1 without ``in_gate``)."""
        return 1 if self.in_gate is None else self.x.shape[1] // self.in_gate.shape[1]

    @property
    def out_hw(self) -> tuple[int, int]:
        """Spatial size of the output."""
        h, w = conv_output_size(
            self.x.shape[2:], self.weight.shape[2:], self.stride, self.padding, self.dilation
        )
        return h, w

    @property
    def device(self) -> torch.device:
        """Device of every tensor of the call."""
        return self.x.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of every tensor of the call."""
        return self.x.dtype

    @property
    def requires_grad(self) -> bool:
        """Whether any tensor argument needs a gradient."""
        return any(t is not None and t.requires_grad for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor | None]:
        """The tensor arguments by name, in the op's argument order."""
        return {
            "x": self.x,
            "weight": self.weight,
            "gate": self.gate,
            "bias": self.bias,
            "scale": self.scale,
            "shift": self.shift,
            "in_gate": self.in_gate,
        }


def _check_gate(name: str, gate: torch.Tensor, n: int, channels: int, what: str) -> None:
    if gate.dim() != 2 or gate.shape[0] != n:
        raise GatekitError(
            f"{name} must have shape (N, {what}) or (N, {what} // group_size) with N = {n}"
            f" (got {tuple(gate.shape)})"
        )
    if gate.shape[1] == 0 or channels % gate.shape[1] != 0:
        raise GatekitError(
            f"{name} has {gate.shape[1]} entries per sample, which do not divide the {channels}"
            f" {what}; give one gate per channel or per group of adjacent channels"
            f" (a divisor of {channels})"
        )


def _check_tensors(named: dict[str, Any]) -> None:
    """The call's tensors: the required ones given, every one a tensor of ``x``'s floating
    dtype, on ``x``'s device."""
    x = named["x"]
    for name, t in named.items():
        if t is None and name in ("x", "weight", "gate"):
            raise GatekitError(f"{name} is required (got None)")
        if t is not None and not isinstance(t, torch.Tensor):
            raise GatekitError(f"{name} must be a torch.Tensor (got {type(t).__name__})")
    if x.dtype not in _FLOAT_DTYPES:
        raise GatekitError(
            f"x must be float16, bfloat16, float32 or float64 (got {x.dtype}); cast it with x.float()"
        )
    for name, t in named.items():
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise GatekitError(
                f"{name} has dtype {t.dtype} but x has {x.dtype}; every tensor of the call must"
                f" share one dtype: pass {name}.to(x.dtype)"
            )
        if t.device != x.device:
            raise GatekitError(
                f"{name} is on {t.device} but x is on {x.device}; move it with {name}.to(x.device)"
            )


def make_inputs(
    x: torch.Tensor,
    weight: torch.Tensor,
    gate: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    in_gate: torch.Tensor | None = None,
    activation: str | None = "relu",
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> GatedConvInputs:
    """Validate the arguments of ``gated_conv2d`` and return them normalised.

    Raises :class:`~gatekit.GatekitError` saying what was expected, what was got and how
    to fix it.

    >>> import torch
    >>> make_inputs(torch.zeros(1, 4, 3, 3), torch.zeros(4, 4, 1, 1), torch.ones(1, 3))
    Traceback (most recent call last):
    ...
    gatekit._errors.GatekitError: gate has 3 entries per sample, which do not divide the 4 output channels; give one gate per channel or per group of adjacent channels (a divisor of 4)
    """
    named = {"x": x, "weight": weight, "gate": gate, "bias": bias, "scale": scale, "shift": shift,
             "in_gate": in_gate}
    _check_tensors(named)
    if x.dim() != 4:
        raise GatekitError(f"x must have shape (N, C_in, H, W) (got {tuple(x.shape)})")
    if weight.dim() != 4:
        raise GatekitError(
            f"weight must have shape (C_out, C_in // groups, kH, kW) (got {tuple(weight.shape)})"
        )
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise GatekitError(f"groups must be a positive int (got {groups!r})")
    n, c_in = x.shape[:2]
    c_out = weight.shape[0]
    if c_in % groups or c_out % groups:
        raise GatekitError(
            f"groups={groups} must divide both C_in={c_in} and C_out={c_out}"
        )
    if weight.shape[1] != c_in // groups:
        raise GatekitError(
            f"weight has {weight.shape[1]} input channels per group but x has C_in={c_in} and"
            f" groups={groups}, so {c_in // groups} were expected (weight shape {tuple(weight.shape)})"
        )
    _check_gate("gate", gate, n, c_out, "output channels")
    if in_gate is not None:
        _check_gate("in_gate", in_gate, n, c_in, "input channels")
    for name, t in (("bias", bias), ("scale", scale), ("shift", shift)):
        if t is not None and tuple(t.shape) != (c_out,):
            raise GatekitError(
                f"{name} must have shape (C_out,) = ({c_out},), one value per output channel"
                f" (got {tuple(t.shape)})"
            )
    if activation not in ACTIVATIONS:
        raise GatekitError(f"activation must be one of {ACTIVATIONS} (got {activation!r})")
    inputs = GatedConvInputs(
        x=x, weight=weight, gate=gate, bias=bias, scale=scale, shift=shift, in_gate=in_gate,
        activation=activation, stride=_pair("stride", stride, 1),
        padding=_pair("padding", padding, 0), dilation=_pair("dilation", dilation, 1),
        groups=groups,
    )
    if min(inputs.out_hw) < 1:
        raise GatekitError(
            f"the output would be empty: input {tuple(x.shape[2:])} with kernel"
            f" {tuple(weight.shape[2:])}, stride {inputs.stride}, padding {inputs.padding} and"
            f" dilation {inputs.dilation} gives {inputs.out_hw}; pad more or use a smaller kernel"
        )
    return inputs
