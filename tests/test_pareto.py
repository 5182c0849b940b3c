"""benchmarks/cifar10_pareto.py: every number read from the run files, the targets judged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_gating_vs_pruning import _write

from benchmarks import cifar10_pareto

DENSE = 80_000_000


def _module():
    return cifar10_pareto


def _static(folder: Path, flops: float, seed: int, error: float, kept: float) -> Path:
    return _write(folder, f"static_{flops}_{seed}", {
        "command": f"cifar10_static_pruning.py --data d --flops {flops} --seed {seed}",
        "seed": seed, "gated": False, "val_error": error, "backbone_build": {},
        "flops": {"dense": int(kept * DENSE), "backbone_dense": DENSE,
                  "at_open_fraction": int(kept * DENSE)}})


def _any_budget(folder: Path, seed: int, points: list[tuple[float, float, float]]) -> Path:
    return _write(folder, f"anyb_{seed}", {
        "seed": seed, "gated": True, "val_error": 0.14, "train_seconds_per_epoch": 300.0,
        "flops": {"dense": DENSE, "backbone_dense": DENSE, "at_open_fraction": DENSE},
        "budget_input": {"range": "0.2:1:5", "points": [
            {"budget": b, "test_error": e, "backbone_flops_fraction": f,
             "total_flops_fraction_of_plain": f + 0.01} for b, e, f in points]}})


@pytest.fixture()
def runs(tmp_path: Path) -> dict:
    plain = _write(tmp_path, "plain", {"gated": False, "val_error": 0.131, "flops": {"dense": DENSE}})
    static = [_static(tmp_path, 0.30, 0, 0.170, 0.319), _static(tmp_path, 0.30, 1, 0.160, 0.319),
              _static(tmp_path, 0.75, 0, 0.135, 0.767), _static(tmp_path, 0.75, 1, 0.137, 0.767)]
    anyb = [_any_budget(tmp_path, 0, [(0.3, 0.150, 0.301), (0.75, 0.138, 0.74), (1.0, 0.132, 1.0)]),
            _any_budget(tmp_path, 1, [(0.3, 0.152, 0.305), (0.75, 0.134, 0.76), (1.0, 0.134, 1.0),
                                      (0.5, 0.14, 0.5)])]
    return {"plain": [plain], "static": static, "any_budget": anyb, "folder": tmp_path}


def test_summary_reads_every_number(runs) -> None:
    m = _module()
    s = m.summarise(runs["plain"], runs["static"], runs["any_budget"], [])
    assert s["epochs"] == 10
    assert [(x["budget"], x["seed"], x["test_error"]) for x in s["static"]] == [
        (0.30, 0, 0.170), (0.30, 1, 0.160), (0.75, 0, 0.135), (0.75, 1, 0.137)]
    assert s["static"][0]["backbone_flops_fraction"] == pytest.approx(0.319)
    a = s["any_budget"][1]
    assert a["seed"] == 1 and a["train_seconds_per_epoch"] == 300.0
    assert a["points"][0] == {"budget": 0.3, "test_error": 0.152, "backbone_flops_fraction": 0.305,
                              "total_flops_fraction_of_plain": 0.315}
    one = m.one_model_mean(s)
    assert sorted(one) == [0.3, 0.75, 1.0]  # 0.5: only seed 1 has it
    assert one[0.3]["test_error"] == pytest.approx(0.151)


def test_targets_by_hand(runs) -> None:
    m = _module()
    lines = m.targets(m.summarise(runs["plain"], runs["static"], runs["any_budget"], []))
    # at most static's: 0.30: 15.10% against 16.50% (FLOPs 0.303 vs 0.319); 0.75: 13.60%
    # against 13.60% (FLOPs 0.75 vs 0.767): both met
    assert lines[0].startswith("MET") and "(budget 0.3) 15.10% <= static 16.50% (" in lines[0]
    assert lines[1].startswith("MET") and "(budget 0.75) 13.60% <= static 13.60%" in lines[1]
    # at 0.30 at most static's minus 1.0: 15.10 <= 15.50: met (0.75 has no such target)
    assert lines[2].startswith("MET") and "15.10% <= static 16.50% - 1.0" in lines[2]
    # 1.0: 13.30% against plain 13.10% + 0.2 = 13.30%: met at the edge
    assert lines[3].startswith("MET") and "13.30% <= plain 13.10% + 0.2" in lines[3]
    # every point within 0.03 of its budget (worst 0.01)
    assert lines[4].startswith("MET") and "worst 0.0100" in lines[4]
    assert len(lines) == 5


def test_compared_at_the_flops_static_kept(runs, tmp_path: Path) -> None:
    # a point evaluated at what the pruned model kept (0.319) is the one compared, not the
    # point at the static run's --flops (0.30)
    m = _module()
    a = _any_budget(tmp_path, 3, [(0.3, 0.150, 0.300), (0.319, 0.170, 0.319), (1.0, 0.13, 1.0)])
    lines = m.targets(m.summarise(runs["plain"], runs["static"][:2], [a], []))
    assert lines[0].startswith("MISSED") and "(budget 0.319) 17.00%" in lines[0]
    assert lines[1].startswith("MISSED") and "(budget 0.319) 17.00%" in lines[1]


def test_targets_missed(runs, tmp_path: Path) -> None:
    m = _module()
    worse = _any_budget(tmp_path, 2, [(0.3, 0.160, 0.36), (0.75, 0.136, 0.75), (1.0, 0.140, 1.0)])
    lines = m.targets(m.summarise(runs["plain"], runs["static"], [worse], []))
    assert lines[0].startswith("MISSED")  # 0.36 is 0.041 from the 0.319 static kept
    assert lines[1].startswith("MET")  # 13.6% <= 13.6% at 0.75
    assert lines[2].startswith("MISSED")
    assert lines[3].startswith("MISSED")  # 14.0 > 13.3
    assert lines[4].startswith("MISSED") and "worst 0.0600" in lines[4]


def test_main_writes_the_json_and_both_plots(runs, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    m = _module()
    out, plot = tmp_path / "pareto.json", tmp_path / "p_backbone.png"
    argv = ["--out", str(out), "--plot", str(plot)]
    for kind in ("plain", "static", "any_budget"):
        for f in runs[kind]:
            argv += [f"--{kind.replace('_', '-')}", str(f)]
    assert m.main(argv) == 0
    written = json.loads(out.read_text())
    assert {"epochs", "plain", "static", "any_budget", "dedicated"} <= set(written)
    assert plot.stat().st_size > 1000 and (tmp_path / "p_total.png").stat().st_size > 1000


def test_refuses_a_static_run_without_flops_and_unequal_epochs(runs, tmp_path: Path) -> None:
    m = _module()
    bad = _write(tmp_path, "nostatic", {"gated": False, "val_error": 0.1, "backbone_build": {},
                                        "flops": {"dense": 1, "backbone_dense": 2, "at_open_fraction": 1}})
    with pytest.raises(SystemExit, match="has no --flops"):
        m.summarise(runs["plain"], [bad], runs["any_budget"], [])
    other = _write(tmp_path, "long", {"gated": False, "val_error": 0.1, "epochs": 12,
                                      "flops": {"dense": 1}})
    with pytest.raises(SystemExit, match="differ in epochs"):
        m.summarise([other], runs["static"], runs["any_budget"], [])
