"""Symbolic tracing of a backbone into one fx graph that is valid in train and eval mode.

Leaves (modules recorded as one call instead of being traced through): the modules defined
in ``torch.nn`` (as :class:`torch.fx.Tracer` does), every conv and norm layer even when
subclassed outside torch (timm's ``BatchNormAct2d``, ``Conv2dSame``, ``LayerNorm2d``),
``FrozenBatchNorm2d``, timm's registered no-trace modules and functions when timm is
already imported, and what the caller adds.

Tracing bakes the mode into the graph wherever code reads ``self.training``.  So the
backbone is traced in both modes.  Where the two graphs differ only by a bool argument that
is True in one mode and False in the other (``F.dropout(x, training=self.training)``,
torchvision's ``stochastic_depth(..., self.training)``), the graph asks a
:class:`ModeFlag` submodule (``gatekit_mode``) at run time instead, so it follows
``.train()``/``.eval()`` of the gated model.  Where they differ in the operations run (a Python ``if self.training:``),
each module whose own code differs becomes a leaf and tracing repeats, until one graph
serves both modes.  A mode-dependent module that holds convs, or a mode-dependent root
``forward``, is an error, because leafing it would silently hide convs from gating.
"""

from __future__ import annotations

import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from ._errors import GatekitError
from ._graph import ANY_CONV_TYPES, MODE_FLAG, restore_gate_marks

__all__ = ["ModeFlag", "trace"]

_MAX_RETRACES = 16
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _is_builtin_leaf(module: nn.Module) -> bool:
    if isinstance(module, (*ANY_CONV_TYPES, nn.modules.batchnorm._NormBase)):
        return True
    if (
        isinstance(module, nn.GroupNorm | nn.LayerNorm)
        or type(module).__name__ == "FrozenBatchNorm2d"
    ):
        return True
    defined_in = type(module).__module__
    in_torch_nn = defined_in.startswith("torch.nn") or defined_in.startswith("torch.ao.nn")
    return in_torch_nn and not isinstance(module, _CONTAINERS)


def _timm_notrace() -> tuple[tuple[type, ...], tuple[Callable[..., Any], ...]]:
    """timm's own fx leaves, if the user has imported timm (never imported from here)."""
    if "timm" not in sys.modules:
        return (), ()
    try:
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    except ImportError:
        return (), ()
    return tuple(get_notrace_modules()), tuple(get_notrace_functions())


class _GateTracer(fx.Tracer):
    """fx tracer with gatekit's leaves that remembers which module was being traced."""

    # Defaults: unpickling a GraphModule re-creates its tracer class with no arguments.
    def __init__(
        self,
        leaf_types: tuple[type, ...] = (),
        leaf_names: frozenset[str] = frozenset(),
        autowrap: tuple[Callable[..., Any], ...] = (),
    ):
        super().__init__(autowrap_functions=autowrap)
        self.leaf_types = leaf_types
        self.leaf_names = leaf_names
        self.stack: list[tuple[str, str]] = []
        self.failed_in: tuple[str, str] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or isinstance(m, self.leaf_types):
            return True
        return _is_builtin_leaf(m)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        self.stack.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.stack[-1]
            raise
        finally:
            self.stack.pop()

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        graph = super().trace(root, concrete_args)
        # Unpickling a gated backbone re-traces its code with this tracer: the gate marks
        # come back from the record the GraphModule carries (see gatekit._graph).
        restore_gate_marks(root, graph)
        return graph

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        # A leaf's call_module node belongs to the module whose forward made the call.
        depth = 2 if node.op == "call_module" else 1
        node.meta["gatekit_module"] = self.stack[-depth] if len(self.stack) >= depth else ("", "")
        return node


@functools.cache
def _library_dirs() -> tuple[str, ...]:
    """The installed torch and gatekit package folders, resolved (symlinks followed).
    This file lies in gatekit's own folder."""
    here = os.path.dirname(os.path.realpath(__file__))
    return os.path.realpath(os.path.dirname(torch.__file__)), here


def _in_library(filename: str) -> bool:
    """Whether ``filename`` is a file of the torch or gatekit package itself.

    Decided by the packages' real locations, never by folder names: user code in a folder
    called ``gatekit`` or ``torch`` (a clone of this repository, ``~/src/torch/...``) is the
    user's.
    """
    path = os.path.realpath(filename)
    return any(os.path.commonpath((path, d)) == d for d in _library_dirs()
               if os.path.splitdrive(path)[0] == os.path.splitdrive(d)[0])


