"""calibrate_budget and BudgetMap: a budget-input model's budget made the FLOPs fraction it keeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gatekit
from gatekit import GatekitError
from gatekit.gater import BudgetMap
from gatekit.models import resnet20, resnet20_gater


def _net(seed: int = 0) -> gatekit.GaterNet:
    """A budget-input net whose head depends on the image and on the budget."""
    torch.manual_seed(seed)
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner", budget_input=True)
    with torch.no_grad():
        for p in net.head.parameters():
            p.normal_(0, 0.5)
        net.head.budget_scale.fill_(3.0)
    return net.eval()


def _step_net(thresholds: torch.Tensor) -> gatekit.GaterNet:
    """A head whose gate j opens exactly when the head input exceeds thresholds[j], for
    every image: logits = 2 * (u - (2 t_j - 1)) with u = 2 * knob - 1."""
    net = _net()
    with torch.no_grad():
        for p in (net.head.fc2.weight, net.head.budget_gate.weight):
            p.zero_()
        net.head.budget_scale.fill_(2.0)
        net.head.fc2.bias.copy_(-2.0 * (2.0 * thresholds - 1.0))
    return net


def _kept(net: gatekit.GaterNet, x: torch.Tensor, budget: float, costs: torch.Tensor,
          dense: float) -> float:
    """The mean kept fraction of the model's own forward at ``budget``."""
    with torch.no_grad():
        net(x, budget=budget)
    closed = 1.0 - net.last_gates.double()
    return float(((dense - closed @ costs.double()) / dense).mean())


def test_budget_map_interpolates_as_numpy_does() -> None:
    requested = torch.tensor([0.1, 0.35, 0.5, 0.9, 1.0])
    knob = torch.tensor([-0.3, 0.2, 0.2, 0.7, 1.1])
    b = torch.cat([torch.linspace(0.01, 1.0, 57), requested])
    got = BudgetMap(requested, knob)(b)
    want = np.interp(b.numpy(), requested.numpy(), knob.numpy())
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def _piecewise_linear(b: float, requested: list[float], knob: list[float]) -> float:
    """The map written out knot by knot (float64): the end values outside the knots, and
    between knots ``r[i - 1] < b <= r[i]`` the line through them."""
    if b <= requested[0]:
        return knob[0]
    if b >= requested[-1]:
        return knob[-1]
    i = next(i for i, r in enumerate(requested) if b <= r)
    t = (b - requested[i - 1]) / (requested[i] - requested[i - 1])
    return knob[i - 1] + t * (knob[i] - knob[i - 1])


def _searchsorted_map(m: BudgetMap, budget: torch.Tensor) -> torch.Tensor:
    """BudgetMap.forward as it was written with torch.searchsorted (which the ONNX exporter
    does not lower): the eager numbers the exportable forward must keep, bit for bit."""
    r, k = m.requested.to(budget.dtype), m.knob.to(budget.dtype)
    hi = torch.searchsorted(r, budget.contiguous()).clamp(1, r.shape[0] - 1)
    r0, r1, k0, k1 = r[hi - 1], r[hi], k[hi - 1], k[hi]
    t = ((budget - r0) / (r1 - r0)).clamp(0.0, 1.0)
    return k0 + t * (k1 - k0)


