"""export_program and export_onnx: an exportable GaterNet through torch.export, then ONNX.

Data flow: ``net -> exportable(net) -> torch.export.export (strict=False, dynamic batch)
-> ExportedProgram -> torch.onnx.export (dynamo) -> .onnx``.  onnx and onnxscript are
imported only by :func:`export_onnx`.
"""

from __future__ import annotations

import importlib
import json
import os
from collections import Counter
from typing import Any

import torch
from torch import Tensor

from .._checks import budget_vector
from .._errors import GatekitError
from ..gater import GaterNet
from ..inference.common import SiteRoute, check_eval_net
from ._loop import loop_over_batch
from ._nchwc import onnx_translations
from ._net import (
    BATCHING,
    DENSE_ABOVE,
    GATHER,
    NCHWC_DENSE_ABOVE,
    UNION,
    check_batching,
    exportable,
)

__all__ = ["export_onnx", "export_program"]

#: The ONNX opset :func:`export_onnx` writes unless told otherwise.
OPSET = 18

#: Where :func:`export_onnx` records the routes in the ONNX file's metadata (JSON).
ROUTES_KEY = "gatekit.routes"

#: Where :func:`export_onnx` records ``dense_above`` (JSON: a number or null).
DENSE_ABOVE_KEY = "gatekit.dense_above"

#: Where :func:`export_onnx` records the ``batching`` the file runs (JSON: a string).
BATCHING_KEY = "gatekit.batching"

#: Where :func:`export_onnx` records the NCHWc block its blocked sites need (JSON: a number,
#: or null when no site runs blocked).
NCHWC_BLOCK_KEY = "gatekit.nchwc_block"

_INSTALL = 'pip install "gatekit[export]"'


def _check_net(net: Any, fn: str) -> None:
    if not isinstance(net, GaterNet):
        raise GatekitError(
            f"{fn} expects a GaterNet (from gatekit.gate_model), got {type(net).__name__}; "
            f"a plain module has no gates to skip: export it with torch.export.export or "
            f"torch.onnx.export directly"
        )
    check_eval_net(net, fn, "its gates must be the hard eval-mode ones and its BatchNorms "
                   "folded with running statistics")


def _example_args(net: GaterNet, example: Any, budget: Any, fn: str) -> tuple[Tensor, ...]:
    if not isinstance(example, Tensor) or example.ndim < 1:
        got = tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__
        raise GatekitError(
            f"{fn} expects an example input tensor (N, C, ...) like the ones the model will "
            f"run on, got {got}"
        )
    n = example.shape[0]
    if not net.budget_input:
        if budget is not None:
            raise GatekitError(
                f"{fn} got budget={budget!r} for a GaterNet without a budget input; drop the "
                f"budget argument (or build the model with gate_model(..., budget_input=True))"
            )
        return (example,)
    if budget is None:
        raise GatekitError(
            f"{fn} needs an example budget for this GaterNet (built with budget_input=True, "
            f"called as net(x, budget=b)); got none. Pass budget=b, a float in (0, 1] or an "
            f"({n},) tensor: the exported model then takes the budget as its second input, "
            f"one value per image"
        )
    try:  # the model's own check, as the model runs it on every call
        b = budget_vector(example, budget, reads_budget=True)
    except GatekitError as e:
        raise GatekitError(f"{fn} got an example budget the model does not take: {e}") from None
    return (example, b.contiguous())


