"""Gate losses against closed forms written out here (plain Python / math, not gatekit) and,
for the Beta CDF of batch shaping, against SciPy (a test-only dependency)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special as scipy_special
from scipy import stats as scipy_stats

import gatekit
from gatekit import GatekitError
from gatekit.losses import (
    _beta_cdf,
    batch_shaping_loss,
    expected_l0,
    expected_l0_loss,
    flops_budget_loss,
    gate_l1_loss,
    target_rate_loss,
)

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


# --------------------------------------------------------------------------------------
# flops_budget_loss
# --------------------------------------------------------------------------------------


def flops_budget_oracle(gates: list[list[float]], costs: list[float], budget: float) -> float:
    """The definition, one loop per sum."""
    n, total = len(gates), sum(costs)
    kept = 0.0
    for j, c in enumerate(costs):
        kept += c * sum(row[j] for row in gates) / n
    return (kept / total - budget) ** 2


@st.composite
def gates_and_costs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    n, g = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    gates = draw(st.lists(st.floats(0.0, 1.0), min_size=n * g, max_size=n * g))
    costs = draw(st.lists(st.floats(0.0, 1e9), min_size=g, max_size=g).filter(lambda c: sum(c) > 0))
    return (
        torch.tensor(gates, dtype=torch.float64).reshape(n, g),
        torch.tensor(costs, dtype=torch.float64),
    )


@given(gc=gates_and_costs(), budget=st.floats(0.0, 1.0))
def test_flops_budget_loss_matches_a_plain_loop(dtype_case, gc, budget):
    g, c = gc
    g = g.to(dtype_case.dtype)
    got = flops_budget_loss(g, c, budget)
    assert got.ndim == 0
    assert got.dtype == dtype_case.compute_dtype
    expected = flops_budget_oracle(g.double().tolist(), c.tolist(), budget)
    assert got.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_flops_budget_loss_keeps_float64_and_takes_integer_costs():
    g = torch.tensor([[1.0, 0.0, 0.5]], dtype=torch.float64)
    got = flops_budget_loss(g, torch.tensor([2, 1, 4]), 0.25)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(((2 * 1 + 4 * 0.5) / 7 - 0.25) ** 2, rel=1e-12)


def test_flops_budget_loss_gradcheck():
    torch.manual_seed(0)
    g = torch.rand(5, 7, dtype=torch.float64, requires_grad=True)
    c = torch.rand(7, dtype=torch.float64) * 1e6
    assert torch.autograd.gradcheck(lambda x: flops_budget_loss(x, c, 0.3), (g,))
    # d/dg_nj = 2 (kept - budget) c_j / (N sum c): the costly gates get the larger pull
    loss = flops_budget_loss(g, c, 0.3)
    loss.backward()
    kept = float((g.detach().mean(0) * c).sum() / c.sum())
    expected = 2 * (kept - 0.3) * c / (5 * c.sum())
    torch.testing.assert_close(g.grad, expected.expand(5, 7))


# --------------------------------------------------------------------------------------
# batch_shaping_loss and the Beta CDF
# --------------------------------------------------------------------------------------


PRIOR_PARAMS = [0.1, 0.4, 0.6, 1.0, 2.5, 10.0]
CDF_GRID = np.concatenate(
    [
        [0.0, 5e-324, 1e-300, 1e-30, 1e-12, 1e-6, 1e-3],
        np.linspace(0.0, 1.0, 401),
        [1 - 1e-3, 1 - 1e-6, 1 - 1e-12, 1 - 2.0**-53, 1.0],
    ]
)


@pytest.mark.parametrize("alpha", PRIOR_PARAMS)
@pytest.mark.parametrize("beta", PRIOR_PARAMS)
def test_beta_cdf_matches_scipy_betainc(alpha, beta):
    x = torch.tensor(CDF_GRID, dtype=torch.float64)
    got = _beta_cdf(x, alpha, beta)
    expected = torch.from_numpy(scipy_special.betainc(alpha, beta, CDF_GRID))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)


def batch_shaping_oracle(probs: np.ndarray, alpha: float, beta: float) -> float:
    """The definition in numpy, with SciPy's Beta CDF."""
    n, g = probs.shape
    total = 0.0
    for j in range(g):
        xs = np.sort(probs[:, j])
        ranks = np.arange(1, n + 1) / (n + 1)
        total += np.mean((ranks - scipy_stats.beta.cdf(xs, alpha, beta)) ** 2)
    return total / g


