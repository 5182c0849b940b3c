"""gatekit.ops.gated_conv2d: the reference against hand-written modules, its backward, the
dispatcher, and the Triton kernels against the reference.

The Triton kernels run here under ``TRITON_INTERPRET=1`` on CPU tensors.  Triton reads that
variable when a kernel is defined, so those runs happen in a child Python process (one per
dtype) that only calls the op; the inputs are made and the outputs checked against the float64
reference in this process.  Tests marked ``gpu`` run the compiled kernels on CUDA.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gatekit
from gatekit.ops import dispatch, gated_conv2d, make_inputs

# Compile each kernel specialisation once in the gpu tests instead of autotuning every shape.
os.environ.setdefault("GATEKIT_TRITON_AUTOTUNE", "0")

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --------------------------------------------------------------------------------------------
# Cases: (N, C_in, C_out, H, W, k, stride, padding, dilation, groups, gate_group, gate kind,
# in_gate group or 0, extras).  Odd sizes, channels that are not multiples of 16.


Pair = int | tuple[int, int]


def _pair(v: Pair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclasses.dataclass(frozen=True)
class Case:
    """k, stride, padding and dilation take an int or an (H, W) pair."""

    n: int
    c_in: int
    c_out: int
    hw: tuple[int, int]
    k: Pair = 3
    stride: Pair = 1
    padding: Pair = 0
    dilation: Pair = 1
    groups: int = 1
    gate_group: int = 1
    gate: str = "random"  # "on", "off", "random"
    in_gate_group: int = 0  # 0: no in_gate
    affine: bool = True  # bias, scale and shift
    activation: str | None = "relu"

    def __str__(self) -> str:
        def hw(v: Pair) -> str:
            return str(v) if isinstance(v, int) else f"{v[0]}x{v[1]}"

        return (
            f"n{self.n}_c{self.c_in}-{self.c_out}_{self.hw[0]}x{self.hw[1]}_k{hw(self.k)}"
            f"s{hw(self.stride)}p{hw(self.padding)}d{hw(self.dilation)}g{self.groups}"
            f"_gate{self.gate}{self.gate_group}"
            f"_in{self.in_gate_group}{'' if self.affine else '_noaffine'}_{self.activation}"
        )

    def make(self, dtype: torch.dtype, seed: int, device: str = "cpu") -> dict:
        """Fresh random inputs of the case as ``gated_conv2d`` keyword arguments."""
        gen = torch.Generator().manual_seed(seed)

        def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)

        n_gates = self.c_out // self.gate_group
        if self.gate == "on":
            gate = torch.ones(self.n, n_gates)
        elif self.gate == "off":
            gate = torch.zeros(self.n, n_gates)
        else:  # binary, about half on, and one sample all on so no tile pattern is missing
            gate = (torch.rand(self.n, n_gates, generator=gen) > 0.5).float()
            gate[0] = 1.0
        kh, kw_ = _pair(self.k)
        fan_in = self.c_in // self.groups * kh * kw_
        kw = {
            "x": rand(self.n, self.c_in, *self.hw),
            "weight": rand(self.c_out, self.c_in // self.groups, kh, kw_, scale=fan_in**-0.5),
            "gate": gate.to(dtype).to(device),
            "stride": self.stride, "padding": self.padding, "dilation": self.dilation,
            "groups": self.groups, "activation": self.activation,
        }
        if self.affine:
            kw["bias"] = rand(self.c_out, scale=0.1)
            kw["scale"] = (torch.rand(self.c_out, generator=gen) + 0.5).to(dtype).to(device)
            kw["shift"] = rand(self.c_out, scale=0.1)
        if self.in_gate_group:
            ig = (torch.rand(self.n, self.c_in // self.in_gate_group, generator=gen) > 0.4).float()
            ig[0, 0], ig[-1, -1] = 0.0, 1.0  # at least one closed and one open input group
            kw["in_gate"] = ig.to(dtype).to(device)
        return kw


def _oracle(kw: dict) -> torch.Tensor:
    """The documented formula, written here with F.conv2d in float64 (not gatekit's reference)."""
    a = {k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    x = a["x"]
    if a.get("in_gate") is not None:
        x = x * a["in_gate"].repeat_interleave(x.shape[1] // a["in_gate"].shape[1], 1)[:, :, None, None]
    y = F.conv2d(x, a["weight"], a.get("bias"), _pair(a["stride"]), _pair(a["padding"]),
                 _pair(a["dilation"]), a["groups"])
    if a.get("scale") is not None:
        y = y * a["scale"][:, None, None]
    if a.get("shift") is not None:
        y = y + a["shift"][:, None, None]
    if a["activation"] == "relu":
        y = F.relu(y)
    gate = a["gate"]
    return y * gate.repeat_interleave(y.shape[1] // gate.shape[1], 1)[:, :, None, None]


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-30)).item()


# --------------------------------------------------------------------------------------------
# The reference against an independent oracle: nn.Conv2d + nn.BatchNorm2d (eval) + ReLU + gate.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("stride,padding,groups", [(1, 0, 1), (2, 1, 1), (1, 1, 2)])
def test_reference_matches_conv_batchnorm_relu_gate(dtype, stride, padding, groups):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 8, 3, stride=stride, padding=padding, groups=groups).to(dtype)
    bn = nn.BatchNorm2d(8).to(dtype).eval()
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(3, 6, 7, 9, dtype=dtype)
    gate = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=dtype)
    with torch.no_grad():
        expected = F.relu(bn(conv(x))) * gate.repeat_interleave(2, 1)[:, :, None, None]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        got = gated_conv2d(x, conv.weight, gate, bias=conv.bias, scale=scale, shift=shift,
                           stride=stride, padding=padding, groups=groups)
    tol = {torch.float32: 1e-5, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


def test_in_gate_multiplies_input_channels():
    torch.manual_seed(1)
    x, w = torch.randn(2, 6, 5, 5), torch.randn(4, 6, 1, 1)
    in_gate = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    masked = x * in_gate.repeat_interleave(2, 1)[:, :, None, None]
    got = gated_conv2d(x, w, torch.ones(2, 4), in_gate=in_gate, activation=None)
    torch.testing.assert_close(got, F.conv2d(masked, w))


# --------------------------------------------------------------------------------------------
# Backward: gradcheck of the custom op (its hand-written backward) in float64, and agreement
# with autograd through the plain formula.

_GRAD_NAMES = ("x", "weight", "gate", "bias", "scale", "shift", "in_gate")


@pytest.mark.parametrize(
    "case",
    [
        Case(2, 2, 4, (4, 3), k=3, stride=2, padding=1, gate_group=2, in_gate_group=2),
        Case(1, 4, 6, (3, 2), k=1, groups=2, gate_group=3, activation=None),
    ],
    ids=str,
)
def test_reference_gradcheck_float64(case):
    kw = case.make(torch.float64, seed=3)
    # Gates away from 0 and 1 so every product rule term is exercised.
    kw["gate"] = torch.rand_like(kw["gate"]) + 0.25
    names = [k for k in _GRAD_NAMES if k in kw]
    tensors = [kw[k].clone().requires_grad_() for k in names]

    def f(*ts):
        return gated_conv2d(**{**kw, **dict(zip(names, ts))}, op="reference")

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-6, fast_mode=True)