def export_program(
    net: GaterNet,
    example: Tensor,
    *,
    budget: float | Tensor | None = None,
    dynamic_batch: bool = True,
    for_inductor: bool = False,
    dense_above: float | None = DENSE_ABOVE,
    batching: str | None = None,
) -> torch.export.ExportedProgram:
    """Export an eval-mode GaterNet with :func:`torch.export.export`, skipping per image.

    The program takes the image batch (and, for a budget-input model, the ``(N,)``
    budgets; ``budget`` is then an example value) and returns what ``net`` returns.  The
    gater, the head, the eval-mode hard gates and each site's channel choice run in the
    graph (see :func:`gatekit.exportable`): nothing of ``example`` but its shape is kept.

    Batch: with ``dynamic_batch=True`` (default) the batch dimension is dynamic.
    ``batching`` says how a batch whose samples open different filters runs:
    ``"union"`` computes, per site, the filters open in *any* of its samples, then
    zeroes each sample's own closed ones (up to every filter when samples disagree);
    ``"gather"`` computes each sample's own, padded to the batch's largest open count
    (one batched ``MatMul`` per conv); ``"auto"`` picks the cheaper of the two per call
    in the graph (see :class:`gatekit.export.ExportGaterNet`).  Default (None):
    :data:`gatekit.export.BATCHING`, or ``"union"`` with ``for_inductor=True``, the only
    mode that runs there.  Batch 1 computes exactly its own filters.
    ``dynamic_batch=False`` fixes the batch to ``example``'s (at batch 1 the per-sample
    multiply is dropped).

    Dense branch: a call whose sliced path keeps more than ``dense_above`` (default
    0.75) of the FLOPs the gates can skip runs the dense gated backbone instead (every
    filter, closed ones multiplied by 0; one :func:`torch.cond`), since a nearly open
    batch costs more sliced than dense.  ``dense_above=None`` exports the sliced
    backbone alone (a smaller program: the branch holds a second copy of the weights).

    Run it with ``program.module()(x)``; save it with ``torch.export.save(program,
    "model.pt2")``.  ``for_inductor=True`` makes each sliced conv one opaque custom op,
    ``gatekit::sliced_conv`` (the weight gather and the convolution, run by ATen), so that
    AOTInductor compiles the rest: Inductor cannot lower a convolution whose channel
    count is data-dependent.  Compile and load it with
    ``torch._inductor.aoti_compile_and_package(program)`` and
    ``torch._inductor.aoti_load_package(path)``; the package needs ``import gatekit``
    (which registers the op) wherever it runs.  Raises :class:`GatekitError` for a module that is not a GaterNet, a
    model in training mode, and a budget-input model without an example ``budget``.

    >>> import torch, gatekit
    >>> from gatekit.models import resnet20, conv_gater
    >>> net = gatekit.gate_model(resnet20(), conv_gater(), sites="inner").eval()
    >>> program = gatekit.export_program(net, torch.randn(1, 3, 32, 32))
    >>> x = torch.randn(3, 3, 32, 32)
    >>> torch.allclose(program.module()(x), net(x), atol=1e-4)
    True
    """
    return _export(net, example, budget, dynamic_batch, "gatekit.export_program",
                   opaque_convs=for_inductor, dense_above=dense_above, batching=batching)[0]


def _export(net: Any, example: Any, budget: Any, dynamic_batch: bool, fn: str, *,
            opaque_convs: bool = False, dense_above: float | None = DENSE_ABOVE,
            batching: str | None = None, nchwc_block: int | None = None
            ) -> tuple[torch.export.ExportedProgram, tuple[SiteRoute, ...], str, int | None]:
    _check_net(net, fn)
    if batching is None:
        batching = UNION if opaque_convs else BATCHING
    check_batching(batching, fn, opaque_convs=opaque_convs)
    args = _example_args(net, example, budget, fn)
    batch_one = not dynamic_batch and example.shape[0] == 1
    ready = exportable(net, example, batch_one=batch_one, opaque_convs=opaque_convs,
                       dense_above=dense_above, batching=batching, nchwc_block=nchwc_block)
    dynamic_shapes = None
    if dynamic_batch:
        if example.shape[0] == 1:
            # torch.export keeps a size-1 dimension static: trace at 2, any batch runs.
            args = tuple(a.expand(2, *a.shape[1:]).contiguous() for a in args)
        batch = torch.export.Dim("batch", min=1)
        names = ("x", "budget")[: len(args)]
        dynamic_shapes = {name: {0: batch} for name in names}
    program = torch.export.export(ready, args, dynamic_shapes=dynamic_shapes, strict=False)
    return program, ready.routes, ready.batching, ready.nchwc_block


def _require(modules: tuple[str, ...], fn: str) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise GatekitError(
                f"{fn} needs the optional package {name!r}, which could not be imported "
                f"({type(e).__name__}: {e}); install the export extra: {_INSTALL}"
            ) from None