@pytest.mark.parametrize("requested, knob", [
    ([0.1, 0.35, 0.5, 0.9, 1.0], [-0.3, 0.2, 0.2, 0.7, 1.1]),  # a flat segment
    ([0.3, 1.0], [0.25, 1.4]),  # two knots: one segment
    # a calibrated map's shape: 100 knots, knob steps of unequal size, flat at both ends
    (torch.linspace(0.01, 1.0, 100).tolist(),
     torch.linspace(-0.5, 1.5, 100).pow(3).clamp(-0.05, 1.2).tolist()),
])
def test_budget_map_equals_a_piecewise_linear_oracle_on_and_off_the_knots(requested, knob) -> None:
    m = BudgetMap(torch.tensor(requested), torch.tensor(knob))
    r = m.requested
    mids = (r[1:] + r[:-1]) / 2
    budgets = torch.cat([
        r,  # exactly on each knot
        torch.nextafter(r, torch.full_like(r, -1.0)),  # one float below each knot
        torch.nextafter(r, torch.full_like(r, 2.0)),  # one float above
        mids, r[:-1] + 0.1 * (r[1:] - r[:-1]),  # between knots
        torch.linspace(0.0, 1.0, 101),
        torch.tensor([-1.0, -1e-3, 0.0, 1e-6, 1.0 + 1e-6, 1.5, 7.0]),  # outside the knots
    ])
    got = m(budgets)
    oracle = [_piecewise_linear(b, r.double().tolist(), m.knob.double().tolist())
              for b in budgets.double().tolist()]
    np.testing.assert_allclose(got.double().numpy(), oracle, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), np.interp(budgets.numpy(), r.numpy(), m.knob.numpy()),
                               rtol=0, atol=1e-6)
    # The eager numbers are the searchsorted forward's, bit for bit, in every shape it took.
    assert torch.equal(got, _searchsorted_map(m, budgets))
    grid = budgets[:24].reshape(2, 3, 4)
    assert torch.equal(m(grid), _searchsorted_map(m, grid))
    assert torch.equal(m(budgets.double()), _searchsorted_map(m, budgets.double()))
    assert m(budgets.double()).dtype == torch.float64
    assert torch.equal(m(budgets[5]), _searchsorted_map(m, budgets[5]))  # a 0-d budget
    assert m(budgets[5]).shape == ()


def test_step_gates_reach_each_attainable_budget_exactly() -> None:
    # 20 gates of equal cost opening one by one at knob 0.0, 0.05, ..., 0.95: the fraction
    # m / 20 is attainable and the knob must land just past threshold m - 1 (one grid step).
    thresholds = torch.arange(20, dtype=torch.float32) / 20
    net = _step_net(torch.cat([thresholds.repeat_interleave(1), torch.full((316,), 5.0)]))
    costs = torch.cat([torch.ones(20), torch.zeros(316)])
    x = torch.randn(6, 3, 32, 32)
    m = gatekit.calibrate_budget(net, [x], costs, budgets=torch.arange(1, 21) / 20)
    step = 2.0 / 200  # knob_range (-0.5, 1.5) over 201 points
    for i, r in enumerate(m.requested.tolist()):
        assert _kept(net, x, r, costs, 20.0) == pytest.approx(r, abs=1e-6)
        t = float(thresholds[i])
        assert t < float(m.knob[i]) <= t + step + 1e-6
    torch.testing.assert_close(m.achieved, m.requested)


def test_a_budget_below_what_the_model_reaches_maps_to_the_cheapest_knob() -> None:
    # half of the cost is always open: fractions below 0.5 cannot be reached
    thresholds = torch.cat([torch.full((10,), -5.0), torch.linspace(0.0, 0.9, 10),
                            torch.full((316,), 5.0)])
    net = _step_net(thresholds)
    costs = torch.cat([torch.ones(20), torch.zeros(316)])
    x = torch.randn(2, 3, 32, 32)
    m = gatekit.calibrate_budget(net, [x], costs, budgets=torch.tensor([0.2, 0.5, 0.8]))
    assert float(m.knob[0]) == pytest.approx(-0.5)
    assert float(m.achieved[0]) == pytest.approx(0.5)  # recorded, not hidden
    assert m.achieved[1:].tolist() == pytest.approx([0.5, 0.8])


def test_an_image_dependent_model_keeps_the_requested_fraction_of_the_backbone() -> None:
    net = _net()
    with torch.no_grad():  # the image moves the logits a little, the budget a lot
        net.head.fc2.weight.mul_(0.1)
        net.head.budget_gate.weight.mul_(0.2)
    costs = gatekit.gate_costs(net, torch.zeros(1, 3, 32, 32), downstream=True)
    dense = float(costs.sum()) * 1.6  # ungated convs and the head: a backbone fraction
    x = torch.randn(96, 3, 32, 32)
    before = [_kept(net, x, r, costs, dense) for r in (0.5, 0.7, 0.9)]
    m = gatekit.calibrate_budget(net, [x[:48], (x[48:], torch.zeros(48))], costs, dense_flops=dense)
    assert net.head.budget_map is m
    assert max(abs(k - r) for k, r in zip(before, (0.5, 0.7, 0.9))) > 0.05  # it had to move
    with torch.no_grad():
        net(x, budget=0.7)
    opened = net.last_gates.mean(0)
    assert bool(((opened > 0) & (opened < 1)).any())  # gates that follow the image
    for r in (0.45, 0.5, 0.6, 0.7, 0.8, 0.9):
        kept = _kept(net, x, r, costs, dense)
        assert kept == pytest.approx(r, abs=0.01)
        i = int(torch.argmin((m.requested - r).abs()))
        assert _kept(net, x, float(m.requested[i]), costs, dense) == pytest.approx(
            float(m.achieved[i]), abs=1e-6)
    net.head.budget_map = None
    assert _kept(net, x, 0.7, costs, dense) == pytest.approx(before[1])


