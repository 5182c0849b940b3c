"""The README's Python examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_its_two_python_examples() -> None:
    assert len(_blocks()) == 2, "the README holds two Python examples: training code, and the recipe"


def test_readme_training_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torchvision")
    exec(compile(_blocks()[0], str(README), "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out.split()
    # resnet18 under the "residual" policy: every block's bn2 output, 2 * (64 + 128 + 256 + 512)
    assert out[0] == "1920"


def test_readme_recipe_example_runs() -> None:
    pytest.importorskip("torchvision")
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(_blocks()[1], str(README), "exec"), namespace)
    model, costs = namespace["model"], namespace["costs"]
    # resnet18 under "inner": each block's conv1, 2 * (64 + 128 + 256 + 512) gates
    assert model.num_gates == 1920 and costs.shape == (1920,)
    assert bool((costs > 0).all())