def export_onnx(
    net: GaterNet,
    example: Tensor,
    path: str | os.PathLike[str],
    *,
    budget: float | Tensor | None = None,
    dynamic_batch: bool = True,
    opset: int = OPSET,
    dense_above: float | str | None = "default",
    batching: str | None = None,
    nchwc_block: int | None = None,
) -> tuple[SiteRoute, ...]:
    """Export an eval-mode GaterNet to an ONNX file that still skips per image.

    :func:`export_program`, then the dynamo ONNX exporter: the channel choices become
    ``NonZero``, ``Gather`` and ``Conv`` on the gathered weights, which ONNX Runtime runs
    per input.  Inputs are named ``"image"`` (and ``"budget"``, ``(N,)`` float32, for a
    budget-input model), the output ``"output"``; batches behave as in
    :func:`export_program` (``batching``; recorded in the file's metadata under
    ``"gatekit.batching"``).  Returns the routes (one
    :class:`gatekit.inference.SiteRoute` per site: what each site became and why), also
    written as JSON into the file's metadata under ``"gatekit.routes"``.  Needs onnx and
    onnxscript (``pip install "gatekit[export]"``; ONNX Runtime to run the file).

    ``dense_above`` as in :func:`export_program` (``"default"``:
    :data:`gatekit.export.DENSE_ABOVE`, with ``nchwc_block``
    :data:`gatekit.export.NCHWC_DENSE_ABOVE`): the dense branch becomes an ``If``
    node, and the weights only a branch reads are moved into that branch (ONNX Runtime
    prepacks, and on x86 reorders to its blocked layout, only the initializers a
    subgraph holds itself: with outer-scope weights the dense branch ran about 1.3x
    slower).  ``"gatekit.dense_above"`` in the metadata records the share.

    ``nchwc_block`` (None, 8 or 16: ONNX Runtime's channel block on the machine that will
    run the file, 16 with AVX-512, 8 with AVX2; see :data:`gatekit.export.NCHWC_BLOCKS`)
    runs the sliced convs of sites gated in whole blocks (``group_size`` a multiple of it)
    as ONNX Runtime's ``com.microsoft.nchwc`` ``Conv`` on blocks of a weight kept in its
    blocked layout, at the runtime's prepacked rate: the file then runs in ONNX Runtime
    only, and where the runtime's block differs, every call takes the dense branch.
    With ``batching="union"`` (its default) a batch computes the union of its images'
    blocks; with ``batching="gather"`` the graph is exported at batch 1 and run on each
    image in turn by an ONNX ``Loop`` over the batch (each image its own blocks, no gate
    multiply, its own dense-or-sliced choice; ONNX Runtime's convs cost about the same
    per image at batch 1 as at batch 8 on the CPU).  ``"gatekit.nchwc_block"`` in the
    metadata records the block (null: no site runs blocked).

    >>> import tempfile, os, torch, gatekit
    >>> from gatekit.models import resnet20, conv_gater
    >>> net = gatekit.gate_model(resnet20(), conv_gater(), sites="inner").eval()
    >>> path = os.path.join(tempfile.mkdtemp(), "gaternet.onnx")
    >>> routes = gatekit.export_onnx(net, torch.randn(1, 3, 32, 32), path)
    >>> {r.mode for r in routes}
    {'sliced'}
    >>> import onnxruntime
    >>> session = onnxruntime.InferenceSession(path)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> out = session.run(None, {"image": x.numpy()})[0]
    >>> torch.allclose(torch.from_numpy(out), net(x), atol=1e-4)
    True
    """
    fn = "gatekit.export_onnx"
    _require(("onnx", "onnxscript"), fn)
    if nchwc_block is not None and batching is None:
        batching = UNION
    if isinstance(dense_above, str) and dense_above == "default":
        dense_above = DENSE_ABOVE if nchwc_block is None else NCHWC_DENSE_ABOVE
    # Blocked and per image with a dynamic batch (or several images): the graph made for
    # batch 1, looped over the batch in the file (_loop); the inputs are checked first.
    loop = nchwc_block is not None and batching == GATHER
    if loop:
        _check_net(net, fn)
        _example_args(net, example, budget, fn)  # its errors, before the batch-1 slice
        loop = dynamic_batch or example.shape[0] > 1
    if loop:  # the file's batch is dynamic then, whatever dynamic_batch says
        example, budget = example[:1], _first(budget)
    program, routes, batching, block = _export(
        net, example, budget, dynamic_batch and not loop, fn, dense_above=dense_above,
        batching=batching, nchwc_block=nchwc_block)
    if loop:
        batching = GATHER
        routes = tuple(r._replace(batching=GATHER) for r in routes)
    names = ["image", "budget"] if net.budget_input else ["image"]
    onnx_program = torch.onnx.export(
        program, (), None, dynamo=True, input_names=names, output_names=["output"],
        opset_version=opset, verbose=False, optimize=True,
        custom_translation_table=onnx_translations() if block is not None else None,
    )
    onnx_program.model.metadata_props[NCHWC_BLOCK_KEY] = json.dumps(block)
    onnx_program.model.metadata_props[ROUTES_KEY] = json.dumps([r._asdict() for r in routes])
    onnx_program.model.metadata_props[DENSE_ABOVE_KEY] = json.dumps(dense_above)
    onnx_program.model.metadata_props[BATCHING_KEY] = json.dumps(batching)
    if loop:  # a blocked file: it has a dense branch
        import onnx

        model = onnx_program.model_proto
        move_branch_initializers(model)
        drop_unread_initializers(model.graph)
        onnx.save(loop_over_batch(model), os.fspath(path))
        return routes
    onnx_program.save(os.fspath(path))
    if dense_above is not None:
        import onnx

        model = onnx.load(os.fspath(path))
        if move_branch_initializers(model) + drop_unread_initializers(model.graph):
            onnx.save(model, os.fspath(path))
    return routes


