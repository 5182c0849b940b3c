"""Gate estimators: from real-valued gate logits to gates in [0, 1].

Each estimator is a plain function (also re-exported from :mod:`gatekit.functional`) and
an :class:`torch.nn.Module` subclass of :class:`Gate`.  In training mode a gate is
stochastic (except :class:`StraightThroughSigmoid`, which is deterministic unless asked
otherwise) and passes a surrogate gradient; in eval mode every estimator returns exactly
``(logits > 0)`` in the dtype of the logits.

Numerics: the arithmetic runs in float32 (float64 for float64 input) and the result is
cast back, so float16 and bfloat16 logits of any magnitude give neither NaN nor inf, in
the forward pass or in the gradient.  Randomness comes from the torch RNG
(``torch.manual_seed`` reproduces a run).  Under :func:`torch.func.vmap` a training-mode
gate needs ``randomness="different"`` (or ``"same"``), as every random op does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ._errors import GatekitError

__all__ = [
    "Gate",
    "GumbelSigmoid",
    "HardConcrete",
    "ImprovedSemHash",
    "StraightThroughSigmoid",
    "expected_l0",
    "get_gate",
    "gumbel_sigmoid",
    "hard_concrete",
    "saturating_sigmoid",
    "semhash",
    "st_sigmoid",
    "straight_through",
    "tau_schedule",
]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Bounds for uniform noise so that log(u) and log(1 - u) stay finite in float32.
_U_EPS = 1e-6


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


class _StraightThrough(torch.autograd.Function):
    """Forward returns ``hard``; backward sends the incoming gradient to ``soft`` unchanged.

    Written as an autograd Function rather than ``soft + (hard - soft).detach()`` because
    that expression is not exactly ``hard`` in floating point (0.3 + 0.7 can round to
    0.99999994), and binary gates must be exactly binary.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(soft: Tensor, hard: Tensor) -> Tensor:
        return hard.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


def straight_through(soft: Tensor, hard: Tensor) -> Tensor:
    """Return ``hard`` in the forward pass, with the gradient of ``soft``.

    >>> import torch
    >>> soft = torch.tensor([0.3, 0.8], requires_grad=True)
    >>> out = straight_through(soft, (soft > 0.5).float())
    >>> out
    tensor([0., 1.], grad_fn=<_StraightThroughBackward>)
    >>> out.sum().backward(); soft.grad
    tensor([1., 1.])
    """
    if soft.shape != hard.shape:
        raise GatekitError(
            f"straight_through expects soft and hard of one shape, got {tuple(soft.shape)} "
            f"and {tuple(hard.shape)}"
        )
    return _StraightThrough.apply(soft, hard.to(soft.dtype))


def _check_logits(logits: Any, fn: str) -> None:
    if not isinstance(logits, Tensor):
        raise GatekitError(
            f"{fn} expects a torch.Tensor of gate logits, got {type(logits).__name__}"
        )
    if logits.dtype not in _FLOAT_DTYPES:
        raise GatekitError(
            f"{fn} expects floating-point logits (float16, bfloat16, float32 or float64), "
            f"got {logits.dtype}; convert with logits.float()"
        )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _binary(logits: Tensor) -> Tensor:
    return (logits > 0).to(logits.dtype)


def _sample_shape(x: Tensor) -> tuple[int, ...]:
    """Shape of one random draw per sample: dim 0 indexes samples, a 1-D input is one sample."""
    if x.ndim <= 1:
        return (1,) * x.ndim
    return (x.shape[0],) + (1,) * (x.ndim - 1)


def _logistic_noise(x: Tensor) -> Tensor:
    # Out of place: vmap has no batching rule for the in-place clamp_.
    u = torch.rand_like(x).clamp(_U_EPS, 1.0 - _U_EPS)
    return torch.log(u) - torch.log1p(-u)


def saturating_sigmoid(x: Tensor) -> Tensor:
    """``max(0, min(1, 1.2 * sigmoid(x) - 0.1))``, the soft gate of improved SemHash.

    >>> import torch
    >>> saturating_sigmoid(torch.tensor([-10.0, 0.0, 10.0]))
    tensor([0.0000, 0.5000, 1.0000])
    """
    return torch.clamp(1.2 * torch.sigmoid(x) - 0.1, 0.0, 1.0)


# --------------------------------------------------------------------------------------
# Functional forms
# --------------------------------------------------------------------------------------


