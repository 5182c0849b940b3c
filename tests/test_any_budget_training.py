"""The example scripts' --budget-range (one model for any budget) and --eval-budgets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from gaternet_training.budgets import BudgetRange, budget_range_arg
from gaternet_training.losses import Losses, Step, gate_terms
from gaternet_training.ramp import Ramp
from test_examples import IMAGENET, TINY_STANDIN, _config, _main

import gatekit
from gatekit.models import resnet20, resnet20_gater


@pytest.mark.parametrize(("text", "epoch", "low"), [
    ("0.3:1", 0.0, 0.3), ("0.3:1", 7.0, 0.3),
    ("0.3:1:2", 0.0, 1.0), ("0.3:1:2", 1.0, 0.65), ("0.3:1:2", 2.0, 0.3), ("0.3:1:2", 5.0, 0.3),
])
def test_the_range_widens_as_written(text: str, epoch: float, low: float) -> None:
    r = budget_range_arg(text)
    assert r.low_at(epoch) == pytest.approx(low)
    torch.manual_seed(0)
    drawn = r.draw(4000, epoch, torch.device("cpu"))
    assert drawn.shape == (4000,) and bool((drawn >= low - 1e-7).all() and (drawn <= 1.0).all())
    if low < 1.0:  # uniform: the mean within 5 standard errors of the midpoint
        sd = (1.0 - low) / 12**0.5 / 4000**0.5
        assert abs(drawn.mean().item() - (low + 1.0) / 2) < 5 * sd


@pytest.mark.parametrize("bad", ["0:1", "0.5:0.4", "0.3", "0.3:1:0", "a:b", "0.3:1.2"])
def test_bad_ranges(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected|length K"):
        budget_range_arg(bad)


def test_the_term_holds_each_sample_to_its_budget() -> None:
    torch.manual_seed(0)
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner", budget_input=True)
    config = _config(budget_range=BudgetRange(0.3, 1.0), budget_weight=Ramp(4.0), batch_shaping=0.0)
    losses = Losses(gate_terms(config, net, 32, torch.device("cpu")))
    images, b = torch.randn(3, 3, 32, 32), torch.tensor([0.3, 0.6, 0.9])
    logits = net(images, budget=b)
    costs = gatekit.gate_costs(net, torch.zeros(1, 3, 32, 32)).float()
    got = losses(Step(net, images, logits, 1.0, 10))
    torch.testing.assert_close(got, 4.0 * gatekit.flops_budget_loss(net.last_gates, costs, b))
    assert losses.describe()["gate_losses"]["budget_range"] == "0.3:1"


def test_a_run_reports_every_evaluation_budget(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    status, err = _main(IMAGENET, [*TINY_STANDIN, "--sites", "inner", "--count-downstream",
                                   "--init-bias", "3", "--budget-range", "0.3:1:0.5",
                                   "--budget-weight", "20", "--eval-budgets", "0.3,0.7,1",
                                   "--output-dir", str(out)], capsys)
    assert status == 0, err
    results = json.loads((out / "results.json").read_text())
    info = results["budget_input"]
    assert info["range"] == "0.3:1:0.5" and info["reported_at"] == 0.65
    assert [p["budget"] for p in info["points"]] == [0.3, 0.7, 1.0]
    for p in info["points"]:
        assert 0.0 <= p["test_error"] <= 1.0 and 0.0 < p["backbone_flops_fraction"] <= 1.0
        assert p["total_flops_fraction_of_plain"] > p["backbone_flops_fraction"]  # the gater costs
        s = p["gate_stats_1_99"]
        assert p["input_dependent_fraction_1_99"] == s["input_dependent"] / s["num_gates"]
    assert results["gate_losses"]["budget_range"] == "0.3:1:0.5"
    state = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    assert "head.budget_gate.weight" in state  # the head reads the budget


@pytest.mark.parametrize(("argv", "message"), [
    (["--budget", "0.5", "--budget-range", "0.3:1"], "--budget and --budget-range both"),
    (["--no-gate", "--budget-range", "0.3:1"], "--budget-range changes the gater, but --no-gate"),
])
def test_budget_range_conflicts(tmp_path: Path, capsys, argv, message) -> None:
    out = tmp_path / "run"
    status, err = _main(IMAGENET, [*TINY_STANDIN, *argv, "--output-dir", str(out)], capsys)
    assert status == 2 and message in err, err
    assert not out.exists()

