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


def _dedicated(folder: Path, budget: str, seed: int, error: float, kept: float,
               dependent: int) -> Path:
    """A run trained for one budget: backbone at ``kept``, the gater 0.01 of the FLOPs on top."""
    return _write(folder, f"ded_{budget}_{seed}", {
        "seed": seed, "gated": True, "val_error": error, "gate_losses": {"budget": budget},
        "flops": {"dense": DENSE, "backbone_dense": DENSE, "gater": int(0.01 * DENSE),
                  "at_open_fraction": int((kept + 0.01) * DENSE), "backbone_fraction": kept},
        "gate_stats_1_99": {"input_dependent": dependent, "num_gates": 336}})


@pytest.fixture()
def arms(tmp_path: Path) -> dict:
    """Static at 0.3 / 0.4 / 0.565 (kept 0.319, 0.399, 0.565), the one model, dedicated runs."""
    plain = _write(tmp_path, "plain", {"gated": False, "val_error": 0.131, "flops": {"dense": DENSE}})
    static = [_static(tmp_path, f, seed, e, k) for f, k, errs in (
        (0.30, 0.319, (0.154, 0.156)), (0.40, 0.399, (0.148, 0.144)), (0.565, 0.565, (0.138, 0.140)))
        for seed, e in enumerate(errs)]
    # total = backbone + 0.01 (the fixture's _any_budget)
    anyb = [_any_budget(tmp_path, seed, [(0.31, 0.150 + d, 0.31), (0.39, 0.143 + d, 0.39),
                                         (0.555, 0.137 + d, 0.555), (1.0, 0.131, 1.0)])
            for seed, d in ((0, 0.0), (1, 0.002))]
    dedicated = [_dedicated(tmp_path, "1:0.386:5", 0, 0.141, 0.389, 100),
                 _dedicated(tmp_path, "0.386", 1, 0.139, 0.391, 120),
                 _dedicated(tmp_path, "0.554", 0, 0.136, 0.556, 60)]
    return {"plain": [plain], "static": static, "any_budget": anyb, "dedicated": dedicated}


def _summary(m, a: dict) -> dict:
    return m.summarise(a["plain"], a["static"], a["any_budget"], a["dedicated"])


def test_dedicated_runs_averaged_by_their_final_budget(arms) -> None:
    d = _module().dedicated_mean(_summary(_module(), arms))
    assert sorted(d) == [0.386, 0.554]  # 1:0.386:5 ends at 0.386
    assert d[0.386]["test_error"] == pytest.approx(0.140) and d[0.386]["spread"] == pytest.approx(0.002)
    assert d[0.386]["total_flops_fraction_of_plain"] == pytest.approx(0.40)
    assert d[0.386]["input_dependent_fraction_1_99"] == pytest.approx(110 / 336)
    assert d[0.554]["seeds"] == 1


def test_targets_by_hand(arms) -> None:
    m = _module()
    lines = m.targets(_summary(m, arms))
    # 0.3: static 15.50% at 0.319; one model's nearest total is budget 0.31 (0.32): 15.10%,
    # no dedicated run there; 15.10 <= 15.50 - 0.3 = 15.20: met
    assert lines[0].startswith("MET") and "one model (budget 0.31), 15.10% <= static 15.50% - 0.3" in lines[0]
    # 0.4: static 14.60%; one model 14.40% (0.40), dedicated 14.00% (0.40): dedicated best,
    # 14.00 <= 14.30: met; one model 14.40 > 14.00 + 0.2: missed
    assert lines[1].startswith("MET") and "dedicated (budget 0.386, 2 seeds), 14.00%" in lines[1]
    assert lines[2].startswith("MISSED") and "one model 14.40% <= dedicated 14.00% + 0.2" in lines[2]
    # 0.565: static 13.90%; dedicated 13.60% at 0.566, one model 13.80% at 0.565: 13.60 <=
    # 13.60: met at the edge; one model 13.80 <= 13.80: met
    assert lines[3].startswith("MET") and "13.60% <= static 13.90% - 0.3" in lines[3]
    assert lines[4].startswith("MET") and "one model 13.80% <= dedicated 13.60% + 0.2" in lines[4]
    assert lines[5].startswith("MET") and "worst 0.0000" in lines[5]
    assert len(lines) == 6


def test_a_gated_model_outside_the_flops_window_is_not_compared(arms, tmp_path: Path) -> None:
    m = _module()
    # the one model evaluated only far from 0.319 (0.36 total, 0.041 away): no arm at 0.3
    far = [_any_budget(tmp_path, 5, [(0.35, 0.10, 0.35), (0.39, 0.143, 0.39), (1.0, 0.13, 1.0)])]
    lines = m.targets(m.summarise(arms["plain"], arms["static"], far, arms["dedicated"]))
    assert lines[0].startswith("MISSED") and "no gated model within 0.02" in lines[0]


def test_the_best_dedicated_budget_within_the_window_is_compared(arms, tmp_path: Path) -> None:
    m = _module()
    # Two dedicated recipes near static's 0.565: a worse one nearer (0.565 total) and a
    # better one farther (0.580, still within 0.02): the better is the best gated model.
    runs = [*arms["dedicated"], _dedicated(tmp_path, "0.555", 0, 0.139, 0.555, 5),
            _dedicated(tmp_path, "0.57", 0, 0.133, 0.570, 5)]
    lines = m.targets(m.summarise(arms["plain"], arms["static"], arms["any_budget"], runs))
    assert lines[3].startswith("MET") and "dedicated (budget 0.57, 1 seeds), 13.30%" in lines[3]
    assert "one model 13.80% <= dedicated 13.30% + 0.2" in lines[4] and lines[4].startswith("MISSED")


def test_targets_missed_by_a_small_gain(arms, tmp_path: Path) -> None:
    m = _module()
    # dedicated at 0.4 only 0.2 below static: not the 0.3 asked
    close = [_dedicated(tmp_path, "0.386", s, 0.144, 0.39, 10) for s in (0, 1)]
    lines = m.targets(m.summarise(arms["plain"], arms["static"], arms["any_budget"], close))
    assert lines[1].startswith("MISSED") and "14.40% <= static 14.60% - 0.3" in lines[1]


def test_report_says_where_the_gated_curve_matches_static_at_040(arms) -> None:
    m = _module()
    lines = m.report(_summary(m, arms))
    assert lines[0].startswith("dedicated 0.386: 14.00% (seeds 14.10, 13.90; spread 0.20), "
                               "total FLOPs 0.400, input-dependent 33% of gates")
    # static at 0.40: 14.60%; one model (0.32, 15.10) -> (0.40, 14.40): 14.60 at 0.32 + 0.08 *
    # 0.5 / 0.7 = 0.377; dedicated: its first point (0.40, 14.00) already below: 0.400
    assert "one model reaches static's error at 0.40 (14.60%) at 0.377 of the FLOPs" in lines[2]
    assert "dedicated runs reaches static's error at 0.40 (14.60%) at 0.400" in lines[3]
    assert m.matching_flops([(0.5, 0.2)], 0.1) is None


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