def _check_semhash_args(noise_std: Any, discrete_prob: Any, fn: str) -> tuple[float, float]:
    """The one check of improved SemHash's arguments (class and function alike)."""
    noise = _as_float(noise_std, "noise_std")
    if not 0.0 <= noise < math.inf:
        raise GatekitError(f"{fn} expects noise_std finite and >= 0, got {noise_std!r}")
    prob = _as_float(discrete_prob, "discrete_prob")
    if not 0.0 <= prob <= 1.0:
        raise GatekitError(f"{fn} expects discrete_prob in [0, 1], got {discrete_prob!r}")
    return noise, prob


def _check_st_backward(backward: Any, fn: str) -> str:
    """The one check of the straight-through sigmoid's ``backward`` (class and function)."""
    if backward not in ("sigmoid", "identity"):
        raise GatekitError(f"{fn} expects backward 'sigmoid' or 'identity', got {backward!r}")
    return backward


def _check_tau(tau: Any, fn: str) -> None:
    """A temperature given to a function: a tensor (scheduled, checked by its maker) or > 0."""
    if not isinstance(tau, Tensor) and not tau > 0:
        raise GatekitError(f"{fn} expects tau > 0, got {tau}")


def semhash(
    logits: Tensor,
    *,
    training: bool = True,
    noise_std: float = 1.0,
    discrete_prob: float = 0.5,
    per_sample: bool = True,
) -> Tensor:
    """Improved semantic hashing (Kaiser and Bengio 2018), as GaterNet uses it.

    Training: ``x = logits + noise_std * N(0, 1)``; soft gate ``g_a = saturating_sigmoid(x)``;
    hard gate ``g_b = 1(x > 0)`` whose gradient is that of ``g_a`` (straight-through).
    With probability ``discrete_prob`` a sample uses ``g_b`` for its whole gate vector,
    otherwise ``g_a`` (``per_sample=False`` draws the choice per element instead).
    Dim 0 indexes samples; a 1-D input is one sample.  Eval: ``1(logits > 0)`` without
    noise, whose gradient is again that of ``saturating_sigmoid(logits)``, as in the
    released GaterNet code (so gradients through an eval-mode gater stay defined).

    >>> import torch
    >>> semhash(torch.tensor([[-2.0, 0.5, 3.0]]), training=False)
    tensor([[0., 1., 1.]])
    >>> _ = torch.manual_seed(0)
    >>> g = semhash(torch.zeros(4, 8))
    >>> bool(((g >= 0) & (g <= 1)).all())
    True
    """
    _check_logits(logits, "semhash")
    if not training:
        if not logits.requires_grad:
            return _binary(logits)
        x = logits.to(_compute_dtype(logits.dtype))
        return straight_through(saturating_sigmoid(x), (x > 0).to(x.dtype)).to(logits.dtype)
    _check_semhash_args(noise_std, discrete_prob, "semhash")
    x = logits.to(_compute_dtype(logits.dtype))
    if noise_std > 0:
        x = x + noise_std * torch.randn_like(x)
    soft = saturating_sigmoid(x)
    hard = straight_through(soft, (x > 0).to(x.dtype))
    choice_shape = _sample_shape(x) if per_sample else x.shape
    use_hard = torch.rand(choice_shape, device=x.device, dtype=x.dtype) < discrete_prob
    return torch.where(use_hard, hard, soft).to(logits.dtype)


def st_sigmoid(
    logits: Tensor,
    *,
    training: bool = True,
    backward: str = "sigmoid",
    stochastic: bool = False,
) -> Tensor:
    """Straight-through sigmoid: forward ``1(sigmoid(x) > 0.5)``, backward via a surrogate.

    ``backward="sigmoid"`` (default) passes the sigmoid's derivative, which fades for
    confident gates and so keeps their logits bounded; ``backward="identity"`` passes the
    gradient unchanged (the original straight-through estimator of Bengio et al. 2013).
    ``stochastic=True`` samples ``Bernoulli(sigmoid(x))`` in training instead of
    thresholding.  Eval: ``1(logits > 0)``.

    >>> import torch
    >>> x = torch.tensor([-1.0, 2.0], requires_grad=True)
    >>> g = st_sigmoid(x); g
    tensor([0., 1.], grad_fn=<_StraightThroughBackward>)
    >>> g.sum().backward(); x.grad
    tensor([0.1966, 0.1050])
    """
    _check_logits(logits, "st_sigmoid")
    _check_st_backward(backward, "st_sigmoid")
    if not training:
        return _binary(logits)
    x = logits.to(_compute_dtype(logits.dtype))
    soft = torch.sigmoid(x) if backward == "sigmoid" else x
    if stochastic:
        hard = (torch.rand_like(x) < torch.sigmoid(x)).to(x.dtype)
    else:
        hard = (x > 0).to(x.dtype)
    return straight_through(soft, hard).to(logits.dtype)