@st.composite
def prob_columns(draw: st.DrawFn, max_n: int = 512) -> np.ndarray:
    """(N, G) probabilities with N in 2..max_n; exact 0 and 1 are likely."""
    n, g = draw(st.integers(2, max_n)), draw(st.integers(1, 3))
    seed = draw(SEEDS)
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, g))
    # Put exact zeros, ones and ties in at random places.
    special = draw(st.lists(st.sampled_from([0.0, 1.0, 0.5]), max_size=n * g))
    flat = x.reshape(-1)
    idx = rng.choice(n * g, size=len(special), replace=False)
    flat[idx] = special
    return flat.reshape(n, g)


PRIOR = st.floats(0.1, 10.0)


@given(p=prob_columns(), alpha=PRIOR, beta=PRIOR)
def test_batch_shaping_loss_matches_numpy_oracle(p, alpha, beta):
    got = batch_shaping_loss(torch.from_numpy(p), alpha, beta)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(batch_shaping_oracle(p, alpha, beta), rel=1e-9, abs=1e-12)


@given(p=prob_columns(), alpha=PRIOR, beta=PRIOR, dtype=st.sampled_from([torch.float32, torch.float64]))
def test_batch_shaping_loss_and_gradient_are_finite_and_bounded(p, alpha, beta, dtype):
    x = torch.from_numpy(p).to(dtype).requires_grad_()
    loss = batch_shaping_loss(x, alpha, beta)
    assert loss.dtype == dtype
    assert math.isfinite(loss.item()) and 0.0 <= loss.item() <= 1.0
    loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_batch_shaping_loss_is_finite_in_half_precision(dtype):
    torch.manual_seed(0)
    x = torch.rand(64, 16).to(dtype)
    x[0], x[1], x[2, :8] = 0.0, 1.0, 1e-8  # 1e-8 is 0 in bfloat16, subnormal in float16
    x.requires_grad_()
    loss = batch_shaping_loss(x)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    expected = batch_shaping_oracle(x.detach().double().numpy(), 0.6, 0.4)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@settings(max_examples=10)
@given(alpha=PRIOR, beta=PRIOR, n=st.integers(2, 12), seed=SEEDS)
def test_batch_shaping_gradient_is_the_beta_pdf_by_finite_differences(alpha, beta, n, seed):
    # Interior points where the pdf lies inside the clip [1e-3, 100], so the analytic
    # gradient is the true derivative of the forward pass.
    rng = np.random.default_rng(seed)
    lo, hi = scipy_stats.beta.ppf([0.02, 0.98], alpha, beta)
    x = np.sort(rng.uniform(lo, hi, size=(n, 2)), axis=0)
    pdf = scipy_stats.beta.pdf(x, alpha, beta)
    gap = np.diff(x, axis=0).min()
    if not (pdf.min() > 1.5e-3 and pdf.max() < 100 / 1.5 and gap > 1e-5):
        return  # a point in the clipped region or a near tie: not this property
    t = torch.from_numpy(x).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v: batch_shaping_loss(v, alpha, beta), (t,), eps=1e-7, atol=1e-6, rtol=1e-4
    )
    # and the backward of the CDF alone is the pdf
    t1 = torch.from_numpy(x.reshape(-1)).requires_grad_()
    _beta_cdf(t1, alpha, beta).sum().backward()
    torch.testing.assert_close(t1.grad, torch.from_numpy(pdf.reshape(-1)), rtol=1e-9, atol=0)