def test_calibration_restores_train_mode_and_round_trips_through_a_state_dict() -> None:
    net = _net().train()
    costs = gatekit.gate_costs(net, torch.zeros(1, 3, 32, 32))
    gatekit.calibrate_budget(net.eval(), [torch.randn(8, 3, 32, 32)], costs)
    net.train()
    gatekit.calibrate_budget(net, [torch.randn(8, 3, 32, 32)], costs)
    assert net.training and net.gater.training
    fresh = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner", budget_input=True)
    fresh.load_state_dict(net.state_dict())  # strict: the map is made and loaded
    assert torch.equal(fresh.head.budget_map.knob, net.head.budget_map.knob)
    x, b = torch.randn(3, 3, 32, 32), torch.tensor([0.3, 0.6, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x, budget=b), net.eval()(x, budget=b))
    with pytest.raises(RuntimeError, match="budget_map"):
        net.load_state_dict(_net().state_dict())  # a calibrated model given an uncalibrated state


@pytest.mark.filterwarnings("ignore:The tensor attributes")  # last_* set during export
def test_a_calibrated_model_skips_compiles_and_exports() -> None:
    net = _net()
    gatekit.calibrate_budget(net, [torch.randn(16, 3, 32, 32)],
                             gatekit.gate_costs(net, torch.zeros(1, 3, 32, 32)))
    x, b = torch.randn(4, 3, 32, 32), torch.tensor([0.25, 0.5, 0.75, 1.0])
    with torch.no_grad():
        want = net(x, budget=b)
        gates = net.last_gates
        fast = gatekit.skip_compute(net, batching="pattern")
        torch.testing.assert_close(fast(x, budget=b), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fast.last_gates, gates)
        compiled = torch.compile(net, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, budget=b), want)
    exported = torch.export.export(net, (x,), {"budget": b})
    torch.testing.assert_close(exported.module()(x, budget=b), want)


@pytest.mark.parametrize("kwargs, match", [
    ({"costs": torch.ones(5)}, r"shape \(336,\)"),
    ({"costs": -torch.ones(336)}, "non-negative"),
    ({"dense_flops": 10.0}, "dense_flops >="),
    ({"knob_range": (1.0, 0.0)}, "lo < hi"),
    ({"steps": 1}, "steps >= 2"),
    ({"budgets": torch.tensor([0.5])}, "two distinct budgets"),
    ({"budgets": torch.tensor([0.0, 0.5])}, r"in \(0, 1\]"),
    ({"batches": []}, "no batches"),
    ({"batches": [[None]]}, "input tensors"),
])
def test_bad_calibration_arguments(kwargs, match) -> None:
    net = _net()
    args = {"batches": [torch.randn(2, 3, 32, 32)], "costs": torch.ones(336), **kwargs}
    with pytest.raises(GatekitError, match=match):
        gatekit.calibrate_budget(net, args.pop("batches"), args.pop("costs"), **args)


def test_a_model_without_a_budget_input_is_refused() -> None:
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner")
    with pytest.raises(GatekitError, match="budget_input=True"):
        gatekit.calibrate_budget(net, [torch.randn(2, 3, 32, 32)], torch.ones(336))


@pytest.mark.parametrize("requested, knob, match", [
    ([0.5], [0.5], "length >= 2"),
    ([0.5, 0.4], [0.1, 0.2], "strictly increasing"),
    ([0.4, 0.5], [0.3, 0.2], "never decrease"),
    ([0.4, float("nan")], [0.3, 0.4], "finite"),
    ([0.5, 0.5], [0.1, 0.2], "strictly increasing"),  # a repeated budget: two knobs for one
    ([0.0, 0.5], [0.1, 0.2], r"in \(0, 1\]"),  # budget 0 keeps nothing: not a budget
    ([0.5, 1.0], [0.1, 0.2], None),  # the ends of the range are budgets
])
def test_bad_budget_maps(requested, knob, match) -> None:
    if match is None:
        BudgetMap(torch.tensor(requested), torch.tensor(knob))
        return
    with pytest.raises(GatekitError, match=match):
        BudgetMap(torch.tensor(requested), torch.tensor(knob))