def gumbel_sigmoid(
    logits: Tensor,
    *,
    tau: float | Tensor = 1.0,
    hard: bool = True,
    training: bool = True,
) -> Tensor:
    """Gumbel-sigmoid (binary concrete) relaxation with logistic noise.

    ``y = sigmoid((logits + log u - log(1 - u)) / tau)``, ``u ~ U(0, 1)``.  With
    ``hard=True`` the forward is ``1(y > 0.5)`` and the gradient is that of ``y``, and
    ``P(gate = 1) = sigmoid(logits)`` exactly.  Unlike :func:`torch.nn.functional.gumbel_softmax`
    it stays finite in float16: the noise and the division by ``tau`` run in float32.
    Eval: ``1(logits > 0)``.

    >>> import torch
    >>> gumbel_sigmoid(torch.tensor([-3.0, 3.0]), training=False)
    tensor([0., 1.])
    """
    _check_logits(logits, "gumbel_sigmoid")
    if not training:
        return _binary(logits)
    _check_tau(tau, "gumbel_sigmoid")
    x = logits.to(_compute_dtype(logits.dtype))
    noisy = x + _logistic_noise(x)
    soft = torch.sigmoid(noisy / tau)
    out = straight_through(soft, (noisy > 0).to(x.dtype)) if hard else soft
    return out.to(logits.dtype)


def hard_concrete(
    logits: Tensor,
    *,
    tau: float | Tensor = 2.0 / 3.0,
    stretch: tuple[float, float] = (-0.1, 1.1),
    training: bool = True,
) -> Tensor:
    """Hard concrete gate of Louizos et al. 2018 ("Learning Sparse Neural Networks through
    L0 Regularization"); ``logits`` play the role of ``log alpha``.

    Training: ``s = sigmoid((log u - log(1 - u) + logits) / tau)``, stretched to
    ``(low, high) = stretch`` and clipped to ``[0, 1]``, so gates are exactly 0 or 1 with
    non-zero probability and smooth in between.  Eval: ``1(logits > 0)``, the median gate
    rounded (the paper's deterministic gate is not binary; gatekit's eval gates are).
    Its expected-L0 penalty is :func:`gatekit.expected_l0_loss`.

    >>> import torch
    >>> hard_concrete(torch.tensor([-1.0, 1.0]), training=False)
    tensor([0., 1.])
    """
    _check_logits(logits, "hard_concrete")
    low, high = _check_stretch(stretch)
    if not training:
        return _binary(logits)
    _check_tau(tau, "hard_concrete")
    x = logits.to(_compute_dtype(logits.dtype))
    s = torch.sigmoid((x + _logistic_noise(x)) / tau)
    return torch.clamp(s * (high - low) + low, 0.0, 1.0).to(logits.dtype)


def _check_stretch(stretch: Any) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in stretch)
    except (TypeError, ValueError):
        raise GatekitError(f"stretch must be a pair (low, high), got {stretch!r}") from None
    if not (-math.inf < low < 0.0 and 1.0 < high < math.inf):
        raise GatekitError(
            f"stretch must be finite with low < 0 < 1 < high so that gates reach exactly 0 and 1, "
            f"got {stretch!r}; the paper uses (-0.1, 1.1)"
        )
    return low, high


def expected_l0(
    logits: Tensor, tau: float | Tensor = 2.0 / 3.0, stretch: tuple[float, float] = (-0.1, 1.1)
) -> Tensor:
    """Expected number of non-zero hard concrete gates along the last dim.

    ``sum_j sigmoid(logits_j - tau * log(-low / high))`` (Louizos et al. 2018, eq. 12);
    the penalty of :func:`gatekit.expected_l0_loss`.  Float32 (float64 for float64 logits).

    >>> import torch
    >>> expected_l0(torch.tensor([[-20.0, 20.0]]))
    tensor([1.])
    """
    _check_logits(logits, "expected_l0")
    if logits.ndim == 0 or logits.numel() == 0:
        raise GatekitError(
            f"expected_l0 expects logits of shape (N, num_gates), got {tuple(logits.shape)}"
        )
    low, high = _check_stretch(stretch)
    shift = math.log(-low / high)
    return torch.sigmoid(logits.to(_compute_dtype(logits.dtype)) - tau * shift).sum(-1)


