"""The example scripts' loss terms, distillation (--distill-from), the moving budget
(--budget A:B:K) and the static-pruning baseline (benchmarks/cifar10_static_pruning.py)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from gaternet_training.distill import distillation
from gaternet_training.losses import Losses, Step, Term, gate_terms
from gaternet_training.ramp import Ramp
from test_examples import (
    CIFAR,
    IMAGENET,
    ROOT,
    STATIC,
    TINY_CIFAR,
    TINY_STANDIN,
    _config,
    _main,
    _write_tree,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import gatekit
from gatekit.models import resnet20, resnet20_gater

# --------------------------------------------------------------------------------------
# the loss terms
# --------------------------------------------------------------------------------------


def test_losses_sum_describe_and_skip_their_terms() -> None:
    """Every method goes over the list: a new loss (a per-sample budget, say) is one more term."""
    calls = []

    def term(name: str, weight: str, value: float, section: str = "gate_losses") -> Term:
        def fn(step: Step) -> torch.Tensor:
            calls.append(name)
            return torch.tensor(value) * step.logits.sum()

        return Term(name, Ramp.parse(weight), fn, {f"{name}_weight": weight}, section)

    losses = Losses([term("a", "0:2", 3.0), term("b", "0", 5.0), term("c", "1", 7.0, "other")])
    step = Step(nn.Identity(), torch.zeros(2, 3), torch.ones(2, 4), epoch=5.0, epochs=10)
    assert losses.weights(5.0, 10) == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert float(losses(step)) == 1.0 * 3.0 * 8 + 7.0 * 8
    assert calls == ["a", "c"]  # a term whose weight is 0 is not computed
    assert losses.describe() == {"gate_losses": {"a_weight": "0:2", "b_weight": "0"},
                                 "other": {"c_weight": "1"}}
    assert float(Losses()(step)) == 0.0


# --------------------------------------------------------------------------------------
# the moving budget
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("epoch", "budget"), [(0.0, 1.0), (1.0, 0.75), (1.5, 0.625), (2.0, 0.5),
                                               (7.0, 0.5)])
def test_budget_moves_linearly_then_stays(epoch: float, budget: float) -> None:
    torch.manual_seed(0)
    net = gatekit.gate_model(resnet20(), resnet20_gater(), sites="inner")
    config = _config(budget=Ramp.parse("1:0.5:2"), budget_weight=Ramp(3.0), batch_shaping=0.0)
    losses = Losses(gate_terms(config, net, 32, torch.device("cpu")))
    images = torch.randn(4, 3, 32, 32)
    logits = net(images)
    costs = gatekit.gate_costs(net, torch.zeros(1, 3, 32, 32))
    got = losses(Step(net, images, logits, epoch, 10))
    want = 3.0 * gatekit.flops_budget_loss(net.last_gates, costs.float(), budget)
    torch.testing.assert_close(got, want)
    assert losses.describe()["gate_losses"]["budget"] == "1:0.5:2"
    assert list(losses.weights(epoch, 10)) == ["l1", "budget"]


@pytest.mark.parametrize("bad", ["1.5", "1:1.5:2", "-0.1"])
def test_budget_outside_0_1_is_a_usage_error(tmp_path: Path, capsys, bad: str) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        _main(IMAGENET, [*TINY_STANDIN, f"--budget={bad}", "--output-dir", str(out)], capsys)
    assert e.value.code == 2
    assert "must lie in [0, 1]" in capsys.readouterr().err or bad == "-0.1"
    assert not out.exists()


# --------------------------------------------------------------------------------------
# distillation
# --------------------------------------------------------------------------------------


class _Teacher(nn.Module):
    """Records the mode and grad mode it was called in."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 5)
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return self.lin(x.flatten(1))