@pytest.mark.parametrize("achieved, ok", [
    ([0.0, 1.0], True), ([0.2, 1.0 + 1e-7], True),  # float error at the ends allowed
    ([-0.01, 0.5], False), ([0.5, 1.01], False)])
def test_achieved_fractions_are_fractions(achieved, ok) -> None:
    # Without achieved fractions, the map records the requested ones (an exact map).
    requested = torch.tensor([0.25, 0.5, 1.0])
    assert torch.equal(BudgetMap(requested, torch.tensor([0.0, 0.3, 0.9])).achieved, requested)
    make = lambda: BudgetMap(torch.tensor([0.4, 0.8]), torch.tensor([0.1, 0.2]),  # noqa: E731
                             torch.tensor(achieved))
    if ok:
        assert torch.equal(make().achieved, torch.tensor(achieved))
    else:
        with pytest.raises(GatekitError, match=r"achieved fractions in \[0, 1\]"):
            make()


# ---- loading a calibrated state, and the map in training mode -------------------------

def _calibrated(budgets: torch.Tensor | None = None, seed: int = 0) -> gatekit.GaterNet:
    net = _net(seed)
    costs = gatekit.gate_costs(net, torch.zeros(1, 3, 32, 32))
    gatekit.calibrate_budget(net, [torch.randn(8, 3, 32, 32)], costs, budgets=budgets)
    return net


def test_a_map_loaded_into_an_eval_model_is_in_eval_mode() -> None:
    # Loading makes the map: it takes the head's mode, so an eval-mode model that loads a
    # calibrated state is ready for the transforms that refuse any module in training mode.
    calibrated = _calibrated(torch.tensor([0.3, 0.6, 1.0]))
    fresh = _net(seed=1).eval()
    fresh.load_state_dict(calibrated.state_dict())
    assert not any(m.training for m in fresh.modules())
    fast = gatekit.skip_compute(fresh)
    x, b = torch.randn(2, 3, 32, 32), torch.tensor([0.4, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(fast(x, budget=b), calibrated.eval()(x, budget=b),
                                   rtol=1e-4, atol=1e-4)


def test_a_map_of_another_knot_count_loads_and_replaces_the_map() -> None:
    three = _calibrated(torch.tensor([0.3, 0.6, 1.0]), seed=1)
    hundred = _calibrated()
    assert hundred.head.budget_map.requested.shape == (100,)
    hundred.load_state_dict(three.state_dict())  # strict
    for name in ("requested", "knob", "achieved"):
        assert torch.equal(getattr(hundred.head.budget_map, name), getattr(three.head.budget_map, name))
    x, b = torch.randn(3, 3, 32, 32), torch.tensor([0.3, 0.5, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(hundred(x, budget=b), three(x, budget=b))


@pytest.mark.parametrize("key, change, match", [
    ("knob", lambda t: t.flip(0), "never decrease"),
    ("requested", lambda t: t.flip(0), "strictly increasing"),
    ("requested", lambda t: t * 2, r"in \(0, 1\]"),
    ("knob", lambda t: t[:-1], "one length"),
    ("achieved", lambda t: t.fill_(float("nan")), "finite"),
])
def test_a_state_whose_map_breaks_the_rules_is_refused(key, change, match) -> None:
    net = _calibrated(torch.tensor([0.3, 0.6, 1.0]))
    state = net.state_dict()
    state[f"head.budget_map.{key}"] = change(state[f"head.budget_map.{key}"].clone())
    for target in (_net(), _calibrated()):  # a fresh model, and one whose map is loaded into
        with pytest.raises(GatekitError, match=match):
            target.load_state_dict(state)


def test_a_calibrated_map_is_bypassed_in_training_mode() -> None:
    net = _calibrated(torch.tensor([0.3, 0.6, 1.0]))
    features = net.gater(torch.randn(4, 3, 32, 32)).detach()
    b = torch.tensor([0.3, 0.5, 0.7, 1.0])
    raw = net.head.logits(features, b)  # the head input is the budget itself
    mapped = net.head.logits(features, net.head.budget_map(b))
    assert not torch.allclose(raw, mapped)  # the map moves the head input
    torch.testing.assert_close(net.head.train()(features, b), raw)
    torch.testing.assert_close(net.head.eval()(features, b), mapped)
