"""benchmarks/cifar10_gating_vs_pruning.py: every number read from the run files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import cifar10_any_budget, cifar10_gating_vs_pruning, run_files
from benchmarks.run_files import POINT_KEYS, rel


def _module():
    return cifar10_gating_vs_pruning


def _write(folder: Path, name: str, results: dict, weights: bool = True) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"command": "x", "epochs": 10, "seed": 0, **results}))
    if weights:
        path.with_suffix(".pt").write_bytes(b"w")
    return path


@pytest.fixture()
def runs(tmp_path: Path) -> dict[str, Path]:
    folder = tmp_path
    dense = 80_000_000
    return {
        "plain": _write(folder, "plain", {"gated": False, "val_error": 0.1337,
                                          "flops": {"dense": dense}}),
        "static": _write(folder, "static", {"gated": False, "val_error": 0.145, "backbone_build": {},
                                            "flops": {"dense": 45_000_000, "backbone_dense": dense,
                                                      "at_open_fraction": 45_000_000}}),
        "budget": _write(folder, "budget", {"gated": True, "val_error": 0.139,
                                            "flops": {"dense": 85_000_000, "gater": 5_000_000,
                                                      "backbone_dense": dense,
                                                      "at_open_fraction": 50_000_000},
                                            "gate_stats_1_99": {"input_dependent": 84, "num_gates": 336}}),
        "folder": folder,
    }


def test_summary_reads_every_number(runs) -> None:
    m = _module()
    s = m.summarise([runs["plain"]], [runs["static"]], [runs["budget"]])
    assert s["epochs"] == 10
    assert s["plain"] == [{"file": rel(runs["plain"]), "weights": rel(runs["plain"].with_suffix(".pt")),
                           "seed": 0, "test_error": 0.1337}]
    assert s["static"][0]["backbone_flops_fraction"] == 45 / 80
    b = s["budget"][0]
    assert b["backbone_flops_fraction"] == 45 / 80  # (50 - 5) / 80: the gater is not the backbone
    assert b["total_flops_fraction_of_plain"] == 50 / 80
    assert b["input_dependent_fraction_1_99"] == 0.25
    lines = m.targets(s)
    assert lines[0].startswith("MET") and "13.90% <= static 14.50% - 0.5" in lines[0]
    assert lines[1].startswith("MISSED")  # 13.90 > 13.37 + 0.5
    assert lines[2].startswith("MET") and lines[3].startswith("MET")


def test_summary_refuses_unequal_epochs_missing_weights_and_wrong_kinds(runs) -> None:
    m = _module()
    other = _write(runs["folder"], "other", {"gated": False, "val_error": 0.1, "epochs": 12,
                                             "flops": {"dense": 1}})
    with pytest.raises(SystemExit, match="differ in epochs"):
        m.summarise([runs["plain"], other], [runs["static"]], [runs["budget"]])
    bare = _write(runs["folder"], "bare", {"gated": False, "val_error": 0.1, "flops": {"dense": 1}},
                  weights=False)
    with pytest.raises(SystemExit, match=r"bare.pt does not exist"):
        m.summarise([bare], [runs["static"]], [runs["budget"]])
    with pytest.raises(SystemExit, match="not a statically pruned run"):
        m.summarise([runs["plain"]], [runs["plain"]], [runs["budget"]])
    with pytest.raises(SystemExit, match="not a gated run"):
        m.summarise([runs["plain"]], [runs["static"]], [runs["static"]])


# --------------------------------------------------------------------------------------
# benchmarks/cifar10_any_budget.py: one model for any budget, against the runs above
# --------------------------------------------------------------------------------------

def _any_module():
    return cifar10_any_budget


def _point(b: float, err: float, frac: float) -> dict:
    return {"budget": b, "test_error": err, "backbone_flops_fraction": frac,
            "total_flops_fraction_of_plain": frac + 0.06, "open_fraction": 0.5,
            "input_dependent_fraction_1_99": 0.3, "gate_stats_1_99": {}}


def test_any_budget_reads_its_points_and_judges_the_targets(runs, tmp_path: Path, capsys) -> None:
    m = _any_module()
    points = [_point(0.3, 0.20, 0.31), _point(0.56, 0.1405, 0.575), _point(1.0, 0.1350, 0.99)]
    run = _write(runs["folder"], "any", {"gated": True, "val_error": 0.15, "flops": {"dense": 1},
                                         "budget_input": {"range": "0.3:1", "points": points}})
    budget = json.loads(runs["budget"].read_text())
    runs["budget"].write_text(json.dumps({**budget, "gate_losses": {"budget": "1:0.56:5"}}))
    out, png = tmp_path / "any_budget.json", tmp_path / "any.png"
    assert m.main([str(run), "--budget", str(runs["budget"]), "--static", str(runs["static"]),
                   "--plain", str(runs["plain"]), "--out", str(out), "--plot", str(png)]) == 0
    summary = json.loads(out.read_text())
    assert set(summary) == {"file", "weights", "epochs", "points"}  # the shape
    assert summary["weights"] == rel(run.with_suffix(".pt")) and summary["epochs"] == 10
    assert summary["points"] == [{k: p[k] for k in POINT_KEYS} for p in points]
    assert png.stat().st_size > 10_000
    text = capsys.readouterr().out
    assert "MET    achieved backbone FLOPs within 0.03 of every budget (worst: 0.575 at budget 0.56)" in text
    assert "MET    at budget 0.56: 14.05% within 0.3 of the budget runs' 13.90%" in text
    assert "MET    at budget 1: 13.50% <= plain 13.37% + 0.3" in text
    assert "MET    monotone" in text
    # a point off its budget, an error that rises with the budget, a point missing
    bad = [_point(0.3, 0.13, 0.36), _point(0.6, 0.145, 0.6), _point(1.0, 0.1350, 0.99)]
    lines = m.targets({"points": bad}, [{"test_error": 0.139}], 0.56, [{"test_error": 0.1337}])
    assert lines[0].startswith("MISSED") and "0.360 at budget 0.3" in lines[0]
    assert lines[1].startswith("MISSED") and "no point at the budget runs' budget 0.56" in lines[1]
    assert lines[3].startswith("MISSED") and "+1.50 from budget 0.3 to 0.6" in lines[3]


def test_any_budget_refuses_a_run_without_a_budget_input(runs) -> None:
    with pytest.raises(SystemExit, match=r"no budget_input\.points"):
        run_files.budget_run_summary(runs["budget"])


def test_any_budget_reads_a_calibration_and_the_run_before_it(runs, tmp_path: Path, capsys) -> None:
    m = _any_module()
    before = [_point(0.3, 0.149, 0.414), _point(0.56, 0.1424, 0.509), _point(1.0, 0.1382, 1.0)]
    run = _write(runs["folder"], "any", {"gated": True, "val_error": 0.15, "flops": {"dense": 1},
                                         "budget_input": {"range": "0.3:1", "points": before}})
    after = [_point(0.3, 0.58, 0.2999), _point(0.56, 0.1424, 0.5600), _point(1.0, 0.1382, 1.0)]
    calibrated = runs["folder"] / "any_calibrated.json"
    calibrated.write_text(json.dumps({"command": "cifar10_calibrate_budget.py x", "epochs": 10,
                                      "calibrated_from": {"file": str(run), "weights": "w"},
                                      "budget_input": {"range": "0.3:1", "points": after}}))
    budget = json.loads(runs["budget"].read_text())
    runs["budget"].write_text(json.dumps({**budget, "gate_losses": {"budget": "1:0.56:5"}}))
    out, png = tmp_path / "any_budget.json", tmp_path / "any.png"
    argv = [str(calibrated), "--before", str(run), "--budget", str(runs["budget"]), "--static",
            str(runs["static"]), "--plain", str(runs["plain"]), "--out", str(out), "--plot", str(png)]
    with pytest.raises(SystemExit, match=r"any_calibrated\.pt does not exist"):
        m.main(argv)
    calibrated.with_suffix(".pt").write_bytes(b"w")
    assert m.main(argv) == 0
    summary = json.loads(out.read_text())
    assert summary["file"] == rel(calibrated) and summary["weights"] == rel(calibrated.with_suffix(".pt"))
    assert summary["points"] == [{k: p[k] for k in POINT_KEYS} for p in after]
    assert "MET    achieved backbone FLOPs within 0.03 of every budget" in capsys.readouterr().out
    run.unlink()  # the calibration names a run that is gone
    with pytest.raises(SystemExit, match=r"any\.json does not exist"):
        m.main(argv)
