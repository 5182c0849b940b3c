"""Importing gatekit stays lean: no Triton, torchvision, matplotlib or ONNX, and CUDA untouched.

The imports run in a fresh interpreter, so modules other tests loaded cannot hide a
regression.  ``import torch`` alone is the baseline: only what gatekit adds on top counts.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

HEAVY = ("triton", "torchvision", "matplotlib", "onnx", "onnxscript", "onnxruntime")
MODULES = ("gatekit", "gatekit.ops", "gatekit.export")

# Imports torch, then each module in turn; after each, the heavy modules loaded so far and
# whether CUDA is initialised.
_PROBE = """
import importlib, json, sys
def state():
    import torch
    heavy = sorted({{m for m in sys.modules if m.split(".")[0] in {heavy!r}}})
    return {{"heavy": heavy, "cuda_initialized": torch.cuda.is_initialized()}}
out = {{"torch": state()}}
for name in {modules!r}:
    importlib.import_module(name)
    out[name] = state()
print(json.dumps(out))
"""


def probe(modules: list[str]) -> dict[str, dict]:
    code = _PROBE.format(heavy=HEAVY, modules=modules)
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert run.returncode == 0, f"importing {modules} failed:\n{run.stderr}"
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def import_states() -> dict[str, dict]:
    present = [m for m in MODULES if importlib.util.find_spec(m) is not None]
    return probe(present)


@pytest.mark.parametrize("module", MODULES)
def test_import_is_lean(module: str, import_states: dict[str, dict]) -> None:
    if module not in import_states:
        pytest.skip(f"{module} does not exist yet")
    added = sorted(set(import_states[module]["heavy"]) - set(import_states["torch"]["heavy"]))
    assert not added, (
        f"import {module} imported {added}; import them inside the functions that need them"
    )
    assert import_states[module]["cuda_initialized"] is False, f"import {module} initialised CUDA"


def test_probe_sees_heavy_imports() -> None:
    # The probe itself must be able to fail: a module that imports matplotlib is caught.
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib not installed")
    states = probe(["matplotlib.pyplot"])
    assert "matplotlib" in states["matplotlib.pyplot"]["heavy"]
    assert "matplotlib" not in states["torch"]["heavy"]
