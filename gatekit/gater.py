"""GaterNet, the module :func:`gatekit.gate_model` returns: it composes the gater, its head,
the gate estimator and the gated backbone.

Data flow: ``x -> gater -> head -> logits -> estimator -> gates -> gated backbone(x, gates)``.
The head is a :class:`gatekit.head.GaterHead`, or a :class:`gatekit.budget.BudgetHead` for a
model with a budget input; the checks of input, gates, budget and gater output live in
``gatekit._checks``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, fx, nn

from . import _checks
from .budget import BudgetHead
from .budget import BudgetMap as BudgetMap  # importable here, its home before gatekit.budget
from .estimators import Gate
from .head import GaterHead
from .sites import GateSite

__all__ = ["GaterNet"]


class GaterNet(nn.Module):
    """A backbone whose conv filters are switched per sample by a gater network.

    Build it with :func:`gatekit.gate_model`.  ``forward(x)`` returns exactly what the
    backbone returns; ``forward(x, gates=g)`` skips the gater and uses ``g`` of shape
    ``(N, num_gates)``.  After each forward, ``last_gates`` and ``last_logits`` (None when
    gates were given) hold that pass's tensors, graph attached, for losses and statistics
    (``last_probs``, the open probabilities, for :func:`gatekit.batch_shaping_loss`);
    under :class:`~torch.nn.parallel.DistributedDataParallel` read them from ``ddp.module``.
    Copies (``copy.deepcopy``, pickling) start with both set to None.

    Non-finite logits: with ``check_finite=False`` (default, no device sync per step) they
    pass to the estimator as they are (in eval mode NaN and -inf close a gate, +inf opens
    it; in training the soft gates turn NaN and so does the loss).  ``check_finite=True``
    raises :class:`GatekitError` in eager mode (the check is skipped inside
    ``torch.compile``).

    A model built with ``gate_model(..., budget_input=True)`` is called as
    ``forward(x, budget=b)``: ``b`` is a float or an ``(N,)`` tensor in (0, 1], the
    fraction of the gated FLOPs each sample may use, read by the gater's head (see
    :class:`~gatekit.budget.BudgetHead`); ``last_budget`` holds it as an ``(N,)`` tensor, for
    :func:`gatekit.flops_budget_loss`.  Without a budget it raises :class:`GatekitError`, as
    a model without a budget input does when given one; ``gates=`` overrides both.

    Input checks, on entry, before the gater runs: when one conv of the backbone reads the
    input directly, an input whose rank or channel count that conv cannot read raises
    :class:`GatekitError` (also a :class:`RuntimeError`, the class of the conv error it
    replaces).  Gates given as ``gates=g`` are checked for shape, dtype, device and, in eager
    mode, for NaN and inf (one ``isfinite`` over ``g``; skipped inside ``torch.compile``,
    as the logits check is): the error names the first bad site and sample.

    Attributes: ``backbone`` (an fx GraphModule called as ``backbone(x, gates=g)``),
    ``gater``, ``head`` (:class:`~gatekit.head.GaterHead`, or its subclass
    :class:`~gatekit.budget.BudgetHead`), ``estimator`` (:class:`gatekit.Gate`),
    ``sites`` (tuple of :class:`gatekit.GateSite`), ``num_gates``, ``check_finite``.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, resnet20_gater
    >>> net = gatekit.gate_model(resnet20(), resnet20_gater()).eval()
    >>> net(torch.randn(2, 3, 32, 32)).shape, net.num_gates, tuple(net.last_gates.shape)
    (torch.Size([2, 10]), 336, (2, 336))
    """

    last_gates: Tensor | None
    last_logits: Tensor | None

    def __init__(
        self,
        backbone: fx.GraphModule,
        gater: nn.Module,
        head: GaterHead,
        estimator: Gate,
        sites: Sequence[GateSite],
        *,
        in_features: int,
        check_finite: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.gater = gater
        self.head = head
        self.estimator = estimator
        self.sites = tuple(sites)
        self.num_gates = sum(s.num_gates for s in self.sites)
        self.in_features = in_features
        self.check_finite = bool(check_finite)
        self.last_gates = None
        self.last_logits = None
        self.last_budget: Tensor | None = None
        self.input_spec = _checks.input_spec(backbone)

    @property
    def last_probs(self) -> Tensor | None:
        """Open probabilities of the last forward's gates, ``(N, num_gates)``, or None when
        that forward was given ``gates`` (no logits).

        ``estimator.open_probability(last_logits)``: the probability that each training-mode
        hard gate is open, differentiable, with a gradient that does not vanish where the
        estimator's soft gate saturates (never flat).  The input for
        :func:`gatekit.batch_shaping_loss`.  Float32 (float64 for float64 logits).

        >>> import torch, gatekit
        >>> from gatekit.models import resnet20, resnet20_gater
        >>> net = gatekit.gate_model(resnet20(), resnet20_gater())
        >>> _ = net(torch.randn(4, 3, 32, 32))
        >>> loss = gatekit.batch_shaping_loss(net.last_probs)
        >>> net.last_probs.shape, bool(0 <= loss <= 1)
        (torch.Size([4, 336]), True)
        """
        if self.last_logits is None:
            return None
        return self.estimator.open_probability(self.last_logits)

    @property
    def last_eval_gates(self) -> Tensor | None:
        """The gates eval mode would give for the last forward's logits, ``(N, num_gates)``,
        exactly 0 or 1, with the open probabilities' gradient (``estimator.hard_gates``,
        straight-through); None when that forward was given ``gates``.

        In training mode ``last_gates`` are the estimator's noisy or soft gates: a FLOPs
        budget on them holds in expectation, while the deterministic eval gates may keep
        more or less.  A budget on these holds for the gates the model is evaluated with.

        >>> import torch, gatekit
        >>> from gatekit.models import resnet20, resnet20_gater
        >>> net = gatekit.gate_model(resnet20(), resnet20_gater())
        >>> _ = net(torch.randn(4, 3, 32, 32))
        >>> eval_gates = net.last_eval_gates
        >>> bool(((eval_gates == 0) | (eval_gates == 1)).all()), eval_gates.requires_grad
        (True, True)
        """
        if self.last_logits is None:
            return None
        return self.estimator.hard_gates(self.last_logits)

    @property
    def budget_input(self) -> bool:
        """Whether the gater's head reads a per-sample budget (``forward(x, budget=b)``)."""
        return isinstance(self.head, BudgetHead)

    def gate_logits(self, x: Any, budget: float | Tensor | None = None) -> Tensor:
        """The gater's real-valued gate logits ``(N, num_gates)`` for input ``x``.

        >>> import torch, gatekit
        >>> from gatekit.models import resnet20, resnet20_gater
        >>> net = gatekit.gate_model(resnet20(), resnet20_gater())
        >>> net.gate_logits(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 336])
        """
        return self._logits(x, self._budget(x, budget))

    def _budget(self, x: Any, budget: float | Tensor | None) -> Tensor | None:
        return _checks.budget_vector(x, budget, self.budget_input)

    def _logits(self, x: Any, budget: Tensor | None) -> Tensor:
        features = self.gater(x)
        _checks.check_features(features, x, self.in_features, self.num_gates, self.sites)
        logits = self.head(features) if budget is None else self.head(features, budget)
        if self.check_finite:
            _checks.check_logits(logits)
        return logits

    def forward(self, x: Any, gates: Tensor | None = None, *, budget: float | Tensor | None = None) -> Any:
        _checks.check_input(self.input_spec, x)
        if gates is None:
            b = self._budget(x, budget)
            logits = self._logits(x, b)
            gates = self.estimator(logits)
        else:  # given gates override the gater, and the budget
            _checks.check_gates(gates, x, self.num_gates, self.sites)
            b = self._budget(x, budget) if budget is not None else None
            logits = None
        self.last_logits = logits
        self.last_gates = gates
        self.last_budget = b
        return self.backbone(x, gates=gates)

    def __getstate__(self) -> dict[str, Any]:
        # Non-leaf tensors with a graph cannot be deep-copied; copies start without them.
        state = self.__dict__.copy()
        state["last_gates"] = None
        state["last_logits"] = None
        state["last_budget"] = None
        return state

    def extra_repr(self) -> str:
        budget = ", budget_input=True" if self.budget_input else ""
        return f"num_gates={self.num_gates}, sites={len(self.sites)}{budget}"