def tau_schedule(
    step: int, total_steps: int, *, start: float = 1.0, end: float = 0.1, kind: str = "exp"
) -> float:
    """Temperature at ``step`` of ``total_steps`` annealed from ``start`` to ``end``.

    ``kind`` is ``"exp"`` (geometric), ``"linear"`` or ``"cosine"``.  Set it with
    ``gate.tau = tau_schedule(...)``; it is a tensor buffer inside, so a compiled model
    does not recompile when it changes.

    >>> tau_schedule(0, 100), tau_schedule(100, 100), round(tau_schedule(50, 100), 4)
    (1.0, 0.1, 0.3162)
    """
    if total_steps <= 0 or start <= 0 or end <= 0:
        raise GatekitError(
            f"tau_schedule expects total_steps > 0 and positive temperatures, got "
            f"total_steps={total_steps}, start={start}, end={end}"
        )
    t = min(max(step / total_steps, 0.0), 1.0)
    if kind == "exp":
        return start * (end / start) ** t
    if kind == "linear":
        return start + (end - start) * t
    if kind == "cosine":
        return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))
    raise GatekitError(f"tau_schedule kind must be 'exp', 'linear' or 'cosine', got {kind!r}")


# --------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------


class Gate(nn.Module):
    """Base class of gate estimators: ``forward(logits) -> gates`` of the same shape and dtype.

    Subclasses implement ``forward`` for training mode and inherit the eval
    behaviour ``1(logits > 0)`` from :meth:`binarize`.  ``name`` is the registry key.

    >>> import torch, gatekit
    >>> gate = gatekit.ImprovedSemHash().eval()
    >>> gate(torch.tensor([[-1.0, 1.0]]))
    tensor([[0., 1.]])
    """

    name: str = ""

    def binarize(self, logits: Tensor) -> Tensor:
        """The deterministic eval-mode gate, ``1(logits > 0)``."""
        _check_logits(logits, type(self).__name__)
        return _binary(logits)

    def hard_gates(self, logits: Tensor) -> Tensor:
        """The gates eval mode gives, :meth:`binarize`, with the gradient of
        :meth:`open_probability` (straight-through).

        For a loss on the gates the trained model will run with: a FLOPs budget on these
        counts what evaluation keeps, where the training gates (noisy, or soft) can meet the
        budget in expectation while the eval gates keep more or less.  Exactly 0 or 1 in
        the forward pass; float32 (float64 for float64 logits), as :meth:`open_probability`.

        >>> import torch, gatekit
        >>> logits = torch.tensor([0.5, -0.5], requires_grad=True)
        >>> gates = gatekit.ImprovedSemHash().hard_gates(logits)
        >>> gates
        tensor([1., 0.], grad_fn=<_StraightThroughBackward>)
        >>> gates.sum().backward(); logits.grad  # the normal pdf at +-0.5
        tensor([0.3521, 0.3521])
        """
        return straight_through(self.open_probability(logits), self.binarize(logits))

    def open_probability(self, logits: Tensor) -> Tensor:
        """Probability that the training-mode hard gate is open, for these logits.

        Smooth in the logits, with a non-zero gradient even where the estimator's own
        surrogate gradient vanishes (a saturated soft gate): the input for
        :func:`gatekit.batch_shaping_loss`.  Subclasses give the exact probability of their
        noise; this default, ``sigmoid(logits)``, is a surrogate for estimators that do not
        override it.  Returned in float32 (float64 for float64 logits).

        >>> import torch, gatekit
        >>> gatekit.GumbelSigmoid().open_probability(torch.tensor([0.0, 2.0]))
        tensor([0.5000, 0.8808])
        """
        _check_logits(logits, f"{type(self).__name__}.open_probability")
        return torch.sigmoid(logits.to(_compute_dtype(logits.dtype)))


class _TemperatureMixin:
    """A temperature held in a buffer, so changing it does not recompile a compiled model."""

    _tau: Tensor

    def _init_tau(self, tau: float) -> None:
        self.register_buffer("_tau", torch.tensor(_positive(tau, "tau"), dtype=torch.float32))

    @property
    def tau(self) -> float:
        return float(self._tau)

    @tau.setter
    def tau(self, value: float) -> None:
        with torch.no_grad():
            self._tau.fill_(_positive(value, "tau"))


