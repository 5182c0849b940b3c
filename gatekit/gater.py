"""The gater head and :class:`GaterNet`, the module :func:`gatekit.gate_model` returns.

Data flow: ``x -> gater -> head -> logits -> estimator -> gates -> gated backbone(x, gates)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, fx, nn

from ._errors import GatekitError, InputShapeError
from ._graph import is_conv
from .estimators import Gate
from .sites import GateSite

__all__ = ["BudgetMap", "GaterHead", "GaterNet"]


class BudgetMap(nn.Module):
    """A monotone piecewise-linear map from a requested budget to the head's budget input.

    ``requested`` ``(K,)`` strictly increasing, ``knob`` ``(K,)`` non-decreasing, ``K >= 2``:
    ``forward(b)`` interpolates linearly between the knots and holds the end values outside
    them.  ``achieved`` ``(K,)`` records the mean fraction the calibration images kept at each
    knot's knob (where a requested budget lies below what the model can reach, achieved is
    above it: read it before trusting the map there).  All three are buffers, saved in the
    model's ``state_dict``; a fresh model of the same build loads them back (its head makes
    the map when the state holds one).

    >>> import torch
    >>> m = BudgetMap(torch.tensor([0.2, 0.6, 1.0]), torch.tensor([0.0, 0.5, 1.0]))
    >>> m(torch.tensor([0.1, 0.4, 0.8, 1.0]))
    tensor([0.0000, 0.2500, 0.7500, 1.0000])
    """

    requested: Tensor
    knob: Tensor
    achieved: Tensor

    def __init__(self, requested: Tensor, knob: Tensor, achieved: Tensor | None = None):
        super().__init__()
        requested = torch.as_tensor(requested, dtype=torch.float32).detach().clone()
        knob = torch.as_tensor(knob, dtype=torch.float32).detach().clone()
        achieved = (requested.clone() if achieved is None
                    else torch.as_tensor(achieved, dtype=torch.float32).detach().clone())
        if requested.ndim != 1 or requested.shape[0] < 2 or knob.shape != requested.shape \
                or achieved.shape != requested.shape:
            raise GatekitError(
                f"BudgetMap expects requested, knob and achieved as 1-d tensors of one length "
                f">= 2, got shapes {tuple(requested.shape)}, {tuple(knob.shape)} and "
                f"{tuple(achieved.shape)}")
        if not bool(torch.isfinite(requested).all() & torch.isfinite(knob).all()):
            raise GatekitError("BudgetMap expects finite requested budgets and knob values")
        if not bool((requested[1:] > requested[:-1]).all()):
            raise GatekitError(
                f"BudgetMap expects strictly increasing requested budgets, got "
                f"{requested.tolist()}")
        if not bool((knob[1:] >= knob[:-1]).all()):
            raise GatekitError(
                f"BudgetMap expects knob values that never decrease (a larger budget never "
                f"asks the head for less), got {knob.tolist()}")
        self.register_buffer("requested", requested)
        self.register_buffer("knob", knob)
        self.register_buffer("achieved", achieved)

    def forward(self, budget: Tensor) -> Tensor:
        r, k = self.requested.to(budget.dtype), self.knob.to(budget.dtype)
        hi = torch.searchsorted(r, budget.contiguous()).clamp(1, r.shape[0] - 1)
        r0, r1, k0, k1 = r[hi - 1], r[hi], k[hi - 1], k[hi]
        t = ((budget - r0) / (r1 - r0)).clamp(0.0, 1.0)
        return k0 + t * (k1 - k0)

    def extra_repr(self) -> str:
        return (f"knots={self.requested.shape[0]}, requested {self.requested[0].item():.3g} to "
                f"{self.requested[-1].item():.3g}")


class GaterHead(nn.Module):
    """GaterNet's decoder D: ``Linear(D, b) -> [BatchNorm1d] -> ReLU -> Linear(b, num_gates)``.

    Initialised as the released code: linear biases 0 (weights keep PyTorch's default),
    BatchNorm weight 1 and bias 0.  The paper's text has a BatchNorm before the ReLU, the
    released code has none: ``batchnorm=False`` by default.  ``init_bias`` fills the last
    layer's bias; a positive value (e.g. 3) starts training with most gates open.

    ``budget_input=True`` makes the head read a per-sample compute budget ``b`` in (0, 1]
    as well (one trained model for any budget).  The budget enters as the feature
    ``u = 2b - 1``, three times::

        logits = fc2(ReLU(BN(fc1(f)) + budget_embed(u))) + budget_gate(u) + budget_scale * u

    - ``budget_scale * u``, one learned scalar: a shift of every logit, a threshold that
      closes the gates the head ranks lowest for this image first as the budget falls.
      Every gate's gradient adds into this one number, so it learns within tens of steps;
    - ``budget_gate(u)``, one slope per gate (a linear map without bias: the per-gate term
      gives gate ``j`` the shift ``budget_gate.weight[j, 0] * u``), so that each gate can move
      its own threshold.
      Alone it does not suffice: a gate's share of the budget loss's gradient is its share of
      the cost (about 1/num_gates), and a 336-gate ResNet-20 head trained with SGD at
      lr 0.1 kept the same open fraction at budgets 0.3 and 1.0 after 300 steps;
    - ``budget_embed(u)`` added to the bottleneck, so that the image and the budget interact.

    All three start at zero: at initialisation the head computes what the head without a
    budget computes.  The trunk runs once; only the head sees the budget.

    ``budget_map`` (None until :func:`gatekit.calibrate_budget` installs one) is a
    :class:`BudgetMap`: when set, ``forward`` maps each requested budget
    to the head input that kept that FLOPs fraction on calibration images, and feeds that
    to the three terms above; :meth:`logits` takes the head input itself.

    >>> import torch
    >>> head = GaterHead(64, 336, bottleneck=8)
    >>> head(torch.randn(2, 64)).shape
    torch.Size([2, 336])
    >>> budgeted = GaterHead(64, 336, budget_input=True)
    >>> budgeted(torch.randn(2, 64), torch.tensor([0.3, 0.9])).shape
    torch.Size([2, 336])
    """

    def __init__(
        self,
        in_features: int,
        num_gates: int,
        bottleneck: int = 8,
        *,
        batchnorm: bool = False,
        init_bias: float = 0.0,
        budget_input: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        for what, value in (("in_features", in_features), ("num_gates", num_gates), ("bottleneck", bottleneck)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise GatekitError(f"{what} must be an int >= 1, got {value!r}")
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(in_features, bottleneck, **kw)
        self.bn = nn.BatchNorm1d(bottleneck, **kw) if batchnorm else nn.Identity()
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(bottleneck, num_gates, **kw)
        self.budget_input = bool(budget_input)
        if self.budget_input:
            self.budget_embed = nn.Linear(1, bottleneck, **kw)
            self.budget_gate = nn.Linear(1, num_gates, bias=False, **kw)
            self.budget_scale = nn.Parameter(torch.zeros((), **kw))
        self.budget_map: BudgetMap | None = None
        with torch.no_grad():
            self.fc1.bias.zero_()
            self.fc2.bias.fill_(float(init_bias))
            if self.budget_input:
                for p in (self.budget_embed.weight, self.budget_embed.bias, self.budget_gate.weight):
                    p.zero_()

    def forward(self, features: Tensor, budget: Tensor | None = None) -> Tensor:
        hidden = self.bn(self.fc1(features))
        if not self.budget_input:
            if budget is not None:
                raise GatekitError("this GaterHead takes no budget (built with budget_input=False)")
            return self.fc2(self.relu(hidden))
        if budget is None:
            raise GatekitError("this GaterHead needs a budget (N,) (built with budget_input=True)")
        if self.budget_map is not None:
            budget = self.budget_map(budget)
        return self._budget_logits(hidden, budget)

    def logits(self, features: Tensor, knob: Tensor) -> Tensor:
        """The logits at head input ``knob`` ``(N,)``, bypassing ``budget_map`` (what
        :func:`gatekit.calibrate_budget` searches over)."""
        if not self.budget_input:
            raise GatekitError("this GaterHead takes no budget (built with budget_input=False)")
        return self._budget_logits(self.bn(self.fc1(features)), knob)

    def _budget_logits(self, hidden: Tensor, knob: Tensor) -> Tensor:
        u = (2.0 * knob.to(hidden.dtype) - 1.0).unsqueeze(1)
        return (self.fc2(self.relu(hidden + self.budget_embed(u))) + self.budget_gate(u)
                + self.budget_scale * u)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # A calibrated model's state holds its BudgetMap: make one of that size to load into.
        key = f"{prefix}budget_map.requested"
        if self.budget_input and self.budget_map is None and key in state_dict:
            n = state_dict[key].shape
            device = self.fc2.weight.device
            self.budget_map = BudgetMap(torch.linspace(0, 1, n[0]), torch.zeros(n)).to(device)
            self.budget_map.train(self.training)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return "budget_input=True" if self.budget_input else ""


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


def _site_counts(sites: Sequence[GateSite], limit: int = 4) -> str:
    shown = ", ".join(f"{s.name}: {s.num_gates}" for s in sites[:limit])
    more = f", ... ({len(sites)} sites)" if len(sites) > limit else ""
    return shown + more


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
    :class:`GaterHead`); ``last_budget`` holds it as an ``(N,)`` tensor, for
    :func:`gatekit.flops_budget_loss`.  Without a budget it raises :class:`GatekitError`, as
    a model without a budget input does when given one; ``gates=`` overrides both.

    Input checks, on entry, before the gater runs: when one conv of the backbone reads the
    input directly, an input whose rank or channel count that conv cannot read raises
    :class:`GatekitError` (also a :class:`RuntimeError`, the class of the conv error it
    replaces).  Gates given as ``gates=g`` are checked for shape, dtype, device and, in eager
    mode, for NaN and inf (one ``isfinite`` over ``g``; skipped inside ``torch.compile``,
    as the logits check is): the error names the first bad site and sample.

    Attributes: ``backbone`` (an fx GraphModule called as ``backbone(x, gates=g)``),
    ``gater``, ``head`` (:class:`GaterHead`), ``estimator`` (:class:`gatekit.Gate`),
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
        self.input_spec = input_spec(backbone)

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
    def budget_input(self) -> bool:
        """Whether the gater's head reads a per-sample budget (``forward(x, budget=b)``)."""
        return bool(getattr(self.head, "budget_input", False))

    def gate_logits(self, x: Any, budget: float | Tensor | None = None) -> Tensor:
        """The gater's real-valued gate logits ``(N, num_gates)`` for input ``x``.

        >>> import torch, gatekit
        >>> from gatekit.models import resnet20, resnet20_gater
        >>> net = gatekit.gate_model(resnet20(), resnet20_gater())
        >>> net.gate_logits(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 336])
        """
        return self._logits(x, self._budget(x, budget))

    def _logits(self, x: Any, budget: Tensor | None) -> Tensor:
        features = self.gater(x)
        batch = x.shape[0] if isinstance(x, Tensor) and x.ndim > 0 else None
        if not isinstance(features, Tensor) or features.ndim != 2 or features.shape[1] != self.in_features:
            got = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise GatekitError(
                f"the gater must return features of shape (N, {self.in_features}), got {got}; "
                f"its head maps them to {self.num_gates} gate logits ({_site_counts(self.sites)}). "
                f"Fix: make the gater end in a (N, D) feature vector (pool and flatten, no "
                f"classifier) and pass gater_features=D to gate_model if D changed"
            )
        if batch is not None and features.shape[0] != batch:
            raise GatekitError(
                f"the gater returned {features.shape[0]} feature rows for a batch of {batch} "
                f"inputs; expected one row per sample; check the gater's reshapes"
            )
        logits = self.head(features) if budget is None else self.head(features, budget)
        if self.check_finite and not torch.compiler.is_compiling():
            bad = ~torch.isfinite(logits)
            if bool(bad.any()):
                raise GatekitError(
                    f"the gate logits contain {int(bad.sum())} non-finite values (NaN or inf) "
                    f"out of {logits.numel()}; expected finite logits. Fix: look for a diverging "
                    f"gater (lower the learning rate, clip gradients, check the input), or "
                    f"pass check_finite=False to let them through"
                )
        return logits

    def forward(self, x: Any, gates: Tensor | None = None, *, budget: float | Tensor | None = None) -> Any:
        self._check_input(x)
        if gates is None:
            b = self._budget(x, budget)
            logits = self._logits(x, b)
            gates = self.estimator(logits)
        else:
            self._check_gates(x, gates)  # given gates override the gater, and the budget
            b = self._budget(x, budget) if budget is not None else None
            logits = None
        self.last_logits = logits
        self.last_gates = gates
        self.last_budget = b
        return self.backbone(x, gates=gates)

    def _budget(self, x: Any, budget: float | Tensor | None) -> Tensor | None:
        """The per-sample budgets ``(N,)`` (float32, on ``x``'s device), or None without a
        budget input; checked: present exactly when the head reads it, in (0, 1]."""
        if not self.budget_input:
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
        n = x.shape[0] if isinstance(x, Tensor) and x.ndim > 0 else None
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

    def _check_input(self, x: Any) -> None:
        spec = self.input_spec
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

    def _check_gates(self, x: Any, gates: Any) -> None:
        expected = f"(N, {self.num_gates}) ({_site_counts(self.sites)})"
        if not isinstance(gates, Tensor):
            raise GatekitError(f"gates must be a tensor of shape {expected}, got {type(gates).__name__}")
        if gates.ndim != 2 or gates.shape[1] != self.num_gates:
            raise GatekitError(
                f"gates must have shape {expected}, got {tuple(gates.shape)}; "
                f"model.sites lists each site's offset and size"
            )
        if isinstance(x, Tensor) and x.ndim > 0 and gates.shape[0] != x.shape[0]:
            raise GatekitError(
                f"gates has {gates.shape[0]} rows for a batch of {x.shape[0]} inputs; "
                f"expected one row of gates per sample"
            )
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
        if not torch.compiler.is_compiling():
            finite = torch.isfinite(gates)
            if not bool(finite.all()):
                sample, column = (int(i) for i in (~finite).nonzero()[0])
                site = next(s for s in self.sites if s.offset <= column < s.stop)
                value = gates[sample, column].item()
                raise GatekitError(
                    f"gates must be finite, got {value} for sample {sample}, gate {column} "
                    f"(site {site.name}, its gate {column - site.offset}) and "
                    f"{int((~finite).sum())} non-finite values in all; pass gates in [0, 1], "
                    f"e.g. (logits > 0).float()"
                )

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
