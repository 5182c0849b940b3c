"""A batch run image by image in ONNX: the graph made for batch 1 as the body of a ``Loop``.

The blocked path (``_nchwc``) computes one set of channel blocks per call: at batch 8 the
union of eight images' blocks is nearly every block, and the graph runs dense.  Run one
image at a time, each image computes its own blocks with no gate multiply (its gates are
exactly its blocks), and ONNX Runtime's convs cost about the same per image at batch 1
as at batch 8 on the CPU (plain ResNet-50, one thread: 82 ms at batch 1, 639 ms at
batch 8 in ``benchmarks/results/export_cpu_nchwc.json``).  ``torch.export`` cannot trace
that loop (a scan whose body makes data-dependent shapes), so :func:`loop_over_batch`
writes it into the ONNX file: the model exported at batch 1 becomes the body::

    n        = Shape(image)[0]
    outputs  = Loop(n) { i ->  image_i = image[i : i + 1]          # (1, C, H, W)
                               output_i = <the batch-1 graph>(image_i)
                               emit output_i[0] }                  # stacked: (n, ...)

The batch-1 graph's initializers move into the body (ONNX Runtime prepacks the weights a
subgraph holds itself), its inputs and outputs are renamed so that no body value shadows
the outer graph's.
"""

from __future__ import annotations

from typing import Any

__all__ = ["loop_over_batch"]

#: What the body calls the outer inputs' slices and its outputs (``image`` -> ``image_i``).
_SUFFIX = "_i"


def loop_over_batch(one: Any) -> Any:
    """``one`` (an ``onnx.ModelProto`` whose inputs and outputs have batch 1 in dimension 0)
    as a model that runs it on each item of a batch of any size and stacks the outputs
    (same input and output names, dimension 0 named ``"batch"``).  Needs onnx."""
    import onnx
    from onnx import TensorProto, helper

    graph = one.graph
    names = {v.name: v.name + _SUFFIX for v in [*graph.input, *graph.output]}
    taken = _all_names(graph)
    clash = sorted(n for n in taken if n in names.values() or n.startswith("gatekit_loop_"))
    if clash:
        raise ValueError(f"loop_over_batch: the batch-1 graph already holds {clash}")
    body = onnx.GraphProto()
    body.CopyFrom(graph)
    _rename(body, names)
    del body.input[:], body.output[:], body.value_info[:]
    it, cond = "gatekit_loop_iter", "gatekit_loop_cond"
    body.input.extend([helper.make_tensor_value_info(it, TensorProto.INT64, []),
                       helper.make_tensor_value_info(cond, TensorProto.BOOL, [])])
    start, stop = "gatekit_loop_start", "gatekit_loop_stop"
    head = [helper.make_node("Unsqueeze", [it, "gatekit_loop_axis0"], [start]),
            helper.make_node("Add", [start, "gatekit_loop_one"], [stop])]
    body.initializer.extend([helper.make_tensor("gatekit_loop_axis0", TensorProto.INT64, [1], [0]),
                             helper.make_tensor("gatekit_loop_one", TensorProto.INT64, [1], [1])])
    for value in graph.input:  # each input's item i, as the batch-1 graph reads it
        head.append(helper.make_node("Slice", [value.name, start, stop, "gatekit_loop_axis0"],
                                     [names[value.name]]))
    tail = [helper.make_node("Identity", [cond], [cond + "_out"])]
    body.output.append(helper.make_tensor_value_info(cond + "_out", TensorProto.BOOL, []))
    for value in graph.output:  # item i's output without its batch dimension
        item = names[value.name] + "_item"
        tail.append(helper.make_node("Squeeze", [names[value.name], "gatekit_loop_axis0"],
                                     [item]))
        body.output.append(helper.make_empty_tensor_value_info(item))
    nodes = [*head, *body.node, *tail]
    del body.node[:]
    body.node.extend(nodes)
    body.name = "gatekit_per_image"

    outer = helper.make_graph(
        [helper.make_node("Shape", [graph.input[0].name], ["gatekit_loop_n1"], start=0, end=1),
         helper.make_node("Squeeze", ["gatekit_loop_n1"], ["gatekit_loop_n"]),
         helper.make_node("Loop", ["gatekit_loop_n", ""], [v.name for v in graph.output],
                          body=body)],
        graph.name, [_batched(v) for v in graph.input], [_batched(v) for v in graph.output])
    model = helper.make_model(outer, opset_imports=list(one.opset_import),
                              ir_version=one.ir_version)
    model.functions.extend(one.functions)
    for prop in one.metadata_props:
        model.metadata_props.add(key=prop.key, value=prop.value)
    return model


def _batched(value: Any) -> Any:
    """A copy of the value info ``value`` whose dimension 0 is the symbolic ``"batch"``."""
    import onnx

    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    dims = out.type.tensor_type.shape.dim
    if len(dims):
        dims[0].Clear()
        dims[0].dim_param = "batch"
    return out


def _rename(graph: Any, names: dict[str, str]) -> None:
    """Rename the values ``names`` maps in ``graph`` and every subgraph, in place."""
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                _rename(sub, names)
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = names.get(value.name, value.name)


def _all_names(graph: Any) -> set[str]:
    """Every value name ``graph`` and its subgraphs define or read."""
    out = {v.name for v in [*graph.input, *graph.output, *graph.initializer]}
    for node in graph.node:
        out.update(node.input)
        out.update(node.output)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                out |= _all_names(sub)
    return out
