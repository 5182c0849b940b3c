"""A GaterNet whose head reads a per-sample compute budget (gate_model(..., budget_input=True)),
and flops_budget_loss with per-sample budgets."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import gatekit
from gatekit import GatekitError
from gatekit.models import resnet20, resnet20_gater


def _net(sites: str = "inner", seed: int = 0) -> gatekit.GaterNet:
    """A budget-input net whose head parameters are all random (the budget ones start at 0)."""
    torch.manual_seed(seed)
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites=sites, budget_input=True,
                             head_batchnorm=True)
    with torch.no_grad():
        for p in net.head.parameters():
            p.normal_(0, 0.5)
        net.head.bn.running_mean.normal_(0, 0.2)
        net.head.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _oracle_logits(net: gatekit.GaterNet, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GaterHead's documented formula written out with its parameters."""
    h = net.head
    f = net.gater(x)
    u = (2 * b - 1)[:, None]
    pre = F.batch_norm(f @ h.fc1.weight.T + h.fc1.bias, h.bn.running_mean, h.bn.running_var,
                       h.bn.weight, h.bn.bias, eps=h.bn.eps)
    hidden = torch.relu(pre + u @ h.budget_embed.weight.T + h.budget_embed.bias)
    return hidden @ h.fc2.weight.T + h.fc2.bias + u @ h.budget_gate.weight.T + h.budget_scale * u


def test_logits_follow_the_documented_formula() -> None:
    net = _net()
    x, b = torch.randn(5, 3, 32, 32), torch.tensor([0.1, 0.3, 0.5, 0.8, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(net.gate_logits(x, budget=b), _oracle_logits(net, x, b))
        net(x, budget=b)
    assert torch.equal(net.last_budget, b)
    assert torch.equal(net.last_gates, (_oracle_logits(net, x, b) > 0).float())


def test_the_budget_changes_the_gates_and_a_float_is_every_sample_s_budget() -> None:
    net = _net()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        low, high = net.gate_logits(x, budget=0.2), net.gate_logits(x, budget=0.9)
        assert not torch.allclose(low, high)
        torch.testing.assert_close(low, net.gate_logits(x, budget=torch.full((3,), 0.2)))
        torch.testing.assert_close(low, net.gate_logits(x, budget=torch.tensor(0.2)))


def test_a_new_budget_head_starts_as_the_head_without_a_budget() -> None:
    torch.manual_seed(3)
    plain = gatekit.gate_model(resnet20(), resnet20_gater(), init_bias=1.0).eval()
    torch.manual_seed(3)
    budgeted = gatekit.gate_model(resnet20(), resnet20_gater(), init_bias=1.0, budget_input=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for b in (0.1, 0.6, 1.0):
            torch.testing.assert_close(budgeted.gate_logits(x, budget=b), plain.gate_logits(x))


def test_the_head_learns_to_follow_the_budget() -> None:
    """Trained on the per-sample budget loss alone (SGD, lr 0.1, 120 steps: a short fine-tune's
    first minutes), a new head opens fewer filters at a low budget than at a high one, for
    images it was not trained on.  A head whose budget terms get only per-gate gradients
    (no shared scale) still opens the same fraction at every budget after this."""
    torch.manual_seed(0)
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner", init_bias=3.0,
                             budget_input=True)
    images = torch.randn(4, 16, 3, 16, 16)
    costs = gatekit.gate_costs(net, images[0, :1], downstream=True)
    opt = torch.optim.SGD(net.head.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    net.train()
    for step in range(120):
        b = torch.rand(16) * 0.7 + 0.3
        net(images[step % 4], budget=b)
        loss = 20 * gatekit.flops_budget_loss(net.last_gates, costs, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    kept = {}
    with torch.no_grad():
        held_out = torch.randn(16, 3, 16, 16)
        for b in (0.3, 1.0):
            net(held_out, budget=b)
            kept[b] = float((net.last_gates.double() @ costs.double()).mean() / costs.sum())
    # seeds 0-3: 0.39-0.43 at 0.3, 0.72-0.76 at 1.0; without the shared scale 0.65 at both
    assert kept[0.3] < 0.55 and kept[1.0] - kept[0.3] > 0.15, kept


def test_the_trunk_runs_once() -> None:
    net = _net()
    calls = []
    net.gater.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32), budget=0.5)
    assert len(calls) == 1


@pytest.mark.parametrize(("budget", "match"), [
    (None, r"reads a compute budget .*model\(x, budget=b\)"),
    (0.0, r"budget must lie in \(0, 1\].*from 0.0 to 0.0"),
    (1.5, r"budget must lie in \(0, 1\]"),
    (torch.tensor([0.5, 0.5]), r"shape \(4,\), one per sample, got torch.float32 of shape \(2,\)"),
    (torch.tensor([1, 1, 1, 1]), r"got torch.int64"),
    (torch.ones(4, 1), r"shape \(4, 1\)"),
    ("0.5", r"budget must be a float in \(0, 1\] or an \(N,\) tensor, got '0.5'"),
])
def test_bad_budgets(budget, match) -> None:
    net = _net()
    with pytest.raises(GatekitError, match=match):
        net(torch.randn(4, 3, 32, 32), budget=budget)


def test_plain_model_refuses_a_budget_and_gates_override_both() -> None:
    plain = gatekit.gate_model(resnet20(), resnet20_gater()).eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(GatekitError, match=r"has no budget input.*budget_input=True"):
        plain(x, budget=0.5)
    with pytest.raises(GatekitError, match="has no budget input"):
        plain.gate_logits(x, budget=0.5)
    gates = torch.ones(2, 336)
    net = _net("residual")
    with torch.no_grad():
        torch.testing.assert_close(net(x, gates=gates), net.backbone(x, gates=gates))
    assert net.last_budget is None and net.last_logits is None


@pytest.mark.parametrize("batching", ["pattern", "union"])
def test_skip_compute_at_a_budget_equals_the_dense_model_at_it(batching: str) -> None:
    net = _net()
    fast = gatekit.skip_compute(net, batching=batching)
    x = torch.randn(4, 3, 32, 32)
    b = torch.tensor([0.25, 0.5, 0.75, 1.0])
    with torch.no_grad():
        want = net(x, budget=b)
        got = fast(x, budget=b)
    assert not torch.equal(net.last_gates[0], net.last_gates[-1])  # the budgets differ in gates
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.last_gates, net.last_gates)
    fused = gatekit.fuse_gated_convs(net, op="reference")
    with torch.no_grad():
        torch.testing.assert_close(fused(x, budget=b), want, rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore:The tensor attributes")  # last_* set during export
def test_stats_costs_compile_and_export() -> None:
    net = _net()
    x, b = torch.randn(3, 3, 32, 32), torch.tensor([0.3, 0.6, 0.9])
    stats = gatekit.GateStats.for_model(net, num_classes=2)
    with torch.no_grad():
        want = net(x, budget=b)
    stats.update(net.last_gates, torch.tensor([0, 1, 1]))
    assert stats.num_samples == 3
    assert gatekit.gate_costs(net, torch.zeros(1, 3, 32, 32)).shape == (336,)
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, budget=b), want)
    exported = torch.export.export(net, (x,), {"budget": b})
    torch.testing.assert_close(exported.module()(x, budget=b), want)