def _as_float(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise GatekitError(f"{what} must be a number, got {value!r}") from None


def _positive(value: Any, what: str) -> float:
    v = _as_float(value, what)
    if not v > 0 or math.isinf(v):
        raise GatekitError(f"{what} must be a positive finite number, got {value!r}")
    return v


class ImprovedSemHash(Gate):
    """GaterNet's estimator: improved SemHash (see :func:`~gatekit.functional.semhash`).

    >>> import torch
    >>> gate = ImprovedSemHash(noise_std=1.0, discrete_prob=0.5)
    >>> gate
    ImprovedSemHash(noise_std=1.0, discrete_prob=0.5)
    >>> gate.eval()(torch.tensor([[0.2, -0.2]]))
    tensor([[1., 0.]])
    """

    name = "semhash"

    def __init__(self, noise_std: float = 1.0, discrete_prob: float = 0.5, per_sample: bool = True):
        super().__init__()
        self.noise_std, self.discrete_prob = _check_semhash_args(noise_std, discrete_prob,
                                                                 "ImprovedSemHash")
        self.per_sample = bool(per_sample)

    def forward(self, logits: Tensor) -> Tensor:
        return semhash(
            logits,
            training=self.training,
            noise_std=self.noise_std,
            discrete_prob=self.discrete_prob,
            per_sample=self.per_sample,
        )

    def open_probability(self, logits: Tensor) -> Tensor:
        """``P(logits + e > 0) = Phi(logits / noise_std)``, ``e ~ N(0, noise_std)``: the
        probability that the hard gate ``g_b`` is open in training (whether a sample then
        uses ``g_b`` or the soft ``g_a`` does not change it).  With ``noise_std == 0`` the
        gate is a step, whose probability has no gradient: ``sigmoid(logits)`` stands in.
        ``Phi`` is ``erfc(-z / sqrt(2)) / 2``, exact in the lower tail where float32
        :func:`torch.special.ndtr` rounds to 0 below about -5.5; the gradient (the normal
        pdf) is non-zero for ``|logits| / noise_std`` up to about 13 in float32.

        >>> import torch
        >>> ImprovedSemHash(noise_std=1.0).open_probability(torch.tensor([0.0, 1.0, -8.0]))
        tensor([5.0000e-01, 8.4134e-01, 6.2210e-16])
        """
        _check_logits(logits, "ImprovedSemHash.open_probability")
        x = logits.to(_compute_dtype(logits.dtype))
        if self.noise_std == 0:
            return torch.sigmoid(x)
        return 0.5 * torch.special.erfc(x * (-math.sqrt(0.5) / self.noise_std))

    def extra_repr(self) -> str:
        s = f"noise_std={self.noise_std}, discrete_prob={self.discrete_prob}"
        return s if self.per_sample else s + ", per_sample=False"


class StraightThroughSigmoid(Gate):
    """Straight-through sigmoid (see :func:`~gatekit.functional.st_sigmoid`).

    >>> StraightThroughSigmoid(backward="identity")
    StraightThroughSigmoid(backward='identity', stochastic=False)
    """

    name = "st_sigmoid"

    def __init__(self, backward: str = "sigmoid", stochastic: bool = False):
        super().__init__()
        self.backward_mode = _check_st_backward(backward, "StraightThroughSigmoid")
        self.stochastic = bool(stochastic)

    def forward(self, logits: Tensor) -> Tensor:
        if not self.training:
            return self.binarize(logits)
        return st_sigmoid(logits, backward=self.backward_mode, stochastic=self.stochastic)

    def open_probability(self, logits: Tensor) -> Tensor:
        """``sigmoid(logits)``: exactly ``P(gate = 1)`` with ``stochastic=True``; for the
        deterministic gate (open iff ``logits > 0``) a smooth surrogate of that step.

        >>> import torch
        >>> StraightThroughSigmoid().open_probability(torch.tensor([0.0]))
        tensor([0.5000])
        """
        return super().open_probability(logits)

    def extra_repr(self) -> str:
        return f"backward={self.backward_mode!r}, stochastic={self.stochastic}"


class GumbelSigmoid(_TemperatureMixin, Gate):
    """Gumbel-sigmoid / binary concrete gate (see :func:`~gatekit.functional.gumbel_sigmoid`).

    The temperature can be changed during training, e.g. with :func:`~gatekit.functional.tau_schedule`:

    >>> gate = GumbelSigmoid(tau=1.0)
    >>> gate.tau = tau_schedule(50, 100, start=1.0, end=0.25)
    >>> gate
    GumbelSigmoid(tau=0.5, hard=True)
    """

    name = "gumbel"

    def __init__(self, tau: float = 1.0, hard: bool = True):
        super().__init__()
        self._init_tau(tau)
        self.hard = bool(hard)

    def forward(self, logits: Tensor) -> Tensor:
        if not self.training:
            return self.binarize(logits)
        return gumbel_sigmoid(logits, tau=self._tau, hard=self.hard)

    def open_probability(self, logits: Tensor) -> Tensor:
        """``sigmoid(logits)``, exactly ``P(hard gate = 1)`` at every temperature (the
        logistic noise is symmetric: ``P(logits + L > 0) = sigmoid(logits)``).

        >>> import torch
        >>> GumbelSigmoid(tau=0.1).open_probability(torch.tensor([0.0, -2.0]))
        tensor([0.5000, 0.1192])
        """
        return super().open_probability(logits)

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4g}, hard={self.hard}"