def test_beta_cdf_gradient_is_the_clipped_pdf_at_the_ends():
    x = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    _beta_cdf(x[:2], 0.6, 0.4).sum().backward()  # pdf infinite at both ends: clipped to 100
    _beta_cdf(x[2:], 2.5, 3.0).sum().backward()  # pdf zero at both ends: clipped to 1e-3
    torch.testing.assert_close(x.grad, torch.tensor([100.0, 100.0, 1e-3, 1e-3], dtype=torch.float64))


@pytest.mark.parametrize("alpha,beta", [(0.6, 0.4), (2.5, 1.0), (0.4, 10.0)])
def test_batch_shaping_loss_is_near_zero_on_beta_quantiles_and_large_on_a_constant(alpha, beta):
    n = 256
    ranks = np.arange(1, n + 1) / (n + 1)
    quantiles = scipy_stats.beta.ppf(ranks, alpha, beta)
    x = torch.from_numpy(np.stack([quantiles, quantiles[::-1].copy()], 1))
    assert batch_shaping_loss(x, alpha, beta).item() < 1e-15
    constant = torch.full((n, 2), 0.5, dtype=torch.float64)
    # F(0.5) is a single value; the ranks spread over (0, 1): at least the variance of
    # the uniform ranks, about 1/12.
    assert batch_shaping_loss(constant, alpha, beta).item() > 0.08


def test_batch_shaping_loss_keeps_its_gradient_through_the_sort():
    x = torch.tensor([[0.9], [0.1], [0.5]], dtype=torch.float64, requires_grad=True)
    batch_shaping_loss(x, 1.0, 1.0).backward()  # uniform prior: loss = mean (i/4 - x_(i))^2
    expected = torch.tensor([[2 * (0.9 - 0.75)], [2 * (0.1 - 0.25)], [2 * (0.5 - 0.5)]]) / 3
    torch.testing.assert_close(x.grad, expected.double())


# --------------------------------------------------------------------------------------
# Errors of the budget and shaping losses
# --------------------------------------------------------------------------------------

G23 = torch.full((2, 3), 0.5)
BAD_NEW = [
    (lambda: flops_budget_loss(torch.ones(2, 3, 1), torch.ones(3), 0.5), "shape"),
    (lambda: flops_budget_loss(torch.ones(3), torch.ones(3), 0.5), "shape"),
    (lambda: flops_budget_loss(G23, torch.ones(4), 0.5), "costs of shape"),
    (lambda: flops_budget_loss(G23, [1.0, 1.0, 1.0], 0.5), "costs"),
    (lambda: flops_budget_loss(G23, torch.tensor([1.0, -1.0, 1.0]), 0.5), "non-negative"),
    (lambda: flops_budget_loss(G23, torch.tensor([1.0, math.nan, 1.0]), 0.5), "finite"),
    (lambda: flops_budget_loss(G23, torch.zeros(3), 0.5), "positive sum"),
    (lambda: flops_budget_loss(G23, torch.ones(3), 1.5), "budget"),
    (lambda: flops_budget_loss(G23, torch.ones(3), -0.1), "budget"),
    (lambda: flops_budget_loss(G23, torch.ones(3), math.nan), "budget"),
    (lambda: flops_budget_loss(G23.long(), torch.ones(3), 0.5), "floating"),
    (lambda: batch_shaping_loss(G23, alpha=0.0), "alpha"),
    (lambda: batch_shaping_loss(G23, beta=-1.0), "beta"),
    (lambda: batch_shaping_loss(G23, beta=math.inf), "beta"),
    (lambda: batch_shaping_loss(torch.full((1, 3), 0.5)), "N >= 2"),
    (lambda: batch_shaping_loss(torch.full((4,), 0.5)), "N >= 2"),
    (lambda: batch_shaping_loss(torch.full((2, 3, 1), 0.5)), "N >= 2"),
    (lambda: batch_shaping_loss(torch.tensor([[0.5], [1.5]])), r"\[0, 1\]"),
    (lambda: batch_shaping_loss(torch.tensor([[0.5], [-0.1]])), r"\[0, 1\]"),
    (lambda: batch_shaping_loss(torch.tensor([[0.5], [math.nan]])), r"\[0, 1\]"),
    (lambda: batch_shaping_loss(torch.ones(2, 3, dtype=torch.int64)), "floating"),
]


