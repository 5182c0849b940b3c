"""The example scripts' training recipe: warm start, ramped loss weights, the new gate-loss flags,
the cheaper gater and what a run reports about gates and FLOPs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from gaternet_training import models
from gaternet_training.config import RunConfig
from gaternet_training.ramp import Ramp
from gaternet_training.warm_start import warm_start
from test_examples import CIFAR, IMAGENET, TINY_CIFAR, TINY_STANDIN, _config, _main, _write_tree
from torch.utils.flop_counter import FlopCounterMode

import gatekit
from gatekit.models import resnet20

# --------------------------------------------------------------------------------------
# ramps
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, epoch, total, expected", [
    ("0.5", 0.0, 10, 0.5), ("0.5", 9.9, 10, 0.5),
    ("0:2", 0.0, 10, 0.0), ("0:2", 5.0, 10, 1.0), ("0:2", 10.0, 10, 2.0),
    ("1:0:4", 1.0, 10, 0.75), ("1:0:4", 4.0, 10, 0.0), ("1:0:4", 8.0, 10, 0.0),
    ("0:3:1.5", 0.75, 10, 1.5),
])
def test_ramp_is_linear_then_flat(text: str, epoch: float, total: float, expected: float) -> None:
    assert Ramp.parse(text).at(epoch, total) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["", "a", "1:2:3:4", "-1", "1:0:0", "1::2"])
def test_ramp_rejects_bad_text(bad: str) -> None:
    with pytest.raises(ValueError, match=r"W, A:B or A:B:K|>= 0|> 0 epochs"):
        Ramp.parse(bad)


def test_bad_ramp_flag_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        _main(IMAGENET, [*TINY_STANDIN, "--batch-shaping", "1:x", "--output-dir", str(tmp_path)], capsys)
    assert e.value.code == 2
    assert "expected W, A:B or A:B:K" in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# warm start
# --------------------------------------------------------------------------------------


def _cfg(**kw) -> RunConfig:
    """The stand-in's config with the model and warm-start settings these tests build from."""
    base = dict(arch="resnet20", gater="resnet20", no_gate=False, sites="residual",
                estimator="semhash", bottleneck=8, group_size=1, init_bias=0.0,
                gater_resolution=None, freeze_gater=False, init_from=None, init_gater=False, init_gates=None,
                backbone_weights=None)
    base.update(kw)
    return _config(IMAGENET, **base)


def _build(config: RunConfig, num_classes: int) -> torch.nn.Module:
    """The model train.py builds from these flags."""
    backbone = models.classifier(config.arch, num_classes)
    if config.no_gate:
        return backbone
    return gatekit.gate_model(backbone, models.gater_trunk(config), sites=config.sites,
                              estimator=config.estimator, bottleneck=config.bottleneck,
                              group_size=config.group_size, init_bias=config.init_bias)


