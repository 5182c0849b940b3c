"""Property tests of the gate estimators against oracles written out in this file.

The oracles (step, sigmoid, saturating sigmoid and their derivatives, the closed-form
probabilities of the noisy gates) are computed here in float64 from first principles, never
by calling gatekit.  Random tests take their torch seed from hypothesis, so a failure replays.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

import gatekit
from gatekit import GatekitError
from gatekit import functional as GF
from gatekit.estimators import tau_schedule

# --------------------------------------------------------------------------------------
# Oracles (float64, independent of gatekit)
# --------------------------------------------------------------------------------------


def step(x: torch.Tensor) -> torch.Tensor:
    """1(x > 0) as a bool tensor."""
    return x.double() > 0


def sigmoid64(x: torch.Tensor) -> torch.Tensor:
    # 1 / (1 + e^-x): e^-x overflows to inf for x << 0, giving exactly 0, never NaN.
    return 1.0 / (1.0 + torch.exp(-x.double()))


def sat_sigmoid64(x: torch.Tensor) -> torch.Tensor:
    """max(0, min(1, 1.2 sigmoid(x) - 0.1)), written out."""
    v = 1.2 * sigmoid64(x) - 0.1
    return torch.where(v < 0, torch.zeros_like(v), torch.where(v > 1, torch.ones_like(v), v))


def sat_sigmoid_grad64(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/dx of the saturating sigmoid (1.2 s (1 - s) inside, 0 outside) and a mask of the
    elements far enough from the two kinks for the derivative to be well defined."""
    s = sigmoid64(x)
    v = 1.2 * s - 0.1
    inside = (v > 0) & (v < 1)
    d = torch.where(inside, 1.2 * s * (1 - s), torch.zeros_like(s))
    defined = ((v.abs() > 1e-6) & ((v - 1).abs() > 1e-6)) | ~torch.isfinite(v)
    return d, defined


def normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def logistic_cdf(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def binomial_ok(successes: torch.Tensor, n: int, p: torch.Tensor | float, slack: float = 1e-5):
    """|successes / n - p| within 5 binomial standard deviations (plus a small slack for the
    noise clamping in the estimators, and half a count, below which a frequency out of n
    draws cannot resolve p: at p = 5e-324 the standard deviation underflows to 0)."""
    p = torch.as_tensor(p, dtype=torch.float64)
    phat = successes.double() / n
    bound = 5.0 * torch.sqrt(p * (1 - p) / n) + slack + 0.5 / n
    return (phat - p).abs() <= bound


def per_sample(t: torch.Tensor) -> torch.Tensor:
    """(num_samples, rest): dim 0 indexes samples; a 0-d or 1-D tensor is one sample."""
    return t.reshape(1, -1) if t.ndim <= 1 else t.reshape(t.shape[0], -1)


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

SHAPES = st.one_of(
    st.just(()),
    st.tuples(st.integers(1, 12)),  # 1-D: one sample
    st.tuples(st.integers(1, 6), st.integers(1, 10)),  # (N, num_gates)
    st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3)),
    st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),
)


def special_values(dtype: torch.dtype) -> list[float]:
    fi = torch.finfo(dtype)
    subnormal = fi.tiny * fi.eps  # the smallest positive value of the dtype
    vals = [0.0, -0.0, subnormal, fi.tiny, 1e-3, 1e4, 65504.0, fi.max, math.inf]
    return vals + [-v for v in vals]


@st.composite
def logits(draw: st.DrawFn, dtype: torch.dtype, lo: float = -1e4, hi: float = 1e4) -> torch.Tensor:
    shape = draw(SHAPES)
    n = math.prod(shape)
    elem = st.one_of(
        st.sampled_from(special_values(dtype)),
        st.floats(-30.0, 30.0),
        st.floats(lo, hi),
    )
    vals = draw(st.lists(elem, min_size=n, max_size=n))
    return torch.tensor(vals, dtype=torch.float64).reshape(shape).to(dtype)


def finite_logits(dtype: torch.dtype) -> st.SearchStrategy[torch.Tensor]:
    return logits(dtype).map(lambda x: x.nan_to_num(posinf=1e4, neginf=-1e4))


SEEDS = st.integers(0, 2**31 - 1)

# Every estimator configuration the tests sweep (name -> factory of a fresh module).
ESTIMATORS: dict[str, Callable[[], gatekit.Gate]] = {
    "semhash": lambda: gatekit.ImprovedSemHash(),
    "semhash_per_element": lambda: gatekit.ImprovedSemHash(noise_std=0.5, per_sample=False),
    "semhash_always_hard": lambda: gatekit.ImprovedSemHash(discrete_prob=1.0),
    "st_sigmoid": lambda: gatekit.StraightThroughSigmoid(),
    "st_identity": lambda: gatekit.StraightThroughSigmoid(backward="identity"),
    "st_stochastic": lambda: gatekit.StraightThroughSigmoid(stochastic=True),
    "gumbel": lambda: gatekit.GumbelSigmoid(),
    "gumbel_soft": lambda: gatekit.GumbelSigmoid(tau=0.5, hard=False),
    "gumbel_cold": lambda: gatekit.GumbelSigmoid(tau=1e-3),
    "hard_concrete": lambda: gatekit.HardConcrete(),
    "hard_concrete_wide": lambda: gatekit.HardConcrete(tau=0.1, stretch=(-0.5, 1.5)),
}
FUNCTIONS = {
    "semhash": GF.semhash,
    "st_sigmoid": GF.st_sigmoid,
    "gumbel_sigmoid": GF.gumbel_sigmoid,
    "hard_concrete": GF.hard_concrete,
}
BASIC = ("semhash", "st_sigmoid", "gumbel", "hard_concrete")