@pytest.mark.parametrize("call,word", BAD + BAD_NEW,
                         ids=[f"{i}-{w}" for i, (_, w) in enumerate(BAD + BAD_NEW)])
def test_bad_inputs_raise_gatekit_error(call, word):
    with pytest.raises(GatekitError, match=word) as info:
        call()
    assert "got" in str(info.value)


# --------------------------------------------------------------------------------------
# GaterNet.last_probs feeds batch shaping
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["semhash", "st_sigmoid", "gumbel", "hard_concrete"])
def test_last_probs_are_the_estimators_open_probability_with_a_gradient(estimator):
    from gatekit.models import resnet20, resnet20_gater

    torch.manual_seed(0)
    net = gatekit.gate_model(resnet20(), resnet20_gater(), estimator=estimator)
    x = torch.randn(4, 3, 32, 32)
    assert net.last_probs is None  # nothing run yet
    net(x)
    probs = net.last_probs
    torch.testing.assert_close(probs, net.estimator.open_probability(net.last_logits))
    assert probs.shape == (4, net.num_gates) and probs.dtype == torch.float32
    batch_shaping_loss(probs).backward()
    assert net.head.fc2.weight.grad.abs().sum() > 0
    net(x, gates=torch.ones(4, net.num_gates))
    assert net.last_probs is None  # gates given: no logits, no probabilities


@pytest.mark.parametrize("estimator", ["semhash", "st_sigmoid", "gumbel", "hard_concrete"])
def test_last_eval_gates_are_the_step_of_the_logits_with_a_gradient(estimator):
    from gatekit.models import resnet20, resnet20_gater

    torch.manual_seed(0)
    net = gatekit.gate_model(resnet20(), resnet20_gater(), estimator=estimator, init_bias=0.5)
    x = torch.randn(4, 3, 32, 32)
    assert net.last_eval_gates is None  # nothing run yet
    net(x)  # training mode: last_gates are the estimator's training gates
    eval_gates = net.last_eval_gates
    assert torch.equal(eval_gates, (net.last_logits.detach() > 0).float())
    (grad,) = torch.autograd.grad(eval_gates.sum(), net.last_logits)
    probs = net.estimator.open_probability(net.last_logits)
    (expected,) = torch.autograd.grad(probs.sum(), net.last_logits)
    torch.testing.assert_close(grad, expected)
    net(x, gates=torch.ones(4, net.num_gates))
    assert net.last_eval_gates is None  # gates given: no logits


def test_budget_and_shaping_losses_compile_without_graph_breaks():
    torch._dynamo.reset()
    try:
        torch.manual_seed(0)
        x = torch.rand(8, 5, requires_grad=True)
        costs = torch.rand(5) + 0.1
        for fn, args in ((batch_shaping_loss, ()), (flops_budget_loss, (costs, 0.3))):
            compiled = torch.compile(fn, backend="eager", fullgraph=True)
            got = compiled(x, *args)
            (g_got,) = torch.autograd.grad(got, x)
            expected = fn(x, *args)
            (g_expected,) = torch.autograd.grad(expected, x)
            torch.testing.assert_close(got, expected)
            torch.testing.assert_close(g_got, g_expected)
    finally:
        torch._dynamo.reset()