def test_reference_backward_matches_autograd_of_formula():
    kw = Case(3, 5, 6, (6, 6), k=3, padding=1, gate_group=3, in_gate_group=5).make(torch.float32, 4)
    names = [k for k in _GRAD_NAMES if k in kw]
    grad_out = torch.randn(3, 6, 6, 6)

    def grads(fn):
        leaves = {k: kw[k].clone().requires_grad_() for k in names}
        fn({**kw, **leaves}).backward(grad_out)
        return [leaves[k].grad for k in names]

    ours = grads(lambda a: gated_conv2d(**a, op="reference"))
    plain = grads(lambda a: F.relu(
        F.conv2d(a["x"] * a["in_gate"].repeat_interleave(5, 1)[:, :, None, None], a["weight"],
                 a["bias"], padding=1) * a["scale"][:, None, None] + a["shift"][:, None, None]
    ) * a["gate"].repeat_interleave(3, 1)[:, :, None, None])
    for name, a, b in zip(names, ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


# --------------------------------------------------------------------------------------------
# torch.library: opcheck and torch.compile on the reference op.


def test_opcheck_reference_op():
    for case in (Case(2, 4, 6, (5, 5), padding=1, gate_group=2, in_gate_group=2),):
        kw = case.make(torch.float32, seed=5)
        for k in _GRAD_NAMES:
            if k in kw:
                kw[k].requires_grad_()
        args = (kw["x"], kw["weight"], kw["gate"], kw.get("bias"), kw.get("scale"),
                kw.get("shift"), kw.get("in_gate"), kw["activation"] or "none",
                [case.stride] * 2, [case.padding] * 2, [case.dilation] * 2, case.groups)
        torch.library.opcheck(torch.ops.gatekit.gated_conv2d_reference.default, args)


def test_compile_sees_the_reference_op_without_graph_breaks():
    kw = Case(2, 3, 4, (5, 5), padding=1, gate_group=2).make(torch.float32, seed=6)
    fn = torch.compile(lambda **a: gated_conv2d(**a) * 2, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(fn(**kw), 2 * gated_conv2d(**kw))


# --------------------------------------------------------------------------------------------
# Validation and dispatch.

_X, _W, _G = torch.zeros(2, 4, 5, 5), torch.zeros(6, 4, 3, 3), torch.ones(2, 3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"x": torch.zeros(2, 4, 5)}, r"x must have shape \(N, C_in, H, W\)"),
        ({"x": torch.zeros(2, 4, 5, 5, dtype=torch.int64)}, "x must be float16"),
        ({"weight": torch.zeros(6, 3, 3, 3)}, "3 input channels per group"),
        ({"gate": torch.ones(3, 3)}, r"gate must have shape \(N, output channels\)"),
        ({"gate": torch.ones(2, 4)}, "do not divide the 6 output channels"),
        ({"gate": torch.ones(2, 3, dtype=torch.float64)}, r"gate.to\(x.dtype\)"),
        ({"scale": torch.ones(5)}, r"scale must have shape \(C_out,\)"),
        ({"in_gate": torch.ones(2, 3)}, "do not divide the 4 input channels"),
        ({"groups": 4}, "groups=4 must divide both C_in=4 and C_out=6"),
        ({"activation": "gelu"}, "activation must be one of"),
        ({"stride": 0}, "stride must be >= 1"),
        ({"padding": (1, 2, 3)}, "padding must be an int or a pair"),
        ({"x": torch.zeros(2, 4, 2, 2)}, "the output would be empty"),
        ({"op": "cudnn"}, "unknown gated_conv2d implementation 'cudnn'"),
    ],
)
def test_bad_inputs_raise_gatekit_error(kwargs, match):
    args = {"x": _X, "weight": _W, "gate": _G, **kwargs}
    with pytest.raises(gatekit.GatekitError, match=match):
        gated_conv2d(args.pop("x"), args.pop("weight"), args.pop("gate"), **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_triton_on_cpu_is_refused_with_its_reasons():
    with pytest.raises(gatekit.GatekitError) as err:
        gated_conv2d(_X.double(), _W.double(), _G.double(), op="triton")
    msg = str(err.value)
    assert "'triton' does not support" in msg
    assert "device cpu is not supported (needs cuda)" in msg
    assert "dtype torch.float64 is not supported" in msg


def test_op_none_picks_reference_on_cpu_and_errors_list_every_implementation(monkeypatch):
    assert dispatch.select_implementation(make_inputs(_X, _W, _G)).name == "reference"
    # Take the reference off CPU: then nothing fits, and one error names both with reasons.
    ref = dispatch.get_implementation("reference")
    monkeypatch.setattr(dispatch, "IMPLEMENTATIONS", (
        dispatch.get_implementation("triton"),
        dataclasses.replace(ref, devices=("cuda",), auto_devices=("cuda",)),
    ))
    with pytest.raises(gatekit.GatekitError) as err:
        gated_conv2d(_X, _W, _G)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("no gated_conv2d implementation supports these inputs")
    assert any(line.strip().startswith("triton: device cpu") for line in lines)
    assert any(line.strip().startswith("reference: device cpu") for line in lines)


def test_import_gatekit_ops_imports_neither_triton_nor_cuda():
    # Calling a custom op makes torch import torch._dynamo (and so triton) itself; what gatekit
    # controls is the import, and that the kernels' module loads only when used.
    code = (
        "import sys, torch, gatekit, gatekit.ops\n"
        "assert 'triton' not in sys.modules, 'triton imported'\n"
        "gatekit.ops.gated_conv2d(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1), torch.ones(1, 1))\n"
        "assert 'gatekit.ops.triton_conv' not in sys.modules, 'kernels imported'\n"
        "assert not torch.cuda.is_initialized(), 'cuda initialised'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --------------------------------------------------------------------------------------------
# The Triton kernels under the interpreter, against the float64 reference.

_INTERPRET_CASES = {
    torch.float32: [
        Case(2, 5, 7, (4, 5), k=1, gate="on"),                                  # 1x1 = GEMM
        Case(3, 20, 24, (9, 7), stride=2, padding=1, gate_group=4),             # 2 K blocks, 2 N tiles
        Case(1, 20, 24, (9, 9), padding=2, dilation=2, gate="off"),             # all off: zeros
        Case(2, 12, 18, (6, 6), padding=1, groups=3, gate_group=3),             # conv groups
        Case(2, 20, 24, (5, 5), padding=1, gate_group=8, in_gate_group=4),      # in_gate, CO_VEC 8
        Case(3, 6, 40, (3, 3), k=1, stride=2, gate_group=8, affine=False, activation=None),
        Case(2, 5, 70, (3, 3), k=1),  # 70 per-channel gates: ordered by a separate kernel
        Case(2, 8, 12, (9, 8), padding=2, dilation=2, gate_group=2),            # dilated, values
        # H and W differ in every parameter, both ways round: an H/W mix-up fails one of them.
        Case(2, 6, 10, (11, 9), k=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2),
             in_gate_group=2),
        Case(2, 6, 10, (9, 11), k=(2, 3), stride=(1, 2), padding=(0, 1), dilation=(2, 1),
             gate_group=5),
    ],
    torch.float16: [
        Case(2, 20, 24, (7, 9), padding=1, gate_group=4),
        Case(2, 9, 17, (5, 5), k=1, gate="on"),
        Case(1, 20, 24, (6, 6), stride=2, padding=1, gate_group=24, in_gate_group=2),
        Case(2, 6, 8, (7, 9), k=(1, 3), padding=(0, 2), dilation=(1, 2), in_gate_group=3),
    ],
}
_INTERPRET_TOL = {torch.float32: 1e-5, torch.float16: 2e-3}


@pytest.mark.parametrize("case", _INTERPRET_CASES[torch.float32], ids=str)
def test_reference_matches_formula_on_the_kernel_cases(case):
    # The same cases on the reference op, in float64, against the formula written above.
    kw = case.make(torch.float64, seed=1)
    torch.testing.assert_close(gated_conv2d(**kw, op="reference"), _oracle(kw), rtol=1e-12, atol=1e-12)

_CHILD = textwrap.dedent(
    """
    import os, sys, torch
    os.environ["TRITON_INTERPRET"] = "1"
    import gatekit.ops as ops
    from gatekit.ops.inputs import make_inputs
    cases = torch.load(sys.argv[1])
    out = {"outputs": [], "grads": [], "picked": None, "opcheck": None}
    for kw in cases["forward"]:
        out["outputs"].append(ops.gated_conv2d(**kw, op="triton"))
    kw = cases["backward"]
    leaves = {k: v.clone().requires_grad_() for k, v in kw.items() if isinstance(v, torch.Tensor)}
    ops.gated_conv2d(**{**kw, **leaves}, op="triton").backward(cases["grad_out"])
    out["grads"] = {k: v.grad for k, v in leaves.items()}
    out["picked"] = ops.select_implementation(make_inputs(**kw)).name
    if cases["opcheck"] is not None:
        torch.library.opcheck(torch.ops.gatekit.gated_conv2d_triton.default, cases["opcheck"])
        out["opcheck"] = "passed"
    torch.save(out, sys.argv[2])
    """
)


def _interpreter_runs_loops() -> bool:
    # Triton 3.6's interpreter keeps scalars as 1-element arrays, which numpy 2 refuses to
    # turn into ints, so a loop with a run-time bound (the kernels' K loop) fails there.
    import numpy
    import triton

    old_triton = tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 7)
    return not (old_triton and int(numpy.__version__.split(".")[0]) >= 2)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_triton_interpreted_matches_reference(dtype, tmp_path):
    if not _interpreter_runs_loops():
        pytest.skip("this Triton's interpreter cannot run loops with run-time bounds (numpy 2)")
    cases = _INTERPRET_CASES[dtype]
    forward = [case.make(dtype, seed=10 + i) for i, case in enumerate(cases)]
    back_case = Case(2, 6, 20, (5, 5), stride=2, padding=1, gate_group=2, in_gate_group=3)
    backward = back_case.make(dtype, seed=99)
    grad_out = torch.randn(2, 20, 3, 3).to(dtype)
    opcheck_args = None
    if dtype == torch.float32:
        kw = Case(2, 20, 18, (3, 3), k=1, gate_group=3).make(dtype, seed=7)
        opcheck_args = (kw["x"].requires_grad_(), kw["weight"].requires_grad_(), kw["gate"],
                        kw["bias"], kw["scale"], kw["shift"], None, "relu", [1, 1], [0, 0],
                        [1, 1], 1)
    torch.save({"forward": forward, "backward": backward, "grad_out": grad_out,
                "opcheck": opcheck_args}, tmp_path / "in.pt")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = torch.load(tmp_path / "out.pt")

    failures = []
    for case, kw, got in zip(cases, forward, result["outputs"]):
        expected = _oracle(kw)
        assert got.shape == expected.shape and got.dtype == dtype
        err = _rel_err(got, expected)
        # Gated-off channels are exactly zero (their tiles only store zeros).
        off = (kw["gate"] == 0).repeat_interleave(case.c_out // kw["gate"].shape[1], 1)
        if case.gate == "off":
            ok = bool(got.eq(0).all())
        else:
            ok = err <= _INTERPRET_TOL[dtype] and bool(got[off].eq(0).all())
        if not ok:
            failures.append(f"{case}: relative error {err:.2e}")
    assert not failures, "\n".join(failures)

    # Backward of the Triton op against autograd through the float64 formula.
    leaves = {k: v.double().requires_grad_() for k, v in backward.items()
              if isinstance(v, torch.Tensor)}
    _oracle({**backward, **leaves}).backward(grad_out.double())
    for name, grad in result["grads"].items():
        assert _rel_err(grad, leaves[name].grad) <= 10 * _INTERPRET_TOL[dtype], name
    # Under the interpreter op=None still takes the reference on CPU.
    assert result["picked"] == "reference"
    assert result["opcheck"] == ("passed" if opcheck_args is not None else None)


# --------------------------------------------------------------------------------------------
# Compiled Triton kernels on CUDA.

_GPU_CASES = [
    Case(3, 64, 96, (14, 14), k=1, gate_group=32),
    Case(2, 48, 80, (13, 11), padding=1, gate_group=16),
    Case(4, 40, 72, (9, 9), stride=2, padding=1, gate="on"),
    Case(2, 64, 64, (8, 8), padding=2, dilation=2, gate="off"),
    Case(2, 32, 48, (7, 7), padding=1, groups=2, gate_group=8),
    Case(3, 96, 64, (10, 10), padding=1, gate_group=4, in_gate_group=32),
    Case(2, 20, 24, (9, 7), k=5, stride=2, padding=2, gate_group=1, affine=False,
         activation=None),
    Case(2, 32, 80, (6, 6), k=1, gate_group=1),  # 80 per-channel gates: separate order kernel
]
_GPU_TOL = {torch.float32: 3e-3, torch.float16: 2e-3, torch.bfloat16: 1e-2}  # fp32 may use TF32


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", list(_GPU_TOL), ids=str)
@pytest.mark.parametrize("case", _GPU_CASES, ids=str)
def test_triton_cuda_matches_reference(case, dtype):
    kw = case.make(dtype, seed=21, device="cuda")
    got = gated_conv2d(**kw, op="triton")
    expected = _oracle(kw)
    assert got.shape == expected.shape and got.dtype == dtype
    if case.gate == "off":
        assert bool(got.eq(0).all())
    else:
        assert _rel_err(got, expected) <= _GPU_TOL[dtype]
    off = (kw["gate"] == 0).repeat_interleave(case.c_out // kw["gate"].shape[1], 1)
    assert bool(got[off].eq(0).all())


@pytest.mark.gpu
@needs_cuda
def test_triton_cuda_is_picked_and_backward_matches_reference():
    case = Case(2, 32, 48, (9, 9), stride=2, padding=1, gate_group=16, in_gate_group=16)
    kw = case.make(torch.float32, seed=22, device="cuda")
    assert dispatch.select_implementation(make_inputs(**kw)).name == "triton"
    names = [k for k in _GRAD_NAMES if k in kw]
    grad_out = torch.randn(2, 48, 5, 5, device="cuda")
    leaves = {k: kw[k].clone().requires_grad_() for k in names}
    gated_conv2d(**{**kw, **leaves}).backward(grad_out)
    ref = {k: kw[k].double().requires_grad_() for k in names}
    _oracle({**kw, **ref}).backward(grad_out.double())
    for k in names:
        assert _rel_err(leaves[k].grad, ref[k].grad) <= 3e-3, k


@pytest.mark.gpu
@needs_cuda
def test_triton_cuda_opcheck_and_compile():
    kw = Case(2, 32, 48, (9, 9), padding=1, gate_group=16).make(torch.float16, 23, "cuda")
    args = (kw["x"].requires_grad_(), kw["weight"], kw["gate"], kw["bias"], kw["scale"],
            kw["shift"], None, "relu", [1, 1], [1, 1], [1, 1], 1)
    torch.library.opcheck(torch.ops.gatekit.gated_conv2d_triton.default, args)
    fn = torch.compile(lambda **a: gated_conv2d(**a, op="triton") + 1, fullgraph=True)
    kw["x"] = kw["x"].detach()
    torch.testing.assert_close(fn(**kw), gated_conv2d(**kw, op="triton") + 1)