# --------------------------------------------------------------------------------------
# flops_budget_loss with per-sample budgets
# --------------------------------------------------------------------------------------


def _per_sample_oracle(gates: list[list[float]], costs: list[float], budgets: list[float]) -> float:
    total = sum(costs)
    kept = [sum(c * g for c, g in zip(costs, row)) / total for row in gates]
    return sum((k - b) ** 2 for k, b in zip(kept, budgets)) / len(kept)


def test_per_sample_budget_loss_against_a_plain_loop_and_gradcheck() -> None:
    torch.manual_seed(0)
    gates = torch.rand(6, 5, dtype=torch.float64, requires_grad=True)
    costs = torch.rand(5, dtype=torch.float64) * 1e6
    budgets = torch.rand(6, dtype=torch.float64, requires_grad=True)
    got = gatekit.flops_budget_loss(gates, costs, budgets)
    want = _per_sample_oracle(gates.tolist(), costs.tolist(), budgets.tolist())
    assert got.item() == pytest.approx(want, rel=1e-12)
    assert torch.autograd.gradcheck(lambda g: gatekit.flops_budget_loss(g, costs, budgets.detach()), (gates,))
    got.backward()
    assert budgets.grad is None  # budgets are targets
    # one budget for all samples held per sample is not the batch's mean budget
    same = torch.full((6,), 0.5, dtype=torch.float64)
    assert gatekit.flops_budget_loss(gates, costs, same) >= gatekit.flops_budget_loss(gates, costs, 0.5)


@pytest.mark.parametrize(("budget", "match"), [
    (torch.full((3,), 0.5), r"shape \(4,\), one per row of gates \(4, 5\), got torch.float32 of shape \(3,\)"),
    (torch.tensor([0.5, 0.5, 0.5, 1.5]), r"in \[0, 1\], got values from 0.5 to 1.5"),
    (torch.ones(4, dtype=torch.long), "floating tensor.*torch.int64"),
])
def test_per_sample_budget_loss_bad_budgets(budget, match) -> None:
    with pytest.raises(GatekitError, match=match):
        gatekit.flops_budget_loss(torch.rand(4, 5), torch.ones(5), budget)
