"""benchmarks/ort_blocked_conv.py: the blocked filter layout it feeds ONNX Runtime's NCHWc
``Conv`` at run time gives conv2d's output (the probe's timing is only worth reading if so)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from benchmarks.ort_blocked_conv import blocked, measure


def test_blocked_is_the_nchwc_filter_layout():
    # OIhw{B}i{B}o: block (o, i) of out/in block indices, then taps, then i within, o within
    w = np.arange(32 * 32 * 9, dtype=np.float32).reshape(32, 32, 3, 3)
    b = blocked(w, 16).reshape(2, 2, 3, 3, 16, 16)
    assert b[1, 0, 2, 1, 5, 7] == w[16 + 7, 5, 2, 1]


@pytest.mark.parametrize("kernel", [1, 3])
def test_the_runtime_s_blocked_conv_matches_conv2d_for_its_block(kernel):
    # The runtime's block is 8 (AVX2) or 16 (AVX-512): the layout for the right one gives
    # conv2d's output, and every other graph does regardless of the block.
    errors = {block: measure((1, 64, 64, 8, kernel), block, 1, 1, 1)["max_abs_error"]
              for block in (8, 16)}
    assert all(e["const"] < 1e-3 and e["dynamic"] < 1e-3 for e in errors.values())
    matches = [block for block, e in errors.items() if e["blocked_dynamic"] < 1e-3]
    assert len(matches) == 1, errors
