"""Gate statistics over an evaluation pass: what the GaterNet paper reports.

:class:`GateStats` accumulates binary gate decisions batch by batch (from
``model.last_gates`` after each forward, or any ``(N, num_gates)`` tensor) and reports:
gates per layer, the per-sample open count (min, mean, max), how many gates are always on,
always off and input-dependent, the per-layer open fraction, the per-class open fraction of
every gate and the number of distinct gate patterns.  Layers come from the model's gate
sites (:attr:`GaterNet.sites`: anything with ``name``, ``offset`` and ``num_gates``).

Plots of these numbers live in :mod:`gatekit.plots`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ._errors import GatekitError

__all__ = ["OPEN_THRESHOLD", "GateStats", "LayerStats"]

#: A gate counts as open when its value is above this: the default ``open_threshold`` of
#: :class:`GateStats`, for binary gates (eval mode) and soft ones alike.
OPEN_THRESHOLD = 0.5


class _Site(Protocol):
    name: str
    offset: int
    num_gates: int


@dataclass(frozen=True)
class LayerStats:
    """Statistics of one gated layer (one gate site).

    ``open_fraction`` is the fraction of (sample, gate) pairs that were open;
    ``always_on``, ``always_off`` and ``input_dependent`` count this layer's gates.
    :meth:`GateStats.layers` returns one per site.

    >>> import torch
    >>> s = GateStats()
    >>> s.update(torch.tensor([[1., 0.], [1., 1.]]))
    >>> s.layers()[0]
    LayerStats(name='all', offset=0, num_gates=2, open_fraction=0.75, always_on=1, always_off=0, input_dependent=1)
    """

    name: str
    offset: int
    num_gates: int
    open_fraction: float
    always_on: int
    always_off: int
    input_dependent: int


class GateStats:
    """Accumulate binary gate decisions over an evaluation pass and summarise them.

    Args:
        sites: the gate sites (``model.sites`` of a :class:`GaterNet`), used for per-layer
            numbers; ``None`` treats the whole gate vector as one layer.
        num_gates: length of the gate vector; taken from ``sites`` when omitted, else from
            the first batch.
        num_classes: number of classes for the per-class open fractions; grown to fit the
            labels seen when omitted.
        open_threshold: a gate counts as open when its value is above this
            (:data:`OPEN_THRESHOLD` by default).
        always_on: a gate is *always on* when its open fraction is at least this.
        always_off: a gate is *always off* when its open fraction is at most this.
        track_patterns: count distinct gate patterns (costs one packed row per pattern).

    The defaults reproduce the paper's definitions: always on means open for every sample,
    always off means open for none, everything else is input-dependent.  GaterNet's own
    count of input-dependent gates uses 1% and 99%: ``GateStats(always_off=0.01,
    always_on=0.99)``, or :meth:`with_thresholds` on filled statistics.

    Names: the arguments ``always_on`` and ``always_off`` are thresholds (kept as
    ``always_on_threshold`` and ``always_off_threshold``); ``always_on_mask``,
    ``always_off_mask`` and ``input_dependent_mask`` are boolean ``(num_gates,)`` tensors;
    ``always_on_count``, ``always_off_count`` and ``input_dependent_count`` are ints, and so
    are the same-named fields of :class:`LayerStats` and keys of :meth:`summary`.

    >>> import torch
    >>> stats = GateStats(num_classes=2)
    >>> stats.update(torch.tensor([[1., 0., 1.], [1., 0., 0.]]), labels=torch.tensor([0, 1]))
    >>> stats.always_on_count, stats.always_off_count, stats.input_dependent_count
    (1, 1, 1)
    >>> stats.per_sample_open.tolist()
    [2, 1]
    """

    def __init__(
        self,
        sites: Sequence[_Site] | None = None,
        *,
        num_gates: int | None = None,
        num_classes: int | None = None,
        open_threshold: float = OPEN_THRESHOLD,
        always_on: float = 1.0,
        always_off: float = 0.0,
        track_patterns: bool = True,
    ) -> None:
        self.always_on_threshold, self.always_off_threshold = _thresholds(
            always_on, always_off, "GateStats"
        )
        self.sites: tuple[Any, ...] | None = tuple(sites) if sites is not None else None
        if self.sites is not None:
            site_total = sum(int(s.num_gates) for s in self.sites)
            if num_gates is not None and num_gates != site_total:
                raise GatekitError(
                    f"GateStats got num_gates={num_gates} but the sites hold {site_total} "
                    "gates; omit num_gates or pass the model's sites"
                )
            num_gates = site_total
        self.num_gates = num_gates
        self.num_classes = num_classes
        self.open_threshold = float(open_threshold)
        self.track_patterns = track_patterns
        self.num_samples = 0
        self._open_counts: Tensor | None = None  # (G,) int64
        self._class_open: Tensor | None = None  # (C, G) int64
        self._class_counts: Tensor | None = None  # (C,) int64
        self._per_sample: list[Tensor] = []
        self._patterns: set[bytes] = set()

    def with_thresholds(self, *, always_on: float, always_off: float) -> GateStats:
        """A copy of these counts that classifies gates at other thresholds.

        GaterNet counts a gate as input-dependent when its open fraction lies strictly
        between 1% and 99%: ``stats.with_thresholds(always_on=0.99, always_off=0.01)``.

        >>> import torch
        >>> s = GateStats(); s.update(torch.tensor([[1., 0.]] * 99 + [[1., 1.]]))
        >>> s.input_dependent_count, s.with_thresholds(always_on=0.99, always_off=0.01).input_dependent_count
        (1, 0)
        """
        thresholds = _thresholds(always_on, always_off, "with_thresholds")
        # Every field is copied, whatever fields there are, so that updating the copy leaves
        # these counts alone; the sites describe the model and are shared.
        other = copy.deepcopy(self, {id(self.sites): self.sites})
        other.always_on_threshold, other.always_off_threshold = thresholds
        return other

    # ----------------------------------------------------------------------------------
    # accumulation
    # ----------------------------------------------------------------------------------

    @classmethod
    def for_model(cls, model: Any, **kwargs: Any) -> GateStats:
        """Statistics sized for a :class:`GaterNet` (or a DDP / compiled wrapper of one).

        >>> import torch
        >>> from types import SimpleNamespace
        >>> site = SimpleNamespace(name="conv", offset=0, num_gates=2)
        >>> GateStats.for_model(SimpleNamespace(sites=(site,))).num_gates
        2
        """
        inner = _unwrap(model)
        sites = getattr(inner, "sites", None)
        if sites is None:
            raise GatekitError(
                f"GateStats.for_model expects a GaterNet (with .sites), got {type(model).__name__}"
            )
        return cls(sites, **kwargs)

    def update(self, gates: Tensor, labels: Tensor | None = None) -> None:
        """Add a batch of gates ``(N, num_gates)`` and optionally their class labels ``(N,)``.

        >>> import torch
        >>> s = GateStats()
        >>> s.update(torch.ones(4, 3)); s.num_samples
        4
        """
        if not isinstance(gates, Tensor) or gates.ndim != 2:
            got = tuple(gates.shape) if isinstance(gates, Tensor) else type(gates).__name__
            raise GatekitError(
                f"GateStats.update expects gates of shape (N, num_gates), got {got}"
            )
        if self.num_gates is None:
            self.num_gates = gates.shape[1]
        if gates.shape[1] != self.num_gates:
            raise GatekitError(
                f"GateStats.update got {gates.shape[1]} gates per sample, expected "
                f"{self.num_gates} (the sites' total); pass the same model's gates"
            )
        opened = (gates.detach() > self.open_threshold).cpu()
        n = opened.shape[0]
        counts = opened.sum(0, dtype=torch.int64)
        self._open_counts = counts if self._open_counts is None else self._open_counts + counts
        self._per_sample.append(opened.sum(1, dtype=torch.int64))
        if labels is not None:
            self._update_classes(opened, labels)
        if self.track_patterns and n:
            for row in torch.unique(_pack_bits(opened), dim=0):
                self._patterns.add(bytes(row.tolist()))
        self.num_samples += n

    def update_from_model(self, model: Any, labels: Tensor | None = None) -> None:
        """Add ``model.last_gates`` (the gates of the model's last forward pass).

        >>> import torch
        >>> from types import SimpleNamespace
        >>> model = SimpleNamespace(sites=None, last_gates=torch.tensor([[0., 1.]]))
        >>> s = GateStats(); s.update_from_model(model); s.always_on_mask.tolist()
        [False, True]
        """
        gates = getattr(_unwrap(model), "last_gates", None)
        if gates is None:
            raise GatekitError(
                "update_from_model found no .last_gates on the model; run a forward pass "
                "of a GaterNet first"
            )
        self.update(gates, labels)

    def _update_classes(self, opened: Tensor, labels: Tensor) -> None:
        labels = labels.detach().cpu().long().reshape(-1)
        if labels.numel() != opened.shape[0]:
            raise GatekitError(
                f"GateStats.update got {labels.numel()} labels for {opened.shape[0]} samples"
            )
        if labels.numel() == 0:
            return
        if labels.min() < 0:
            raise GatekitError(f"GateStats.update expects labels >= 0, got {labels.min().item()}")
        needed = int(labels.max()) + 1
        if self.num_classes is not None and needed > self.num_classes:
            raise GatekitError(
                f"GateStats.update got label {needed - 1} but num_classes={self.num_classes}"
            )
        self._grow_classes(self.num_classes or needed)
        assert self._class_open is not None and self._class_counts is not None
        self._class_open.index_add_(0, labels, opened.long())
        self._class_counts.index_add_(0, labels, torch.ones_like(labels))

    def merge(self, other: GateStats) -> None:
        """Add another accumulator's counts (e.g. from another rank) into this one.

        >>> import torch
        >>> a, b = GateStats(), GateStats()
        >>> a.update(torch.tensor([[1., 0.]])); b.update(torch.tensor([[1., 1.]]))
        >>> a.merge(b); a.open_fraction.tolist()
        [1.0, 0.5]
        """
        if other.num_samples == 0:
            return
        if self.num_samples == 0 and self.num_gates is None:
            self.num_gates = other.num_gates
        if other.num_gates != self.num_gates:
            raise GatekitError(
                f"GateStats.merge: {other.num_gates} gates cannot merge into {self.num_gates}"
            )
        assert other._open_counts is not None
        self._open_counts = (
            other._open_counts.clone() if self._open_counts is None
            else self._open_counts + other._open_counts
        )
        self._per_sample.extend(other._per_sample)
        self._patterns |= other._patterns
        if other._class_open is not None:
            assert other._class_counts is not None
            size = other._class_counts.numel()
            self._grow_classes(size)
            assert self._class_open is not None and self._class_counts is not None
            self._class_open[:size] += other._class_open
            self._class_counts[:size] += other._class_counts
        self.num_samples += other.num_samples

    def _grow_classes(self, size: int) -> None:
        assert self.num_gates is not None
        if self._class_open is None:
            self._class_open = torch.zeros(size, self.num_gates, dtype=torch.int64)
            self._class_counts = torch.zeros(size, dtype=torch.int64)
        elif self._class_open.shape[0] < size:
            assert self._class_counts is not None
            grow = size - self._class_open.shape[0]
            self._class_open = torch.cat([self._class_open, self._class_open.new_zeros(grow, self.num_gates)])
            self._class_counts = torch.cat([self._class_counts, self._class_counts.new_zeros(grow)])

    # ----------------------------------------------------------------------------------
    # results
    # ----------------------------------------------------------------------------------

    def _require_data(self) -> None:
        if self.num_samples == 0:
            raise GatekitError("GateStats has seen no samples yet; call update() first")

    @property
    def open_fraction(self) -> Tensor:
        """Per-gate fraction of samples for which the gate was open, shape ``(num_gates,)``."""
        self._require_data()
        assert self._open_counts is not None
        return self._open_counts.double() / self.num_samples

    @property
    def per_sample_open(self) -> Tensor:
        """Number of open gates of every sample seen, in order, shape ``(num_samples,)``."""
        self._require_data()
        return torch.cat(self._per_sample)

    @property
    def has_labels(self) -> bool:
        """True when labels were passed to :meth:`update` (per-class numbers exist)."""
        return self._class_open is not None

    @property
    def always_on_mask(self) -> Tensor:
        """Boolean mask of gates open for at least ``always_on`` of the samples."""
        return self.open_fraction >= self.always_on_threshold

    @property
    def always_off_mask(self) -> Tensor:
        """Boolean mask of gates open for at most ``always_off`` of the samples."""
        return self.open_fraction <= self.always_off_threshold

    @property
    def input_dependent_mask(self) -> Tensor:
        """Boolean mask of gates that are neither always on nor always off."""
        return ~(self.always_on_mask | self.always_off_mask)

    @property
    def always_on_count(self) -> int:
        return int(self.always_on_mask.sum())

    @property
    def always_off_count(self) -> int:
        return int(self.always_off_mask.sum())

    @property
    def input_dependent_count(self) -> int:
        return int(self.input_dependent_mask.sum())

    @property
    def num_patterns(self) -> int:
        """Number of distinct binary gate vectors seen (needs ``track_patterns=True``)."""
        if not self.track_patterns:
            raise GatekitError("GateStats was built with track_patterns=False")
        return len(self._patterns)

    @property
    def class_counts(self) -> Tensor:
        """Number of samples seen per class, shape ``(num_classes,)``."""
        if self._class_counts is None:
            raise GatekitError("GateStats has no labels; pass labels to update()")
        return self._class_counts.clone()

    @property
    def class_open_fraction(self) -> Tensor:
        """Per-class open fraction of every gate, shape ``(num_classes, num_gates)``.

        Classes without samples are NaN.
        """
        if self._class_open is None or self._class_counts is None:
            raise GatekitError("GateStats has no labels; pass labels to update()")
        return self._class_open.double() / self._class_counts.double().unsqueeze(1)

    def layers(self) -> list[LayerStats]:
        """Per-layer numbers, one entry per gate site in order.

        >>> import torch
        >>> from types import SimpleNamespace as Site
        >>> s = GateStats([Site(name="a", offset=0, num_gates=1), Site(name="b", offset=1, num_gates=2)])
        >>> s.update(torch.tensor([[1., 0., 1.]]))
        >>> [(layer.name, layer.open_fraction) for layer in s.layers()]
        [('a', 1.0), ('b', 0.5)]
        """
        frac = self.open_fraction
        on, off = self.always_on_mask, self.always_off_mask
        sites = self.sites or (_WholeVector(self.num_gates or 0),)
        out = []
        for s in sites:
            sl = slice(int(s.offset), int(s.offset) + int(s.num_gates))
            n_on, n_off = int(on[sl].sum()), int(off[sl].sum())
            out.append(LayerStats(
                name=str(s.name), offset=int(s.offset), num_gates=int(s.num_gates),
                open_fraction=float(frac[sl].mean()) if s.num_gates else math.nan,
                always_on=n_on, always_off=n_off,
                input_dependent=int(s.num_gates) - n_on - n_off,
            ))
        return out

    def summary(self) -> dict[str, Any]:
        """All headline numbers as a JSON-serialisable dict.

        >>> import torch
        >>> s = GateStats(); s.update(torch.tensor([[1., 1.], [0., 1.]]))
        >>> s.summary()["per_sample_open"]
        {'min': 1, 'mean': 1.5, 'max': 2}
        """
        per = self.per_sample_open
        out: dict[str, Any] = {
            "num_samples": self.num_samples,
            "num_gates": self.num_gates,
            "open_fraction": float(self.open_fraction.mean()),
            "per_sample_open": {
                "min": int(per.min()), "mean": float(per.double().mean()), "max": int(per.max()),
            },
            "always_on": self.always_on_count,
            "always_off": self.always_off_count,
            "input_dependent": self.input_dependent_count,
            "thresholds": {
                "open": self.open_threshold, "always_on": self.always_on_threshold,
                "always_off": self.always_off_threshold,
            },
            "layers": [vars(layer) for layer in self.layers()],
        }
        if self.track_patterns:
            out["distinct_patterns"] = self.num_patterns
        if self._class_open is not None:
            out["class_open_fraction"] = [
                [round(v, 6) for v in row] for row in self.class_open_fraction.tolist()
            ]
        return out

    def table(self) -> str:
        """The summary as a plain-text table: one row per layer, then the totals.

        >>> import torch
        >>> s = GateStats(); s.update(torch.tensor([[1., 0.]]))
        >>> print(s.table().splitlines()[0])
        layer  gates  open  always on  always off  input-dep.
        """
        rows = [("layer", "gates", "open", "always on", "always off", "input-dep.")]
        for layer in self.layers():
            rows.append((layer.name, str(layer.num_gates), f"{layer.open_fraction:.2f}",
                         str(layer.always_on), str(layer.always_off), str(layer.input_dependent)))
        rows.append(("total", str(self.num_gates), f"{float(self.open_fraction.mean()):.2f}",
                     str(self.always_on_count), str(self.always_off_count),
                     str(self.input_dependent_count)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
        lines.insert(len(lines) - 1, "-" * len(lines[0]))
        per = self.per_sample_open
        lines.append(
            f"samples: {self.num_samples}; open gates per sample: min {int(per.min())}, "
            f"mean {float(per.double().mean()):.1f}, max {int(per.max())} of {self.num_gates}"
        )
        if self.track_patterns:
            lines.append(f"distinct gate patterns: {self.num_patterns}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"GateStats(num_gates={self.num_gates}, num_samples={self.num_samples}, "
                f"num_classes={self.num_classes})")


def _thresholds(always_on: float, always_off: float, who: str) -> tuple[float, float]:
    """``(always_on, always_off)`` as floats, checked: ``0 <= always_off < always_on <= 1``."""
    if not 0.0 <= always_off < always_on <= 1.0:
        raise GatekitError(
            f"{who} expects 0 <= always_off < always_on <= 1, got always_off={always_off}, "
            f"always_on={always_on}; e.g. always_off=0.01, always_on=0.99 (GaterNet's count "
            f"of input-dependent gates)"
        )
    return float(always_on), float(always_off)


@dataclass(frozen=True)
class _WholeVector:
    num_gates: int
    name: str = "all"
    offset: int = 0


def _unwrap(model: Any) -> Any:
    # DDP keeps the model in .module, torch.compile in ._orig_mod.
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr) and not hasattr(model, "sites"):
            model = getattr(model, attr)
    return model


def _pack_bits(opened: Tensor) -> Tensor:
    """Pack a boolean ``(N, G)`` matrix into ``(N, ceil(G / 8))`` uint8, row by row."""
    n, g = opened.shape
    pad = (-g) % 8
    bits = torch.cat([opened, opened.new_zeros(n, pad)], 1).view(n, -1, 8).to(torch.uint8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
    return (bits * weights).sum(-1, dtype=torch.uint8)
