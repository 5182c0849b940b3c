"""The exported per-image path (``batching="gather"``) and the per-call choice (``"auto"``)
against the eager dense gated model: in eager ``ExportGaterNet``, in torch.export's
program and in ONNX Runtime, at batch 1 and at batch 8 whose images keep different
filters, with sites where no filter is open and where every filter is."""

from __future__ import annotations

import json

import pytest
import torch
from test_export import assert_close, build, distinct_patterns, eager, onnx_run

import gatekit
from gatekit.export._gather import per_image_rows

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

pytestmark = pytest.mark.usefixtures("one_thread")


def batch(seed: int = 0, n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("batching", ["gather", "auto"])
def test_per_image_equals_eager_in_program_and_onnx(batching, tmp_path):
    net = build("resnet20", "inner")
    x = batch()
    expected, gates = eager(net, x)
    assert distinct_patterns(gates) == 8
    example = x[:1]
    ready = gatekit.exportable(net, example, batching=batching)
    program = gatekit.export_program(net, example, batching=batching, dense_above=None)
    gatekit.export_onnx(net, example, tmp_path / "m.onnx", batching=batching, dense_above=None)
    with torch.no_grad():
        for module in (ready, program.module()):
            assert_close(module(x), expected)
            assert_close(module(x[:1]), net(x[:1]))
    assert_close(onnx_run(tmp_path / "m.onnx", x), expected)
    assert_close(onnx_run(tmp_path / "m.onnx", x[5:6]), eager(net, x[5:6])[0])
    stored = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(stored["gatekit.batching"]) == batching
    assert {r.batching for r in ready.routes} == {batching}


def test_per_image_with_sites_all_closed_and_all_open_and_residual_sites(tmp_path):
    # "all" sites: inner (sliced) sites and residual (scatter) ones.
    net = build("resnet8", "all")
    closed, open_ = net.sites[0], net.sites[1]
    with torch.no_grad():
        for site, value in ((closed, -1e4), (open_, 1e4)):
            net.head.fc2.weight[site.offset : site.stop] = 0
            net.head.fc2.bias[site.offset : site.stop] = value
    x = batch(1)
    expected, gates = eager(net, x)
    assert not gates[:, closed.offset : closed.stop].any()
    assert gates[:, open_.offset : open_.stop].all()
    assert distinct_patterns(gates) >= 4  # the images keep different filters
    routes = gatekit.export_onnx(net, x[:1], tmp_path / "m.onnx", batching="gather",
                                 dense_above=None)
    assert {r.mode for r in routes} == {"sliced", "scatter"}
    program = gatekit.export_program(net, x[:1], batching="gather", dense_above=None)
    with torch.no_grad():
        assert_close(program.module()(x), expected)
        assert_close(program.module()(x[:1]), net(x[:1]))
    assert_close(onnx_run(tmp_path / "m.onnx", x), expected)
    assert_close(onnx_run(tmp_path / "m.onnx", x[:1]), net(x[:1]))


def test_per_image_every_gate_closed_every_gate_open_and_soft_gates():
    net = build("resnet8", "all")
    x = batch(2, 3)
    for value in (-1e4, 1e4):
        with torch.no_grad():
            net.head.fc2.weight.zero_()
            net.head.fc2.bias.fill_(value)
        ready = gatekit.exportable(net, x[:1], batching="gather")
        expected, gates = eager(net, x)
        assert bool(gates.all()) == (value > 0) and bool(gates.any()) == (value > 0)
        with torch.no_grad():
            assert_close(ready(x), expected)
    # A group size and gates that are neither 0 nor 1 (the per-image path multiplies them).
    soft = build("resnet8", "inner", group_size=2)
    soft.estimator = torch.nn.ReLU().eval()
    with torch.no_grad():
        expected, gates = eager(soft, x)
        assert (gates == 0).any() and ((gates > 0) & (gates != 1)).any()
        assert_close(gatekit.exportable(soft, x[:1], batching="gather")(x), expected)


def test_auto_runs_per_image_when_it_keeps_less_and_the_union_at_batch_one():
    net = build("resnet20", "inner")
    x = batch(3)
    ready = gatekit.exportable(net, x[:1], batching="auto")
    gates = eager(net, x)[1]
    costs = gatekit.gate_costs(net, x[:1], downstream=True)
    share = costs / costs.sum()
    union = (share * (gates != 0).any(0)).sum()
    per_image = sum(share[s.offset : s.stop].sum() * (gates[:, s.offset : s.stop] != 0).sum(1).max()
                    / s.num_gates for s in net.sites)
    assert abs(ready.kept_share(gates).item() - union.item()) < 1e-6
    assert abs(ready.per_image_share(gates).item() - per_image.item()) < 1e-6
    assert per_image < union  # eight random patterns: the union is larger than each
    assert ready.gather_cost == gatekit.export.GATHER_COST
    assert bool(ready.per_image_cheaper(gates)) == (ready.gather_cost * per_image < union)
    # A batch of one, or one pattern repeated: counts tie exactly and the union runs.
    assert not ready.per_image_cheaper(gates[:1])
    assert not ready.per_image_cheaper(gates[:1].expand(4, -1))
    # A per-image FLOP dearer than a union one: the union runs again.
    ready.gather_cost = (union / per_image).item() * 1.01
    assert not ready.per_image_cheaper(gates)
    # The dense branch reads the share of the path that would run.
    dense = gatekit.exportable(net, x[:1], batching="auto", dense_above=per_image.item() * 0.9)
    cheaper = min(union.item(), dense.gather_cost * per_image.item())
    assert abs(dense.sliced_share(gates).item() - cheaper) < 1e-6
    with torch.no_grad():
        assert_close(dense(x), eager(net, x)[0])


def test_per_image_rows_pad_with_the_zero_filter():
    open_ = torch.tensor([[True, False, True, False], [False, False, False, True],
                          [False, False, False, False]])
    assert per_image_rows(open_).tolist() == [[0, 2], [3, 4], [4, 4]]
    assert per_image_rows(torch.ones(2, 3, dtype=torch.bool)).tolist() == [[0, 1, 2]] * 2


def test_batching_is_checked():
    net = build("resnet8", "inner")
    x = batch(0, 1)
    with pytest.raises(gatekit.GatekitError,
                       match=r"expects batching to be one of 'union', 'gather', 'auto'.*got 'pattern'"):
        gatekit.export_program(net, x, batching="pattern")
    with pytest.raises(gatekit.GatekitError, match=r"batching='union' only.*got batching='gather'"):
        gatekit.export_program(net, x, batching="gather", for_inductor=True)
    with pytest.raises(gatekit.GatekitError, match=r"batching='auto'.*needs an example input"):
        gatekit.exportable(net, batching="auto")