@pytest.fixture()
def trained_state(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A resnet20 state_dict with every tensor random (so a load that misses one shows)."""
    torch.manual_seed(0)
    state = {k: (torch.rand_like(v.float()) + 0.5).to(v.dtype) for k, v in resnet20().state_dict().items()}
    path = tmp_path / "resnet20.pt"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("gated", [False, True])
def test_init_from_state_dict_loads_every_tensor(trained_state, gated: bool) -> None:
    path, state = trained_state
    model = _build(_cfg(no_gate=not gated, init_from=path, init_gater=gated), 10)
    lines = warm_start(model, _cfg(no_gate=not gated, init_from=path, init_gater=gated))
    backbone = model.backbone if gated else model
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, state[k]), k
    if gated:
        trunk = model.gater.state_dict()
        assert set(trunk) == set(state) - {"fc.weight", "fc.bias"}
        for k, v in trunk.items():
            assert torch.equal(v, state[k]), k
        assert len(lines) == 2


def test_init_from_a_gated_checkpoint_takes_its_backbone_and_gater(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = _build(_cfg(), 10)
    with torch.no_grad():
        for p in source.parameters():
            p.uniform_(-1, 1)
    ckpt = tmp_path / "checkpoint.pt"
    from gaternet_training import checkpoint

    torch.save({"format": checkpoint.FORMAT, "model": source.state_dict()}, ckpt)
    target = _build(_cfg(), 10)
    warm_start(target, _cfg(init_from=ckpt, init_gater=True))
    for a, b in zip(source.backbone.parameters(), target.backbone.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(source.gater.parameters(), target.gater.parameters(), strict=True):
        assert torch.equal(a, b)
    # The head is not part of a warm start: it stays as initialised.
    assert not torch.equal(source.head.fc2.weight, target.head.fc2.weight)


def test_init_from_mismatch_lists_keys_and_writes_nothing(trained_state, tmp_path: Path, capsys) -> None:
    _, state = trained_state
    bad = dict(state)
    bad.pop("stage2.block1.conv1.weight")
    bad["extra.weight"] = torch.zeros(1)
    bad["fc.weight"] = torch.zeros(7, 64)
    torch.save(bad, tmp_path / "bad.pt")
    data = _write_tree(tmp_path / "data", {"train": 8, "test": 4})
    out = tmp_path / "run"
    status, err = _main(CIFAR, ["--data", str(data), *TINY_CIFAR, "--output-dir", str(out),
                                "--init-from", str(tmp_path / "bad.pt")], capsys)
    assert status == 2
    assert "missing in the file: stage2.block1.conv1.weight" in err
    assert "not in the model: extra.weight" in err
    assert "fc.weight: (7, 64) in the file, (3, 64) in the model" in err
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--init-from", "nope.pt"], "no such file"),
    (["--init-gater"], "--init-gater needs --init-from"),
    (["--no-gate", "--freeze-gater"], "--freeze-gater changes the gater, but --no-gate"),
])
def test_bad_recipe_flags(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    out = tmp_path / "run"
    status, err = _main(IMAGENET, [*TINY_STANDIN, *argv, "--output-dir", str(out)], capsys)
    assert status == 2 and message in err, err
    assert not out.exists()


def test_not_a_state_dict(tmp_path: Path, capsys) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    status, err = _main(IMAGENET, [*TINY_STANDIN, "--init-from", str(tmp_path / "list.pt"),
                                   "--output-dir", str(tmp_path / "run")], capsys)
    assert status == 2 and "expected a state_dict" in err


# --------------------------------------------------------------------------------------
# the cheaper gater
# --------------------------------------------------------------------------------------


def test_gater_resolution_resizes_what_the_trunk_sees() -> None:
    model = _build(_cfg(gater_resolution=16), 10)
    seen = []
    model.gater.trunk.register_forward_pre_hook(lambda m, a: seen.append(tuple(a[0].shape)))
    model(torch.randn(2, 3, 32, 32))
    assert seen == [(2, 3, 16, 16)]
    with FlopCounterMode(display=False) as full:
        models.trunk("resnet20")(torch.randn(1, 3, 32, 32))
    with FlopCounterMode(display=False) as small:
        model.gater(torch.randn(1, 3, 32, 32))
    assert small.get_total_flops() * 4 == full.get_total_flops()


def test_frozen_gater_keeps_weights_and_statistics() -> None:
    model = _build(_cfg(freeze_gater=True), 10).train()
    before = {k: v.clone() for k, v in model.gater.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        out = model(torch.randn(4, 3, 32, 32))
        out.sum().backward()
        opt.step()
    for k, v in model.gater.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.head.fc2.weight.grad is not None
    assert not model.gater.trunk.training and model.training


# --------------------------------------------------------------------------------------
# a run with the new losses reports what it did
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("downstream", [False, True], ids=["own", "downstream"])
def test_run_with_budget_and_batch_shaping_reports_weights_stats_and_flops(
        tmp_path: Path, capsys, downstream: bool) -> None:
    out = tmp_path / "run"
    extra = ["--sites", "inner", "--count-downstream"] if downstream else []
    status, err = _main(IMAGENET, [*TINY_STANDIN, "--budget", "0.5", "--budget-weight", "0:2",
                                   "--batch-shaping", "1:0:0.5", "--batch-shaping-prior", "0.7,0.3",
                                   "--init-bias", "2", *extra, "--output-dir", str(out)], capsys)
    assert status == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["gate_losses"] == {"l1_weight": "0", "budget": 0.5, "budget_weight": "0:2",
                                      "budget_gates": "train",
                                      "count_downstream": downstream,
                                      "batch_shaping_weight": "1:0:0.5",
                                      "batch_shaping_prior": [0.7, 0.3]}
    assert results["flops"]["downstream"] is downstream
    s, s199 = results["gate_stats"], results["gate_stats_1_99"]
    assert s199["thresholds"] == {"open": 0.5, "always_on": 0.99, "always_off": 0.01}
    assert s199["num_samples"] == s["num_samples"] == 32
    assert s199["always_on"] + s199["always_off"] + s199["input_dependent"] == s199["num_gates"]
    assert s199["input_dependent"] <= s["input_dependent"]
    # FLOPs at the open fraction, against an independent count: each gated layer's conv FLOPs
    # (FlopCounterMode on the conv alone) times the fraction of its gates that were closed.
    flops = results["flops"]
    backbone = resnet20(10)
    size = 16
    saved = 0.0
    x = torch.zeros(1, 3, size, size)
    shapes = {}
    hooks = [m.register_forward_hook(lambda m, a, o, n=n: shapes.__setitem__(n, a[0].shape))
             for n, m in backbone.named_modules() if isinstance(m, torch.nn.Conv2d)]
    backbone.eval()(x)
    for h in hooks:
        h.remove()
    modules = dict(backbone.named_modules())
    for layer in s["layers"]:
        # With --count-downstream at inner sites (stageS.blockB.conv1), a closed channel also
        # empties one input channel of the block's conv2.
        convs = [layer["name"]] + ([layer["name"].replace("conv1", "conv2")] if downstream else [])
        for i, name in enumerate(convs):
            with FlopCounterMode(display=False) as c:
                modules[name](torch.zeros(shapes[name]))
            share = 1 if i == 0 else layer["num_gates"] / modules[name].in_channels
            saved += c.get_total_flops() * share * (1.0 - layer["open_fraction"])
    assert flops["at_open_fraction"] == pytest.approx(flops["dense"] - saved, abs=2)
    assert flops["backbone_fraction"] == pytest.approx(
        (flops["at_open_fraction"] - flops["gater"]) / flops["backbone_dense"])


def test_gate_costs_sum_to_the_gated_convs(tmp_path: Path) -> None:
    """``gate_costs`` on the model a run builds: per site, the conv's FLOPs (independent count)."""
    model = _build(_cfg(), 10).eval()
    costs = gatekit.gate_costs(model, torch.zeros(1, 3, 32, 32))
    convs = dict(resnet20(10).named_modules())
    sizes = {16: 32, 32: 16, 64: 8}
    for site in model.sites:
        conv = convs[site.name]
        with FlopCounterMode(display=False) as c:
            conv(torch.zeros(1, conv.in_channels, sizes[conv.out_channels], sizes[conv.out_channels]))
        chunk = costs[site.offset: site.offset + site.num_gates]
        assert float(chunk.sum()) == pytest.approx(c.get_total_flops())


def test_init_gates_in_groups_reports_gates_not_filters(trained_state) -> None:
    path, _ = trained_state
    config = _cfg(sites="inner", init_from=path, init_gates="l1", budget=Ramp(1.0, 0.25, 2.0),
                  group_size=8)
    lines = warm_start(_build(config, 10), config)
    # 336 inner filters in groups of 8: 42 gates, the top quarter of each site's groups
    assert lines[-1].endswith("of 42 gates (groups of 8 filters) kept for every image")


def test_init_gates_starts_every_image_at_the_l1_ranking_of_the_loaded_backbone(trained_state) -> None:
    path, state = trained_state
    config = _cfg(sites="inner", init_from=path, init_gates="l1", budget=Ramp(1.0, 0.25, 2.0))
    model = _build(config, 10)
    lines = warm_start(model, config)
    assert lines[-1].endswith("84 of 336 filters kept for every image")  # the final budget, 0.25
    with torch.no_grad():
        model.eval()(torch.randn(2, 3, 32, 32))
    for site in model.sites:  # by hand: the top quarter of each conv's filters by L1 norm
        norms = state[f"{site.name}.weight"].abs().sum((1, 2, 3))
        top = set(norms.argsort(descending=True)[: site.channels // 4].tolist())
        opened = set(model.last_gates[0, site.offset:site.stop].nonzero().flatten().tolist())
        assert opened == top, site.name


def test_init_gates_needs_a_budget(tmp_path: Path, capsys) -> None:
    status, err = _main(IMAGENET, [*TINY_STANDIN, "--init-gates", "l1", "--output-dir",
                                   str(tmp_path)], capsys)
    assert status == 2 and "--init-gates l1 keeps the filters" in err and "add --budget" in err, err
    assert not any(tmp_path.iterdir())