# --------------------------------------------------------------------------------------
# Every estimator, every dtype: eval step, range, finiteness, dtype and shape
# --------------------------------------------------------------------------------------


@given(data=st.data())
def test_eval_output_is_exactly_the_step(dtype_case, data):
    dtype = dtype_case.dtype
    x = data.draw(logits(dtype), label="logits")
    expected = step(x).to(dtype)
    for name, make in ESTIMATORS.items():
        out = make().eval()(x.clone().requires_grad_())
        assert out.dtype == dtype and out.shape == x.shape, name
        assert torch.equal(out, expected), name
    for name, fn in FUNCTIONS.items():
        assert torch.equal(fn(x, training=False), expected), name


@given(data=st.data(), seed=SEEDS)
def test_training_output_in_unit_interval_with_finite_gradient(dtype_case, data, seed):
    dtype = dtype_case.dtype
    x = data.draw(logits(dtype), label="logits")
    upstream = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    for name, make in ESTIMATORS.items():
        xg = x.clone().requires_grad_()
        torch.manual_seed(seed)
        out = make().train()(xg)
        assert out.dtype == dtype and out.shape == x.shape, name
        assert torch.isfinite(out).all(), name
        assert ((out >= 0) & (out <= 1)).all(), name
        (out * upstream.to(dtype)).sum().backward()
        assert xg.grad.dtype == dtype and xg.grad.shape == x.shape, name
        assert torch.isfinite(xg.grad).all(), name


# --------------------------------------------------------------------------------------
# StraightThroughSigmoid
# --------------------------------------------------------------------------------------


@given(data=st.data())
def test_st_sigmoid_forward_is_step_and_gradient_is_sigmoid_derivative(dtype_case, data):
    dtype = dtype_case.dtype
    x = data.draw(logits(dtype), label="logits")
    s = sigmoid64(x)
    for backward, expected_grad in (("sigmoid", s * (1 - s)), ("identity", torch.ones_like(s))):
        xg = x.clone().requires_grad_()
        out = gatekit.StraightThroughSigmoid(backward=backward).train()(xg)
        assert torch.equal(out, step(x).to(dtype))
        out.sum().backward()
        assert dtype_case.close(xg.grad, expected_grad).all(), backward
    # Stochastic forward: the gradient is still sigmoid' whatever was sampled.
    xg = x.clone().requires_grad_()
    gatekit.StraightThroughSigmoid(stochastic=True).train()(xg).sum().backward()
    assert dtype_case.close(xg.grad, s * (1 - s)).all()


@settings(max_examples=8)
@given(x=st.floats(-5.0, 5.0), seed=SEEDS)
def test_st_sigmoid_stochastic_probability_is_sigmoid(x, seed):
    n = 20_000
    torch.manual_seed(seed)
    g = gatekit.StraightThroughSigmoid(stochastic=True).train()(torch.full((n,), x))
    assert set(g.unique().tolist()) <= {0.0, 1.0}
    assert binomial_ok(g.sum(), n, 1.0 / (1.0 + math.exp(-x)))


# --------------------------------------------------------------------------------------
# ImprovedSemHash
# --------------------------------------------------------------------------------------


def check_semhash_sample_structure(out, noisy, dtype_case, per_sample_choice=True):
    """Each sample (or element) is entirely 1(noisy > 0) or entirely satsig(noisy)."""
    hard = step(noisy).to(dtype_case.dtype)
    is_hard = out == hard
    is_soft = dtype_case.close(out, sat_sigmoid64(noisy))
    if per_sample_choice:
        ok = per_sample(is_hard).all(1) | per_sample(is_soft).all(1)
    else:
        ok = is_hard | is_soft
    assert ok.all(), (out, noisy)


def check_semhash_gradient(grad_, noisy, dtype_case):
    expected, defined = sat_sigmoid_grad64(noisy)
    close = dtype_case.close(grad_, expected)
    assert (close | ~defined).all(), (grad_, expected)


@given(data=st.data(), seed=SEEDS)
def test_semhash_without_noise_is_per_sample_hard_or_soft(dtype_case, data, seed):
    x = data.draw(finite_logits(dtype_case.dtype), label="logits")
    xg = x.clone().requires_grad_()
    torch.manual_seed(seed)
    out = gatekit.ImprovedSemHash(noise_std=0.0).train()(xg)
    check_semhash_sample_structure(out, x.double(), dtype_case)
    out.sum().backward()
    check_semhash_gradient(xg.grad, x.double(), dtype_case)