def _user_frame(exc: BaseException) -> tuple[str, str]:
    """The innermost traceback frame outside torch and gatekit (the user's failing code):
    its function name and ``file:line``."""
    found = ("", "")
    for frame in traceback.extract_tb(exc.__traceback__):
        if _in_library(frame.filename):
            continue
        found = (frame.name, f"{os.path.basename(frame.filename)}:{frame.lineno}")
    return found


def _trace_once(root: nn.Module, tracer: _GateTracer) -> fx.Graph:
    try:
        return tracer.trace(root)
    except Exception as e:
        name, cls = tracer.failed_in or ("", type(root).__name__)
        where = f"module {name!r} ({cls})" if name else f"the forward of {cls}"
        function, line = _user_frame(e)
        first = (str(e).strip().splitlines() or [""])[0][:300]
        fixes = []
        if function and function != "forward":
            fixes.append(
                f"pass autowrap_functions=[{function}] to record that function as one call"
            )
        if name:
            fixes.append(
                f"pass leaf_modules=[{cls}] (or ['{name}']) to keep that module whole (its convs are then not gated)"
            )
        fixes.append("make the code traceable (no Python control flow on tensor values)")
        raise GatekitError(
            f"torch.fx could not trace {type(root).__name__}: it failed in {where}"
            + (f", in function {function!r} ({line})" if function else "")
            + f": {type(e).__name__}: {first}\n"
            f"expected a backbone that torch.fx can trace symbolically. Fixes: {'; '.join(fixes)}. "
            f"gatekit.get_gate_sites(backbone, ..., leaf_modules=..., autowrap_functions=...) "
            f"shows what would then be gated; an explicit site list restricts gating."
        ) from None


def _blank(arg: Any) -> Any:
    """``arg`` with nodes and bools blanked: node names shift after a divergence, and a bool
    that follows the mode is handled by :func:`_follow_mode`, not by a leaf."""
    if isinstance(arg, bool):
        return "?"
    if isinstance(arg, fx.Node):
        return "%"
    if isinstance(arg, tuple | list):
        return type(arg)(_blank(a) for a in arg)
    if isinstance(arg, dict):
        return {k: _blank(v) for k, v in arg.items()}
    return arg


def _by_module(graph: fx.Graph) -> dict[tuple[str, str], list[tuple[str, str, str, str]]]:
    """Each module's own nodes, as comparable signatures."""
    owned: dict[tuple[str, str], list[tuple[str, str, str, str]]] = {}
    for node in graph.nodes:
        key = node.meta.get("gatekit_module", ("", ""))
        sig = (node.op, str(node.target), str(_blank(node.args)), str(_blank(node.kwargs)))
        owned.setdefault(key, []).append(sig)
    return owned


def _differing_modules(a: fx.Graph, b: fx.Graph) -> list[tuple[str, str]]:
    """The modules whose own forward code traced to different operations in the two graphs."""
    owned_a, owned_b = _by_module(a), _by_module(b)
    return sorted(k for k in owned_a.keys() | owned_b.keys() if owned_a.get(k) != owned_b.get(k))


class ModeFlag(nn.Module):
    """The gated graph's view of its own train/eval mode: ``forward()`` is ``self.training``
    (``negate=True``: its negation).  A submodule rather than ``self.training`` read in the
    generated code, because unpickling a GraphModule re-traces that code and would freeze
    the attribute into a constant, while a module call survives as a module call.

    >>> flag = ModeFlag()
    >>> flag(), flag.eval()(), flag(negate=True)
    (True, False, True)
    """

    def forward(self, negate: bool = False) -> bool:
        return self.training != negate


