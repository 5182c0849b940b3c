"""--budget-ends F: the sandwich rule in per-sample form (both ends of the range in every batch)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from gaternet_training.budgets import BudgetRange
from gaternet_training.config import budget_ends_arg
from gaternet_training.train import Run
from test_examples import IMAGENET, TINY_STANDIN, _main


@pytest.mark.parametrize(("n", "ends", "k"), [(128, 0.5, 32), (128, 0.25, 16), (7, 0.5, 2),
                                              (10, 1.0, 5), (9, 1.0, 4), (16, 0.0, 0)])
def test_each_batch_holds_both_ends(n: int, ends: float, k: int) -> None:
    # Oracle: counted by hand, k = round(n * ends / 2) samples at each end (at most n // 2).
    torch.manual_seed(0)
    r = BudgetRange(0.25, 1.0, None, ends)
    drawn = r.draw(n, 3.0, torch.device("cpu"))
    assert drawn.shape == (n,)
    assert int((drawn == 0.25).sum()) == k and int((drawn == 1.0).sum()) == k
    middle = drawn[2 * k:]  # the rest: uniform draws, inside the range, not pinned to an end
    assert bool(((middle > 0.25) & (middle < 1.0)).all())


def test_the_low_end_follows_the_curriculum() -> None:
    r = BudgetRange(0.2, 1.0, 4.0, 0.5)
    for epoch, low in ((0.0, 1.0), (2.0, 0.6), (4.0, 0.2), (9.0, 0.2)):
        drawn = r.draw(64, epoch, torch.device("cpu"))
        assert int(torch.isclose(drawn, torch.tensor(low)).sum()) >= 16, (epoch, drawn)
        assert float(drawn.min()) == pytest.approx(low)


def test_the_run_draws_with_ends() -> None:
    run = Run.__new__(Run)  # only the budgets are read by budget_kwargs
    run.budgets = BudgetRange(0.3, 1.0, None, 0.5)
    b = run.budget_kwargs(40, 1.0, torch.device("cpu"))["budget"]
    assert int((b == 0.3).sum()) == 10 and int((b == 1.0).sum()) == 10


@pytest.mark.parametrize("bad", ["-0.1", "1.5", "x", "nan"])
def test_bad_ends(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected the fraction"):
        budget_ends_arg(bad)


def test_a_run_records_its_ends(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    status, err = _main(IMAGENET, [*TINY_STANDIN, "--sites", "inner", "--init-bias", "3",
                                   "--budget-range", "0.25:1", "--budget-ends", "0.5",
                                   "--budget-weight", "20", "--eval-budgets", "0.25,1",
                                   "--output-dir", str(out)], capsys)
    assert status == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["gate_losses"]["budget_ends"] == 0.5
    assert results["gate_losses"]["budget_range"] == "0.25:1"


def test_ends_without_a_range_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    status, err = _main(IMAGENET, [*TINY_STANDIN, "--budget-ends", "0.5",
                                   "--output-dir", str(out)], capsys)
    assert status == 2 and "--budget-ends 0.5 acts on the budgets" in err, err
    assert not out.exists()