@given(
    data=st.data(),
    seed=SEEDS,
    noise_std=st.sampled_from([1.0, 0.5, 3.0]),
    per_sample_choice=st.booleans(),
)
def test_semhash_with_noise_against_replayed_noise(
    dtype_case, data, seed, noise_std, per_sample_choice
):
    # The noise is N(0, noise_std) drawn with torch.randn_like in the compute dtype
    # (float32, float64 for float64 logits) before anything else: replay it from the seed.
    x = data.draw(finite_logits(dtype_case.dtype), label="logits")
    xg = x.clone().requires_grad_()
    gate = gatekit.ImprovedSemHash(noise_std=noise_std, per_sample=per_sample_choice).train()
    torch.manual_seed(seed)
    out = gate(xg)
    torch.manual_seed(seed)
    noise = torch.randn(x.shape, dtype=dtype_case.compute_dtype)
    noisy = (x.to(dtype_case.compute_dtype) + noise_std * noise).double()
    check_semhash_sample_structure(out, noisy, dtype_case, per_sample_choice)
    out.sum().backward()
    check_semhash_gradient(xg.grad, noisy, dtype_case)


@settings(max_examples=8)
@given(discrete_prob=st.floats(0.0, 1.0), seed=SEEDS)
def test_semhash_fraction_of_hard_samples_is_discrete_prob(discrete_prob, seed):
    n = 8_000
    torch.manual_seed(seed)
    # Logits whose soft gates (0.67, 0.43, 0.28) are not binary, so a sample is hard iff binary.
    x = torch.tensor([0.5, -0.1, -0.6]).expand(n, 3)
    g = gatekit.ImprovedSemHash(noise_std=0.0, discrete_prob=discrete_prob).train()(x)
    hard = ((g == 0) | (g == 1)).all(1)
    soft = ((g > 0) & (g < 1)).all(1)
    assert (hard ^ soft).all()
    assert binomial_ok(hard.sum(), n, discrete_prob, slack=0.0)


@settings(max_examples=8)
@given(x=st.floats(-3.0, 3.0), noise_std=st.floats(0.1, 3.0), seed=SEEDS)
def test_semhash_hard_gate_probability_is_normal_cdf(x, noise_std, seed):
    n = 20_000
    torch.manual_seed(seed)
    g = gatekit.ImprovedSemHash(noise_std=noise_std, discrete_prob=1.0).train()(
        torch.full((n, 1), x)
    )
    assert binomial_ok(g.sum(), n, normal_cdf(x / noise_std), slack=0.0)


# --------------------------------------------------------------------------------------
# GumbelSigmoid
# --------------------------------------------------------------------------------------