def _first(budget: Any) -> Any:
    """The first image's budget (a number stays as it is)."""
    return budget[:1] if isinstance(budget, Tensor) and budget.ndim else budget


def move_branch_initializers(model: Any) -> int:
    """Move each initializer that nodes of exactly one ``If`` branch read (and nothing
    else) from the main graph into that branch; returns how many moved.

    The values are unchanged, so the model computes the same; ONNX Runtime then prepacks
    those weights (it does not for a subgraph's outer-scope initializers).
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outside: set[str] = set()
    branches: list[tuple[Any, set[str]]] = []
    for node in graph.node:
        outside.update(node.input)
        for attr in node.attribute:
            if node.op_type == "If" and attr.name in ("then_branch", "else_branch"):
                branches.append((attr.g, _names_read(attr.g) & inits.keys()))
            else:
                for sub in _subgraphs(attr):
                    outside |= _names_read(sub)
    readers = Counter(name for _, names in branches for name in names)
    outputs = {o.name for o in graph.output}
    moved = 0
    for branch, names in branches:
        for name in sorted(names):
            if readers[name] == 1 and name not in outside and name not in outputs:
                branch.initializer.append(inits[name])
                graph.initializer.remove(inits[name])
                moved += 1
    return moved


def drop_unread_initializers(graph: Any) -> int:
    """Remove the initializers of ``graph`` that no node (of it or of a subgraph) reads and
    that are no graph output (constants the exporter left behind, which ONNX Runtime
    removes with a warning each); returns how many."""
    read = _names_read(graph) | {o.name for o in graph.output}
    unread = [t for t in graph.initializer if t.name not in read]
    for tensor in unread:
        graph.initializer.remove(tensor)
    return len(unread)


def _names_read(graph: Any) -> set[str]:
    """Every value name the nodes of ``graph`` and of its subgraphs read."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in _subgraphs(attr):
                names |= _names_read(sub)
    return names


def _subgraphs(attr: Any) -> list[Any]:
    """The graphs an ONNX node attribute holds (``g`` and ``graphs``)."""
    return [attr.g, *attr.graphs] if attr.HasField("g") else list(attr.graphs)