class HardConcrete(_TemperatureMixin, Gate):
    """Hard concrete gate with its expected-L0 penalty (see :func:`~gatekit.functional.hard_concrete`).

    >>> import torch
    >>> gate = HardConcrete()
    >>> gate
    HardConcrete(tau=0.6667, stretch=(-0.1, 1.1))
    >>> round(float(gate.expected_l0(torch.zeros(10))), 4)  # expected open gates
    8.3182
    """

    name = "hard_concrete"

    def __init__(self, tau: float = 2.0 / 3.0, stretch: tuple[float, float] = (-0.1, 1.1)):
        super().__init__()
        self._init_tau(tau)
        self.stretch = _check_stretch(stretch)

    def forward(self, logits: Tensor) -> Tensor:
        if not self.training:
            return self.binarize(logits)
        return hard_concrete(logits, tau=self._tau, stretch=self.stretch)

    def expected_l0(self, logits: Tensor) -> Tensor:
        """Expected number of non-zero gates, summed over the last dim (Louizos et al. eq. 12)."""
        return expected_l0(logits, tau=self._tau, stretch=self.stretch)

    def open_probability(self, logits: Tensor) -> Tensor:
        """``P(gate > 0) = sigmoid(logits - tau * log(-low / high))``, the per-gate term of
        :meth:`expected_l0`.

        >>> import torch
        >>> HardConcrete().open_probability(torch.tensor([0.0]))
        tensor([0.8318])
        """
        _check_logits(logits, "HardConcrete.open_probability")
        low, high = self.stretch
        x = logits.to(_compute_dtype(logits.dtype))
        return torch.sigmoid(x - self._tau.to(x.dtype) * math.log(-low / high))

    def extra_repr(self) -> str:
        return f"tau={self.tau:.4g}, stretch={self.stretch}"


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[Gate]] = {
    cls.name: cls for cls in (ImprovedSemHash, StraightThroughSigmoid, GumbelSigmoid, HardConcrete)
}


def get_gate(spec: str | type[Gate] | Gate = "semhash", **kwargs: Any) -> Gate:
    """Return a gate estimator from a registry name, a :class:`Gate` subclass or an instance.

    Names: ``"semhash"``, ``"st_sigmoid"``, ``"gumbel"``, ``"hard_concrete"``.  Keyword
    arguments go to the constructor (not allowed with an instance, which is returned as is).

    >>> get_gate("gumbel", tau=0.5)
    GumbelSigmoid(tau=0.5, hard=True)
    >>> get_gate(ImprovedSemHash)
    ImprovedSemHash(noise_std=1.0, discrete_prob=0.5)
    """
    if isinstance(spec, Gate):
        if kwargs:
            raise GatekitError(
                f"get_gate got an estimator instance ({spec!r}) and constructor arguments "
                f"{sorted(kwargs)}; pass a name or class with arguments, or the instance alone"
            )
        return spec
    if spec is Gate:
        raise GatekitError(
            f"get_gate needs a concrete estimator, got the abstract base class gatekit.Gate; "
            f"pass one of {sorted(_REGISTRY)} or a subclass that implements forward"
        )
    if isinstance(spec, type) and issubclass(spec, Gate):
        cls = spec
    elif isinstance(spec, str) and spec in _REGISTRY:
        cls = _REGISTRY[spec]
    else:
        raise GatekitError(
            f"unknown gate estimator {spec!r}; expected one of {sorted(_REGISTRY)}, "
            f"a gatekit.Gate subclass, or an instance of one"
        )
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise GatekitError(f"bad arguments for {cls.__name__}: {e}") from None