def _follow_mode(graph_module: fx.GraphModule, eval_graph: fx.Graph) -> None:
    """Where the graphs differ only by a bool that is True in train and False in eval (or
    the reverse), as in ``F.dropout(x, training=self.training)``, ask a :class:`ModeFlag`
    submodule at run time instead, so the graph follows ``.train()`` / ``.eval()``."""
    graph = graph_module.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    cache: dict[bool, fx.Node] = {}

    def mode_node(negate: bool) -> fx.Node:
        if negate not in cache:
            if not hasattr(graph_module, MODE_FLAG):
                graph_module.add_submodule(MODE_FLAG, ModeFlag())
            with graph.inserting_after(placeholders[-1] if placeholders else None):
                cache[negate] = graph.call_module(MODE_FLAG, (), {"negate": True} if negate else {})
        return cache[negate]

    def merge(t: Any, e: Any) -> Any:
        if isinstance(t, bool) and isinstance(e, bool) and t != e:
            return mode_node(negate=not t)
        if isinstance(t, tuple | list) and isinstance(e, tuple | list):
            return type(t)(merge(x, y) for x, y in zip(t, e))
        if isinstance(t, dict) and isinstance(e, dict):
            return {k: merge(v, e[k]) for k, v in t.items()}
        return t

    # Eval-graph args with nodes swapped for their train-graph twins (same names).
    twin = {n.name: n for n in graph.nodes}
    for t, e in zip(list(graph.nodes), list(eval_graph.nodes)):
        e_args = fx.node.map_arg(e.args, lambda n: twin[n.name])
        e_kwargs = fx.node.map_arg(e.kwargs, lambda n: twin[n.name])
        if (t.args, t.kwargs) != (e_args, e_kwargs):
            t.args, t.kwargs = merge(t.args, e_args), merge(t.kwargs, e_kwargs)
    if cache:
        graph_module.recompile()


def trace(
    module: nn.Module,
    *,
    leaf_modules: Sequence[type[nn.Module] | str] = (),
    autowrap_functions: Sequence[Callable[..., Any]] = (),
) -> fx.GraphModule:
    """Trace ``module`` into a GraphModule valid in both modes; the module is left as it was.

    >>> import torch
    >>> gm = trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)))
    >>> [n.op for n in gm.graph.nodes]
    ['placeholder', 'call_module', 'call_module', 'output']
    """
    if not isinstance(module, nn.Module):
        raise GatekitError(f"expected an nn.Module backbone, got {type(module).__name__}")
    for leaf in leaf_modules:
        if not (isinstance(leaf, str) or (isinstance(leaf, type) and issubclass(leaf, nn.Module))):
            raise GatekitError(
                f"leaf_modules takes nn.Module classes or qualified module names, got {leaf!r}"
            )
    for fn in autowrap_functions:
        if not callable(fn):
            raise GatekitError(f"autowrap_functions takes functions, got {fn!r}")
    timm_types, timm_functions = _timm_notrace()
    leaf_types = tuple(t for t in leaf_modules if isinstance(t, type)) + timm_types
    leaf_names = {n for n in leaf_modules if isinstance(n, str)}
    autowrap = tuple(autowrap_functions) + timm_functions
    modes = [(m, m.training) for m in module.modules()]
    try:
        for _ in range(_MAX_RETRACES):
            tracers, graphs = {}, {}
            for training in (True, False):
                module.train(training)
                tracers[training] = _GateTracer(leaf_types, frozenset(leaf_names), autowrap)
                graphs[training] = _trace_once(module, tracers[training])
            culprits = _differing_modules(graphs[True], graphs[False])
            if not culprits:
                break
            for culprit in culprits:
                _check_leafable(module, culprit)
                leaf_names.add(culprit[0])
        else:
            raise GatekitError(
                f"could not find one fx graph of {type(module).__name__} that is valid in both "
                f"train and eval mode; pass the mode-dependent modules as leaf_modules"
            )
    finally:
        for m, training in modes:
            m.training = training
    graph_module = fx.GraphModule(
        tracers[True].root, graphs[True], class_name=type(module).__name__
    )
    _follow_mode(graph_module, graphs[False])
    # Not .train(): the leaves are the caller's modules, with their own flags.
    graph_module.training = module.training
    if hasattr(graph_module, MODE_FLAG):
        getattr(graph_module, MODE_FLAG).training = module.training
    return graph_module


def _check_leafable(root: nn.Module, culprit: tuple[str, str]) -> None:
    name, cls = culprit[0], culprit[1] or type(root).__name__
    fix = (
        "build the model so its forward does not depend on the mode (e.g. aux_logits=False "
        "for GoogLeNet/Inception), or gate a wrapper that calls it in one fixed way"
    )
    if not name:
        raise GatekitError(
            f"the forward of {cls} runs different operations in train and eval mode, so one "
            f"gated graph cannot serve both; expected a mode-independent forward; {fix}"
        )
    convs = [
        n
        for n, m in root.get_submodule(name).named_modules()
        if isinstance(m, ANY_CONV_TYPES)
    ]
    if convs:
        raise GatekitError(
            f"module {name!r} ({cls}) runs different operations in train and eval mode and "
            f"holds convs {convs[:3]}; expected mode-dependent code outside the convs to gate. "
            f"Pass leaf_modules=['{name}'] to keep it whole (its convs are then not gated), or {fix}"
        )