@settings(max_examples=10)
@given(
    x=st.lists(st.floats(-6.0, 6.0), min_size=1, max_size=4),
    tau=st.floats(0.05, 5.0),
    seed=SEEDS,
)
def test_gumbel_probability_of_open_gate_is_sigmoid_for_any_tau(x, tau, seed):
    n = 20_000
    logits_ = torch.tensor(x).expand(n, -1)
    torch.manual_seed(seed)
    g = gatekit.GumbelSigmoid(tau=tau).train()(logits_)
    assert set(g.unique().tolist()) <= {0.0, 1.0}
    assert binomial_ok(g.sum(0), n, sigmoid64(torch.tensor(x))).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@given(
    x=st.lists(st.floats(-8.0, 8.0), min_size=1, max_size=16), tau=st.floats(0.1, 3.0), seed=SEEDS
)
def test_gumbel_hard_forward_with_soft_gradient(dtype, x, tau, seed):
    xs = torch.tensor(x, dtype=dtype).requires_grad_()
    xh = torch.tensor(x, dtype=dtype).requires_grad_()
    torch.manual_seed(seed)
    y = gatekit.GumbelSigmoid(tau=tau, hard=False).train()(xs)
    torch.manual_seed(seed)
    h = gatekit.GumbelSigmoid(tau=tau, hard=True).train()(xh)
    y.sum().backward()
    h.sum().backward()
    y64 = y.detach().double()
    away = (y64 - 0.5).abs() > 1e-6  # sigmoid rounds to exactly 0.5 only right at the threshold
    assert torch.equal(h.detach()[away], (y64 > 0.5).to(dtype)[away])
    # d/dx sigmoid((x + noise) / tau) = y (1 - y) / tau, from the soft output itself.
    expected = y64 * (1 - y64) / tau
    torch.testing.assert_close(xs.grad.double(), expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(xh.grad, xs.grad, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# HardConcrete
# --------------------------------------------------------------------------------------


def hard_concrete_cdf(t: float, x: float, tau: float, low: float, high: float) -> float:
    """P(gate <= t) for 0 <= t < 1: gate <= t iff the stretched logistic
    sigmoid((x + L) / tau) <= q = (t - low) / (high - low), i.e. L <= tau logit(q) - x."""
    q = (t - low) / (high - low)
    return logistic_cdf(tau * logit(q) - x)


@settings(max_examples=10)
@given(
    x=st.floats(-3.0, 3.0),
    tau=st.floats(0.2, 2.0),
    low=st.floats(-0.5, -0.01),
    high=st.floats(1.01, 1.5),
    t=st.floats(0.05, 0.95),
    seed=SEEDS,
)
def test_hard_concrete_distribution_matches_closed_form(x, tau, low, high, t, seed):
    n = 20_000
    torch.manual_seed(seed)
    g = gatekit.HardConcrete(tau=tau, stretch=(low, high)).train()(torch.full((n,), x))
    p0 = hard_concrete_cdf(0.0, x, tau, low, high)
    p1 = 1.0 - logistic_cdf(tau * math.log((1 - low) / (high - 1)) - x)
    assert binomial_ok((g == 0).sum(), n, p0)
    assert binomial_ok((g == 1).sum(), n, p1)
    assert binomial_ok((g <= t).sum(), n, hard_concrete_cdf(t, x, tau, low, high))


# A fixed grid of P(open) away from 0.5, beside hypothesis' draws (which often land at x = 0,
# where many wrong formulas still give 1/2).
GRID = (0.1, 0.25, 0.4, 0.6, 0.75, 0.9)


def _grid_case(name: str) -> tuple[gatekit.Gate, list[float]]:
    """A sampling gate and the logits at which its closed-form P(open) is each GRID value."""
    normal = statistics.NormalDist()
    if name == "st_stochastic":
        return gatekit.StraightThroughSigmoid(stochastic=True), [logit(p) for p in GRID]
    if name == "semhash":  # P(open) = Phi(x / noise_std)
        return (gatekit.ImprovedSemHash(noise_std=0.7, discrete_prob=1.0),
                [0.7 * normal.inv_cdf(p) for p in GRID])
    if name.startswith("gumbel"):  # P(open) = sigmoid(x) for any tau
        tau = float(name.split("_")[1])
        return gatekit.GumbelSigmoid(tau=tau), [logit(p) for p in GRID]
    # hard concrete: P(gate = 1) = 1 - F(tau log((1 - low) / (high - 1)) - x), F logistic
    tau, low, high = 0.5, -0.2, 1.3
    shift = tau * math.log((1 - low) / (high - 1))
    return gatekit.HardConcrete(tau=tau, stretch=(low, high)), [shift + logit(p) for p in GRID]


@pytest.mark.parametrize("name", ["st_stochastic", "semhash", "gumbel_0.3", "gumbel_3.0",
                                  "hard_concrete"])
def test_open_rate_on_a_fixed_grid_of_probabilities(name):
    n = 20_000
    gate, xs = _grid_case(name)
    torch.manual_seed(0)
    g = gate.train()(torch.tensor(xs).expand(n, -1))
    opened = (g == 1).sum(0)
    assert binomial_ok(opened, n, torch.tensor(GRID, dtype=torch.float64), slack=0.0).all(), (
        (opened / n).tolist(), GRID)
    if name == "hard_concrete":
        low, high, tau = gate.stretch[0], gate.stretch[1], 0.5
        for t in (0.0, 0.5):
            want = torch.tensor([hard_concrete_cdf(t, x, tau, low, high) for x in xs])
            assert binomial_ok((g <= t).sum(0), n, want, slack=0.0).all(), t
    else:
        assert set(g.unique().tolist()) <= {0.0, 1.0}


@given(data=st.data(), tau=st.floats(0.2, 2.0), seed=SEEDS)
def test_hard_concrete_gradient_is_stretched_sigmoid_derivative(dtype_case, data, tau, seed):
    low, high = -0.1, 1.1
    x = data.draw(finite_logits(dtype_case.dtype), label="logits")
    xg = x.clone().requires_grad_()
    torch.manual_seed(seed)
    g = gatekit.HardConcrete(tau=tau, stretch=(low, high)).train()(xg)
    g.sum().backward()
    if dtype_case.dtype not in (torch.float32, torch.float64):
        # Rounding the gate to half precision loses the s needed below.  Half logits are
        # computed in float32 with the same noise draws: replay the call on the float32
        # logits, check that one against the closed form below, and the half call against it
        # (forward rounded once, gradient rounded once: the upstream 1 is exact in both).
        x32 = x.float().requires_grad_()
        torch.manual_seed(seed)
        g32 = gatekit.HardConcrete(tau=tau, stretch=(low, high)).train()(x32)
        g32.sum().backward()
        assert torch.equal(g, g32.detach().to(dtype_case.dtype))
        assert torch.equal(xg.grad, x32.grad.to(dtype_case.dtype))
        g, xg = g32, x32
    g64 = g.detach().double()
    s = (g64 - low) / (high - low)  # the unstretched sigmoid, recovered from the gate
    inside = (g64 > 0) & (g64 < 1)
    expected = torch.where(inside, (high - low) * s * (1 - s) / tau, torch.zeros_like(s))
    torch.testing.assert_close(xg.grad.double(), expected, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------
# Seeds, vmap, grad
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_seed_reproduces_and_other_seed_differs(name):
    x = torch.linspace(-2, 2, 256).reshape(64, 4)
    gate = ESTIMATORS[name]().train()
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(gate(x))
    assert torch.equal(runs[0], runs[1])
    deterministic = name in ("st_sigmoid", "st_identity")
    assert torch.equal(runs[0], runs[2]) == deterministic


@pytest.mark.parametrize("name", BASIC)
@given(b=st.integers(1, 4), c=st.integers(1, 6), seed=SEEDS)
def test_vmap_matches_batched_call(name, b, c, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, generator=gen) * 3
    gate = gatekit.get_gate(name)
    # eval: deterministic, vmap over samples equals the batched call
    gate.eval()
    assert torch.equal(vmap(gate)(x), gate(x))
    gate.train()
    # randomness="different": one independent draw per sample, as the batched call makes
    torch.manual_seed(seed)
    batched = gate(x)
    torch.manual_seed(seed)
    mapped = vmap(gate, randomness="different")(x)
    torch.testing.assert_close(mapped, batched, rtol=1e-6, atol=1e-7)
    # randomness="same": every sample sees the draw a single-sample call makes
    torch.manual_seed(seed)
    same = vmap(gate, randomness="same")(x)
    for i in range(b):
        torch.manual_seed(seed)
        torch.testing.assert_close(same[i], gate(x[i]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", BASIC)
@given(b=st.integers(1, 4), c=st.integers(1, 6), seed=SEEDS)
def test_func_grad_matches_autograd(name, b, c, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, generator=gen) * 3
    w = torch.randn(b, c, generator=gen)
    gate = gatekit.get_gate(name).train()

    torch.manual_seed(seed)
    xg = x.clone().requires_grad_()
    (gate(xg) * w).sum().backward()

    torch.manual_seed(seed)
    g_func = grad(lambda z: (gate(z) * w).sum())(x)
    torch.testing.assert_close(g_func, xg.grad, rtol=1e-6, atol=1e-7)

    # per-sample gradients: vmap(grad) over samples equals the batched autograd result
    torch.manual_seed(seed)
    per = vmap(grad(lambda z, wi: (gate(z) * wi).sum()), randomness="different")(x, w)
    torch.testing.assert_close(per, xg.grad, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------
# Custom backward: gradcheck in float64
# --------------------------------------------------------------------------------------


def test_gradcheck_straight_through_function():
    soft = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    offset = torch.randn(3, 4, dtype=torch.float64)

    # hard = soft + offset numerically (it follows gradcheck's perturbation of soft through
    # the shared storage of detach()), so the true derivative is the identity that the
    # straight-through backward claims.
    def f(s):
        return GF.straight_through(s, s.detach() + offset)

    assert torch.autograd.gradcheck(f, (soft,), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, (soft,))


def test_gradcheck_surrogate_gradients():
    # points away from the saturating sigmoid's kinks at logit(1/12) and logit(11/12)
    x = torch.tensor([[-1.5, -0.3, 0.0, 0.4, 1.7]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(GF.saturating_sigmoid, (x,), check_batched_grad=True)

    def seeded(fn, **kw):
        def f(z):
            torch.manual_seed(0)
            return fn(z, **kw)

        return f

    # The soft paths of the estimators, with the noise fixed by a seed.
    for fn, kw in (
        (GF.semhash, {"discrete_prob": 0.0}),
        (GF.gumbel_sigmoid, {"hard": False, "tau": 0.7}),
        (GF.hard_concrete, {"tau": 1.5}),
    ):
        assert torch.autograd.gradcheck(seeded(fn, **kw), (x,), check_batched_grad=True), fn
    # The gradient a hard semhash gate passes is the soft gate's gradient (same noise).
    torch.manual_seed(0)
    (g_hard,) = torch.autograd.grad(GF.semhash(x, discrete_prob=1.0).sum(), x)
    torch.manual_seed(0)
    (g_soft,) = torch.autograd.grad(GF.semhash(x, discrete_prob=0.0).sum(), x)
    assert torch.equal(g_hard, g_soft)


# --------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", BASIC)
def test_compile_fullgraph_matches_eager(fresh_dynamo, name, mode):
    # aot_eager captures the whole graph (forward and backward, fullgraph=True fails on any
    # graph break) and runs the same ATen ops as eager, so results match under one seed.
    x = torch.linspace(-3, 3, 24).reshape(4, 6)
    gate = gatekit.get_gate(name).train(mode == "train")
    compiled = torch.compile(gate, fullgraph=True, backend="aot_eager")
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.manual_seed(0)
    ye = gate(xe)
    torch.manual_seed(0)
    yc = compiled(xc)
    torch.testing.assert_close(yc, ye, rtol=0, atol=0)
    if mode == "train":
        ye.sum().backward()
        yc.sum().backward()
        torch.testing.assert_close(xc.grad, xe.grad, rtol=0, atol=0)


def test_compile_inductor_semhash_float16_matches_eager(fresh_dynamo):
    # The one inductor compile (slow on CPU): GaterNet's estimator, training, float16, with
    # inductor told to use eager's RNG so the noisy forward and the gradient are comparable.
    import torch._inductor.config as inductor_config

    x = torch.linspace(-4, 4, 24, dtype=torch.float16).reshape(4, 6)
    gate = gatekit.ImprovedSemHash().train()
    compiled = torch.compile(gate, fullgraph=True)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    with inductor_config.patch(fallback_random=True):
        torch.manual_seed(0)
        yc = compiled(xc)
        yc.float().sum().backward()
    torch.manual_seed(0)
    ye = gate(xe)
    ye.float().sum().backward()
    torch.testing.assert_close(yc, ye, rtol=0, atol=0)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=0, atol=0)


def test_changing_tau_takes_effect_without_recompiling(fresh_dynamo):
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    gate = gatekit.GumbelSigmoid(tau=1.0, hard=False).train()
    compiled = torch.compile(gate, fullgraph=True, backend=counter)
    x = torch.linspace(-2, 2, 12).reshape(3, 4)
    torch.manual_seed(0)
    y1 = compiled(x)
    gate.tau = 0.25
    torch.manual_seed(0)
    y2 = compiled(x)
    torch.manual_seed(0)
    y_eager = gate(x)
    assert counter.frame_count == 1
    torch.testing.assert_close(y2, y_eager, rtol=0, atol=0)
    # Same noise, new temperature: logit(y) = (x + noise) / tau grows by 1 / 0.25.
    expected = torch.sigmoid(4 * torch.logit(y1.double()))
    torch.testing.assert_close(y2.double(), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(y1, y2)


# --------------------------------------------------------------------------------------
# Temperature, registry, errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [gatekit.GumbelSigmoid, gatekit.HardConcrete])
def test_tau_survives_state_dict_round_trip(cls):
    src = cls(tau=0.37)
    src.tau = 0.123
    dst = cls(tau=1.0)
    dst.load_state_dict(src.state_dict())
    assert dst.tau == pytest.approx(0.123, rel=1e-6)


def test_tau_schedule_closed_forms():
    for kind in ("exp", "linear", "cosine"):
        assert tau_schedule(0, 10, start=2.0, end=0.5, kind=kind) == pytest.approx(2.0)
        assert tau_schedule(10, 10, start=2.0, end=0.5, kind=kind) == pytest.approx(0.5)
        assert tau_schedule(99, 10, start=2.0, end=0.5, kind=kind) == pytest.approx(0.5)
        taus = [tau_schedule(s, 10, start=2.0, end=0.5, kind=kind) for s in range(11)]
        assert all(a >= b for a, b in itertools.pairwise(taus)), kind
    assert tau_schedule(5, 10, start=2.0, end=0.5, kind="exp") == pytest.approx(
        1.0
    )  # sqrt(2 * 0.5)
    assert tau_schedule(5, 10, start=2.0, end=0.5, kind="linear") == pytest.approx(1.25)
    assert tau_schedule(5, 10, start=2.0, end=0.5, kind="cosine") == pytest.approx(1.25)


def test_get_gate_registry():
    expected = {
        "semhash": gatekit.ImprovedSemHash,
        "st_sigmoid": gatekit.StraightThroughSigmoid,
        "gumbel": gatekit.GumbelSigmoid,
        "hard_concrete": gatekit.HardConcrete,
    }
    for name, cls in expected.items():
        gate = gatekit.get_gate(name)
        assert type(gate) is cls and isinstance(gate, gatekit.Gate)
        assert type(gatekit.get_gate(cls)) is cls
        assert gatekit.get_gate(gate) is gate
    assert type(gatekit.get_gate()) is gatekit.ImprovedSemHash  # GaterNet's estimator by default

    g = gatekit.get_gate("gumbel", tau=0.5, hard=False)
    assert g.tau == 0.5 and g.hard is False
    s = gatekit.get_gate(
        gatekit.ImprovedSemHash, noise_std=0.0, discrete_prob=1.0, per_sample=False
    )
    assert (s.noise_std, s.discrete_prob, s.per_sample) == (0.0, 1.0, False)
    assert gatekit.get_gate("hard_concrete", stretch=(-0.2, 1.3)).stretch == (-0.2, 1.3)
    assert gatekit.get_gate("st_sigmoid", backward="identity").backward_mode == "identity"

    class MyGate(gatekit.Gate):
        def forward(self, logits):
            return self.binarize(logits)

    assert type(gatekit.get_gate(MyGate)) is MyGate


@pytest.mark.parametrize(
    "call",
    [
        lambda: gatekit.get_gate("no_such_gate"),
        lambda: gatekit.get_gate("Semhash"),
        lambda: gatekit.get_gate(torch.nn.ReLU),
        lambda: gatekit.get_gate(3),
        lambda: gatekit.get_gate(gatekit.Gate),
        lambda: gatekit.get_gate(gatekit.ImprovedSemHash(), noise_std=0.5),
        lambda: gatekit.get_gate("semhash", tau=0.5),
        lambda: gatekit.get_gate("gumbel", tau=0.0),
    ],
    ids=[
        "unknown",
        "case",
        "not_gate_class",
        "int",
        "base_class",
        "instance_kwargs",
        "bad_kwarg",
        "bad_value",
    ],
)
def test_get_gate_errors(call):
    with pytest.raises(GatekitError, match=r"got|expected"):
        call()


@pytest.mark.parametrize("name", list(ESTIMATORS))
@pytest.mark.parametrize("bad", [torch.int64, torch.int32, torch.bool, torch.complex64], ids=str)
def test_non_float_logits_raise(name, bad):
    x = torch.ones(2, 3, dtype=bad)
    for mode in (True, False):
        with pytest.raises(GatekitError, match=re.escape(str(bad))):
            ESTIMATORS[name]().train(mode)(x)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_functional_forms_reject_bad_logits(name):
    fn = FUNCTIONS[name]
    for training in (True, False):
        with pytest.raises(GatekitError, match=re.escape("torch.int64")):
            fn(torch.ones(3, dtype=torch.int64), training=training)
        with pytest.raises(GatekitError, match="list"):
            fn([0.5, -0.5], training=training)


BAD_ARGS = [
    (lambda: gatekit.GumbelSigmoid(tau=0.0), "tau"),
    (lambda: gatekit.GumbelSigmoid(tau=-1.0), "tau"),
    (lambda: gatekit.GumbelSigmoid(tau=math.nan), "tau"),
    (lambda: gatekit.GumbelSigmoid(tau=math.inf), "tau"),
    (lambda: gatekit.GumbelSigmoid(tau="warm"), "tau"),
    (lambda: gatekit.HardConcrete(tau=0.0), "tau"),
    (lambda: setattr(gatekit.GumbelSigmoid(), "tau", 0.0), "tau"),
    (lambda: setattr(gatekit.HardConcrete(), "tau", -2.0), "tau"),
    (lambda: GF.gumbel_sigmoid(torch.zeros(2), tau=0.0), "tau"),
    (lambda: GF.hard_concrete(torch.zeros(2), tau=-1.0), "tau"),
    (lambda: gatekit.HardConcrete(stretch=(0.0, 1.1)), "stretch"),
    (lambda: gatekit.HardConcrete(stretch=(-0.1, 1.0)), "stretch"),
    (lambda: gatekit.HardConcrete(stretch=(-0.1, math.inf)), "stretch"),
    (lambda: gatekit.HardConcrete(stretch=(-0.1,)), "stretch"),
    (lambda: gatekit.HardConcrete(stretch="ab"), "stretch"),
    (lambda: gatekit.HardConcrete(stretch=None), "stretch"),
    (lambda: GF.hard_concrete(torch.zeros(2), stretch=(1.1, -0.1)), "stretch"),
    (lambda: gatekit.ImprovedSemHash(noise_std=-1.0), "noise_std"),
    (lambda: gatekit.ImprovedSemHash(noise_std=math.inf), "noise_std"),
    (lambda: gatekit.ImprovedSemHash(noise_std=None), "noise_std"),
    (lambda: gatekit.ImprovedSemHash(discrete_prob=1.5), "discrete_prob"),
    (lambda: gatekit.ImprovedSemHash(discrete_prob=math.nan), "discrete_prob"),
    (lambda: GF.semhash(torch.zeros(2), noise_std=-1.0), "noise_std"),
    (lambda: GF.semhash(torch.zeros(2), discrete_prob=-0.1), "discrete_prob"),
    (lambda: gatekit.StraightThroughSigmoid(backward="tanh"), "backward"),
    (lambda: GF.st_sigmoid(torch.zeros(2), backward="tanh"), "backward"),
    (lambda: GF.straight_through(torch.zeros(2), torch.zeros(3)), "shape"),
    (lambda: tau_schedule(1, 0), "total_steps"),
    (lambda: tau_schedule(1, 10, end=0.0), "temperatures"),
    (lambda: tau_schedule(1, 10, kind="step"), "kind"),
]


@pytest.mark.parametrize(
    "call,word", BAD_ARGS, ids=[f"{i}-{w}" for i, (_, w) in enumerate(BAD_ARGS)]
)
def test_bad_arguments_raise_gatekit_error_naming_the_argument(call, word):
    with pytest.raises(GatekitError, match=word) as info:
        call()
    assert "got" in str(info.value)  # says what it was given


# --------------------------------------------------------------------------------------
# open_probability: the probability that the training-mode hard gate is open
# --------------------------------------------------------------------------------------


def normal_cdf64(z: torch.Tensor) -> torch.Tensor:
    return torch.tensor([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in z.double().tolist()], dtype=torch.float64)


OPEN_GRID = torch.linspace(-2.0, 2.0, 17)
OPEN_CASES = {
    # (estimator, oracle P(hard gate open) in float64, how to read the hard gate off the output)
    "semhash_std1": (gatekit.ImprovedSemHash(noise_std=1.0, discrete_prob=1.0), lambda x: normal_cdf64(x)),
    "semhash_std0.5": (gatekit.ImprovedSemHash(noise_std=0.5, discrete_prob=1.0), lambda x: normal_cdf64(x / 0.5)),
    "semhash_std2": (gatekit.ImprovedSemHash(noise_std=2.0, discrete_prob=1.0), lambda x: normal_cdf64(x / 2.0)),
    "gumbel_tau1": (gatekit.GumbelSigmoid(tau=1.0), sigmoid64),
    "gumbel_tau0.2": (gatekit.GumbelSigmoid(tau=0.2), sigmoid64),
    "st_sigmoid_stochastic": (gatekit.StraightThroughSigmoid(stochastic=True), sigmoid64),
    "hard_concrete": (gatekit.HardConcrete(), lambda x: sigmoid64(x - (2 / 3) * math.log(0.1 / 1.1))),
}


@pytest.mark.parametrize("case", list(OPEN_CASES))
def test_open_probability_matches_monte_carlo_open_rate(case):
    gate, oracle = OPEN_CASES[case]
    n = 100_000
    torch.manual_seed(1234)
    out = gate.train()(OPEN_GRID.expand(n, -1).contiguous())
    rate = (out > 0).double().mean(0)  # the hard gate, or for hard concrete P(gate > 0)
    p = gate.open_probability(OPEN_GRID).double()
    torch.testing.assert_close(p, oracle(OPEN_GRID), rtol=1e-6, atol=1e-7)
    bound = 5.0 * torch.sqrt(p * (1 - p) / n) + 1e-6  # 5 binomial standard errors
    assert ((rate - p).abs() <= bound).all(), (rate - p).abs().max()


@pytest.mark.parametrize("name", ["semhash", "st_sigmoid", "gumbel", "hard_concrete"])
def test_open_probability_has_a_gradient_where_the_gate_saturates(name):
    gate = gatekit.get_gate(name)
    x = torch.tensor([-8.0, 8.0], requires_grad=True)
    p = gate.open_probability(x)
    assert ((p > 0) & (p < 1) | (x.abs() == 8)).all()
    p.sum().backward()
    assert (x.grad > 0).all(), x.grad
    # where semhash's own soft gate is flat: 1.2 sigmoid(8) - 0.1 > 1 is clipped
    if name == "semhash":
        y = x.detach().requires_grad_()
        GF.saturating_sigmoid(y).sum().backward()
        assert (y.grad == 0).all()


def test_open_probability_dtypes_and_noise_free_semhash():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        p = gatekit.ImprovedSemHash().open_probability(torch.zeros(3, dtype=dtype))
        assert p.dtype == torch.float32
    p64 = gatekit.HardConcrete().open_probability(torch.zeros(3, dtype=torch.float64))
    assert p64.dtype == torch.float64
    # noise_std=0: the hard gate is a step; sigmoid stands in
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(
        gatekit.ImprovedSemHash(noise_std=0.0).open_probability(x), sigmoid64(x).float()
    )
    # the lower tail is not rounded to 0 in float32 (ndtr would be)
    assert gatekit.ImprovedSemHash().open_probability(torch.tensor([-8.0])).item() == pytest.approx(
        6.22096057427178e-16, rel=1e-5, abs=0
    )


def test_base_class_open_probability_is_the_sigmoid_surrogate():
    class Step(gatekit.Gate):
        def forward(self, logits):
            return self.binarize(logits)

    x = torch.linspace(-4, 4, 9)
    torch.testing.assert_close(Step().open_probability(x), sigmoid64(x).float())
    with pytest.raises(GatekitError, match="floating"):
        Step().open_probability(torch.ones(2, dtype=torch.int64))


# --------------------------------------------------------------------------------------
# hard_gates: the eval gates, with the open probability's gradient
# --------------------------------------------------------------------------------------


def _open_probability_grad64(name: str, x: torch.Tensor) -> torch.Tensor:
    """d P(open) / d logits in float64, from the closed forms of OPEN_CASES' oracles."""
    x = x.double()
    gate = ESTIMATORS[name]()
    if isinstance(gate, gatekit.ImprovedSemHash):
        s = gate.noise_std
        return torch.exp(-0.5 * (x / s) ** 2) / (s * math.sqrt(2 * math.pi))
    shift = 0.0
    if isinstance(gate, gatekit.HardConcrete):
        low, high = gate.stretch
        shift = gate.tau * math.log(-low / high)
    p = sigmoid64(x - shift)
    return p * (1 - p)


@given(data=st.data())
def test_hard_gates_are_the_eval_gates_with_the_open_probability_gradient(dtype_case, data):
    dtype = dtype_case.dtype
    x = data.draw(finite_logits(dtype), label="logits")
    for name, make in ESTIMATORS.items():
        gate = make().train()  # the mode the gates are asked for in: training
        xr = x.clone().requires_grad_()
        out = gate.hard_gates(xr)
        assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32), name
        assert torch.equal(out.double(), step(x).double()), name  # exactly 0 or 1, as eval
        (g,) = torch.autograd.grad(out.sum(), xr)
        assert g.dtype == dtype and torch.isfinite(g).all(), name
        expected = _open_probability_grad64(name, x.double())
        tol = {torch.float64: 1e-9, torch.float32: 1e-5}.get(dtype, 1e-2)
        torch.testing.assert_close(g.double(), expected, rtol=tol, atol=tol, msg=name)


def test_hard_gates_check_their_input():
    with pytest.raises(GatekitError, match="floating"):
        gatekit.ImprovedSemHash().hard_gates(torch.ones(2, dtype=torch.int64))
