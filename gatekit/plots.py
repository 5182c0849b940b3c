"""Plots of :class:`gatekit.GateStats`: what the gates learnt, as pictures.

Each function takes a :class:`~gatekit.GateStats` filled over an evaluation pass, returns a
matplotlib ``Figure`` and, given ``path``, saves it there.  matplotlib is imported only
here, inside the functions (``pip install gatekit[examples]``); a bare ``Figure`` with no
pyplot state is used, so plotting works headless.

- :func:`plot_layer_open_fraction`: open fraction of every gated layer;
- :func:`plot_open_histogram`: open gates per sample;
- :func:`plot_class_heatmap`: per-class open fraction of every gate (class x gate);
- :func:`plot_class_gates`: the same for the input-dependent gates only, grouped by layer
  and, within a layer, sorted by how much they vary between classes: the gates that follow
  the class come first;
- :func:`save_plots`: all of them as PNG files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ._errors import GatekitError
from .stats import GateStats

__all__ = [
    "class_gate_order",
    "plot_class_gates",
    "plot_class_heatmap",
    "plot_layer_open_fraction",
    "plot_open_histogram",
    "save_plots",
]


def plot_layer_open_fraction(stats: GateStats, path: str | Path | None = None) -> Any:
    """Bar chart of the open fraction of every gated layer.

    >>> import torch, gatekit
    >>> s = gatekit.GateStats(); s.update(torch.tensor([[1., 0.], [1., 1.]]))
    >>> type(plot_layer_open_fraction(s)).__name__
    'Figure'
    """
    layers = stats.layers()
    fig = _figure((max(6.0, 0.25 * len(layers) + 2), 3.5))
    ax = fig.add_subplot()
    ax.bar(range(len(layers)), [layer.open_fraction for layer in layers], color="tab:blue")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([layer.name for layer in layers], rotation=90, fontsize=6)
    ax.set_ylim(0, 1)
    ax.set_ylabel("open fraction")
    ax.set_title(f"open fraction per gated layer ({stats.num_samples} samples)")
    return _finish(fig, path)


def plot_open_histogram(stats: GateStats, path: str | Path | None = None) -> Any:
    """Histogram of the number of open gates per sample.

    >>> import torch, gatekit
    >>> s = gatekit.GateStats(); s.update(torch.tensor([[1., 0.], [1., 1.]]))
    >>> type(plot_open_histogram(s)).__name__
    'Figure'
    """
    per = stats.per_sample_open
    fig = _figure((6.0, 3.5))
    ax = fig.add_subplot()
    lo, hi = int(per.min()), int(per.max())
    ax.hist(per.numpy(), bins=min(50, hi - lo + 1), color="tab:green")
    ax.set_xlabel(f"open gates per sample (of {stats.num_gates})")
    ax.set_ylabel("samples")
    ax.set_title("open gates per sample")
    return _finish(fig, path)


def plot_class_heatmap(stats: GateStats, path: str | Path | None = None,
                       class_names: Sequence[str] | None = None) -> Any:
    """Class x gate heat map of the per-class open fraction of every gate, in gate order.

    >>> import torch, gatekit
    >>> s = gatekit.GateStats(); s.update(torch.tensor([[1., 0.], [1., 1.]]), torch.tensor([0, 1]))
    >>> type(plot_class_heatmap(s, class_names=["cat", "dog"])).__name__
    'Figure'
    """
    frac = stats.class_open_fraction
    fig = _figure((10.0, 0.3 * frac.shape[0] + 2))
    ax = fig.add_subplot()
    im = ax.imshow(frac.numpy(), aspect="auto", interpolation="nearest", vmin=0, vmax=1,
                   cmap="viridis")
    _class_ticks(ax, frac.shape[0], class_names)
    layers = stats.layers()
    for layer in layers[1:]:
        ax.axvline(layer.offset - 0.5, color="red", linewidth=_SEPARATOR)
    ax.set_xticks([layer.offset + (layer.num_gates - 1) / 2 for layer in layers])
    ax.set_xticklabels([layer.name for layer in layers], rotation=90, fontsize=6)
    ax.set_xlabel("gate, by layer (layers separated by red lines)")
    ax.set_title("per-class open fraction of each gate")
    fig.colorbar(im, ax=ax)
    return _finish(fig, path)


def class_gate_order(stats: GateStats) -> tuple[torch.Tensor, list[tuple[str, int, int]]]:
    """The input-dependent gates, grouped by layer, by decreasing variance across classes.

    Returns ``(gate_indices, spans)``: ``spans`` holds ``(layer name, start, stop)`` of each
    layer's columns in ``gate_indices`` (layers without input-dependent gates are left out).
    Input-dependent is as ``stats`` counts it (its ``always_on``/``always_off`` thresholds).

    >>> import torch, gatekit
    >>> s = gatekit.GateStats()
    >>> s.update(torch.tensor([[1., 1., 0.], [1., 0., 1.], [1., 0., 0.]]), torch.tensor([0, 1, 1]))
    >>> idx, spans = class_gate_order(s)
    >>> idx.tolist(), spans
    ([1, 2], [('all', 0, 2)])
    """
    frac = stats.class_open_fraction.nan_to_num(0.0)
    variance = frac.var(0, unbiased=False) if frac.shape[0] > 1 else torch.zeros(frac.shape[1])
    dependent = stats.input_dependent_mask
    order: list[int] = []
    spans: list[tuple[str, int, int]] = []
    for layer in stats.layers():
        idx = torch.arange(layer.offset, layer.offset + layer.num_gates)
        idx = idx[dependent[idx]]
        if idx.numel() == 0:
            continue
        # Stable sort: ties keep gate order, so the picture does not depend on sort details.
        idx = idx[torch.sort(variance[idx], descending=True, stable=True).indices]
        spans.append((layer.name, len(order), len(order) + idx.numel()))
        order.extend(idx.tolist())
    return torch.tensor(order, dtype=torch.long), spans


def plot_class_gates(stats: GateStats, path: str | Path | None = None,
                     class_names: Sequence[str] | None = None) -> Any:
    """Class x gate heat map of the input-dependent gates only, the ones that follow the class
    first.

    Columns are grouped by layer (in the order the layers run, each marked with its name
    and gate count) and, within a layer, sorted by the variance of the gate's open fraction
    across classes, highest first.  Always-on and always-off gates are left out, so the
    picture shows what the gater decides per image.

    >>> import torch, gatekit
    >>> s = gatekit.GateStats(); s.update(torch.tensor([[1., 0.], [1., 1.]]), torch.tensor([0, 1]))
    >>> type(plot_class_gates(s, class_names=["cat", "dog"])).__name__
    'Figure'
    """
    frac = stats.class_open_fraction
    idx, spans = class_gate_order(stats)
    fig = _figure((10.0, 0.3 * frac.shape[0] + 2.4))
    ax = fig.add_subplot()
    title = (f"input-dependent gates ({idx.numel()} of {stats.num_gates}): per-class open "
             f"fraction; by layer, then by variance across classes")
    if idx.numel() == 0:
        ax.text(0.5, 0.5, "no input-dependent gates", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
        return _finish(fig, path)
    im = ax.imshow(frac[:, idx].numpy(), aspect="auto", interpolation="nearest", vmin=0, vmax=1,
                   cmap="viridis")
    _class_ticks(ax, frac.shape[0], class_names)
    for _, start, _ in spans[1:]:
        ax.axvline(start - 0.5, color="red", linewidth=_SEPARATOR)
    ax.set_xticks([(start + stop - 1) / 2 for _, start, stop in spans])
    ax.set_xticklabels([f"{name} ({stop - start})" for name, start, stop in spans],
                       rotation=90, fontsize=6)
    ax.set_xlabel("gated layer (input-dependent gates in it)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="open fraction")
    return _finish(fig, path)


def save_plots(stats: GateStats, directory: str | Path, class_names: Sequence[str] | None = None,
               prefix: str = "gates_") -> list[Path]:
    """Write every plot that ``stats`` has data for as PNG files; returns their paths.

    The class plots need labels (``stats.update(gates, labels)``).

    >>> import tempfile, torch, gatekit
    >>> s = gatekit.GateStats(); s.update(torch.tensor([[1., 0.], [1., 1.]]))
    >>> [p.name for p in save_plots(s, tempfile.mkdtemp())]
    ['gates_layer_open_fraction.png', 'gates_open_per_sample.png']
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{prefix}layer_open_fraction.png",
             directory / f"{prefix}open_per_sample.png"]
    plot_layer_open_fraction(stats, paths[0])
    plot_open_histogram(stats, paths[1])
    if stats.has_labels:
        paths.append(directory / f"{prefix}class_heatmap.png")
        plot_class_heatmap(stats, paths[-1], class_names)
        paths.append(directory / f"{prefix}class_gates.png")
        plot_class_gates(stats, paths[-1], class_names)
    return paths


# Layer separators: red (outside viridis) and wide enough to see among 336 gate columns.
_SEPARATOR = 1.5


def _class_ticks(ax: Any, num_classes: int, class_names: Sequence[str] | None) -> None:
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise GatekitError(f"class_names has {len(names)} names for {num_classes} classes; "
                           "pass one name per class, in label order")
    ax.set_yticks(range(num_classes))
    ax.set_yticklabels(names, fontsize=7)


def _figure(size: tuple[float, float]) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise GatekitError(
            "gate statistics plots need matplotlib, which is not installed; "
            "install it with `pip install gatekit[examples]` (or `pip install matplotlib`)"
        ) from None
    return Figure(figsize=size, layout="constrained")


def _finish(fig: Any, path: str | Path | None) -> Any:
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
