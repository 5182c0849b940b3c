"""gatekit.init_gates_: a GaterNet that starts as the statically pruned model.

Oracles: filter norms and ranks worked out by hand on weights set to known values; the
statically pruned model as a plain ResNet-20 whose BatchNorm outputs a forward hook masks
(no gatekit code in it); the kept counts per site counted by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gatekit
from gatekit import GatekitError
from gatekit.models import resnet20, resnet20_gater

SITE_SIZES = [16] * 3 + [32] * 3 + [64] * 3  # ResNet-20's inner convs, in the order they run


def _net(*, budget_input: bool = False, group_size: int = 1, estimator: str = "semhash",
         seed: int = 0) -> gatekit.GaterNet:
    torch.manual_seed(seed)
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner", group_size=group_size,
                             estimator=estimator, budget_input=budget_input)
    # Trained-looking BatchNorm statistics, so that masking a channel changes the output.
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return net


def test_filter_norms_are_the_l1_norms_of_each_gate_s_filters() -> None:
    net = _net(group_size=2)
    conv = net.backbone.get_submodule(net.sites[0].name)
    with torch.no_grad():
        for c in range(conv.out_channels):  # filter c: every weight +-(c + 1)
            conv.weight[c] = (c + 1.0) * torch.sign(torch.randn_like(conv.weight[c]))
    scores = gatekit.filter_l1_norms(net)
    taps = conv.weight[0].numel()  # 16 * 3 * 3
    by_hand = torch.tensor([taps * ((2 * j + 1) + (2 * j + 2)) for j in range(8)], dtype=torch.float32)
    assert scores.shape == (sum(SITE_SIZES) // 2,)
    torch.testing.assert_close(scores[:8], by_hand)


def test_ranks_highest_first_ties_by_channel() -> None:
    net = _net()
    scores = torch.zeros(net.num_gates)
    scores[:16] = torch.tensor([5.0, 1, 3, 3, 0, 9, 2, 2, 7, 4, 6, 8, 1, 0, 3, 10])
    t = gatekit.ranking_thresholds(net, scores)
    # rank by hand: 10(15) 9(5) 8(11) 7(8) 6(10) 5(0) 4(9) 3(2) 3(3) 3(14) 2(6) 2(7) 1(1) 1(12) 0(4) 0(13)
    ranks = {15: 0, 5: 1, 11: 2, 8: 3, 10: 4, 0: 5, 9: 6, 2: 7, 3: 8, 14: 9, 6: 10, 7: 11, 1: 12,
             12: 13, 4: 14, 13: 15}
    expected = torch.tensor([(ranks[c] + 0.5) / 16 for c in range(16)], dtype=torch.float64)
    torch.testing.assert_close(t[:16], expected)
    # Equal scores in a later site: channel order.
    torch.testing.assert_close(t[16:32], (torch.arange(16, dtype=torch.float64) + 0.5) / 16)


def _masked_plain(net: gatekit.GaterNet, keep: torch.Tensor) -> nn.Module:
    """The oracle: the same weights in a plain ResNet-20, each inner BN output multiplied by
    the mask through a forward hook."""
    plain = resnet20()
    plain.load_state_dict(net.backbone.state_dict())
    for site in net.sites:
        mask = keep[site.offset:site.stop].float().view(1, -1, 1, 1)
        plain.get_submodule(site.after).register_forward_hook(
            lambda module, args, out, mask=mask: out * mask)
    return plain.eval()


@pytest.mark.parametrize("budget, per_site", [
    (0.386, [6, 6, 6, 12, 12, 12, 25, 25, 25]),  # 6.18, 12.35, 24.7 rounded
    (0.25, [4, 4, 4, 8, 8, 8, 16, 16, 16]),
    (0.03, [0, 0, 0, 1, 1, 1, 2, 2, 2]),  # 0.48, 0.96, 1.92
    (1.0, SITE_SIZES),
])
def test_every_image_keeps_the_top_of_each_site_and_the_model_is_the_pruned_one(
        budget: float, per_site: list[int]) -> None:
    net = _net()
    scores = gatekit.filter_l1_norms(net)
    keep = gatekit.init_gates_(net, scores, budget)
    assert [int(keep[s.offset:s.stop].sum()) for s in net.sites] == per_site
    for s in net.sites:  # the kept ones are the site's highest scores
        chunk, kept = scores[s.offset:s.stop], keep[s.offset:s.stop]
        if kept.any() and not kept.all():
            assert chunk[kept].min() >= chunk[~kept].max()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        out = net.eval()(x)
        assert torch.equal(net.last_gates, keep.float().expand(6, -1))
        torch.testing.assert_close(out, _masked_plain(net, keep)(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator", ["semhash", "st_sigmoid", "gumbel", "hard_concrete"])
def test_each_estimator_gates_by_the_mask_in_eval_and_nearly_always_in_training(estimator: str) -> None:
    net = _net(estimator=estimator)
    keep = gatekit.init_gates_(net, gatekit.filter_l1_norms(net), 0.5)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        net.eval()(x)
        assert torch.equal(net.last_gates > 0.5, keep.expand(8, -1))
        net.train()(x)
    # Training noise flips a gate at margin 3 as often as the estimator's own open
    # probability says (SemHash: P(N(0,1) > 3) = 0.13%; Gumbel: 1 - sigmoid(3) = 4.7%).
    # The straight-through sigmoid is deterministic; hard concrete's stretched noise has no
    # closed form here and is checked in evaluation only.
    agree = ((net.last_gates > 0.5) == keep).float().mean().item()
    if estimator == "st_sigmoid":
        assert agree == 1.0
    elif estimator != "hard_concrete":
        p = net.estimator.open_probability(net.last_logits)  # exact for these two
        expected = torch.where(keep, p, 1 - p).mean().item()
        assert expected > 0.95 and abs(agree - expected) < 0.02, (agree, expected)


def test_group_gates_keep_whole_groups() -> None:
    net = _net(group_size=4)
    keep = gatekit.init_gates_(net, gatekit.filter_l1_norms(net), 0.5)
    assert [int(keep[s.offset:s.stop].sum()) for s in net.sites] == [c // 8 for c in SITE_SIZES]


def test_a_budget_input_model_keeps_nested_masks_at_every_budget() -> None:
    net = _net(budget_input=True)
    scores = gatekit.filter_l1_norms(net)
    t = gatekit.init_gates_(net, scores)
    x = torch.randn(3, 3, 32, 32)
    previous = None
    per_stage = {0.1: (2, 3, 6), 0.25: (4, 8, 16), 0.386: (6, 12, 25), 0.5: (8, 16, 32),
                 0.77: (12, 25, 49), 1.0: (16, 32, 64)}  # b * (16, 32, 64), nearest integer
    for b, (a, c, d) in per_stage.items():
        with torch.no_grad():
            net.eval()(x, budget=b)
        gates = net.last_gates > 0.5
        assert [int(gates[0, s.offset:s.stop].sum()) for s in net.sites] == [a] * 3 + [c] * 3 + [d] * 3, b
        assert torch.equal(gates, (t < b).expand(3, -1))  # every image alike
        if previous is not None:
            assert bool((gates | ~previous).all())  # nested: what a lower budget kept stays
        previous = gates
    # Per-image budgets in one batch.
    with torch.no_grad():
        net(x, budget=torch.tensor([0.25, 0.5, 1.0]))
    assert net.last_gates.sum(1).tolist() == [84.0, 168.0, 336.0]


def test_a_budget_model_forgets_its_calibration() -> None:
    net = _net(budget_input=True)
    x = torch.randn(8, 3, 32, 32)
    gatekit.calibrate_budget(net, [x], gatekit.gate_costs(net, x[:1]))
    assert net.head.budget_map is not None
    gatekit.init_gates_(net, gatekit.filter_l1_norms(net))
    assert net.head.budget_map is None


def test_only_the_head_changes() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gatekit.init_gates_(net, gatekit.filter_l1_norms(net), 0.4)
    changed = {k for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"head.fc2.weight", "head.fc2.bias"}


@pytest.mark.parametrize("call, match", [
    (lambda net: gatekit.init_gates_(resnet20(), torch.ones(336), 0.4), "expects a GaterNet"),
    (lambda net: gatekit.init_gates_(net, torch.ones(335), 0.4), r"shape \(336,\).*got \(335,\)"),
    (lambda net: gatekit.init_gates_(net, torch.full((336,), float("nan")), 0.4), "finite"),
    (lambda net: gatekit.init_gates_(net, torch.ones(336)), r"budget must be a fraction in \(0, 1\]"),
    (lambda net: gatekit.init_gates_(net, torch.ones(336), 1.5), "got 1.5"),
    (lambda net: gatekit.init_gates_(net, torch.ones(336), 0.4, margin=0), "margin must be"),
])
def test_bad_arguments(call, match) -> None:
    with pytest.raises(GatekitError, match=match):
        call(_net())


def test_a_budget_model_refuses_one_budget() -> None:
    with pytest.raises(GatekitError, match="leave it out"):
        gatekit.init_gates_(_net(budget_input=True), torch.ones(336), 0.4)
