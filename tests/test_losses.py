"""Gate losses against closed forms written out here (plain Python / math, not gatekit)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gatekit
from gatekit import GatekitError
from gatekit.losses import expected_l0, expected_l0_loss, gate_l1_loss, target_rate_loss

SEEDS = st.integers(0, 2**31 - 1)


@st.composite
def gate_tensors(draw: st.DrawFn, lo: float = 0.0, hi: float = 1.0) -> list:
    """A nested list of shape (N, C) or (A, B, C) of values in [lo, hi]."""
    shape = draw(
        st.one_of(
            st.tuples(st.integers(1, 6), st.integers(1, 8)),
            st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 5)),
        )
    )
    flat = draw(st.lists(st.floats(lo, hi), min_size=math.prod(shape), max_size=math.prod(shape)))
    return torch.tensor(flat, dtype=torch.float64).reshape(shape)


def rows(t: torch.Tensor) -> list[list[float]]:
    """The gate vectors (last dim) as Python lists."""
    return t.reshape(-1, t.shape[-1]).tolist()


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


# --------------------------------------------------------------------------------------
# gate_l1_loss and target_rate_loss
# --------------------------------------------------------------------------------------


@given(g=gate_tensors(-1.0, 1.0), weight=st.floats(0.0, 10.0))
def test_gate_l1_loss_is_weighted_mean_absolute_gate(dtype_case, g, weight):
    g = g.to(dtype_case.dtype)
    vals = [abs(v) for r in rows(g) for v in r]
    expected = weight * sum(vals) / len(vals)  # ||g||_1 / c, averaged over samples
    got = gate_l1_loss(g, weight=weight)
    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


@given(
    g=gate_tensors(),
    target=st.floats(0.0, 1.0),
    weight=st.floats(0.0, 10.0),
    per_sample=st.booleans(),
)
def test_target_rate_loss_closed_form(dtype_case, g, target, weight, per_sample):
    g = g.to(dtype_case.dtype)
    rs = rows(g)
    if per_sample:
        expected = weight * sum((sum(r) / len(r) - target) ** 2 for r in rs) / len(rs)
    else:
        flat = [v for r in rs for v in r]
        expected = weight * (sum(flat) / len(flat) - target) ** 2
    got = target_rate_loss(g, target=target, weight=weight, per_sample=per_sample)
    assert got.ndim == 0
    assert got.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_loss_gradients_pull_the_right_way():
    g = torch.full((4, 8), 0.5, requires_grad=True)
    gate_l1_loss(g, weight=0.3).backward()
    torch.testing.assert_close(g.grad, torch.full((4, 8), 0.3 / 32))  # d/dg of w * mean|g|
    g.grad = None
    target_rate_loss(g, target=0.25).backward()
    # d/dg (mean g - t)^2 = 2 (mean g - t) / numel: pushes the open fraction down to the target
    torch.testing.assert_close(g.grad, torch.full((4, 8), 2 * 0.25 / 32))


# --------------------------------------------------------------------------------------
# expected_l0 and expected_l0_loss
# --------------------------------------------------------------------------------------


def expected_l0_oracle(logits: list[float], tau: float, low: float, high: float) -> float:
    """Sum over gates of P(gate != 0) = 1 - P(stretched logistic <= 0).

    gate = 0 iff sigmoid((x + L) / tau) (high - low) + low <= 0
            iff (x + L) / tau <= log(-low / high), L ~ Logistic(0, 1).
    """
    return sum(1.0 - sigmoid(tau * math.log(-low / high) - x) for x in logits)


STRETCH_LOW = st.floats(-0.5, -0.01)
STRETCH_HIGH = st.floats(1.01, 1.5)


@given(
    logits=gate_tensors(-8.0, 8.0),
    tau=st.floats(0.1, 2.0),
    low=STRETCH_LOW,
    high=STRETCH_HIGH,
    weight=st.floats(0.0, 5.0),
)
def test_expected_l0_closed_form(dtype_case, logits, tau, low, high, weight):
    x = logits.to(dtype_case.dtype)
    rs = rows(x)
    got = expected_l0(x, tau=tau, stretch=(low, high))
    assert got.shape == x.shape[:-1]
    expected = torch.tensor(
        [expected_l0_oracle(r, tau, low, high) for r in rs], dtype=torch.float64
    )
    torch.testing.assert_close(got.double().reshape(-1), expected, rtol=1e-5, atol=1e-5)

    loss = expected_l0_loss(x, weight=weight, tau=tau, stretch=(low, high))
    c = x.shape[-1]
    expected_loss = weight * sum(expected_l0_oracle(r, tau, low, high) / c for r in rs) / len(rs)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)


def test_expected_l0_keeps_float64_and_is_finite_for_extreme_logits():
    x = torch.tensor([[-1e4, 0.0, 1e4, 65504.0, -65504.0]], dtype=torch.float64, requires_grad=True)
    e = expected_l0(x)
    assert e.dtype == torch.float64
    e.sum().backward()
    assert torch.isfinite(e).all() and torch.isfinite(x.grad).all()
    xh = x.detach().half().requires_grad_()
    eh = expected_l0(xh)
    eh.sum().backward()
    assert torch.isfinite(eh).all() and torch.isfinite(xh.grad).all()


@settings(max_examples=8)
@given(
    logits=st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=6),
    tau=st.floats(0.2, 1.5),
    low=STRETCH_LOW,
    high=STRETCH_HIGH,
    seed=SEEDS,
)
def test_expected_l0_matches_monte_carlo_count_of_open_hard_concrete_gates(
    logits, tau, low, high, seed
):
    n = 20_000
    x = torch.tensor(logits, dtype=torch.float64)
    gate = gatekit.HardConcrete(tau=tau, stretch=(low, high)).train()
    torch.manual_seed(seed)
    g = gate(x.expand(n, -1))
    count = (g != 0).double().sum(1)  # open gates per draw
    # Mean count vs its expectation; gates are independent, var = sum p (1 - p).
    p = 1.0 - torch.tensor([sigmoid(tau * math.log(-low / high) - v) for v in logits])
    bound = 5.0 * math.sqrt(float((p * (1 - p)).sum()) / n) + 1e-6
    e = expected_l0(x, tau=gate.tau, stretch=(low, high))
    assert abs(count.mean().item() - e.item()) <= bound
    # the module's method uses the module's temperature and stretch
    torch.testing.assert_close(gate.expected_l0(x), e, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------

BAD = [
    (lambda: gate_l1_loss(torch.ones(2, 3, dtype=torch.int64)), "floating"),
    (lambda: gate_l1_loss([0.5, 1.0]), "list"),
    (lambda: gate_l1_loss(torch.tensor(0.5)), "shape"),
    (lambda: gate_l1_loss(torch.ones(0, 4)), "shape"),
    (lambda: target_rate_loss(torch.ones(2, 3), target=1.5), "target"),
    (lambda: target_rate_loss(torch.ones(2, 3), target=-0.1), "target"),
    (lambda: target_rate_loss(torch.ones(2, 3, dtype=torch.bool)), "floating"),
    (lambda: expected_l0(torch.ones(2, 3, dtype=torch.int64)), "floating"),
    (lambda: expected_l0(torch.ones(2, 3), stretch=(0.0, 1.1)), "stretch"),
    (lambda: expected_l0(torch.ones(2, 3), stretch=(-0.1,)), "stretch"),
    (lambda: expected_l0_loss(torch.ones(2, 3), stretch=(-0.1, 0.9)), "stretch"),
    (lambda: expected_l0_loss(torch.ones(2, 3, dtype=torch.int32)), "floating"),
]


@pytest.mark.parametrize("call,word", BAD, ids=[f"{i}-{w}" for i, (_, w) in enumerate(BAD)])
def test_bad_inputs_raise_gatekit_error(call, word):
    with pytest.raises(GatekitError, match=word) as info:
        call()
    assert "got" in str(info.value)
