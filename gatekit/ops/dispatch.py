"""The implementations of the gated convolution, what each supports, and how one is picked.

Each implementation answers :meth:`Implementation.not_supported_reasons` for a call's
validated inputs.  ``op=None`` takes the first of :data:`IMPLEMENTATIONS` that fits and that
is meant for the inputs' device (the Triton one on CUDA, the reference elsewhere); naming an
implementation that does not fit, or having none fit, raises one
:class:`~gatekit.GatekitError` listing every candidate with its reasons: there is no silent
fallback to a slower kernel.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._errors import GatekitError
from .inputs import GatedConvInputs

__all__ = ["IMPLEMENTATIONS", "Implementation", "get_implementation", "select_implementation"]


@dataclass(frozen=True)
class Implementation:
    """One way of computing ``gated_conv2d``: its name, what it supports, and its custom op.

    ``dtypes`` and ``devices`` list what it accepts, ``interpreter_devices`` what it also
    accepts under ``TRITON_INTERPRET=1``, and ``auto_devices`` the devices on which ``op=None``
    may pick it (so the interpreted Triton kernels run on CPU tensors only on request).

    >>> get_implementation("reference").dtypes
    (torch.float16, torch.bfloat16, torch.float32, torch.float64)
    """

    name: str
    description: str
    dtypes: tuple[torch.dtype, ...]
    devices: tuple[str, ...]
    auto_devices: tuple[str, ...]
    load_op: Callable[[], Callable[..., torch.Tensor]]
    load_eager: Callable[[], Callable[..., torch.Tensor]] | None = None
    interpreter_devices: tuple[str, ...] = ()
    extra_reasons: Callable[[GatedConvInputs], list[str]] = lambda inputs: []

    def not_supported_reasons(self, inputs: GatedConvInputs) -> list[str]:
        """Why this implementation cannot compute ``inputs`` (empty when it can).

        >>> import torch
        >>> from gatekit.ops.inputs import make_inputs
        >>> inp = make_inputs(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1), torch.ones(1, 1))
        >>> get_implementation("triton").not_supported_reasons(inp)[0]
        'device cpu is not supported (needs cuda)'
        """
        reasons = []
        devices = self.devices
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            devices = (*devices, *self.interpreter_devices)
        if inputs.device.type not in devices:
            reasons.append(
                f"device {inputs.device.type} is not supported (needs {' or '.join(devices)})"
            )
        if inputs.dtype not in self.dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in self.dtypes)
            reasons.append(f"dtype {inputs.dtype} is not supported (supports {names})")
        return reasons + self.extra_reasons(inputs)

    def __call__(self, inputs: GatedConvInputs) -> torch.Tensor:
        """Run the implementation on validated inputs.

        Through its custom op when autograd, ``torch.compile`` or a tensor subclass (fake
        tensors, say) needs the dispatcher; else straight through ``load_eager``, which skips
        the dispatcher's per-call cost.
        """
        if self.load_eager is not None and not (
            torch.compiler.is_compiling()
            or (inputs.requires_grad and torch.is_grad_enabled())
            or any(type(t) is not torch.Tensor for t in inputs.tensors().values() if t is not None)
        ):
            op = self.load_eager()
        else:
            op = self.load_op()
        return op(
            inputs.x, inputs.weight, inputs.gate, inputs.bias, inputs.scale, inputs.shift,
            inputs.in_gate, inputs.activation or "none", list(inputs.stride),
            list(inputs.padding), list(inputs.dilation), inputs.groups,
        )


# Loaders of the custom ops stay plain functions, which torch.compile traces; the eager ones are
# cached and never traced.

# Looked up once: find_spec costs more than a small layer's kernel, and torch.compile cannot
# trace it.  It does not import triton.
_HAS_TRITON = importlib.util.find_spec("triton") is not None


def _triton_reasons(inputs: GatedConvInputs) -> list[str]:
    reasons = []
    if not _HAS_TRITON:
        reasons.append("triton is not installed (pip install 'gatekit[cuda]')")
    if inputs.in_gate is not None and inputs.groups != 1:
        reasons.append(f"in_gate needs groups=1 (got groups={inputs.groups})")
    if inputs.weight.shape[0] // inputs.groups > 4096:
        reasons.append("more than 4096 output channels per group")
    return reasons


def _load_reference() -> Callable[..., torch.Tensor]:
    # Registered when gatekit.ops imports .reference, which it does before this can run.
    return torch.ops.gatekit.gated_conv2d_reference


def _load_triton() -> Callable[..., torch.Tensor]:
    from . import triton_conv  # noqa: F401  (imports triton and registers the op)

    return torch.ops.gatekit.gated_conv2d_triton


@functools.cache
def _load_triton_eager() -> Callable[..., torch.Tensor]:
    from .triton_conv import gated_conv2d_triton_eager

    return gated_conv2d_triton_eager


@functools.cache
def _reference_eager() -> Callable[..., torch.Tensor]:
    from .reference import _reference_body

    return _reference_body


#: The implementations in order of preference for ``op=None``.
IMPLEMENTATIONS: tuple[Implementation, ...] = (
    Implementation(
        name="triton",
        description="fused implicit-GEMM Triton kernel (NHWC) that skips gated-off tiles",
        dtypes=(torch.float16, torch.bfloat16, torch.float32),
        devices=("cuda",),
        auto_devices=("cuda",),
        load_op=_load_triton,
        load_eager=_load_triton_eager,
        interpreter_devices=("cpu",),
        extra_reasons=_triton_reasons,
    ),
    Implementation(
        name="reference",
        description="plain PyTorch: conv2d, then scale, shift, activation and gate",
        dtypes=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
        devices=("cpu", "cuda", "mps", "xpu", "meta"),
        auto_devices=("cpu", "cuda", "mps", "xpu", "meta"),
        load_op=_load_reference,
        load_eager=_reference_eager,
    ),
)


def get_implementation(name: str) -> Implementation:
    """The implementation called ``name``.

    >>> get_implementation("reference").name
    'reference'
    """
    for impl in IMPLEMENTATIONS:
        if impl.name == name:
            return impl
    names = ", ".join(repr(i.name) for i in IMPLEMENTATIONS)
    raise GatekitError(f"unknown gated_conv2d implementation {name!r}; choose one of {names} or None")


def _report(impls: list[tuple[Implementation, list[str]]]) -> str:
    return "\n".join(f"  {impl.name}: {'; '.join(reasons)}" for impl, reasons in impls)


def select_implementation(inputs: GatedConvInputs, op: str | None = None) -> Implementation:
    """The implementation that will compute ``inputs``: ``op`` if given, else the best that fits.

    >>> import torch
    >>> from gatekit.ops.inputs import make_inputs
    >>> inp = make_inputs(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1), torch.ones(1, 1))
    >>> select_implementation(inp).name
    'reference'
    """
    if op is not None:
        impl = get_implementation(op)
        reasons = impl.not_supported_reasons(inputs)
        if reasons:
            raise GatekitError(
                f"gated_conv2d implementation {op!r} does not support these inputs:\n"
                f"{_report([(impl, reasons)])}\nuse op=None to pick one that does"
            )
        return impl
    rejected = []
    for impl in IMPLEMENTATIONS:
        reasons = impl.not_supported_reasons(inputs)
        if not reasons and inputs.device.type not in impl.auto_devices:
            reasons = [f"picked only on request on {inputs.device.type} (op={impl.name!r})"]
        if not reasons:
            return impl
        rejected.append((impl, reasons))
    raise GatekitError(
        f"no gated_conv2d implementation supports these inputs (x {tuple(inputs.x.shape)}"
        f" {inputs.dtype} on {inputs.device}):\n{_report(rejected)}"
    )