def test_distillation_term_runs_the_teacher_in_eval_without_grad() -> None:
    torch.manual_seed(0)
    teacher = _Teacher().eval()
    losses = Losses([distillation(teacher, Ramp.parse("0:2:4"), 3.0, "teacher.pt")])
    images, student = torch.randn(6, 3, 2, 2), torch.randn(6, 5, requires_grad=True)
    assert float(losses(Step(teacher, images, student, 0.0, 10))) == 0.0
    assert teacher.calls == []  # weight 0: no teacher run
    got = losses(Step(teacher, images, student, 1.0, 10))
    want = 0.5 * gatekit.distillation_loss(student, teacher.lin(images.flatten(1)).detach(), 3.0)
    torch.testing.assert_close(got, want)
    assert teacher.calls == [(False, False)]
    got.backward()
    assert student.grad is not None and teacher.lin.weight.grad is None
    assert losses.describe() == {"distillation": {"from": "teacher.pt", "weight": "0:2:4",
                                                  "temperature": 3.0}}


@pytest.fixture()
def teacher_state(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(resnet20(num_classes=10).state_dict(), path)
    return path


@pytest.mark.parametrize("plain", [False, True], ids=["gated", "plain"])
def test_run_with_distillation_reports_it(tmp_path: Path, capsys, teacher_state: Path, plain: bool) -> None:
    out = tmp_path / "run"
    argv = [*TINY_STANDIN, "--distill-from", str(teacher_state), "--distill-weight", "0:1",
            "--distill-temperature", "2", "--output-dir", str(out), *(["--no-gate"] if plain else [])]
    status, err = _main(IMAGENET, argv, capsys)
    assert status == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["distillation"] == {"from": str(teacher_state), "weight": "0:1", "temperature": 2.0}
    # the teacher is a training cost: the reported FLOPs are the model's alone
    with FlopCounterMode(display=False) as counter:
        resnet20(num_classes=10).eval()(torch.zeros(1, 3, 16, 16))
    backbone = results["flops"]["dense"] - results["flops"].get("gater", 0)
    assert backbone == counter.get_total_flops()


@pytest.mark.parametrize(("argv", "message"), [
    (["--distill-from", "nope.pt"], "--distill-from nope.pt: no such file"),
    (["--distill-temperature", "0"], "--distill-temperature must be > 0"),
])
def test_bad_distillation_flags(tmp_path: Path, capsys, teacher_state: Path, argv, message) -> None:
    if "--distill-from" not in argv:
        argv = [*argv, "--distill-from", str(teacher_state)]
    out = tmp_path / "run"
    status, err = _main(IMAGENET, [*TINY_STANDIN, *argv, "--output-dir", str(out)], capsys)
    assert status == 2 and message in err, err
    assert not out.exists()


def test_teacher_that_does_not_fit_lists_the_keys(tmp_path: Path, capsys) -> None:
    state = resnet20(num_classes=10).state_dict()
    state["fc.weight"] = torch.zeros(7, 64)
    state.pop("stage3.block3.bn2.bias")
    torch.save(state, tmp_path / "bad.pt")
    out = tmp_path / "run"
    status, err = _main(IMAGENET, [*TINY_STANDIN, "--distill-from", str(tmp_path / "bad.pt"),
                                   "--output-dir", str(out)], capsys)
    assert status == 2, err
    assert "--distill-from" in err and "does not fit the teacher (resnet20)" in err
    assert "missing in the file: stage3.block3.bn2.bias" in err
    assert "fc.weight: (7, 64) in the file, (10, 64) in the model" in err
    assert not out.exists()


# --------------------------------------------------------------------------------------
# the static-pruning baseline
# --------------------------------------------------------------------------------------


def _load(path: Path):
    """The script at ``path``: an example loaded from its file, a benchmark as the module of
    the benchmarks package it is (``python -m benchmarks.NAME``)."""
    if path.parent.name == "benchmarks":
        return importlib.import_module(f"benchmarks.{path.stem}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_static_pruning_run(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    start = resnet20(num_classes=3)
    torch.save(start.state_dict(), tmp_path / "start.pt")
    data = _write_tree(tmp_path / "data", {"train": 8, "test": 4})
    out = tmp_path / "run"
    status = _load(STATIC).cli_main(["--data", str(data), *TINY_CIFAR, "--output-dir", str(out),
                                     "--prune-from", str(tmp_path / "start.pt"), "--flops", "0.5",
                                     "--distill-from", str(tmp_path / "start.pt")])
    err = capsys.readouterr().err
    assert status == 0, err
    results = json.loads((out / "results.json").read_text())
    flops = results["flops"]
    # the dense model's FLOPs, counted independently, and the pruned one within 0.005 of half
    with FlopCounterMode(display=False) as counter:
        resnet20(num_classes=3).eval()(torch.zeros(1, 3, 32, 32))
    assert flops["backbone_dense"] == counter.get_total_flops()
    assert abs(flops["at_open_fraction"] / flops["backbone_dense"] - 0.5) <= 0.005
    assert flops["backbone_fraction"] == flops["at_open_fraction"] / flops["backbone_dense"]
    # the saved weights are the pruned model's: fewer channels than the start
    saved = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    widths = results["backbone_build"]["conv_widths"]
    assert saved["stage3.block1.conv1.weight"].shape[0] == widths["stage3.block1.conv1"] < 64
    assert results["gated"] is False


def test_static_pruning_refuses_a_gated_run(tmp_path: Path, capsys) -> None:
    pytest.importorskip("torch_pruning")
    torch.save(resnet20(num_classes=3).state_dict(), tmp_path / "start.pt")
    data = _write_tree(tmp_path / "data", {"train": 4, "test": 2})
    status = _load(STATIC).cli_main(["--data", str(data), *TINY_CIFAR, "--prune-from",
                                     str(tmp_path / "start.pt"), "--flops", "1.5",
                                     "--output-dir", str(tmp_path / "run")])
    assert status == 2 and "--flops must lie in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------
# rechecking a run from its weights
# --------------------------------------------------------------------------------------

EVALUATE = ROOT / "benchmarks" / "cifar10_evaluate.py"


@pytest.mark.parametrize("kind", ["budget", "budget_conv_gater", "static", "any_budget"])
def test_evaluate_rebuilds_the_run_and_gets_its_numbers(tmp_path: Path, capsys, monkeypatch,
                                                        kind: str) -> None:
    if kind == "static":
        pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    torch.save(resnet20(num_classes=3).state_dict(), tmp_path / "start.pt")
    data = _write_tree(tmp_path / "data", {"train": 8, "test": 6})
    out = tmp_path / "run"
    common = ["--data", str(data), *TINY_CIFAR, "--output-dir", str(out), "--cache-dir",
              str(tmp_path / "cache")]
    if kind == "budget":
        script, argv = CIFAR, [*common, "--init-from", str(tmp_path / "start.pt"), "--sites", "inner",
                               "--count-downstream", "--gater-resolution", "16", "--budget", "0.5",
                               "--budget-weight", "50", "--lr", "0.5"]
    elif kind == "budget_conv_gater":  # the gater of a few ops (gatekit.models.conv_gater)
        script, argv = CIFAR, [*common, "--init-from", str(tmp_path / "start.pt"), "--sites", "inner",
                               "--count-downstream", "--gater", "conv", "--gater-resolution", "16",
                               "--budget", "0.5", "--budget-weight", "50", "--lr", "0.5"]
    elif kind == "any_budget":
        script, argv = CIFAR, [*common, "--init-from", str(tmp_path / "start.pt"), "--sites", "inner",
                               "--count-downstream", "--gater-resolution", "16", "--budget-range",
                               "0.3:1.0", "--eval-budgets", "0.3,1.0", "--budget-weight", "200", "--epochs", "6",
                               "--lr", "0.5"]
    else:
        script, argv = STATIC, [*common, "--prune-from", str(tmp_path / "start.pt"), "--flops", "0.6"]
    monkeypatch.setattr(sys, "argv", [str(script), *argv])  # the command results.json records
    assert _load(script).cli_main(argv) == 0, capsys.readouterr().err
    evaluate = _load(EVALUATE)
    weights = tmp_path / "w.pt"
    assert evaluate.main([str(out / "checkpoint.pt"), "--export-weights", str(weights)]) == 0
    (tmp_path / "w.json").write_text((out / "results.json").read_text())
    capsys.readouterr()
    assert evaluate.main([str(weights), "--data", str(data), "--cache-dir", str(tmp_path / "cache")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    results = json.loads((out / "results.json").read_text())
    if kind == "any_budget":  # one line per budget the run evaluated, equal to its points
        points = results["budget_input"]["points"]
        assert [g["budget"] for g in lines] == [p["budget"] for p in points] == [0.3, 1.0]
        for g, p in zip(lines, points):
            for key in ("test_error", "backbone_flops_fraction", "total_flops_fraction_of_plain"):
                assert g[key] == pytest.approx(p[key], abs=1e-4), (p["budget"], key)
        # budget 0.3 closed some gates, so the recheck compares fractions below 1; how many
        # it closes is a training outcome of this 6-epoch toy run and not asserted
        assert points[0]["backbone_flops_fraction"] < 0.999
        capsys.readouterr()
        assert evaluate.main([str(weights), "--data", str(data), "--cache-dir",
                              str(tmp_path / "cache"), "--budget", "1.0"]) == 0
        (one,) = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
        assert one == pytest.approx(lines[1], abs=1e-6)
        _check_calibration(tmp_path, data, weights, points, capsys)
        return
    (got,) = lines
    flops = results["flops"]
    assert got["test_error"] == pytest.approx(results["val_error"], abs=1e-4)
    assert got["backbone_flops_fraction"] == pytest.approx(flops["backbone_fraction"], abs=1e-4)
    assert got["total_flops_fraction_of_plain"] == pytest.approx(
        flops["at_open_fraction"] / flops["backbone_dense"], abs=1e-4)
    if kind.startswith("budget"):
        assert flops["backbone_fraction"] < 0.999  # some gates closed: the fractions are tested
    if kind == "budget_conv_gater":  # two convs on 16 px (2 * 101,376 FLOPs) and the head
        assert 202_752 < flops["gater"] < 0.01 * flops["backbone_dense"]
    state = torch.load(weights, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # weights only, no optimiser


CALIBRATE = ROOT / "benchmarks" / "cifar10_calibrate_budget.py"


def _check_calibration(tmp_path: Path, data: Path, weights: Path, points: list, capsys) -> None:
    """cifar10_calibrate_budget.py on a budget-input run: the map travels in the weights,
    cifar10_evaluate.py rechecks it, and on the calibration images themselves each budget
    keeps what the map says it kept there (an oracle that does not depend on how the tiny
    run trained: the test split here is a copy of the training split)."""
    same = tmp_path / "same"
    shutil.copytree(data / "train", same / "train")
    shutil.copytree(data / "train", same / "test")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "calibrated"
    calibrate = _load(CALIBRATE)
    assert calibrate.main([str(weights), "--data", str(same), *cache, "--out", str(out),
                           "--images", "24", "--budget", "0.45", "--budget", "0.6"]) == 0
    capsys.readouterr()
    written = json.loads(out.with_suffix(".json").read_text())
    state = torch.load(out.with_suffix(".pt"), weights_only=True)
    knots = written["calibration"]["map"]
    assert knots["knob"] == pytest.approx(state["head.budget_map.knob"].tolist())
    assert written["calibrated_from"]["weights"] == str(weights)
    got = written["budget_input"]["points"]
    assert [p["budget"] for p in got] == [0.45, 0.6]
    for p in got:  # 0.45 and 0.6 are knots of the map (budgets 0.01 to 1.0 in steps of 0.01)
        i = min(range(len(knots["requested"])), key=lambda j: abs(knots["requested"][j] - p["budget"]))
        assert p["backbone_flops_fraction"] == pytest.approx(knots["achieved"][i], abs=1e-3)
    assert evaluate_main(weights=out.with_suffix(".pt"), data=same, cache=cache, capsys=capsys) == [
        pytest.approx({k: p[k] for k in ("budget", "test_error", "backbone_flops_fraction",
                                         "total_flops_fraction_of_plain")}, abs=1e-4) for p in got]
    assert calibrate.main([str(out.with_suffix(".pt")), "--data", str(same), *cache,
                           "--out", str(tmp_path / "again")]) == 2
    assert "calibrated already" in capsys.readouterr().err
    assert calibrate.main([str(tmp_path / "none.pt"), "--data", str(data), "--out", str(out)]) == 2
    assert "no file" in capsys.readouterr().err


def evaluate_main(*, weights: Path, data: Path, cache: list[str], capsys) -> list[dict]:
    assert _load(EVALUATE).main([str(weights), "--data", str(data), *cache]) == 0
    return [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
